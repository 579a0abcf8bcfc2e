"""Several processes from one command (`ft train cfg.yml --num-processes N`, through torch's elastic launcher),
real processes over gloo on CPU: two processes train as one, two machines on loopback, a dead process ends the
job naming the rank, and data preparation waits past the collective timeout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

import ftproc
from compare import relative_difference
from conftest import DATA, SHARED
from train_helpers import make_config

pytestmark = pytest.mark.slow(seconds=20)  # several processes or many runs; its tests take about this long each

TESTS = Path(__file__).resolve().parent
LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}


def ft_launch(cwd: Path, *args: str, inject: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    """`ft train cfg.yml ARGS` to its end; `inject`: tests/inject/sitecustomize.py's FT_TEST_INJECT."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"FT_TEST_INJECT": inject} if inject else {})}
    return ftproc.run(["train", "cfg.yml", *args], cwd=cwd, env=env, timeout=timeout)


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


@pytest.mark.slow(seconds=38)
def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path: Path, tiny_model_dir):
    """1 process × micro batch 4 against 2 processes × micro batch 2: the same rows per step (accelerate gives
    rank r every r-th batch of the one sampler), the loss averaged over both ranks' tokens. The two processes are
    asked for as Axolotl's Ray example asks (`use_ray: true`, `ray_num_workers: 2`: ft's `num_processes`), so a
    plain `ft train cfg.yml` launches them."""
    keys = dict(max_steps=4, learning_rate=0.01, optimizer="adamw_torch", **LORA)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    make_config(tmp_path / "one", tiny_model_dir("llama"), micro_batch_size=4, **keys)
    make_config(tmp_path / "two", tiny_model_dir("llama"), micro_batch_size=2, use_ray=True, ray_num_workers=2, **keys)
    one = ft_launch(tmp_path / "one")
    two = ft_launch(tmp_path / "two")
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "distributed: 2 processes, DDP" in two.stderr and "launching 2 processes" in two.stderr
    a, b = _losses(tmp_path / "one/out"), _losses(tmp_path / "two/out")
    assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)
    assert relative_difference(_adapter(tmp_path / "two/out"), _adapter(tmp_path / "one/out")) < 1e-3


