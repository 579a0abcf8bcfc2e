"""The tokenizer and the chat templates: below both data/ (which tokenizes rows) and model/ (which sizes
its embeddings to the vocabulary), so neither imports the other."""
