#!/usr/bin/env python
"""What `bf16: true` trains: the share of weights that one AdamW step changes, pure bf16 beside fp32 master
weights, on the same model, batch and gradients.

    python scripts/bench_precision.py [--lr 1e-5] [--steps 1 10]

Model: a random Llama (hidden 512, intermediate 1376, 4 layers) initialised as transformers does (normal,
std 0.02: the scale of a pretrained model's weights), the test tokenizer, one batch of alpaca rows. Each
contender takes N AdamW steps at the learning rate on that batch:
- pure bf16: the weights are bf16 and the optimizer updates them in bf16 (`bf16: full`);
- fp32 masters: fp32 weights, the forward in bf16 under autocast (`bf16: true`).
Printed: the share of weights whose stored value differs from the start, and the share whose bf16 value
(what the forward computes with) does: with fp32 masters small updates add up until the bf16 value moves.
An AdamW step moves every weight by about the learning rate; a bf16 weight w keeps only changes larger
than half its spacing, |w| / 256, so at lr 1e-5 pure bf16 loses the update of every weight above ~0.003.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def changed_share(steps: int, lr: float, pure: bool) -> tuple[float, float]:
    import torch

    from ft.tiny import build_model, build_tokenizer
    from train_helpers import fixed_batch

    tokenizer = build_tokenizer()
    model = build_model("llama", tokenizer, seed=0, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=8, initializer_range=0.02)
    if pure:
        model = model.to(torch.bfloat16)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    batch = fixed_batch(tokenizer)
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not pure):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    stored = seen = total = 0
    for n, p in model.named_parameters():
        stored += int((p.detach() != start[n]).sum())
        seen += int((p.detach().to(torch.bfloat16) != start[n].to(torch.bfloat16)).sum())
        total += p.numel()
    return stored / total, seen / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    print(f"share of weights changed by AdamW at lr {args.lr:g}")
    print(f"{'steps':>6} {'pure bf16':>10} {'fp32 masters: stored':>21} {'as bf16':>8}")
    for steps in args.steps:
        pure, _ = changed_share(steps, args.lr, True)
        stored, seen = changed_share(steps, args.lr, False)
        print(f"{steps:>6} {100 * pure:>9.1f}% {100 * stored:>20.1f}% {100 * seen:>7.1f}%")


if __name__ == "__main__":
    main()
