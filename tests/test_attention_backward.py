"""`grouped_attention_backward` (ft.model.attention_backward): each attention layer's backward pass runs a group of
key/value heads at a time, each group's output recomputed with the kernel's forward. The gradients are the whole
call's on every tiny architecture, LoRA, QLoRA and full fine-tuning alike, with the kernel's backward run once per
group; the plan counts a group's share of the flash kernel's workspace and the pieces ft holds beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compare import relative_difference
from conftest import DATA, run_ft
from test_selective_checkpointing import METHODS, _kernel_forwards, _step

ARCHS = ["llama", "qwen2", "mistral", "gemma2", "phi3"]


def _kernel_backwards(calls) -> int:
    return sum(n for op, n in calls.items() if ("attention" in op or "attn" in op) and "backward" in op)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", ARCHS)
def test_the_gradients_are_the_whole_calls_with_one_backward_per_group(arch, method, tmp_path: Path, tiny_model_dir, caplog):
    """One packed batch (fp32, CPU: sdpa row by row) with and without the grouped backward: the same loss and
    gradients; the tiny models' 2 key/value heads make 2 groups, so the kernel's backward runs twice as often and its
    forward once more per group. Gemma-2's soft-capped scores go through its own eager attention, left whole (and
    the log says so)."""
    from ft.config.training import grouped_backward_calls

    model_dir = tiny_model_dir(arch)
    keys = METHODS[method]
    with caplog.at_level("INFO", logger="ft"):
        loss, grads, calls, model = _step(tmp_path / "grouped", model_dir, grouped_attention_backward=True, **keys)
    assert "run their backward in 2 calls of 1 key/value heads" in caplog.text
    assert ("soft-capping), which only its own eager attention computes here" in caplog.text) is (arch == "gemma2")
    whole_loss, whole_grads, whole_calls, _ = _step(tmp_path / "whole", model_dir, **keys)
    assert abs(loss - whole_loss) <= 1e-6 * abs(whole_loss)
    assert grads.keys() == whole_grads.keys() and relative_difference(grads, whole_grads) < 1e-5
    groups = grouped_backward_calls(model.config.num_key_value_heads)
    assert groups == 2
    forwards, whole_forwards = sum(_kernel_forwards(calls).values()), sum(_kernel_forwards(whole_calls).values())
    if arch == "gemma2":
        assert not whole_forwards and not forwards and not _kernel_backwards(calls)
    else:
        assert whole_forwards and _kernel_backwards(whole_calls) == whole_forwards
        assert _kernel_backwards(calls) == groups * whole_forwards and forwards == (1 + groups) * whole_forwards


def test_with_selective_checkpointing_the_kept_forward_is_reused_and_only_the_groups_recompute(tmp_path: Path, tiny_model_dir):
    """selective_checkpointing keeps the attention kernel's forward outputs of each layer; with the grouped backward
    too, the layer's recompute reuses them (the kernel's forward runs once a layer, then once a group in the
    backward pass) and the gradients are plain checkpointing's."""
    keys = {"adapter": "lora", "lora_target_linear": True, "gradient_checkpointing": True}
    model_dir = tiny_model_dir("llama")
    _, grads, calls, _ = _step(tmp_path / "both", model_dir, selective_checkpointing=True, grouped_attention_backward=True, **keys)
    _, plain_grads, _, _ = _step(tmp_path / "plain", model_dir, **keys)
    _, _, none_calls, _ = _step(tmp_path / "none", model_dir, adapter="lora", lora_target_linear=True)
    once = sum(_kernel_forwards(none_calls).values())
    assert once and sum(_kernel_forwards(calls).values()) == 3 * once and _kernel_backwards(calls) == 2 * once
    assert relative_difference(grads, plain_grads) < 1e-5


@pytest.mark.parametrize("heads, kv_heads, groups", [(8, 2, 2), (12, 3, 3), (16, 16, 8), (6, 1, 1), (24, 12, 6)])
@pytest.mark.parametrize("keys_before", [False, True])
@pytest.mark.parametrize("window", [None, 7])
def test_the_attention_function_gives_the_whole_calls_gradients(heads, kv_heads, groups, keys_before, window):
    """ft.model.packed_attention.attend on rows of several lengths (with keys before the queries, as context
    parallelism's slices have them; with a sliding window), grouped and whole: the same output and gradients in fp32,
    the largest divisor of the key/value heads up to 8 as the groups, and no gradient for an input without one."""
    from ft.config.training import grouped_backward_calls
    from ft.model.packed_attention import attend

    assert grouped_backward_calls(kv_heads) == groups
    gen = torch.Generator().manual_seed(heads * 100 + kv_heads)
    rows, before = [37, 1, 90, 12], [5, 0, 30, 2] if keys_before else [0, 0, 0, 0]
    keys = [n + b for n, b in zip(rows, before)]
    cu = torch.tensor([0, *torch.tensor(rows).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(keys).cumsum(0).tolist()], dtype=torch.int32) if keys_before else None
    q = torch.randn(sum(rows), heads, 16, generator=gen).requires_grad_()
    k = torch.randn(sum(keys), kv_heads, 16, generator=gen)  # frozen: no gradient asked
    v = torch.randn(sum(keys), kv_heads, 16, generator=gen).requires_grad_()
    upstream = torch.randn(sum(rows), heads, 16, generator=gen)
    results = []
    for grouped in (False, True):
        out = attend(q, k, v, cu, max(rows), 0.25, window, cu_k=cu_k, longest_k=max(keys), grouped=grouped)
        results.append((out, *torch.autograd.grad(out, (q, v), upstream)))
        if grouped:
            assert out.grad_fn is not None and type(out.grad_fn).__name__ == "GroupedBackwardBackward"
    for got, want in zip(results[1], results[0]):
        assert relative_difference(got, want) < 1e-6


