#!/usr/bin/env python
"""Build a tiny random-weight model and tokenizer and save them to a folder (no network needed).

    python scripts/make_tiny_model.py OUT_DIR [--arch llama|qwen2|mistral|gemma2|phi3] [--seed 0]
"""

from __future__ import annotations

import argparse

from ft.tiny import ARCHITECTURES, make_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", default="llama", choices=ARCHITECTURES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=None, help="num_hidden_layers (default 2)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden_size (default 64)")
    args = parser.parse_args()
    overrides = {}
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    if args.hidden:
        overrides["hidden_size"] = args.hidden
    out = make_tiny_model(args.out_dir, arch=args.arch, seed=args.seed, **overrides)
    print(f"tiny {args.arch} model and tokenizer saved to {out}")


if __name__ == "__main__":
    main()
