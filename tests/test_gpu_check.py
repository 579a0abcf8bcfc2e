"""The GPU check's CPU smoke mode: every stage of scripts/gpu_check.sh runs its code here with the tiny model
and tiny sizes, so a typo or a broken import cannot waste the GPU machine's minutes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from bench_gpu import SHAPES  # noqa: E402

pytestmark = pytest.mark.slow(seconds=200)  # several processes or many runs; its tests take about this long each


def test_the_gpu_check_runs_every_stage_in_smoke_mode(tmp_path: Path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=1500,
                            env={**os.environ, "OUT": str(out), "PYTHON": sys.executable})
    summary = (out / "summary.log").read_text()
    assert result.returncode == 0, summary + result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("tests", "8b", "1b", "context", "plan", "preference", "eval", "distill", "methods"):
        assert f"{stage}: done" in summary, summary
    assert "skipped" in (out / "tests.log").read_text()  # the CUDA tests were collected (and skip here)
    one_b, eight_b = json.loads((out / "1b.json").read_text()), json.loads((out / "8b.json").read_text())
    baselines = {"padded Trainer", "tuned Trainer", "ft unpacked", "ft packed, 2 bins, PEFT's LoRA path"}
    assert set(one_b["tiny"]) - {"TRL packed"} == baselines | {"ft packed, 2 bins"}
    assert set(eight_b["tiny-qlora"]) - {"TRL packed"} == baselines | {"ft packed, 2 bins"}
    for size, log in (("tiny", "1b.log"), ("tiny-qlora", "8b.log")):  # TRL where it is installed, else said
        assert "TRL packed" in (one_b if size == "tiny" else eight_b)[size] or "TRL packed: skipped" in (out / log).read_text()
    rows = [*one_b["tiny"].values(), *eight_b["tiny-qlora"].values()]
    assert all(row["tokens_per_s"] > 0 and row["timed_steps"] == 2 and len(row["step_s"]) == 2 for row in rows)
    assert "real tokens/step" in (out / "8b.log").read_text() and "MFU datasheet" in (out / "8b.log").read_text()
    profile = eight_b["tiny-qlora"]["ft packed, 2 bins"]["profile"]  # one step by part (CPU ops here)
    assert profile["ms"]["matmul"] > 0 and profile["ms"]["attention"] > 0 and abs(sum(profile["share"].values()) - 1) < 1e-3
    assert "one step of ft packed, 2 bins, profiled" in (out / "8b.log").read_text()
    assert json.loads((out / "preference.json").read_text())["ft"]["real_tokens_per_s"] > 0
    assert json.loads((out / "distill.json").read_text())["ft"]["real_tokens_per_s"] > 0
    methods = json.loads((out / "methods.json").read_text())["rows"]
    assert [r["method"] for r in methods] == ["lora", "prompt_tuning"]
    assert all(r["tokens_per_s"] > 0 and 0 < r["share"] < 100 for r in methods)
    trials = json.loads((out / "context.json").read_text())["trials"]
    assert [(t["contender"], t["tokens"]) for t in trials] == [(k, 256) for k in ("ft-offload-tiled", "ft", "baseline", "ft-long", "ft-selective")]
    assert all(t["ok"] and t["missing_layers"] == 2 for t in trials)  # the tiny model's 2 layers standing for 4
    # one layer's tensors, gradients and AdamW states counted alike through ft's loading and the baseline's own
    ft_layer, baseline_layer = trials[1]["per_layer_gb"] * 2**30, trials[2]["per_layer_gb"] * 2**30
    assert abs(baseline_layer / ft_layer - 1) < 0.02, (ft_layer, baseline_layer)
    hidden, _, heads, kv, mlp, _ = SHAPES["tiny-qlora"]  # LoRA r=16 on every linear layer, fp32 on a CPU
    kv_width = kv * hidden // heads
    linears = [(hidden, hidden), (hidden, kv_width), (hidden, kv_width), (hidden, hidden), (hidden, mlp), (hidden, mlp), (mlp, hidden)]
    lora = sum(16 * (a + b) for a, b in linears) * 4 * 4  # the weight, its gradient, AdamW's two states
    base = sum(a * b for a, b in linears)  # 4 bits each, with their quantization state: under 16 bits
    assert lora + base / 2 < ft_layer < lora + 2 * base, (ft_layer, lora, base)
    assert "| ft-offload-tiled | 256 | yes | no GPU |" in (out / "context.log").read_text()
    assert all(t["planned_allocated_gb"] > 0 for t in (*trials[:2], *trials[3:]))  # ft plan beside each ft trial's peak
    assert "| ft-long | 256 | yes | no GPU |" in (out / "context.log").read_text()
    assert "| ft-selective | 256 | yes | no GPU |" in (out / "context.log").read_text()
    assert "outputs equal: 64 of 64" in (out / "eval.log").read_text()
    assert "× lm-eval" in (out / "eval.log").read_text()  # lm-eval is in the suite's environment
    plan = (out / "plan.log").read_text()
    assert all(f"| tiny | lora | {memory} | 128 |" in plan for memory in ("none", "offloading", "selective"))
    rows = [line for line in plan.splitlines() if line.startswith("| tiny | lora |")]
    assert len(rows) == 3 and all(re.search(r" MiB \| [+-]\d+\.\d% \|", row) for row in rows), plan  # measured on the CPU


@pytest.mark.slow(seconds=8)
def test_stages_runs_only_the_stages_named_and_refuses_an_unknown_one(tmp_path: Path):
    """A second command on the GPU machine runs the stages the first had no time left for (STAGES); here the
    cheapest stage (the CUDA tests, which skip)."""
    env = {**os.environ, "PYTHON": sys.executable, "STAGES": "tests", "CHECK_SECONDS": "100"}
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**env, "OUT": str(tmp_path / "one")})
    summary = (tmp_path / "one/summary.log").read_text()
    assert result.returncode == 0 and "tests: done" in summary, summary + result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["summary.log", "tests.log"]
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**env, "OUT": str(tmp_path / "two"), "STAGES": "plan contxt"})
    assert result.returncode == 2 and "no stage is called contxt" in result.stdout, result.stdout
