"""`selective_checkpointing`: the layers gradient checkpointing recomputes keep their attention kernel's outputs
(ft.model.selective). The backward pass then runs the attention kernel's forward once per layer, as without
checkpointing, and every other op of the layer twice, as with plain checkpointing; the gradients are those of
plain checkpointing on every tiny architecture, LoRA, QLoRA and full fine-tuning alike."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from compare import relative_difference
from conftest import DATA, run_ft
from train_helpers import build, make_config

CONFIGS = DATA / "model_configs"  # public configs: Llama-3-8B, Gemma-2-27B, ...
ARCHS = ["llama", "qwen2", "mistral", "gemma2", "phi3"]
METHODS = {"lora": {"adapter": "lora", "lora_target_linear": True},
           "qlora": {"adapter": "qlora", "load_in_4bit": True, "lora_target_linear": True}, "full": {}}


class OpCalls(TorchDispatchMode):
    """How many times each op runs, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.name()] += 1
        return func(*args, **(kwargs or {}))


def _step(folder: Path, model_dir: Path, **keys) -> tuple[float, dict, Counter, object]:
    """One packed batch through ft's own trainer, forward and backward, in fp32: (the loss, the trainable weights'
    gradients, the ops run, the model)."""
    folder.mkdir()
    trainer, model, _ = build(make_config(folder, model_dir, sample_packing=True, sequence_len=256, bf16=False, **keys))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: made non-zero so that the layers' inputs reach A's gradients
            p.data.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    batch = next(iter(trainer.get_train_dataloader()))
    batch.pop("ft_real_tokens")
    model.train()
    with OpCalls() as ops:
        loss = trainer.compute_loss(model, batch)
        loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, ops.calls, model


def _kernel_forwards(calls: Counter) -> Counter:
    """The attention kernels' forward calls: sdpa's (aten::_scaled_dot_product_*_attention*), torch's varlen
    (torch_attn::_varlen_attn) and flash-attn's (flash_attn::_flash_attn_*_forward)."""
    return Counter({op: n for op, n in calls.items() if ("attention" in op or "attn" in op) and "backward" not in op})


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", ARCHS)
def test_attention_runs_once_and_the_gradients_are_plain_checkpointings(arch, method, tmp_path: Path, tiny_model_dir):
    model_dir = tiny_model_dir(arch)
    keys = METHODS[method]
    loss, grads, calls, _ = _step(tmp_path / "selective", model_dir, gradient_checkpointing=True,
                                  selective_checkpointing=True, **keys)
    plain_loss, plain_grads, plain_calls, _ = _step(tmp_path / "plain", model_dir, gradient_checkpointing=True, **keys)
    _, _, none_calls, _ = _step(tmp_path / "none", model_dir, **keys)
    assert abs(loss - plain_loss) <= 1e-6 * abs(plain_loss)
    assert grads.keys() == plain_grads.keys() and relative_difference(grads, plain_grads) < 1e-5
    kernels = _kernel_forwards(none_calls)
    if arch == "gemma2":  # soft-capped scores: the model's own eager attention, no kernel to keep, all recomputed
        assert not kernels and not _kernel_forwards(calls) and calls["aten::softmax"] == plain_calls["aten::softmax"]
    else:
        assert kernels and _kernel_forwards(calls) == kernels
        assert _kernel_forwards(plain_calls) == Counter({op: 2 * n for op, n in kernels.items()})
    for op in ("aten::mm", "aten::mul.Tensor", "aten::rsqrt"):  # the rest of each layer recomputed as before
        assert calls[op] == plain_calls[op] > none_calls[op], (op, calls[op], plain_calls[op], none_calls[op])


def test_the_sliding_window_layers_recompute_their_attention_unless_asked(tmp_path: Path, caplog):
    """A Qwen2 of four layers with sliding windows of 64 tokens from its third layer on (transformers'
    max_window_layers): only its first two layers keep their attention outputs; with
    selective_checkpointing_sliding_window every layer does; the gradients are plain checkpointing's."""
    from ft.model.selective import layer_type
    from ft.tiny import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "model", arch="qwen2", num_hidden_layers=4, use_sliding_window=True,
                                sliding_window=64, max_window_layers=2)
    keys = {"adapter": "lora", "lora_target_linear": True, "gradient_checkpointing": True}
    with caplog.at_level("INFO", logger="ft"):
        _, grads, calls, model = _step(tmp_path / "full-layers", model_dir, selective_checkpointing=True, **keys)
    _, all_grads, all_calls, _ = _step(tmp_path / "every-layer", model_dir, selective_checkpointing=True,
                                       selective_checkpointing_sliding_window=True, **keys)
    _, plain_grads, plain_calls, _ = _step(tmp_path / "plain", model_dir, **keys)
    types = [layer_type(m) for m in model.base_model.model.model.layers]
    assert types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    per_layer = sum(_kernel_forwards(all_calls).values()) // len(types)  # every layer's kernel calls, kept
    assert per_layer and sum(_kernel_forwards(all_calls).values()) == per_layer * len(types)
    assert sum(_kernel_forwards(calls).values()) == per_layer * (2 + 2 * 2)
    assert sum(_kernel_forwards(plain_calls).values()) == per_layer * 2 * len(types)
    assert relative_difference(grads, plain_grads) < 1e-5 and relative_difference(all_grads, plain_grads) < 1e-5
    assert "2 of 4 recomputed layers keep their attention outputs" in caplog.text


