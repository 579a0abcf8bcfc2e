"""Training precision: `bf16: auto` resolved against the hardware."""

from __future__ import annotations

from typing import Any

from ft.config.model import ModelConfig


def resolve_dtype(m: ModelConfig) -> Any:
    """The torch dtype to train in: bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU."""
    import torch

    precision = m.precision
    if precision == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def device() -> Any:
    """This process's device: its GPU under a launcher (LOCAL_RANK), else cuda:0, else the CPU."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
