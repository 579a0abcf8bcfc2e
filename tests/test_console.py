"""What a person sees while `ft train` runs, through a pipe (a job log) and through a pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import math
import os
import pty
import struct
import termios
import re
import subprocess
import sys
from pathlib import Path

from train_helpers import make_config

KEYS = dict(max_steps=12, val_set_size=4, eval_steps=4, logging_steps=1)


def _evaluations(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]


def _check_common(text: str, out: Path) -> None:
    assert not re.search(r"\{'|': '[\d.]+'", text), text  # no dicts of quoted numbers
    assert "Setting accelerator to CPU" not in text and "Loading weights" not in text, text
    lines = [x for x in text.replace("\r", "\n").splitlines() if x.strip()]
    evals = [x for x in lines if x.startswith("eval   step ")]
    logged = _evaluations(out)
    assert len(evals) == len(logged) >= 3, (evals, logged)
    for line, record in zip(evals, logged):
        step, loss, ppl = re.fullmatch(r"eval   step (\d+): loss (\S+)  perplexity (\S+)", line.strip()).groups()
        assert int(step) == record["step"]
        assert math.isclose(float(loss), record["eval_loss"], rel_tol=5e-4)
        assert math.isclose(float(ppl), math.exp(record["eval_loss"]), rel_tol=5e-4)
    assert lines[-1].startswith("ft: done: 12 steps"), lines[-3:]


def test_a_job_log_reads_top_to_bottom(tmp_path: Path, tiny_model_dir):
    make_config(tmp_path, tiny_model_dir("llama"), **KEYS)
    result = subprocess.run([sys.executable, "-m", "ft", "train", "cfg.yml"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "\r" not in text and "\x1b[" not in text  # no redraws, no cursor movement
    _check_common(text, tmp_path / "out")
    progress = [x for x in text.splitlines() if x.startswith("train  step ")]
    assert progress and progress[-1].startswith("train  step 12/12 (100%)") and "tok/s" in progress[-1]


def test_a_terminal_gets_one_progress_bar(tmp_path: Path, tiny_model_dir):
    make_config(tmp_path, tiny_model_dir("llama"), **KEYS)
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal of 160 × 40
    proc = subprocess.Popen([sys.executable, "-m", "ft", "train", "cfg.yml"], cwd=tmp_path, stdout=child, stderr=child,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, close_fds=True)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "\x1b[A" not in text  # no nested bar (the Trainer's evaluation bar) leaving cursor-up residue
    bars = re.findall(r"train: +\d+%\|", text)
    assert bars and "12/12" in text and "loss " in text and "tok/s" in text, text[-2000:]
    assert "train  step " not in text  # the plain lines are for logs, not terminals
    _check_common(text, tmp_path / "out")
