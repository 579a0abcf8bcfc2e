"""`ft plan`: the memory a config needs per GPU, by formula from the config and the model's config.json."""
