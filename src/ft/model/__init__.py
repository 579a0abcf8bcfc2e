"""Model side: tokenizer, base model, quantization, adapters, merge. Heavy imports stay inside functions."""
