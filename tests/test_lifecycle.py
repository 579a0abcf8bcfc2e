"""A run's life around its steps: a finished run left alone, SIGINT/SIGTERM, a full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import crash_harness as harness
from conftest import run_ft


@pytest.fixture
def run_dir(tmp_path: Path, tiny_model_dir) -> Path:
    from train_helpers import alpaca_rows

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(48)))
    return harness.project(tmp_path / "run", tiny_model_dir("llama"), data)


@pytest.mark.slow
def test_a_finished_run_is_left_as_it_is(run_dir: Path):
    assert run_ft("train", "cfg.yml", cwd=run_dir).returncode == 0
    out = run_dir / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    for _ in range(2):  # the same command again, as people do to check
        result = run_ft("train", "cfg.yml", cwd=run_dir)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "finished already" in result.stderr and "raise max_steps or num_epochs" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in out.glob("checkpoint-*")) == checkpoints
    # training further on purpose: a larger max_steps resumes from the last checkpoint
    result = run_ft("train", "cfg.yml", "--max-steps", "10", cwd=run_dir)
    assert result.returncode == 0 and "resuming from" in result.stderr, result.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 10


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_says_how_to_resume(signum, run_dir: Path, tmp_path: Path):
    cfg = run_dir / "cfg.yml"
    cfg.write_text(cfg.read_text().replace("max_steps: 8", "max_steps: 400").replace("save_steps: 2", "save_steps: 1000"))
    proc = harness.ftproc.FtProcess(["train", "cfg.yml"], run_dir, harness.env())
    metrics = run_dir / "out/metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signum)
    proc.wait(timeout=120)
    _, err = proc.output()
    assert proc.returncode == 128 + signum, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name} at step" in err and "Run the same command to resume" in err, err[-2000:]
    assert "Traceback" not in err
    step = int(err.split("at step ")[1].split(";")[0])
    from ft.train.checkpoints import is_complete

    assert is_complete(run_dir / f"out/checkpoint-{step}")
    assert not (run_dir / "out/summary.json").exists()  # not finished: the same command resumes
    result = run_ft("train", "cfg.yml", "--max-steps", str(step + 2), cwd=run_dir)
    assert result.returncode == 0 and f"resuming from out/checkpoint-{step}" in result.stderr, result.stderr[-2000:]


def _can_mount() -> bool:
    return os.geteuid() == 0 and subprocess.run(["which", "mount"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="needs root to mount a small tmpfs")
def test_a_full_disk_is_one_clear_error_and_the_last_checkpoint_stays(run_dir: Path, tmp_path: Path):
    """output_dir on a tmpfs with room for about one checkpoint: the second one runs out of space."""
    assert run_ft("train", "cfg.yml", cwd=run_dir).returncode == 0
    pages = sum(-(-p.stat().st_size // 4096) for p in (run_dir / "out/checkpoint-8").rglob("*") if p.is_file())
    small = tmp_path / "small"
    small.mkdir()
    room = (int(pages * 1.7) + 8) * 4096  # one checkpoint and the logs fit; a second one does not
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        cfg = run_dir / "cfg.yml"
        cfg.write_text(cfg.read_text().replace("output_dir: out", f"output_dir: {small}\ndataset_prepared_path: prepared"))
        result = run_ft("train", "cfg.yml", cwd=run_dir)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert "no space left on the device" in result.stderr and "checkpoint-2 is complete" in result.stderr, result.stderr[-2000:]
        from ft.train.checkpoints import is_complete, newest_checkpoint

        assert newest_checkpoint(small).name == "checkpoint-2" and is_complete(small / "checkpoint-2")
        assert not (small / "summary.json").exists()
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_out_of_memory_advice_names_only_what_is_not_done_yet():
    from ft.commands.train import oom_advice
    from ft.config import FtConfig

    def config(**keys):
        return FtConfig.model_validate({"model": {"base_model": "m"}, "data": {"datasets": [{"path": "d"}]}, **keys})

    plain = oom_advice(config())
    assert "gradient_checkpointing" in plain and "adapter: lora" in plain
    done = oom_advice(config(training={"gradient_checkpointing": True, "micro_batch_size": 1, "activation_offloading": True,
                                       "tiled_mlp": True},
                             adapter={"adapter": "qlora"}, quantization={"load_in_4bit": True}))
    for already in ("gradient_checkpointing", "micro_batch_size", "qlora", "activation_offloading", "tiled_mlp"):
        assert already not in done, done
    assert "sequence_len" in done
