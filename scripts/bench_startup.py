#!/usr/bin/env python
"""Start-up time of `ft --help` and `ft validate` beside `python -c "import torch"` (the baseline).

    python scripts/bench_startup.py [--repeat 7] [--config examples/quickstart/config.yml]

Each command runs in a fresh process; the median wall time of the repetitions is printed. The target is
under 0.5 s for both ft commands, which must never import torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--config", default=str(ROOT / "examples/quickstart/config.yml"))
    args = parser.parse_args()
    commands = {
        "ft --help": [sys.executable, "-m", "ft", "--help"],
        "ft validate": [sys.executable, "-m", "ft", "validate", args.config],
        'python -c "import torch" (baseline)': [sys.executable, "-c", "import torch"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeat):  # interleaved, so drift on a busy machine hits all alike
        for name, cmd in commands.items():
            times[name].append(wall(cmd))
    print(f"| command | median wall s ({args.repeat} runs) | min s |")
    print("| --- | --- | --- |")
    for name, samples in times.items():
        print(f"| {name} | {statistics.median(samples):.3f} | {min(samples):.3f} |")


if __name__ == "__main__":
    main()
