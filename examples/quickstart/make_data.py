#!/usr/bin/env python
"""Writes train.jsonl and test.jsonl: alpaca rows asking to reverse a short list of words; and choices.jsonl: the
test rows as multiple choice (the reversed words among the words as given and two other orders).

A tiny random-weight model cannot do this before training and learns it in minutes on a CPU, so the
quickstart shows fine-tuning working. Deterministic: the files in the repo come from this script.
"""

import json
import random
from pathlib import Path

WORDS = "cat dog red blue sun moon tree fish bird star king queen city river lake road book door".split()


def row(rng: random.Random) -> dict:
    words = rng.sample(WORDS, rng.randint(3, 4))
    return {"instruction": "Reverse the order of the words.", "input": " ".join(words), "output": " ".join(words[::-1])}


def main() -> None:
    here = Path(__file__).parent
    rng = random.Random(0)
    rows, seen = [], set()
    while len(rows) < 1100:
        r = row(rng)
        if r["input"] not in seen:
            seen.add(r["input"])
            rows.append(r)
    for name, part in (("train.jsonl", rows[:1000]), ("test.jsonl", rows[1000:])):
        with open(here / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    with open(here / "choices.jsonl", "w") as f:
        f.writelines(json.dumps(choices(r, rng)) + "\n" for r in rows[1000:])


def choices(r: dict, rng: random.Random) -> dict:
    words = r["input"].split()
    options = {r["output"], r["input"]}
    while len(options) < 4:
        options.add(" ".join(rng.sample(words, len(words))))
    ordered = sorted(options)
    rng.shuffle(ordered)
    return {"question": r["instruction"], "input": r["input"], "choices": ordered, "answer": ordered.index(r["output"])}


if __name__ == "__main__":
    main()
