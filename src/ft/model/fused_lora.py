"""LoRA's update added in place: y = base(x), then y += s·(x·Aᵀ)·Bᵀ in one autograd function (`lora_fused`).

PEFT's forward of a LoRA linear layer casts the input to the adapter's dtype (fp32) and, under autocast, back
to bf16 for each of A's matmuls, so every adapted layer saves its own copy of its input for the backward pass;
it then scales the update and adds it in two more passes over the output (and clones a 4-bit base's output
first). Here the update is one matmul pair in the output's dtype, added into the base's output by addmm with
the scale as its alpha; the backward pass reuses the input the base layer already holds (the same storage) and
the rank-r product h = x·Aᵀ. The base's own forward and backward (nn.Linear, a bitsandbytes 4-bit layer) are
untouched, so FSDP's and DeepSpeed's hooks on them run as before.

Gradients are those of PEFT's path in exact arithmetic: ∂A = s·(g·B)ᵀ·x, ∂B = s·gᵀ·h, ∂x += s·(g·B)·A. PEFT's
own forward runs whenever this one does not apply: adapters off or merged, several adapters active, DoRA or
another LoRA variant, dropout, a LoRA bias, keyword arguments, a base of another kind (8-bit, fp8, QAT), and
under ZeRO-3 (which gathers A and B only through their own modules' hooks; train.py does not fuse there).
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


class _Epilogue(torch.autograd.Function):
    """y += scaling · (x·Aᵀ)·Bᵀ, in place on y (the base layer's fresh output)."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
        dtype = y.dtype
        with torch.autocast(y.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)  # a view of x when the dtypes agree (no copy kept)
            h = x2 @ a.to(dtype).t()
            y.view(-1, y.shape[-1]).addmm_(h, b.to(dtype).t(), alpha=scaling)
        ctx.mark_dirty(y)
        ctx.save_for_backward(x2, h, a, b)
        ctx.scaling, ctx.x_shape, ctx.x_dtype = scaling, x.shape, x.dtype
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple:
        x2, h, a, b = ctx.saved_tensors
        s = ctx.scaling
        with torch.autocast(g.device.type, enabled=False):
            g2 = g.reshape(-1, g.shape[-1])
            gb = g2 @ b.to(g2.dtype)  # (tokens, r)
            grad_x = grad_a = grad_b = None
            if ctx.needs_input_grad[1]:
                grad_x = (gb @ a.to(g2.dtype)).mul_(s).to(ctx.x_dtype).view(ctx.x_shape)
            if ctx.needs_input_grad[2]:
                grad_a = (gb.t() @ x2).mul_(s).to(a.dtype)
            if ctx.needs_input_grad[3]:
                grad_b = (g2.t() @ h).mul_(s).to(b.dtype)
        return g, grad_x, grad_a, grad_b, None


def _plain_base(layer: nn.Module) -> bool:
    """A base this path covers: torch's Linear, or bitsandbytes' 4-bit Linear (its output is fresh and its
    backward keeps neither input nor output)."""
    if type(layer) is nn.Linear:
        return True
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return False
    return type(layer) is Linear4bit


def _forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    active = self.active_adapters
    name = active[0] if len(active) == 1 else None
    if (args or kwargs or name is None or self.disable_adapters or self.merged or name not in self.lora_A
            or name in self.lora_variant or not isinstance(self.lora_dropout[name], nn.Identity)
            or self.lora_B[name].bias is not None):
        return type(self).forward(self, x, *args, **kwargs)
    y = self.base_layer(x)
    if y._base is not None or not y.is_contiguous():  # bitsandbytes' 4-bit output with a bias is a view: a copy,
        y = y.clone(memory_format=torch.contiguous_format)  # as PEFT makes for every 4-bit layer
    return _Epilogue.apply(y, x, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name])


def fuse(model: nn.Module) -> int:
    """Give every LoRA linear layer over a covered base the fused forward; the number of layers given it."""
    from peft.tuners.lora import Linear as LoraLinear

    kinds: tuple[type, ...] = (LoraLinear,)
    try:
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

        kinds += (LoraLinear4bit,)
    except ImportError:
        pass
    count = 0
    for module in model.modules():
        if type(module) in kinds and not getattr(module, "fan_in_fan_out", False) and _plain_base(module.base_layer):
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
