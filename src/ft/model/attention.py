"""Which attention implementation a run uses, decided without importing torch."""

from __future__ import annotations

import importlib.util
from typing import Optional

from ft.config.model import ModelConfig


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(m: ModelConfig) -> tuple[Optional[str], Optional[str]]:
    """(attn_implementation to load with, or None for the model's default; a warning to show, or None)."""
    wanted = m.attention_request
    if wanted == "flash_attention_2" and not flash_attn_installed():
        return "sdpa", (
            "flash_attention: true, but flash-attn is not installed (it needs a CUDA GPU; "
            "`pip install 'ft[flash]'`): falling back to sdpa attention, and on a GPU to PyTorch's own varlen "
            "flash-attention kernel for packed and padding-free batches"
        )
    if wanted == "flash_attention_3" and importlib.util.find_spec("flash_attn_interface") is None:
        return "sdpa", ("attn_implementation: flash_attention_3, but flash-attn 3 (flash_attn_interface, Hopper GPUs) "
                        "is not installed: falling back to sdpa attention")
    return wanted, None


def describe_precision(m: ModelConfig) -> str:
    if m.precision == "auto":
        return "auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU"
    if m.pure_bf16:
        return "pure bf16 (trainable weights stored and updated in bf16)"
    if m.precision in ("bf16", "fp16"):
        return f"{m.precision} compute, fp32 master weights for trainable full-size weights"
    return m.precision
