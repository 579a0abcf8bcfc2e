#!/usr/bin/env python
"""`ft eval`'s batched generation beside a one-row-at-a-time `generate` loop: rows per second, same outputs.

    python scripts/bench_eval.py [--rows 64] [--batch 16] [--new-tokens 32] [--arch llama]

Model: the tiny random model of the tests (ft.tiny), on this machine's device; rows: tests/data/alpaca.jsonl,
repeated to --rows; greedy decoding. Both contenders run the same prompts (the training tokens before the
answer) in the same process, one after the other; the outputs must be equal token for token.
Target: ≥ 4× on CPU with the tiny model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--arch", default="llama")
    args = parser.parse_args()

    from ft.commands.config import load
    from ft.commands.eval import load_model, test_rows
    from ft.evaluate.predict import batches, eval_rows, generate_batch
    from ft.tiny import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="ft-bench-eval-"))
    model_dir = make_tiny_model(work / "model", arch=args.arch)
    (work / "cfg.yml").write_text(f"base_model: {model_dir}\ndatasets:\n  - path: {ROOT / 'tests/data/alpaca.jsonl'}\n    type: alpaca\n"
                                  f"output_dir: {work / 'out'}\neval_max_new_tokens: {args.new_tokens}\n")
    cfg = load(work / "cfg.yml")
    ds, raw = test_rows(cfg, None if cfg.data.test_datasets else str(ROOT / "tests/data/alpaca.jsonl"))
    raw = (raw * (args.rows // len(raw) + 1))[: args.rows]
    model, tokenizer = load_model(cfg, "base")
    rows, _ = eval_rows(raw, ds, cfg.data, tokenizer)
    generate_batch(model, tokenizer, rows[:2], cfg.evaluation)  # warm-up

    started = time.perf_counter()
    batched = {}
    for batch in batches(rows, args.batch):
        for r, answer in zip(batch, generate_batch(model, tokenizer, batch, cfg.evaluation)):
            batched[r.id] = answer
    batched_s = time.perf_counter() - started

    import torch

    started = time.perf_counter()
    single = {}
    for r in rows:
        ids = torch.tensor([r.prompt_ids], device=next(model.parameters()).device)  # where the model is
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        single[r.id] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    single_s = time.perf_counter() - started
    same = sum(batched[i] == single[i] for i in single)
    print(f"{len(rows)} rows, {args.new_tokens} new tokens each, {args.arch} tiny model, greedy")
    print("| contender | rows/s | vs one at a time |\n| --- | --- | --- |")
    print(f"| one-row generate loop | {len(rows) / single_s:.1f} | 1.00× |")
    print(f"| ft eval, batches of {args.batch} | {len(rows) / batched_s:.1f} | {single_s / batched_s:.2f}× |")
    print(f"outputs equal: {same} of {len(rows)}")
    if same != len(rows) and not torch.cuda.is_available():  # exact on CPU (fp32); bf16 kernels on a GPU may differ
        sys.exit(1)


if __name__ == "__main__":
    main()
