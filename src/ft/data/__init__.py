"""Data: dataset rows → segments with train flags → input_ids and labels → the prepared cache."""
