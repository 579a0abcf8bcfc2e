"""bitsandbytes settings for an 8-bit or 4-bit base, and the CPU guard 4-bit layers need."""

from __future__ import annotations

import logging
from typing import Any, Optional

from ft.config.model import QuantizationConfig

log = logging.getLogger("ft")


def bnb_config(q: QuantizationConfig, compute_dtype: Any, fsdp: bool = False) -> Optional[Any]:
    """A BitsAndBytesConfig for the base model, or None when it is not quantized.

    Under FSDP the packed 4-bit weights are stored in the training dtype (unless the config says
    otherwise): FSDP flattens a unit's parameters into one tensor, which needs them all of one dtype.
    """
    if q.bits is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=q.llm_int8_threshold,
            llm_int8_skip_modules=list(q.llm_int8_skip_modules) if q.llm_int8_skip_modules else None,
        )
    compute = getattr(torch, q.bnb_4bit_compute_dtype) if q.bnb_4bit_compute_dtype else compute_dtype
    if q.bnb_4bit_quant_storage:
        storage = getattr(torch, q.bnb_4bit_quant_storage)
    else:
        storage = compute_dtype if fsdp else torch.uint8
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=storage,
        llm_int8_skip_modules=list(q.llm_int8_skip_modules) if q.llm_int8_skip_modules else None,
    )


def guard_cpu_4bit(model: Any) -> int:
    """Turn off bitsandbytes' AVX512-BF16 CPU path on every 4-bit layer; returns how many were changed.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weights on its first eval-mode
    forward, and LoRA gradients through that layer are wrong from then on, silently (the loss still
    falls). The plain CPU path is correct. tests/test_quantized.py compares the gradients with those of a
    dequantized fp32 copy after an eval forward, so a regression shows.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    if changed:
        log.info("4-bit layers: AVX512-BF16 CPU path turned off on %d layers (bitsandbytes repacking bug)", changed)
    return changed


def held_whole(model: Any) -> list[Any]:
    """The modules FSDP2 must leave whole on every process: those holding a frozen integer weight (an 8-bit base's
    LLM.int8 rows, quantize_moe_experts' 8-bit experts). FSDP shards a parameter as numbers, apart from the scales
    bitsandbytes keeps beside it (the weight's SCB, the experts' row statistics), which a shard cannot be read back
    with; ignored by FSDP, they stay on each process's device as loaded, and only the rest is sharded."""
    held = []
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False)]
        if any(not p.requires_grad and not p.is_floating_point() and not p.is_complex() for p in own):
            held.append(module)
    return held