def test_the_ranks_run_forked_from_the_workers_fork_server_or_fresh_when_asked(tmp_path: Path, tiny_model_dir):
    """The suite's two-rank runs cost a run's work, not two interpreters' imports: each rank torchrun starts
    hands itself to the pytest worker's fork server (tests/inject/sitecustomize.py, tests/ftproc.py), and with
    FT_FRESH_PROCESSES=1 runs as torchrun's own child instead."""
    make_config(tmp_path, tiny_model_dir("llama"), micro_batch_size=2, max_steps=1, **LORA)
    server = ftproc.server_pid()
    if server is None:
        pytest.skip("FT_FRESH_PROCESSES=1: every run is a fresh interpreter")
    parents = {}
    for fresh in ("0", "1"):
        record = tmp_path / f"record-{fresh}"
        record.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FT_TEST_INJECT": "whoami:0:0", "FT_TEST_RECORD": str(record),
               **({"FT_FRESH_PROCESSES": "1"} if fresh == "1" else {})}
        refused = ftproc.differs(env, ftproc.server_env())  # what would make the server answer "fresh"
        assert (refused == "FT_FRESH_PROCESSES=1") if fresh == "1" else not refused, refused
        result = ftproc.run(["train", "cfg.yml", "--num-processes", "2", "--output-dir", str(tmp_path / f"out-{fresh}")],
                            cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        who = [json.loads((record / f"who-rank-{rank}.json").read_text()) for rank in (0, 1)]
        assert who[0]["pid"] != who[1]["pid"]
        parents[fresh] = {w["ppid"] for w in who}
    assert parents["0"] == {server}, parents
    assert len(parents["1"]) == 1 and server not in parents["1"], parents  # torchrun's agent


@pytest.mark.skipif(not (SHARED / "seed-configs").is_dir(), reason="../shared/seed-configs is not here")
def test_the_seeds_zero1_recipe_runs_on_two_processes_from_the_cli(tmp_path: Path, tiny_model_dir):
    """llama3_squad_deepspeed.yml with ZeRO1.json, launched as the seed did (`accelerate launch train.py
    --deepspeed=ZeRO1.json`: ft takes the same flag), hub names swapped for local ones. The seed's JSON spells
    its first key `ZeRO_optimization`, which DeepSpeed ignores (the seed ran without ZeRO): ft says so before
    starting any process, and runs ZeRO-1 once the key is spelt as it suggests."""
    import shutil

    shutil.copy(SHARED / "seed-configs/llama3_squad_deepspeed.yml", tmp_path / "cfg.yml")
    shutil.copy(SHARED / "seed-configs/ZeRO1.json", tmp_path / "ZeRO1.json")
    args = ("--num-processes", "2", "--deepspeed", "ZeRO1.json", "--base-model", str(tiny_model_dir("llama")),
            "--set", f"datasets.0.path={DATA / 'squad.jsonl'}", "--output-dir", str(tmp_path / "out"), "--max-steps", "2")
    result = ft_launch(tmp_path, *args)
    assert result.returncode == 2 and "did you mean `zero_optimization`" in result.stderr, result.stderr[-3000:]
    assert "launching" not in result.stderr
    (tmp_path / "ZeRO1.json").write_text((tmp_path / "ZeRO1.json").read_text().replace("ZeRO_optimization", "zero_optimization"))
    result = ft_launch(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "distributed: 2 processes, DeepSpeed ZeRO stage 1" in result.stderr
    assert json.loads((tmp_path / "out/summary.json").read_text())["steps"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_on_loopback_train_together(tmp_path: Path, tiny_model_dir):
    """Two `ft train --num-machines 2` commands, one process each, as on two machines (each its own folder)."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        folder = tmp_path / f"machine{rank}"
        folder.mkdir()
        make_config(folder, tiny_model_dir("llama"), micro_batch_size=2, max_steps=3, **LORA)
        procs.append(ftproc.FtProcess(["train", "cfg.yml", "--num-processes", "1", "--num-machines", "2", "--machine-rank",
                                       str(rank), "--main-process-ip", "127.0.0.1", "--main-process-port", port],
                                      cwd=folder, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    codes = [p.wait(300) for p in procs]
    outputs = [p.output() for p in procs]
    assert codes == [0, 0], [o[1][-3000:] for o in outputs]
    assert "distributed: 2 processes, DDP" in outputs[0][1]
    assert json.loads((tmp_path / "machine0/out/summary.json").read_text())["steps"] == 3  # rank 0 saves


@pytest.mark.parametrize("kind, code, said", [
    ("raise", 1, "rank 1: RuntimeError: injected failure"),
    ("config", 2, "rank 1: rows.jsonl:7: injected data mistake"),
    ("kill", 1, "rank 1 was killed by signal 9"),
], ids=["an exception", "a data mistake", "SIGKILL"])
def test_a_dead_process_ends_the_whole_job_naming_its_rank(kind, code, said, tmp_path: Path, tiny_model_dir):
    make_config(tmp_path, tiny_model_dir("llama"), micro_batch_size=2, max_steps=50, save_steps=1, **LORA)
    started = time.monotonic()
    result = ft_launch(tmp_path, "--num-processes", "2", inject=f"{kind}:1:3", timeout=180)
    took = time.monotonic() - started
    assert result.returncode == code, result.stderr[-4000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ft: error: ") and said in last, result.stderr[-4000:]
    assert "ChildFailedError" not in result.stderr  # torchrun's report is left out
    assert took < 90, took  # the survivor did not wait out a collective timeout (30 min)


@pytest.mark.slow(seconds=43)
def test_sigterm_with_a_peer_gone_exits_at_once_naming_the_checkpoint(tmp_path: Path, tiny_model_dir):
    """Rank 1 freezes at step 3 (a lost peer); rank 0 waits in the step's collective, where Python's signal
    handler cannot run. SIGTERM to ft: rank 0's watcher finds its peer silent within seconds and exits without
    trying to save (a checkpoint needs every process), naming the checkpoint that stands."""
    make_config(tmp_path, tiny_model_dir("llama"), micro_batch_size=2, max_steps=50, save_steps=1, **LORA)
    proc = ftproc.FtProcess(["train", "cfg.yml", "--num-processes", "2"], cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "FT_TEST_INJECT": "freeze:1:3"})
    deadline = time.monotonic() + 120
    while not (tmp_path / "out/checkpoint-2/ft_complete.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # rank 1 is frozen at step 3 by now, rank 0 waits in its collective
    started = time.monotonic()
    proc.send_signal(15)
    proc.wait(120)
    _, stderr = proc.output()
    assert proc.returncode != 0 and time.monotonic() - started < 60, stderr[-3000:]
    assert "another process of this run is gone: stopping without saving" in stderr, stderr[-3000:]
    assert f"checkpoint-2 in {tmp_path / 'out'} stands" in stderr, stderr[-3000:]
    assert not (tmp_path / "out/checkpoint-3").exists()


def test_data_preparation_waits_past_the_collective_timeout(tmp_path: Path, tiny_model_dir):
    """One process prepares (8 s here) while the other waits on a file lock, not in a collective: a 3 s
    ddp_timeout does not end the run."""
    make_config(tmp_path, tiny_model_dir("llama"), micro_batch_size=2, max_steps=2, ddp_timeout=3, **LORA)
    result = ft_launch(tmp_path, "--num-processes", "2", inject="slow_prepare:0:0")
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((tmp_path / "out/summary.json").read_text())["steps"] == 2
