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


def master_weights(m: ModelConfig, dtype: Any) -> bool:
    """Whether trainable full-size weights are kept in fp32 while the compute runs in `dtype` (bf16 or fp16
    under autocast). In pure bf16 an AdamW step at lr 1e-5 changes about 15% of a pretrained model's weights
    and the rest never move (scripts/bench_precision.py); fp16 has no pure mode (its loss scaling needs fp32
    master weights)."""
    import torch

    return dtype == torch.float16 or (dtype == torch.bfloat16 and not m.pure_bf16)


def keep_trainable_in_fp32(model: Any) -> int:
    """Upcast trainable bf16/fp16 parameters (embeddings trained beside LoRA: new tokens,
    lora_modules_to_save) to fp32 master weights; returns how many parameters were upcast."""
    import torch

    upcast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
            upcast += p.numel()
    return upcast


def describe_training_precision(dtype: Any, masters: bool, trainable: int) -> str:
    """The log line: what runs in which precision, and what the master weights cost."""
    import torch

    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    if name is None:
        return "precision: fp32"
    if masters:
        return (f"precision: {name} compute, fp32 master weights for the {trainable:,} trainable parameters "
                f"(+{4 * trainable / 2**30:.2f} GiB for them and their gradients over pure bf16, and optimizer "
                f"states in fp32{'; `bf16: full` trains in pure bf16' if name == 'bf16' else ''})")
    return (f"precision: pure bf16 (`bf16: full`): the {trainable:,} trainable parameters are stored and updated in "
            "bf16; AdamW updates smaller than 1/256 of a weight are lost")


def device() -> Any:
    """This process's device: its GPU under a launcher (LOCAL_RANK), else cuda:0, else the CPU."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