@pytest.mark.parametrize("given, said", [
    ("selective_checkpointing: true\n", "turn on `gradient_checkpointing` too"),
    ("gradient_checkpointing: true\nselective_checkpointing_sliding_window: true\n", "turn on `selective_checkpointing` too"),
    ("gradient_checkpointing: true\nselective_checkpointing:\n  save: [attention, aten::mm]\n",
     "saving the outputs of `aten::mm` is not supported by ft yet"),
    ("gradient_checkpointing: true\nselective_checkpointing:\n  offload: true\n", "`offload: true` is not supported by ft yet"),
    ("gradient_checkpointing: true\nselective_checkpointing:\n  recompute_layer_types: [full_attention]\n",
     "`recompute_layer_types` takes sliding_attention and chunked_attention"),
])
def test_what_selective_checkpointing_cannot_do_is_said_with_its_fix(given, said, tmp_path: Path):
    (tmp_path / "cfg.yml").write_text("base_model: m\ndatasets:\n  - path: d.jsonl\n" + given)
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and said in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("given, sliding", [("true", False), ("\n  save: [attention]", False),
                                            ("\n  save_sliding_window: true", True), ("\n  recompute_layer_types: []", True),
                                            ("\n  recompute_layer_types: [sliding_attention]", False)])
def test_axolotls_selective_checkpointing_reads_as_fts_keys(given, sliding, tmp_path: Path):
    from ft.commands.config import load

    (tmp_path / "cfg.yml").write_text(f"base_model: m\ndatasets:\n  - path: d.jsonl\ngradient_checkpointing: true\n"
                                      f"selective_checkpointing: {given}\n")
    t = load(tmp_path / "cfg.yml").training
    assert t.selective_checkpointing is True and t.selective_checkpointing_sliding_window is sliding


