#!/usr/bin/env python
"""Validate Axolotl's own example configs with ft, as a user arriving with them would.

    python scripts/axolotl_examples.py AXOLOTL_EXAMPLES_DIR [--model DIR] [--show N]

AXOLOTL_EXAMPLES_DIR is the examples/ folder of an Axolotl checkout (fetched by you: nothing of Axolotl is in
this repository). Each config's hub names are swapped for local ones as a user on an offline machine would:
`base_model` (and `base_model_config`, `tokenizer_config`) → a tiny local model (built if --model is not
given). Then ft loads it exactly as `ft validate` does. Prints, for text-model configs and for all: how many
validate, and the refusals grouped by the sentence ft said (with how many configs each); exits 0.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml

MULTIMODAL = ("processor_type", "image_size", "image_resize_algorithm", "freeze_mm_modules", "processor_kwargs")


def swapped(text: str, model: Path) -> dict:
    body = yaml.safe_load(text) or {}
    for key in ("base_model", "base_model_config", "tokenizer_config"):
        if body.get(key):
            body[key] = str(model)
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("examples", type=Path)
    parser.add_argument("--model", type=Path, help="a local model folder (default: a tiny Llama built now)")
    parser.add_argument("--show", type=int, default=0, help="also print the first N configs of each refusal")
    args = parser.parse_args()

    from ft.commands.config import validation_context
    from ft.config import load_config
    from ft.errors import ConfigError

    work = Path(tempfile.mkdtemp(prefix="ft-axolotl-"))
    if args.model is None:
        from ft.tiny import make_tiny_model

        args.model = make_tiny_model(work / "tiny")
    context = validation_context()
    results: dict[str, tuple[bool, str, bool]] = {}  # config → (validated, what ft said, text model)
    for path in sorted(p for p in args.examples.rglob("*") if p.suffix in (".yml", ".yaml")):
        name = str(path.relative_to(args.examples))
        try:
            body = swapped(path.read_text(), args.model)
        except yaml.YAMLError:
            continue  # not a config (a malformed YAML would be Axolotl's)
        if not isinstance(body, dict) or "base_model" not in body:
            continue  # a DeepSpeed JSON-in-YAML, an accelerate file: not a training config
        text_model = not any(body.get(k) for k in MULTIMODAL)
        (work / "cfg.yml").write_text(yaml.safe_dump(body, sort_keys=False))
        try:
            load_config(work / "cfg.yml", context=context, warn=lambda _: None)
            results[name] = (True, "", text_model)
        except ConfigError as exc:
            said = re.sub(r"^\S*cfg\.yml(:\d+)?: ", "", str(exc).splitlines()[0])
            results[name] = (False, said, text_model)
        except Exception as exc:  # a traceback a user would see: counted apart
            results[name] = (False, f"TRACEBACK {type(exc).__name__}: {exc}", text_model)
    for label, chosen in (("text-model configs", [r for r in results.values() if r[2]]), ("all configs", list(results.values()))):
        ok = sum(1 for r in chosen if r[0])
        print(f"{label}: {ok} of {len(chosen)} validate ({100 * ok / max(len(chosen), 1):.1f}%)")
    print("refused (all configs), by what ft said:")
    for said, count in Counter(r[1] for r in results.values() if not r[0]).most_common():
        print(f"  {count:4d}  {said}")
        if args.show:
            for name in [n for n, r in results.items() if r[1] == said][: args.show]:
                print(f"          {name}")
    sys.exit(0)


if __name__ == "__main__":
    main()
