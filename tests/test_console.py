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

import pytest

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


@pytest.mark.slow
def test_several_processes_say_each_thing_once(tmp_path: Path, tiny_model_dir):
    """Two processes (DDP, LoRA, gradient checkpointing): the libraries' warnings come from the first process
    only, none of them about ft's own calls (a deprecated checkpointing name, a DDP search for unused weights
    that LoRA never leaves), and no line of ft's is said twice."""
    make_config(tmp_path, tiny_model_dir("llama"), adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True,
                gradient_checkpointing=True, micro_batch_size=2, max_steps=3)
    # fresh interpreters, ranks too (tests/ftproc.py): what the libraries say as they are imported counts here
    result = subprocess.run([sys.executable, "-m", "ft", "train", "cfg.yml", "--num-processes", "2"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "FT_FRESH_PROCESSES": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert not [line for line in lines if "Warning" in line or "warnings.warn" in line or re.match(r"\[rank\d\]", line)], lines
    assert not [line for line in lines if line.startswith("ft[rank")], lines  # the other process had nothing to report
    said = [line for line in lines if line.startswith("ft: ")]
    assert len(said) == len(set(said)), said
    assert said[-1].startswith("ft: done: 3 steps")


@pytest.mark.slow
def test_merge_lora_says_what_it_does_and_how_far_it_is(tmp_path: Path, tiny_model_dir):
    """In a log: loading the base, the adapter's layers folded in (a plain progress line, no redraw), writing."""
    make_config(tmp_path, tiny_model_dir("llama"), adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True, max_steps=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run([sys.executable, "-m", "ft", "train", "cfg.yml"], cwd=tmp_path, capture_output=True, env=env).returncode == 0
    result = subprocess.run([sys.executable, "-m", "ft", "merge-lora", "cfg.yml"], cwd=tmp_path, capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr
    steps = [next(i for i, line in enumerate(lines) if words in line) for words in (
        "ft: loading the base model", "ft merge-lora: folding the adapter's layers: 14/14 (100%)",
        "ft: writing the merged model", "ft: merged ")]
    assert steps == sorted(steps), lines
