"""`lora_fused`: LoRA's update added in place (ft.model.fused_lora) gives the gradients of PEFT's own path on
every tiny architecture, over a 16-bit and a 4-bit base, and leaves PEFT's path wherever it does not apply.
Its memory (no copy of a layer's input) is checked by tests/test_plan.py's saved-bytes counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train_helpers import build, fixed_batch, make_config

ARCHS = ["llama", "qwen2", "mistral", "gemma2", "phi3"]


def _lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _built(tmp_path: Path, model_dir: Path, **keys):
    cfg = make_config(tmp_path, model_dir, lora_target_linear=True, lora_alpha=12, bf16=False, **keys)
    trainer, model, tokenizer = build(cfg)
    generator = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: made non-zero so that A's gradient and the update are not
            p.data.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    model.train()
    return trainer, model, fixed_batch(tokenizer)


def _gradients(trainer, model, batch) -> tuple[float, dict]:
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("adapter", ["lora", "qlora"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_gradients_equal_peft_path(arch, adapter, tmp_path: Path, tiny_model_dir):
    """fp32, scale alpha/r = 1.5 (not a power of two, so the order of the scaling shows): every LoRA weight's
    gradient within 1e-5 relative of PEFT's path on the same weights and batch, the loss within 1e-6."""
    keys = {"adapter": adapter, **({"load_in_4bit": True} if adapter == "qlora" else {})}
    trainer, model, batch = _built(tmp_path, tiny_model_dir(arch), **keys)
    layers = _lora_layers(model)
    fused = [m for m in layers if "forward" in vars(m)]
    assert layers and len(fused) == len(layers), (len(fused), len(layers))
    loss, grads = _gradients(trainer, model, batch)
    for m in fused:
        del m.forward  # PEFT's own forward again
    loss_peft, grads_peft = _gradients(trainer, model, batch)
    assert abs(loss - loss_peft) <= 1e-6 * abs(loss_peft)
    assert grads.keys() == grads_peft.keys() and any("lora_A" in n for n in grads)
    for name, g in grads_peft.items():
        assert g.norm() > 0, name
        assert (grads[name] - g).norm() <= 1e-5 * g.norm(), name


def test_adapters_switched_off_or_merged_take_peft_path(tmp_path: Path, tiny_model_dir):
    """With the adapter disabled (a preference loss's reference) the fused model's logits are the base's; merged,
    they are the unmerged model's; with dropout the layers keep PEFT's path (its output differs between two
    training forwards, the fused update's would not)."""
    trainer, model, batch = _built(tmp_path, tiny_model_dir("llama"), adapter="lora")
    inputs = {"input_ids": batch["input_ids"]}
    with torch.no_grad():
        adapted = model(**inputs).logits
        with model.disable_adapter():
            off = model(**inputs).logits
        for m in _lora_layers(model):
            del m.forward
        with model.disable_adapter():
            off_peft = model(**inputs).logits
        assert (adapted - off).abs().max() > 1e-3  # the adapter changes the logits
        assert torch.equal(off, off_peft)
        model.merge_adapter()
        from ft.model.fused_lora import fuse

        fuse(model)
        merged = model(**inputs).logits
        model.unmerge_adapter()
        assert (merged - adapted).abs().max() <= 1e-4 * adapted.abs().max()

    (tmp_path / "dropout").mkdir()
    trainer, model, batch = _built(tmp_path / "dropout", tiny_model_dir("llama"), adapter="lora", lora_dropout=0.5)
    assert all("forward" in vars(m) for m in _lora_layers(model))
    with torch.no_grad():
        first, second = (model(input_ids=batch["input_ids"]).logits for _ in range(2))
    assert (first - second).abs().max() > 1e-4


def test_lora_fused_false_keeps_peft_path(tmp_path: Path, tiny_model_dir):
    trainer, model, _ = _built(tmp_path, tiny_model_dir("llama"), adapter="lora", lora_fused=False)
    assert _lora_layers(model) and not any("forward" in vars(m) for m in _lora_layers(model))
