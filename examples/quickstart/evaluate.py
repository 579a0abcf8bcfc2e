#!/usr/bin/env python
"""Exact-match of greedy answers on the held-out rows (examples/quickstart/test.jsonl).

    python examples/quickstart/evaluate.py CONFIG --base-only      # the model before fine-tuning
    python examples/quickstart/evaluate.py CONFIG --merged DIR     # the merged model after it

Prompts are rendered with the config's prompt format, exactly as in training.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--base-only", action="store_true")
    parser.add_argument("--merged", default=None)
    parser.add_argument("--rows", default="examples/quickstart/test.jsonl")
    parser.add_argument("--show", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft.commands.inference import generate, load_for_inference, prompt_text
    from ft.commands.config import load as load_config

    cfg = load_config(args.config)
    if args.merged:
        model = AutoModelForCausalLM.from_pretrained(args.merged).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.merged)
    else:
        model, tokenizer = load_for_inference(cfg, base_only=args.base_only)
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
    hits = 0
    for i, row in enumerate(rows):
        text = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
        prompt = prompt_text(cfg, tokenizer, row["instruction"], row.get("input", ""))
        answer = generate(model, tokenizer, prompt, max_new_tokens=16).strip()
        hits += answer == row["output"]
        if i < args.show:
            print(f"  {text!r} → {answer!r} (expected {row['output']!r})")
    label = "merged model" if args.merged else ("base model" if args.base_only else "trained model")
    print(f"{label}: exact match {hits}/{len(rows)} = {hits / len(rows):.0%}")


if __name__ == "__main__":
    main()
