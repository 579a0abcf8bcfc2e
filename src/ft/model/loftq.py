"""LoftQ (Li et al., 2023): LoRA's layers start as the best rank-r fit of what quantizing their base weights lost,
and the base weights become their quantized values (nf4 or int8, bitsandbytes' own quantizers, on any device).

PEFT's own LoftQ path computes on CUDA only; this one runs where the model is. The adapter's config records the
settings (`loftq_config`), and every place that loads the adapter (`ft inference`, `ft eval`, `ft merge-lora`,
`lora_model_dir`) quantizes the same base weights again first (`requantize`): the trained model is the
quantized base plus the adapter, and merging folds the adapter into that base."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("ft")


def roundtrip(weight: Any, bits: int) -> Any:
    """The weight quantized and dequantized again (float32): nf4 in blocks of 64, or int8 per row."""
    import bitsandbytes.functional as F

    if bits == 4:
        codes, state = F.quantize_4bit(weight.contiguous(), blocksize=64, quant_type="nf4", compress_statistics=False)
        return F.dequantize_4bit(codes, state).float()
    codes, scales, _ = F.int8_vectorwise_quant(weight.contiguous())
    return F.int8_vectorwise_dequant(codes, scales).float()


def loftq(weight: Any, bits: int, rank: int, iterations: int) -> tuple[Any, Any, Any]:
    """(quantized weight, L, R) with quantized + L @ R the closest to `weight` that LoftQ's alternation finds:
    quantize what the low-rank part leaves, fit the low-rank part to what quantizing lost, `iterations` times."""
    import torch

    target = weight.detach().float()
    rest = target
    for step in range(iterations):
        quantized = roundtrip(rest, bits)
        u, s, vh = torch.linalg.svd(target - quantized, full_matrices=False)
        root = s[:rank].sqrt()
        left, right = u[:, :rank] * root, root[:, None] * vh[:rank]
        if step + 1 < iterations:
            rest = target - left @ right
    return quantized, left, right


def lora_layers(model: Any) -> list[tuple[str, Any]]:
    """The LoRA-wrapped linear layers of a PEFT model, by name."""
    return [(name, module) for name, module in model.named_modules()
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}) and hasattr(module, "get_base_layer")]


def initialise(model: Any, bits: int, iterations: int) -> int:
    """Turn a freshly wrapped LoRA model into LoftQ's start, layer by layer; record the settings in the adapter's
    config (saved with it). Returns how many layers."""
    import torch

    layers = lora_layers(model)
    with torch.no_grad():
        for _, module in layers:
            base = module.get_base_layer()
            quantized, left, right = loftq(base.weight, bits, module.r["default"], iterations)
            scale = float(module.scaling["default"]) ** 0.5  # the adapter's scaling split over B and A
            down, up = module.lora_A["default"].weight, module.lora_B["default"].weight
            down.copy_((right / scale).to(down.dtype))
            up.copy_((left / scale).to(up.dtype))
            base.weight.copy_(quantized.to(base.weight.dtype))
    model.peft_config["default"].loftq_config = {"loftq_bits": bits, "loftq_iter": iterations}
    log.info("LoftQ: %d layers' base weights quantized to %s, LoRA started from what that lost", len(layers),
             "nf4" if bits == 4 else "int8")
    return len(layers)


def recorded(adapter: Path) -> dict:
    """The LoftQ settings an adapter was trained with ({} for any other adapter)."""
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("loftq_config") or {}


def requantize(model: Any, settings: dict) -> int:
    """A LoftQ adapter just loaded onto the original base: quantize the base weights under it as training did, so
    the model is the one trained. Returns how many layers."""
    import torch

    layers = lora_layers(model)
    with torch.no_grad():
        for _, module in layers:
            base = module.get_base_layer()
            quantized, _, _ = loftq(base.weight, int(settings["loftq_bits"]), module.r["default"],
                                    int(settings.get("loftq_iter", 1)))
            base.weight.copy_(quantized.to(base.weight.dtype))
    return len(layers)


def load_adapter(model: Any, adapter: Path, **kwargs: Any) -> Any:
    """PeftModel.from_pretrained, then the base quantized again where the adapter is a LoftQ one."""
    from peft import PeftModel

    settings = recorded(adapter)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*loftq_config.*")
        peft_model = PeftModel.from_pretrained(model, str(adapter), **kwargs)
    if settings:
        peft_model.peft_config["default"].loftq_config = settings  # PEFT drops it on loading (kept for the next save)
        count = requantize(peft_model, settings)
        log.info("LoftQ adapter: %d base layers quantized as in training", count)
    return peft_model
