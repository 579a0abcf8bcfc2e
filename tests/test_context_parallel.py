"""Context parallelism (`context_parallel_size`, Axolotl's ALST examples) on two CPU processes: each micro batch of
the group split in two along the sequence, keys and values gathered in every attention layer; the run trains as
one process on the same rows does (packed and padded batches), and what it cannot split is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ftproc
from compare import relative_difference
from train_helpers import make_config

pytestmark = pytest.mark.slow(seconds=25)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}
STEPS = {"max_steps": 3, "learning_rate": 0.01, "optimizer": "adamw_torch"}


def _train(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = ftproc.run(["train", "cfg.yml", *args], cwd=folder, env=env, timeout=300)
    if result.returncode != 0 and "terminate called without an active exception" in result.stderr and "ft: done:" in result.stderr:
        result = subprocess.CompletedProcess(result.args, 0, result.stdout, result.stderr)  # gloo's teardown abort
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _losses(out: Path, key: str = "loss") -> list[float]:
    return [r[key] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in r]


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_two_processes_splitting_each_sequence_train_as_one_process(packing: bool, tmp_path: Path, tiny_model_dir):
    """1 process against a context-parallel group of 2, micro batch 2: the group draws the same micro batches as
    the one process and splits each in two, so each process computes half of its tokens; losses and adapter
    agree. The packed group runs its attention's backward by groups of heads too (grouped_attention_backward)."""
    keys = dict(sample_packing=packing, val_set_size=4, eval_steps=3, **STEPS, **LORA)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    make_config(one, tiny_model_dir("llama"), micro_batch_size=2, **keys)
    make_config(two, tiny_model_dir("llama"), micro_batch_size=2, context_parallel_size=2,
                **({"grouped_attention_backward": True} if packing else {}), **keys)
    _train(one)
    result = _train(two, "--num-processes", "2")
    assert "context parallelism: groups of 2 processes" in result.stderr, result.stderr[-3000:]
    assert ("run their backward in 2 calls" in result.stderr) is packing and "runs whole" not in result.stderr
    a, b = _losses(one / "out"), _losses(two / "out")
    assert len(a) == len(b) == 3 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), (a, b)
    a, b = _losses(one / "out", "eval_loss"), _losses(two / "out", "eval_loss")  # evaluation splits its batches too
    assert len(a) == len(b) == 1 and abs(a[0] - b[0]) <= 1e-4 * abs(a[0]), (a, b)
    from safetensors.torch import load_file

    adapter = load_file(str(two / "out" / "adapter_model.safetensors"))
    assert relative_difference(adapter, load_file(str(one / "out" / "adapter_model.safetensors"))) < 1e-3


