"""`ft eval`: a model scored on a test set by the answers it generates (and the loss of the references)."""
