"""`quantize_moe_experts`: a mixture-of-experts model's 3-D expert weights stored in the base's bits, read back as
bitsandbytes' own dequantization of them, frozen, and trained through (LoRA gradients as on a dequantized copy)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from train_helpers import build, fixed_batch, make_config

QLORA = {"adapter": "qlora", "load_in_4bit": True, "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True,
         "quantize_moe_experts": True}
LORA8 = {**QLORA, "adapter": "lora", "load_in_4bit": False, "load_in_8bit": True}
# LoRA on the quantized experts' weights themselves too (Axolotl's Gemma 4 MoE examples)
ON_EXPERTS = {**QLORA, "lora_dropout": 0, "lora_target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}


def _roundtrip(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """What bitsandbytes' quantizers give back for `weight` (nf4 blocks with double quantization, or int8 rows)."""
    import bitsandbytes.functional as F

    if bits == 4:
        packed, state = F.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
        return F.dequantize_4bit(packed, state).reshape(weight.shape)
    rows, stats, _ = F.int8_vectorwise_quant(weight.reshape(-1, weight.shape[-1]).to(torch.float16))
    return F.int8_vectorwise_dequant(rows, stats).reshape(weight.shape).to(weight.dtype)


@pytest.mark.parametrize("keys, bits", [(QLORA, 4), (LORA8, 8), (ON_EXPERTS, 4)], ids=["4-bit", "8-bit", "lora-on-experts"])
def test_experts_are_stored_quantized_and_read_back_exactly(keys: dict, bits: int, tmp_path: Path, tiny_model_dir):
    """The experts' storage, their values, and LoRA gradients (on the linear layers, and on the experts' weights
    with lora_target_parameters) equal those of an fp32 copy holding the dequantized values; with LoRA on the
    experts, its weights are named as on 16-bit experts and the quantized weight is left as it was after a step."""
    from transformers import AutoModelForCausalLM

    from ft.model.experts import expert_parameters

    folder = tiny_model_dir("qwen3_moe")
    cfg = make_config(tmp_path, folder, **keys)
    _, model, tokenizer = build(cfg)
    original = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    found = expert_parameters(original)
    assert len(found) == 4  # gate_up_proj and down_proj of 2 layers
    for name, module, pname in found:
        path = "base_model.model." + name.rsplit(".", 1)[0]
        quantized = model.get_submodule(path)
        quantized = quantized.get_base_layer() if hasattr(quantized, "get_base_layer") else quantized  # under LoRA
        stored = quantized.parametrizations[pname].original
        assert stored.dtype in (torch.uint8, torch.int8) and not stored.requires_grad
        assert stored.numel() * stored.element_size() <= getattr(module, pname).numel() * 4 * (bits / 32) + 64
        torch.testing.assert_close(getattr(quantized, pname), _roundtrip(getattr(module, pname).detach(), bits),
                                   rtol=0, atol=0)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    on_experts = [n for n in trained if "experts" in n]
    assert trained and all("lora_" in n for n in trained) and len(on_experts) == (8 if "lora_target_parameters" in keys else 0)

    # LoRA gradients through the quantized experts equal those of an fp32 copy holding their dequantized values
    from peft import get_peft_model
    from ft.model.adapter import linear_module_names, lora_config

    batch = fixed_batch(tokenizer)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for name, module in model.base_model.model.named_modules():
            target = re.sub(r"(\.base_layer)+$", "", name)
            if hasattr(module, "parametrizations"):
                for pname in module.parametrizations:
                    getattr(reference.get_submodule(target), pname).copy_(getattr(module, pname))
            elif type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
                import bitsandbytes.functional as F

                w = module.weight
                value = (F.dequantize_4bit(w.data, w.quant_state) if bits == 4 else
                         F.int8_vectorwise_dequant(w.data, w.SCB))
                reference.get_submodule(target).weight.copy_(value.float())
    reference = get_peft_model(reference, lora_config(cfg.adapter, linear_module_names(reference), None))
    missing, unexpected = reference.load_state_dict({n: p for n, p in model.state_dict().items() if "lora_" in n},
                                                    strict=False)
    assert not unexpected and not [n for n in missing if "lora_" in n]
    grads = []
    for m in (model, reference):
        m.train()
        for _ in range(2):  # twice: what one forward adds to the experts' weights is gone by the next
            m.zero_grad()
            m(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[1].items():
        assert float(g.norm()) > 0 and float((grads[0][n] - g).norm() / (g.norm() + 1e-12)) < 1e-4, n
    for name, module in model.named_modules():
        for pname, chain in getattr(module, "parametrizations", {}).items():
            assert len(chain) == 1, (name, pname)  # only the dequantizing one between forwards


def test_a_qlora_run_with_quantized_experts_trains(tmp_path: Path, tiny_model_dir):
    folder = tiny_model_dir("qwen3_moe")
    cfg = make_config(tmp_path, folder, **QLORA, max_steps=6, learning_rate=0.01)
    trainer, model, _ = build(cfg)
    quantized = [name for m in model.modules() for name in getattr(m, "parametrizations", {})]
    assert sorted(quantized) == ["down_proj", "down_proj", "gate_up_proj", "gate_up_proj"]
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_experts_are_quantized_as_they_load(tiny_model_dir):
    """Each experts' weight is quantized right after transformers sets it, so at no moment of loading do two of them
    sit in 16 bits (what lets a model whose 16-bit experts would not fit load); the result equals quantizing after."""
    import transformers.core_model_loading as loading
    from transformers import AutoModelForCausalLM

    from ft.config.model import QuantizationConfig
    from ft.model.experts import expert_parameters, quantize_experts, quantized_while_loading

    folder, q = tiny_model_dir("qwen3_moe"), QuantizationConfig(load_in_4bit=True, quantize_moe_experts=True)
    alive: list[int] = []
    inner = loading.set_param_for_module

    def spy(model, target, *args, **kwargs):  # before each parameter is set: the 16-bit experts already loaded
        alive.append(sum(1 for _, m, n in expert_parameters(model) if getattr(m, n).device.type != "meta"))
        return inner(model, target, *args, **kwargs)

    loading.set_param_for_module = spy
    try:
        with quantized_while_loading(q) as done:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    finally:
        loading.set_param_for_module = inner
    assert len(done) == 4 and len(alive) > 4 and max(alive) == 0 and loading.set_param_for_module is inner
    after = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert quantize_experts(after, q) == 4
    for name in done:
        path, _, pname = name.rpartition(".")
        torch.testing.assert_close(getattr(model.get_submodule(path), pname), getattr(after.get_submodule(path), pname),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("extra, said", [
    ({"adapter": "lora", "load_in_4bit": False}, "stores the experts in the base's bits"),
    ({"fsdp": ["full_shard"], "fsdp_config": {"fsdp_version": 1}}, r"under FSDP needs FSDP2 \(`fsdp_config.fsdp_version: 2`\)"),
])
def test_quantize_moe_experts_refusals(extra: dict, said: str, tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    with pytest.raises(ConfigError, match=said):
        make_config(tmp_path, tiny_model_dir("qwen3_moe"), **{**QLORA, **extra})


FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]  # OCP MX E2M1 codes


def _mxfp4_gpt_oss(folder: Path) -> dict[str, torch.Tensor]:
    """A tiny gpt-oss checkpoint whose experts are stored as gpt-oss ships them (MXFP4: 32 four-bit codes per block
    and a power-of-two scale, quant_method mxfp4); returns the weights the codes stand for, decoded here."""
    import json

    import transformers
    from safetensors.torch import load_file, save_file

    from ft.tiny import build_tokenizer

    tok = build_tokenizer()
    config = transformers.GptOssConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=128,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    g, lut, decoded = torch.Generator().manual_seed(1), torch.tensor(FP4), {}
    for name in [k for k in weights if k.endswith(("gate_up_proj", "down_proj"))]:
        experts, rows, cols = weights.pop(name).shape  # stored transposed: [experts, cols, rows / 32, 16 bytes]
        blocks = torch.randint(0, 256, (experts, cols, rows // 32, 16), dtype=torch.uint8, generator=g)
        scales = torch.randint(120, 127, (experts, cols, rows // 32), dtype=torch.uint8, generator=g)
        codes = torch.stack([lut[(blocks & 15).long()], lut[(blocks >> 4).long()]], -1).reshape(experts, cols, rows // 32, 32)
        values = codes * torch.pow(2.0, scales.float() - 127).unsqueeze(-1)
        decoded[name] = values.reshape(experts, cols, rows).transpose(1, 2)
        weights[name + "_blocks"], weights[name + "_scales"] = blocks, scales
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    body = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**body, "quantization_config": {"quant_method": "mxfp4"}}))
    return decoded


MXFP4 = {"model_quantization_config": "Mxfp4Config", "model_quantization_config_kwargs": {"dequantize": True},
         "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True}


def test_an_mxfp4_checkpoint_is_read_back_dequantized_and_trains(tmp_path: Path):
    folder = tmp_path / "gpt-oss"
    decoded = _mxfp4_gpt_oss(folder)
    cfg = make_config(tmp_path, folder, **MXFP4, max_steps=2)
    trainer, model, _ = build(cfg)
    for name, value in decoded.items():
        torch.testing.assert_close(model.get_parameter("base_model.model." + name).float(), value, rtol=0, atol=0)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))

    from ft.errors import ConfigError

    with pytest.raises(ConfigError, match="is stored as `mxfp4`: set the config that matches it"):
        build(make_config(tmp_path, folder, **{**MXFP4, "model_quantization_config": "FineGrainedFP8Config"}))


def test_model_quantization_config_on_a_16_bit_checkpoint_and_its_refusals(tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    folder = tiny_model_dir("qwen3_moe")
    build(make_config(tmp_path, folder, **MXFP4, max_steps=1))  # nothing to dequantize: loads as it is
    with pytest.raises(ConfigError, match="add `model_quantization_config_kwargs: {dequantize: true}`"):
        make_config(tmp_path, folder, **{**MXFP4, "model_quantization_config_kwargs": None})
    with pytest.raises(ConfigError, match="and `load_in_4bit` quantizes it with bitsandbytes; keep one"):
        make_config(tmp_path, folder, **{**MXFP4, "adapter": "qlora", "load_in_4bit": True})
