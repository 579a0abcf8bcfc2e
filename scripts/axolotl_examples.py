#!/usr/bin/env python
"""Validate Axolotl's own example configs with ft, as a user arriving with them would.

    python scripts/axolotl_examples.py AXOLOTL_EXAMPLES_DIR [--model DIR] [--show N] [--train N] [--pick CONFIG ...]

AXOLOTL_EXAMPLES_DIR is the examples/ folder of an Axolotl checkout (fetched by you: nothing of Axolotl is in
this repository). Each config's hub names are swapped for local ones as a user on an offline machine would:
`base_model` (and `base_model_config`, `tokenizer_config`) → a tiny local model (built if --model is not
given). Then ft loads it exactly as `ft validate` does. Prints, for text-model configs and for all: how many
validate, and the refusals grouped by the sentence ft said (with how many configs each); exits 0.

--train N: also trains, for 2 steps on this CPU, N validated text-model configs whose datasets are alpaca or
chat_template (those with plugins first, then chat_template ones), each dataset's hub name swapped for local rows in the fields the config names, with
what only a GPU can do taken out (DeepSpeed, FSDP, bf16, flash attention); prints each run's outcome.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
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
    parser.add_argument("--train", type=int, default=0, help="train the first N validated configs for 2 steps")
    parser.add_argument("--pick", nargs="*", default=[], help="also train these validated configs (paths under examples/)")
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
    bodies: dict[str, dict] = {}
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
            bodies[name] = body
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
    candidates = [n for n in bodies if results[n][2] and trainable(bodies[n])]
    # a spread: configs with plugins first, then chat_template datasets, then the rest (LoRA and QLoRA)
    candidates.sort(key=lambda n: (not bodies[n].get("plugins"), bodies[n]["datasets"][0]["type"] != "chat_template"))
    trained = candidates[: args.train] + [n for n in args.pick if n in candidates and n not in candidates[: args.train]]
    for name in trained:
        folder = work / "train" / name.replace("/", "__")
        folder.mkdir(parents=True)
        (folder / "cfg.yml").write_text(yaml.safe_dump(for_cpu(bodies[name], folder), sort_keys=False))
        run = subprocess.run([sys.executable, "-m", "ft", "train", "cfg.yml"], cwd=folder, capture_output=True, text=True)
        last = (run.stderr.strip().splitlines() or [""])[-1]
        print(f"train {name}: exit {run.returncode}: {last[:200]}")
    sys.exit(0)


def trainable(body: dict) -> bool:
    datasets = body.get("datasets") or []
    return bool(datasets) and all(isinstance(d, dict) and d.get("type") in ("alpaca", "chat_template", *EBFT) for d in datasets)


def for_cpu(body: dict, folder: Path) -> dict:
    """The config with local rows for its datasets, 2 steps, and nothing that needs a GPU."""
    body = dict(body)
    datasets = []
    for i, d in enumerate(body["datasets"]):
        d = {k: v for k, v in d.items() if k not in ("name", "split", "data_files", "revision")}
        rows = folder / f"data-{i}.jsonl"
        if d["type"] == "alpaca":
            rows.write_text(ALPACA.read_text())
        elif d["type"] in EBFT:  # {input, output} rows, or texts
            alpaca = [json.loads(line) for line in ALPACA.read_text().splitlines()]
            pick = (lambda r: {"text": f"{r['instruction']} {r['output']}"}) if d["type"] == "ebft_pretrain.transform" else (
                lambda r: {"input": r["instruction"], "output": r["output"]})
            rows.write_text("".join(json.dumps(pick(r)) + "\n" for r in alpaca))
        else:
            messages = d.get("field_messages", "messages")
            roles = {"role": d.get("message_field_role") or "role", "content": d.get("message_field_content") or "content",
                     **(d.get("message_property_mappings") or {})}
            turns = [("system", "Reverse the words."), ("user", "cat dog sun"), ("assistant", "sun dog cat")]
            row = {messages: [{roles["role"]: r, roles["content"]: c} for r, c in turns]}
            rows.write_text("".join(json.dumps(row) + "\n" for _ in range(16)))
        d["path"] = str(rows)
        datasets.append(d)
    body["datasets"] = datasets
    if body.get("save_strategy") == "best":  # it needs the evaluation data this run leaves out
        body.pop("save_strategy")
    for key in ("deepspeed", "fsdp", "fsdp_config", "fsdp_version", "dp_shard_size", "test_datasets", "hub_model_id", "wandb_project",
                "resume_from_checkpoint", "lora_model_dir", "dataset_prepared_path", "attn_implementation", "torch_compile"):
        body.pop(key, None)
    body.update({"output_dir": str(folder / "out"), "max_steps": 2, "micro_batch_size": 1, "gradient_accumulation_steps": 1,
                 "sequence_len": 128, "val_set_size": 0, "bf16": False, "fp16": False, "tf32": False,
                 "flash_attention": False, "eval_steps": None, "evals_per_epoch": None, "save_steps": None,
                 "saves_per_epoch": None, "use_tensorboard": False})
    return body


ALPACA = Path(__file__).resolve().parents[1] / "tests/data/alpaca.jsonl"
EBFT = ("ebft_opencode.transform", "ebft_strided_structured.transform", "ebft_pretrain.transform")


if __name__ == "__main__":
    main()
