"""The generated alpaca rows both benchmarks use (one definition, so their data cannot drift apart).

Output exp(N(3.6, 1.0)) words capped at 700; two rows in three with an input of exp(N(2.5, 1.2)) words
capped at 200; an instruction of exp(N(2.2, 0.5)) words. Deterministic for a seed.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

WORDS = (
    "the of and to in is was for on that with as by at from it this be are or his her their they we you one "
    "two three story model answer question water fire earth time people world city river mountain king queen "
    "cat dog red green blue small large good bad new old day night year made went came took gave found"
).split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def words(mu: float, sigma: float, cap: int) -> str:
        n = max(1, min(cap, int(math.exp(rng.gauss(mu, sigma)))))
        return " ".join(rng.choice(WORDS) for _ in range(n))

    with open(path, "w") as f:
        for _ in range(rows):
            f.write(json.dumps({
                "instruction": words(2.2, 0.5, 60),
                "input": words(2.5, 1.2, 200) if rng.random() < 2 / 3 else "",
                "output": words(3.6, 1.0, 700),
            }) + "\n")
