"""One module per command, each reading top to bottom in named phases. Imported lazily by cli.py."""
