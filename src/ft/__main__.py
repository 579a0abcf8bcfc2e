"""`python -m ft ...`, so that `accelerate launch -m ft train cfg.yml` works."""

from ft.cli import main

if __name__ == "__main__":
    main()
