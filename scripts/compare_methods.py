#!/usr/bin/env python
"""Seed 004's comparison of fine-tuning methods, measured: each method teaches the same small model the
quickstart's task (reverse a list of words) with the same number of steps; prints and writes a Markdown table.

    python scripts/compare_methods.py [--work DIR] [--epochs N] [--methods full lora ...] [--out docs/methods.md]
    python scripts/compare_methods.py --shape 1b --steps 12 [--methods ...] [--json F]   (the GPU check's stage)

The base is a tiny Llama (4 layers of width 128) first fully fine-tuned to *repeat* lists of words (so that it
knows the words and the prompt format, as a pretrained model knows its language); each method then adapts it
to *reverse* them. Per method: the share of parameters trained, the peak memory (resident memory on CPU, the
GPU's peak allocated memory on a GPU) and real tokens per second from `ft train`'s summary, and the exact match
of its greedy answers on the quickstart's 100 held-out rows. Learning rates are each method's usual order of
magnitude (listed in the table); every other setting is the same.

`--shape 1b` (the GPU check's `methods` stage): the same table at a real model's shape (a random-weight Llama of
Llama 3.2 1B's shape, bf16 on a GPU), each method trained `--steps` steps; share, peak memory and tokens/s only
(a random model learns no task in a few steps, so no exact match). Methods run most important first, the JSON
written after each, so a stage stopped at its budget keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

from _ft_runs import greedy_answers, train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "examples/quickstart"
# method → (keys, learning rate)
METHODS = {
    "full": ({}, 5e-4),
    "lora": ({"adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_target_linear": True}, 2e-3),
    "qlora": ({"adapter": "qlora", "load_in_4bit": True, "lora_r": 16, "lora_alpha": 32, "lora_target_linear": True}, 2e-3),
    "dora": ({"adapter": "lora", "peft_use_dora": True, "lora_r": 16, "lora_alpha": 32, "lora_target_linear": True}, 2e-3),
    "pissa": ({"adapter": "lora", "peft_init_lora_weights": "pissa", "lora_r": 16, "lora_alpha": 16,
               "lora_target_linear": True}, 2e-3),
    "loha": ({"adapter": "loha", "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True}, 2e-3),
    "lokr": ({"adapter": "lokr", "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True}, 2e-3),
    "vera": ({"adapter": "vera", "lora_r": 64, "lora_target_linear": True}, 1e-2),
    "ia3": ({"adapter": "ia3", "lora_target_linear": True}, 1e-2),
    "prompt_tuning": ({"adapter": "prompt_tuning", "num_virtual_tokens": 20,
                       "prompt_tuning_init_text": "Reverse the order of the words."}, 3e-2),
    "prefix_tuning": ({"adapter": "prefix_tuning", "num_virtual_tokens": 20}, 1e-2),
    "p_tuning_v2": ({"adapter": "prefix_tuning", "num_virtual_tokens": 20, "prefix_projection": True}, 1e-2),
    "bottleneck": ({"adapter": "bottleneck", "bottleneck_size": 64}, 2e-3),
}


def exact_match(model_dir: Path, base: Path, adapter: bool, rows: list[dict], bottleneck: bool = False) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(base if adapter or bottleneck else model_dir)
    if bottleneck:
        from ft.model.methods.bottleneck import load

        model = load(model, model_dir)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir))
    said = greedy_answers(model, tokenizer, rows)
    return 100 * sum(a == row["output"].strip() for a, row in zip(said, rows)) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--rows", type=int, default=100, help="held-out rows answered per method")
    parser.add_argument("--out", type=Path, help="write the table to this Markdown file too")
    parser.add_argument("--shape", choices=["1b", "tiny"], help="a real model's shape instead (no task, no exact match)")
    parser.add_argument("--steps", type=int, default=12, help="with --shape: steps per method")
    parser.add_argument("--json", type=Path, help="with --shape: write the rows here after each method")
    args = parser.parse_args()
    if args.shape:
        return at_shape(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="ft-methods-"))
    work.mkdir(parents=True, exist_ok=True)
    from ft.tiny import make_tiny_model

    train_rows = [json.loads(line) for line in (QUICK / "train.jsonl").read_text().splitlines()]
    copy = work / "copy.jsonl"  # the base's skill: repeat the words in order
    copy.write_text("".join(json.dumps({"instruction": "Repeat the words.", "input": r["input"], "output": r["input"]}) + "\n"
                            for r in train_rows))
    common = {"sequence_len": 128, "micro_batch_size": 16, "lr_scheduler": "cosine", "warmup_steps": 10,
              "logging_steps": 50, "use_tensorboard": False, "seed": 1, "optimizer": "adamw_torch"}
    init = make_tiny_model(work / "init", hidden_size=128, intermediate_size=256, num_hidden_layers=4)
    base = work / "base/out"
    if not (base / "summary.json").is_file():
        train(work / "base", {**common, "base_model": str(init), "datasets": [{"path": str(copy), "type": "alpaca"}],
                            "num_epochs": 12, "learning_rate": 2e-3, "output_dir": str(base)})
    held_out = [json.loads(line) for line in (QUICK / "test.jsonl").read_text().splitlines()][: args.rows]
    print(f"base: {base} (4 layers × 128, taught to repeat words; it reverses {exact_match(base, base, False, held_out):.0f}% "
          f"of the held-out rows)", flush=True)
    lines = ["| method | trained parameters | share | peak memory | real tokens/s | learning rate | exact match |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in args.methods:
        keys, lr = METHODS[name]
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)  # measured afresh (ft train would find a finished run and skip it)
        said = train(folder, {**common, **keys, "base_model": str(base), "learning_rate": lr, "num_epochs": args.epochs,
                            "datasets": [{"path": str(QUICK / "train.jsonl"), "type": "alpaca"}], "output_dir": str(folder / "out")})
        summary = json.loads((folder / "out/summary.json").read_text())
        found = re.search(r"trainable parameters: ([\d,]+) of ([\d,]+) \(([\d.]+)%\)", said)
        trained, share = (found.group(1), f"{float(found.group(3)):.3g}%") if found else (f"{summary.get('trainable', 'all')}", "100%")
        score = exact_match(folder / "out", base, name not in ("full", "bottleneck"), held_out, bottleneck=name == "bottleneck")
        line = (f"| {name} | {trained} | {share} | {summary['peak_memory_mb']:.0f} MB | {summary['tokens_per_s']:.0f} | {lr:g} | "
                f"{score:.0f}% |")
        lines.append(line)
        print(line, flush=True)
    table = "\n".join(lines)
    if args.out:
        args.out.write_text(table + "\n")


def at_shape(args: argparse.Namespace) -> None:
    """Each method `--steps` steps on a random-weight model of a real shape: trained share, peak memory, tokens/s."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gpu import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = args.work or Path(tempfile.mkdtemp(prefix="ft-methods-"))
    base = build_model(args.shape, work, device)
    rows, lines = [], ["| method | trained parameters | share | peak memory | real tokens/s |", "| --- | --- | --- | --- | --- |"]
    print(f"{args.shape} shape on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, {args.steps} steps each",
          flush=True)
    for name in args.methods:
        keys, lr = METHODS[name]
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        said = train(folder, {"base_model": str(base), **keys, "learning_rate": lr, "max_steps": args.steps,
                              "sequence_len": 256, "micro_batch_size": 16, "logging_steps": 4, "use_tensorboard": False,
                              "seed": 1, "bf16": "auto", "datasets": [{"path": str(QUICK / "train.jsonl"), "type": "alpaca"}],
                              "output_dir": str(folder / "out")})
        summary = json.loads((folder / "out/summary.json").read_text())
        found = re.search(r"trainable parameters: ([\d,]+) of ([\d,]+) \(([\d.]+)%\)", said)
        row = {"method": name, "trained": found.group(1) if found else "all", "share": float(found.group(3)) if found else 100.0,
               "peak_memory_mb": summary["peak_memory_mb"], "tokens_per_s": summary["tokens_per_s"]}
        rows.append(row)
        line = (f"| {name} | {row['trained']} | {row['share']:.3g}% | {row['peak_memory_mb']:.0f} MB | "
                f"{row['tokens_per_s']:.0f} |")
        lines.append(line)
        print(line, flush=True)
        if args.json:
            args.json.write_text(json.dumps({"shape": args.shape, "device": device, "steps": args.steps, "rows": rows}, indent=1))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