def test_the_split_gives_each_process_its_slice_and_the_attention_its_documents(tmp_path: Path, tiny_model_dir):
    """In one process (a group of 1): the flat sequence, the labels shifted within each row, the documents."""
    import torch
    import torch.distributed as dist

    from ft.train import context_parallel as CP

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        cp = CP.ContextParallel(1)
        ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
        mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
        labels = torch.tensor([[-100, 6, 7, -100], [-100, 9, -100, -100]])
        got = cp.split({"input_ids": ids, "attention_mask": mask, "labels": labels})
        assert got["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
        assert got["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
        assert got["labels"].tolist() == [[6, 7, -100, 9, -100]]  # shifted within each row, never across
        assert CP.STATE["cu_q"] == CP.STATE["cu_k"] == [0, 3, 5] and CP.STATE["first"] == 0  # its two documents
    finally:
        dist.destroy_process_group()


def test_what_cannot_be_split_is_refused(tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    with pytest.raises(ConfigError, match="context parallelism splits the sequences of supervised training"):
        make_config(tmp_path, tiny_model_dir("llama"), context_parallel_size=2, rl="dpo",
                    datasets=[{"path": "pairs.jsonl", "type": "preference"}])
    make_config(tmp_path, tiny_model_dir("llama"), context_parallel_size=2, **LORA)
    result = ftproc.run(["train", "cfg.yml"], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 2 and "launch a multiple of 2" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_each_slices_runs_attend_as_the_whole_sequences_document_mask(size: int, window, tmp_path: Path):
    """No processes: documents of 7, 1, 12 and 5 tokens and 5 of padding (30 tokens) cut in `size` slices; each
    slice's queries through `segments` and the per-run kernel (ft.model.packed_attention.per_row, the CPU path;
    test_gpu.py holds torch's varlen kernel to it) equal the rows of one dense attention over the whole sequence
    with a document-causal mask (and window), query heads reading kv head h // 2. Padding attends to itself."""
    import torch

    from ft.model.packed_attention import per_row
    from ft.train.context_parallel import segments

    torch.manual_seed(0)
    docs = [0] * 7 + [1] + [2] * 12 + [3] * 5 + [-1] * 5
    total, heads, kv_heads, dim = len(docs), 4, 2, 8
    q, k, v = torch.randn(total, heads, dim), torch.randn(total, kv_heads, dim), torch.randn(total, kv_heads, dim)
    d, i = torch.tensor(docs), torch.arange(total)
    allowed = (d[:, None] == d[None, :]) & (i[None, :] <= i[:, None])
    if window:
        allowed &= i[None, :] > i[:, None] - window
    scores = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(2, dim=1)) * 0.3
    want = torch.einsum("hqk,khd->qhd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), v.repeat_interleave(2, dim=1))
    length = total // size
    for start in range(0, total, length):
        cu_q, cu_k, first = segments(docs, start, length)
        assert cu_q[-1] == length and cu_k[-1] == start + length - first
        got = per_row(q[start:start + length], k[first:start + length], v[first:start + length], cu_q, length, 0.3,
                      window, cu_k=cu_k)
        assert torch.allclose(got, want[start:start + length], atol=1e-5), (start, float((got - want[start:start + length]).abs().max()))


@pytest.mark.parametrize("memory, layers, extra", [("none", 4, {}), ("checkpointing", 1, {}),
                                                  ("checkpointing", 2, {"gradient_checkpointing_layers": 2})])
def test_the_plan_counts_the_keys_and_values_a_slice_gathers(memory: str, layers: int, extra: dict, tmp_path: Path, mid_model):
    """Two processes split one document of 1,024 tokens (scripts/plan_accuracy.py's row, LoRA, fp32, hidden 512,
    4 layers, 4 kv heads of 64): the second's queries reach every key, the first's only its own 512. The second's
    peak of live tensor bytes exceeds the first's by the plan's part for the keys and values beyond a slice's own
    (every layer keeps them without checkpointing, the one recomputed with it, and when only the first two layers
    are checkpointed the last two, whose backward runs first), within 2%, beside what only this CPU keeps: sdpa's
    mask aligning the causal mask to the bottom right, in fp32 (a GPU's varlen kernel builds none)."""
    sys.path.insert(0, str(SCRIPTS))
    from plan_accuracy import row_config

    from ft.commands.config import load
    from ft.plan.estimate import estimate
    from ft.plan.shapes import read_shape

    path = row_config(mid_model, 1024, "lora", memory, tmp_path, False, context_parallel_size=2, **extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(SCRIPTS / "plan_accuracy.py"), "--one", str(path), "--to", str(tmp_path / "rows.jsonl")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    first, last = sorted(map(json.loads, (tmp_path / "rows.jsonl").read_text().splitlines()), key=lambda r: r["rank"])
    part = estimate(load(path), read_shape(str(mid_model)), 2).parts["gathered keys and values (context parallelism)"]
    assert part == layers * 2 * 512 * (4 * 64) * 4  # keys and values of the other 512 tokens, fp32
    mask = layers * 512 * 1024 * 4
    measured = last["measured_allocated"] - first["measured_allocated"]
    assert abs(part + mask - measured) <= 0.02 * measured, (part, mask, measured)


def test_ft_plan_says_a_gpus_share_of_a_split_micro_batch_and_what_a_single_gpu_cannot_split(tmp_path: Path, mid_model):
    """`ft plan --num-gpus 2` for context_parallel_size 2: the micro batch whole and each GPU's half, the gathered keys
    and values among the parts (in the figures' column); on one GPU, no split, and the note saying why."""
    import yaml

    from conftest import run_ft

    body = {"base_model": str(mid_model), "datasets": [{"path": "rows.jsonl"}], "sequence_len": 4096,
            "micro_batch_size": 1, "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "gradient_checkpointing": True,
            "context_parallel_size": 2, "output_dir": "out"}
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(body))
    two = run_ft("plan", "cfg.yml", "--num-gpus", "2", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert "micro batch of 4,096 tokens (every row at sequence_len), 2,048 per GPU (context parallelism)" in two.stdout
    part = next(line for line in two.stdout.splitlines() if "gathered keys and values" in line)
    peak = next(line for line in two.stdout.splitlines() if line.strip().startswith("peak"))
    assert part.index("iB") == peak.index("iB"), two.stdout
    one = run_ft("plan", "cfg.yml", "--json", cwd=tmp_path)
    report = json.loads(one.stdout)
    assert report["tokens_per_micro_batch"] == report["tokens_per_gpu"] == 4096
    assert "gathered keys and values (context parallelism)" not in report["parts"]
    assert any("needs a multiple of 2 GPUs (--num-gpus 2)" in n for n in report["notes"]), report["notes"]