def test_selective_checkpointing_raises_a_whole_steps_peak_by_the_attention_outputs_the_plan_says(tmp_path: Path, mid_model):
    """scripts/plan_accuracy.py's row (LoRA, 1,024 tokens, fp32) trained two steps on this CPU with plain and with
    selective checkpointing: the peak of live tensor bytes grows by what the plan says within 2%, the attention
    outputs that the layers not yet through their backward pass keep (the layer being recomputed reuses its own)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from plan_accuracy import one, row_config

    from ft.commands.config import load
    from ft.plan.estimate import estimate
    from ft.plan.shapes import read_shape

    rows = {}
    for memory in ("checkpointing", "selective"):
        path = row_config(mid_model, 1024, "lora", memory, tmp_path, False)
        plan = estimate(load(path), read_shape(str(mid_model)))
        rows[memory] = (plan.allocated, one(str(path))["measured_allocated"], plan.parts)
    planned, measured = rows["selective"][0] - rows["checkpointing"][0], rows["selective"][1] - rows["checkpointing"][1]
    kept = rows["selective"][2]["attention outputs kept (selective)"]
    assert kept == 4 * 1024 * (512 * 4 + 8 * 4)  # four layers: each token's attention output and log-sum-exp, fp32
    assert planned > 0 and abs(planned - measured) <= 0.02 * measured, rows


@pytest.mark.parametrize("arch, overrides", [("qwen2", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 2}),
                                             ("gemma2", {}), ("llama", {})])
def test_the_plan_reads_each_layers_attention_type_as_transformers_does(arch, overrides, tmp_path: Path):
    """The layer types of config.json, and without them (an older config) what transformers' config class derives:
    the layers that keep their attention outputs under selective_checkpointing are the full-attention ones."""
    import json

    from transformers import AutoConfig

    from ft.commands.config import load
    from ft.plan.estimate import estimate
    from ft.plan.shapes import read_shape
    from ft.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path / "model", arch, num_hidden_layers=4, **overrides)
    expected = AutoConfig.from_pretrained(folder).get_text_config()
    expected = tuple(getattr(expected, "layer_types", None) or ())
    config = json.loads((folder / "config.json").read_text())
    assert read_shape(str(folder)).layer_types == expected
    config.pop("layer_types", None)
    (folder / "config.json").write_text(json.dumps(config))
    assert read_shape(str(folder)).layer_types == tuple(getattr(AutoConfig.from_pretrained(folder), "layer_types", None) or ())
    full = sum(t != "sliding_attention" for t in expected) if expected else 4
    for sliding, keeping in ((False, full), (True, 4)):
        body = (f"base_model: {folder}\ndatasets:\n  - path: d.jsonl\nsequence_len: 256\nbf16: false\ngradient_checkpointing: true\n"
                f"selective_checkpointing: true\nselective_checkpointing_sliding_window: {str(sliding).lower()}\n"
                + ("attn_implementation: flash_attention_2\n" if arch == "gemma2" else ""))
        (tmp_path / "cfg.yml").write_text(body)
        shape = read_shape(str(folder))
        kept = estimate(load(tmp_path / "cfg.yml"), shape).parts["attention outputs kept (selective)"]
        assert kept == keeping * 256 * (shape.heads * shape.head_dim * 4 + shape.heads * 4), (sliding, kept)


def test_a_plan_over_the_gpu_with_selective_checkpointing_offers_it_off(tmp_path: Path):
    """Llama 3 8B, QLoRA, 32,768 tokens: the kept attention outputs (32 layers, bf16 output and fp32 log-sum-exp
    per query head) are among the plan's changes, turned off, saving what they hold but for the recomputed layer's."""
    from ft.commands.config import load
    from ft.plan.advice import ranked_changes
    from ft.plan.estimate import estimate
    from ft.plan.shapes import read_shape

    (tmp_path / "cfg.yml").write_text(f"base_model: {CONFIGS / 'llama3-8b.json'}\ndatasets:\n  - path: d.jsonl\n"
                                      "sequence_len: 32768\nadapter: qlora\nload_in_4bit: true\nlora_target_linear: true\n"
                                      "bf16: true\ngradient_checkpointing: true\nselective_checkpointing: true\n")
    cfg, shape = load(tmp_path / "cfg.yml"), read_shape(str(CONFIGS / "llama3-8b.json"))
    plan = estimate(cfg, shape)
    kept = plan.parts["attention outputs kept (selective)"]
    assert kept == 32 * 32768 * (4096 * 2 + 32 * 4)
    off = {c.what: c.plan for c in ranked_changes(cfg, shape, 1, plan)}["selective_checkpointing: false"]
    assert plan.allocated - off.allocated == kept - kept // 32 and off.peak < plan.peak


def test_the_plan_says_when_selective_checkpointing_fits_too(tmp_path: Path):
    """Llama 3 8B QLoRA at 8,192 tokens with checkpointing on 24 GB: `ft plan` says selective checkpointing fits too,
    with its peak (the plan with the key on); not for Gemma-2's eager attention (nothing to keep), nor once it is on."""
    from ft.commands.config import load
    from ft.commands.plan import plan_report
    from ft.plan.estimate import estimate
    from ft.plan.shapes import read_shape

    body = ("datasets:\n  - path: d.jsonl\nsequence_len: 8192\nadapter: qlora\nload_in_4bit: true\n"
            "lora_target_linear: true\nbf16: true\ngradient_checkpointing: true\n")
    (tmp_path / "cfg.yml").write_text(f"base_model: {CONFIGS / 'llama3-8b.json'}\n" + body)
    result = run_ft("plan", "cfg.yml", "--gpu-memory", "24GB", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (tmp_path / "on.yml").write_text(f"base_model: {CONFIGS / 'llama3-8b.json'}\n" + body + "selective_checkpointing: true\n")
    on = estimate(load(tmp_path / "on.yml"), read_shape(str(CONFIGS / "llama3-8b.json")))
    assert f"selective_checkpointing: true fits too (peak {on.peak / 2**30:.1f} GiB)" in result.stdout, result.stdout
    assert "selective_peak" not in plan_report(load(tmp_path / "on.yml"), 24 * 10**9, 1)
    (tmp_path / "gemma.yml").write_text(f"base_model: {CONFIGS / 'gemma2-27b.json'}\n" + body)
    assert "selective_peak" not in plan_report(load(tmp_path / "gemma.yml"), 24 * 10**9, 1)