def test_the_recompute_runs_under_the_forwards_autocast():
    """fp32 q, k and v under bf16 autocast (the Trainer's bf16 on a model whose activations are fp32): the kernel
    computes in bf16 in the forward, and so in each group's recompute, whose gradients are then the whole call's."""
    from ft.model.packed_attention import attend

    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(64, h, 16, generator=gen).requires_grad_() for h in (4, 2, 2))
    cu, upstream = torch.tensor([0, 40, 64], dtype=torch.int32), torch.randn(64, 4, 16, generator=gen)
    results = []
    for grouped in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attend(q, k, v, cu, 40, 0.25, None, grouped=grouped)
        assert out.dtype == torch.bfloat16
        results.append(torch.autograd.grad(out, (q, k, v), upstream.to(out.dtype)))
    assert relative_difference(results[1], results[0]) < 1e-6


def test_without_gradients_the_attention_runs_as_before():
    """Under no_grad (evaluation, generation) the grouped attention is the plain kernel call."""
    from ft.model.packed_attention import attend

    q, k, v = torch.randn(10, 4, 8), torch.randn(10, 2, 8), torch.randn(10, 2, 8)
    cu = torch.tensor([0, 10], dtype=torch.int32)
    with torch.no_grad():
        out = attend(q.requires_grad_(), k, v, cu, 10, 0.3, None, grouped=True)
    assert out.grad_fn is None and torch.equal(out, attend(q.detach(), k, v, cu, 10, 0.3, None))


def test_flash_attn_with_the_grouped_backward_is_refused_with_its_fix(tmp_path: Path):
    (tmp_path / "cfg.yml").write_text("base_model: m\ndatasets:\n  - path: d.jsonl\nflash_attention: true\n"
                                      "grouped_attention_backward: true\n")
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and "remove `flash_attention` / `attn_implementation`" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _plan(tmp_path: Path, shape_file: str, **keys):
    import yaml

    from ft.commands.config import load
    from ft.plan.estimate import estimate
    from ft.plan.shapes import read_shape

    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text((DATA / "model_configs" / shape_file).read_text())
    body = {"base_model": str(model), "datasets": [{"path": "d.jsonl"}], "sequence_len": 131072, "adapter": "qlora",
            "load_in_4bit": True, "lora_target_linear": True, "gradient_checkpointing": True, "activation_offloading": True,
            "tiled_mlp": True, "chunked_rms_norm": True, "bf16": True, **keys}
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(body))
    cfg = load(tmp_path / "cfg.yml")
    return cfg, read_shape(str(model)), estimate(cfg, read_shape(str(model)))


def test_the_plan_counts_a_groups_share_of_the_kernels_workspace_and_what_ft_holds_beside_it(tmp_path: Path):
    """Llama 3.1 8B, one 131,072-token row, QLoRA with offloading, tiled MLP and chunked norms: the grouped backward
    lowers the layer's backward by seven eighths of the flash kernel's fp32 query-gradient accumulator and per-head key
    and value gradients, less what one group's pieces hold; the plan then fits 24 GiB (it did not), and `ft plan`
    offers the key. Padded batches (sdpa) run their backward whole: nothing changes."""
    from ft.plan.advice import ranked_changes
    from ft.plan.estimate import IN_FLIGHT, flash_workspace, grouped_pieces

    cfg, shape, whole = _plan(tmp_path, "llama3-8b.json")
    grouped_cfg, _, grouped = _plan(tmp_path, "llama3-8b.json", grouped_attention_backward=True)
    tokens, qd = 131072, 32 * 128
    assert flash_workspace(shape, 2, cfg) == qd * 4 + 2 * qd * 2 and flash_workspace(shape, 2, grouped_cfg) == (qd * 4 + 2 * qd * 2) // 8
    assert grouped_pieces(shape, 2, cfg) == 0 and grouped_pieces(shape, 2, grouped_cfg) > 0
    saved = tokens * (flash_workspace(shape, 2, cfg) - flash_workspace(shape, 2, grouped_cfg) - grouped_pieces(shape, 2, grouped_cfg))
    assert whole.parts[IN_FLIGHT] - grouped.parts[IN_FLIGHT] == saved > 2.5 * 2**30
    gib24 = 24 * 2**30
    assert whole.peak > gib24 >= grouped.peak
    assert "grouped_attention_backward: true" in [c.what for c in ranked_changes(cfg, shape, 1, whole)]
    _, _, padded = _plan(tmp_path, "llama3-8b.json", padding_free=False)
    _, _, padded_grouped = _plan(tmp_path, "llama3-8b.json", padding_free=False, grouped_attention_backward=True)
    assert padded_grouped.parts == padded.parts and padded.parts[IN_FLIGHT] == whole.parts[IN_FLIGHT]
