#!/usr/bin/env python
"""Soak test of crash safety: many SIGKILLs of `ft train` (and `ft merge-lora`) at random moments.

    python scripts/soak_kills.py [--trials 100] [--kills 3] [--seed 0]

Each trial kills a run `--kills` times at random phases (start-up and data preparation, steps, checkpoint
writes, the final save; see tests/crash_harness.py), runs it to the end, and compares the adapter with an
uninterrupted run's. Prints one line per trial and a total; exits 1 on the first difference or failed run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import crash_harness as harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.update(harness.env())  # the runs' environment, so that they fork from one server (tests/ftproc.py)

    from ft.tiny import make_tiny_model
    from train_helpers import alpaca_rows

    root = Path(tempfile.mkdtemp(prefix="ft-soak-"))
    model = make_tiny_model(root / "model")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(48)))
    reference = harness.project(root / "reference", model, data)
    assert harness.run(reference, "train", "cfg.yml").returncode == 0
    want = harness.adapter(reference)
    total = 0
    for n in range(args.trials):
        seed = args.seed + n
        folder = harness.project(root / f"trial-{seed}", model, data)
        trial = harness.trial(folder, seed, args.kills, merge=seed % 4 == 0)
        killed = sum(k.killed for k in trial.kills)
        total += killed
        if trial.final:
            sys.exit(f"seed {seed}: the run after {trial.kills} failed:\n{trial.final}")
        worst = harness.difference(harness.adapter(folder), want)
        steps = harness.summary_of(folder)["steps"]
        print(f"seed {seed}: {killed} kills ({', '.join(k.phase for k in trial.kills if k.killed)}), "
              f"steps {steps}, largest difference {worst:.2e}")
        if worst >= 1e-6 or steps != 8:
            sys.exit(f"seed {seed}: the final adapter differs from the uninterrupted run's")
        harness.fresh(folder)
    print(f"{total} kills in {args.trials} trials: every run resumed to the uninterrupted result")


if __name__ == "__main__":
    main()
