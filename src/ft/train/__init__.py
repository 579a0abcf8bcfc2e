"""Training: TrainingArguments, the Trainer, callbacks. Registries here import no torch."""
