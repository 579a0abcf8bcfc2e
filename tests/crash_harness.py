"""Kill `ft` at random moments with SIGKILL, run it again to the end, and compare with an uninterrupted run.

Used by tests/test_crash.py (a fixed number of kills in the suite) and scripts/soak_kills.py (as many as
you like). Each kill waits for a phase of the run to show on disk, then a random moment more:
- start: imports, data preparation, model loading (a random time after the process starts);
- step: a random number of logged steps;
- checkpoint: a checkpoint folder appearing (kills land in or just after its writing);
- final: the final adapter appearing in output_dir (the final save).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ftproc  # noqa: E402

PHASES = ("start", "step", "checkpoint", "final")
CONFIG = """base_model: {model}
datasets:
  - path: {data}
    type: alpaca
sequence_len: 128
sample_packing: true
micro_batch_size: 2
max_steps: 8
save_steps: 2
save_total_limit: 2
val_set_size: 4
eval_steps: 4
learning_rate: 0.005
lr_scheduler: constant_with_warmup
warmup_steps: 3
adapter: lora
lora_target_linear: true
output_dir: out
use_tensorboard: false
"""


def ft(*args: str) -> list[str]:
    return [sys.executable, "-m", "ft", *args]


def run(folder: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`ft ARGS` in `folder` to its end, in a process of its own (tests/ftproc.py)."""
    return ftproc.run(list(args), folder, env(), timeout)


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "CUDA_VISIBLE_DEVICES": ""}


def project(folder: Path, model: Path, data: Path) -> Path:
    """A run folder: the config, pointing at the shared tiny model and data."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.yml").write_text(CONFIG.format(model=model, data=data))
    return folder


def _reached(folder: Path, phase: str, rng: random.Random, steps: int) -> bool:
    out = folder / "out"
    if phase == "step":
        metrics = out / "metrics.jsonl"
        return metrics.is_file() and len(metrics.read_text().splitlines()) >= steps
    if phase == "checkpoint":
        return any(out.glob("checkpoint-*"))
    if phase == "final":
        return (out / "adapter_model.safetensors").is_file()
    return True


@dataclass
class Kill:
    phase: str
    seconds: float  # after the process started
    killed: bool  # False when the run ended before the moment came


def run_and_kill(folder: Path, args: list[str], phase: str, rng: random.Random, timeout: float = 120) -> Kill:
    """Start `ft args` in `folder`, wait for `phase` and a random moment more, SIGKILL it."""
    proc = ftproc.FtProcess(args, folder, env())
    started = time.monotonic()
    steps = rng.randint(1, 6)
    # start: imports (in a fresh interpreter; a forked one has them), data preparation, model loading
    delay = rng.uniform(0.0, 4.0 if not proc.forked else 1.0) if phase == "start" else rng.uniform(0.0, 0.3)
    try:
        while proc.poll() is None and not _reached(folder, phase, rng, steps):
            if time.monotonic() - started > timeout:
                break
            time.sleep(0.005)
        deadline = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        return Kill(phase, time.monotonic() - started, killed)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.output()


@dataclass
class Trial:
    seed: int
    kills: list[Kill] = field(default_factory=list)
    final: str = ""  # the last run's stderr tail, when it failed


def adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "out/adapter_model.safetensors"))


def difference(a: dict, b: dict) -> float:
    from compare import relative_difference

    return relative_difference(a, b)


def trial(folder: Path, seed: int, kills: int, merge: bool = False) -> Trial:
    """`kills` SIGKILLs of `ft train` at random phases (and one of `ft merge-lora` when `merge`), then runs
    to the end. Raises when a run after a kill fails (a checkpoint that cannot be loaded, say)."""
    rng = random.Random(seed)
    result = Trial(seed)
    for _ in range(kills):
        result.kills.append(run_and_kill(folder, ["train", "cfg.yml"], rng.choice(PHASES), rng))
    done = run(folder, "train", "cfg.yml")
    if done.returncode != 0:
        result.final = done.stderr[-3000:]
        return result
    if merge:
        result.kills.append(run_and_kill(folder, ["merge-lora", "cfg.yml"], "start", rng))
        done = run(folder, "merge-lora", "cfg.yml")
        if done.returncode != 0:
            result.final = done.stderr[-3000:]
    return result


def summary_of(folder: Path) -> dict:
    return json.loads((folder / "out/summary.json").read_text())


def fresh(folder: Path) -> None:
    shutil.rmtree(folder / "out", ignore_errors=True)
