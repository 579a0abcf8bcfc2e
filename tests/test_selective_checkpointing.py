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
from conftest import run_ft
from train_helpers import build, make_config

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
