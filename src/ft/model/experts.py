"""`quantize_moe_experts`: a mixture-of-experts model's routed experts, which transformers 5 stores as 3-D
parameters (one tensor for all experts, outside any nn.Linear, so bitsandbytes' loading leaves them in 16 bits),
quantized like the rest of the base: 4-bit by bitsandbytes' own parametrization (the config's quant type and
double quantization), 8-bit per row as LLM.int8 stores a weight. The model reads each as a dequantized tensor when
its forward runs, so the layers' code is unchanged; the experts are frozen (LoRA trains the linear layers)."""

from __future__ import annotations

import logging
from typing import Any

from ft.config.model import QuantizationConfig

log = logging.getLogger("ft")


def expert_parameters(model: Any) -> list[tuple[str, Any, str]]:
    """(qualified name, module, parameter name) of every routed experts' weight: a parameter of three or more
    dimensions of a module whose path names experts."""
    found = []
    for path, module in model.named_modules():
        if "expert" not in path.lower().rsplit(".", 1)[-1] and "expert" not in type(module).__name__.lower():
            continue
        for name, p in module.named_parameters(recurse=False):
            if p.ndim >= 3:
                found.append((f"{path}.{name}", module, name))
    return found


def _int8_parametrization() -> Any:
    import bitsandbytes as bnb
    import torch

    class Int8Rows(torch.nn.Module):
        """The int8 rows back to the weight: each row times its absmax / 127 (bitsandbytes' own dequantizer)."""

        def __init__(self, row_stats: Any, shape: tuple[int, ...], dtype: Any) -> None:
            super().__init__()
            self.register_buffer("row_stats", row_stats)
            self.shape, self.dtype = shape, dtype

        def forward(self, stored: Any) -> Any:
            rows = bnb.functional.int8_vectorwise_dequant(stored.reshape(-1, self.shape[-1]), self.row_stats)
            return rows.reshape(self.shape).to(self.dtype)

    return Int8Rows


def quantize_experts(model: Any, q: QuantizationConfig) -> int:
    """Quantize every routed experts' weight of `model` in place to the base's bits; returns how many. A model
    without 3-D expert weights is refused by the caller's message (nothing to quantize is a config mistake)."""
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.nn.parametrize import replace_parameter_4bit
    from torch.nn.utils import parametrize

    found = expert_parameters(model)
    saved = 0
    int8 = _int8_parametrization() if q.bits == 8 else None
    for _, module, name in found:
        weight = getattr(module, name)
        before = weight.numel() * weight.element_size()
        if q.bits == 4:
            replace_parameter_4bit(module, name, compress_statistics=q.bnb_4bit_use_double_quant,
                                   quant_type=q.bnb_4bit_quant_type)
        else:
            shape, dtype = tuple(weight.shape), weight.dtype
            rows, stats, _ = bnb.functional.int8_vectorwise_quant(weight.detach().reshape(-1, shape[-1]).to(torch.float16))
            setattr(module, name, torch.nn.Parameter(rows.reshape(shape), requires_grad=False))
            parametrize.register_parametrization(module, name, int8(stats, shape, dtype), unsafe=True)
        stored = module.parametrizations[name].original
        stored.requires_grad_(False)
        saved += before - stored.numel() * stored.element_size()
    if found:
        log.info("quantize_moe_experts: %d expert weights stored in %d bits (%.2f GB less)", len(found), q.bits, saved / 1e9)
    return len(found)
