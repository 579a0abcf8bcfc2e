"""4-bit LoRA gradients are right on this CPU: equal to those of a dequantized fp32 copy.

bitsandbytes 0.50 on CPUs with AVX512-BF16 repacks 4-bit weights on the first eval-mode forward and then
computes wrong LoRA gradients, silently. ft turns that path off (ft.model.quantize.guard_cpu_4bit).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train_helpers import fixed_batch, make_config

QLORA = {"adapter": "qlora", "load_in_4bit": True, "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True}


def _lora_grads(model, batch) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        model(**batch)  # the eval forward that triggers the repacking
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _models(tmp_path: Path, model_dir: Path):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from ft.commands.train import model_for_training
    from ft.model.adapter import linear_module_names, lora_config
    from ft.tokenizer.load import load_tokenizer

    cfg = make_config(tmp_path, model_dir, **QLORA)
    tokenizer = load_tokenizer(cfg.model)
    quantized, _, _ = model_for_training(cfg, tokenizer, "padded")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in quantized.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # B starts at zero; make the gradient reach A too
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    modules = dict(reference.named_modules())
    for name, module in quantized.base_model.model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = F.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
            modules[name.removesuffix(".base_layer")].weight.data.copy_(w)
    reference = get_peft_model(reference, lora_config(cfg.adapter, linear_module_names(reference), None))
    reference.load_state_dict({n: p for n, p in quantized.state_dict().items() if "lora_" in n}, strict=False)
    return quantized, reference, tokenizer


def _worst_relative(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).norm() / (b[n].norm() + 1e-12)) for n in b)


def test_4bit_lora_gradients_match_dequantized_fp32(tmp_path: Path, tiny_model_dir):
    quantized, reference, tokenizer = _models(tmp_path, tiny_model_dir("llama"))
    batch = fixed_batch(tokenizer)
    got, want = _lora_grads(quantized, batch), _lora_grads(reference, batch)
    assert set(got) == set(want) and len(got) > 0
    assert _worst_relative(got, want) < 1e-3


def test_without_the_guard_this_cpu_gets_them_wrong(tmp_path: Path, tiny_model_dir):
    """Proof that the test above can fail: on an AVX512-BF16 CPU the unguarded path diverges."""
    import bitsandbytes as bnb

    probe = bnb.nn.Linear4bit.__init__.__globals__.get("has_avx512bf16")
    if probe is None or not probe():
        pytest.skip("this CPU has no AVX512-BF16; the bitsandbytes bug cannot show here")
    quantized, reference, tokenizer = _models(tmp_path, tiny_model_dir("llama"))
    for module in quantized.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = True  # undo ft's guard
    batch = fixed_batch(tokenizer)
    assert _worst_relative(_lora_grads(quantized, batch), _lora_grads(reference, batch)) > 1e-2


@pytest.mark.parametrize("base", ["4-bit", "4-bit fsdp", "8-bit"])
def test_frozen_base_stays_in_the_compute_dtype(base: str, tmp_path: Path, tiny_model_dir):
    """No fp32 upcast of the frozen base: embeddings, head and norms stay bf16 (the compute dtype here), the
    quantized weights are packed (uint8 for 4-bit, int8 for 8-bit); under FSDP the packed 4-bit weights are
    stored in bf16 too, so every parameter of a unit has one dtype. Only the LoRA weights train."""
    from ft.commands.train import model_for_training
    from ft.tokenizer.load import load_tokenizer

    keys = {**QLORA, "bf16": True} if base.startswith("4") else {**QLORA, "adapter": "lora", "load_in_4bit": False,
                                                                 "load_in_8bit": True, "bf16": True}
    if base.endswith("fsdp"):
        keys["fsdp"] = ["full_shard", "auto_wrap"]
    cfg = make_config(tmp_path, tiny_model_dir("llama"), **keys)
    model, _, _ = model_for_training(cfg, load_tokenizer(cfg.model), "padded")
    frozen = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
    packed = {"4-bit": {torch.uint8}, "4-bit fsdp": set(), "8-bit": {torch.int8}}[base]
    assert frozen == {torch.bfloat16} | packed, frozen
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
