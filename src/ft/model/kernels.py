"""`liger_rms_norm`, `liger_rope`, `liger_glu_activation`: the model's RMSNorm, rotary embedding and gated MLP
activation (SwiGLU, or GeGLU for Gemma) computed by Liger's Triton kernels (linkedin/Liger-Kernel), opt-in.

Liger patches the loaded model in place through its own per-architecture entry (the norms' and MLPs' forwards,
the architecture's rotary function); its cross-entropy kernels stay off, as ft computes the loss itself
(`chunked_cross_entropy`). Triton kernels run on CUDA GPUs only: without one the model's own layers run (the
same results) and ft says so. tests/test_gpu.py checks on a GPU that the kernels give the model's own loss and
LoRA gradients (bf16)."""

from __future__ import annotations

import logging
from typing import Any

from ft.config.model import ModelConfig
from ft.errors import ConfigError

log = logging.getLogger("ft")


def wanted(m: ModelConfig) -> list[str]:
    """The keys of the kernels the config asks for."""
    return [k for k in ("liger_rms_norm", "liger_rope", "liger_glu_activation") if getattr(m, k)]


def apply_liger(model: Any, m: ModelConfig) -> list[str]:
    """Patch the model with the kernels asked for; the keys applied (none without a CUDA GPU)."""
    keys = wanted(m)
    if not keys:
        return []
    import torch

    if not torch.cuda.is_available():  # the model may still be on the CPU here: the Trainer moves it to the GPU
        log.warning("%s: Liger's kernels run on CUDA GPUs, and this machine has none: the model's own layers run (the "
                    "same results)", ", ".join(keys))
        return []
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance
    except ImportError:
        raise ConfigError(f"`{keys[0]}`: Liger's kernels are not installed: `pip install liger-kernel`, or "
                          "remove the liger_* keys") from None
    model_type = model.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(f"`{keys[0]}`: Liger has no kernels for model_type {model_type}; remove the liger_* "
                          "keys")
    glu = m.liger_glu_activation
    _apply_liger_kernel_to_instance(model=model, rope=m.liger_rope, rms_norm=m.liger_rms_norm, swiglu=glu, geglu=glu,
                                    cross_entropy=False, fused_linear_cross_entropy=False)
    return keys
