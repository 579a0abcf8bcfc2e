"""`chunked_rms_norm`: every RMSNorm of the model computed by ft's own autograd function, which keeps for the
backward pass the norm's input as it is and one fp32 number per token, where the model's own norm keeps an fp32
copy of its input (twice the bytes of a bf16 residual, per norm); and which works through the tokens a chunk at a
time, so its fp32 temporaries and its fp32 gradient are a chunk's, not the sequence's. At 131,072 tokens of an
8B model that is 2 GiB per norm kept and 2 GiB less in flight in each layer's backward.

The forward is the model's own computation, element for element (the same operations in the same order, in
chunks of rows: a norm is per token); the backward is its gradient computed directly (within fp32 round-off of
autograd's). Two formulas cover the norms ft knows: Llama's (Qwen2, Mistral, Phi-3 alike: the normalized input
cast back to the input's dtype, then times the weight) and Gemma's (times 1 + weight in fp32, then cast). Each
norm class is checked once against its own forward on a small input before its norms are replaced; a class
whose forward is neither is left as it is, and said. Like tiled_mlp (ft.model.tiled_mlp), it replaces the
instance's `forward` attribute, so the module tree and saved names stay as they are.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

log = logging.getLogger("ft")

CHUNK_BYTES = 1 << 26  # fp32 bytes of one chunk of rows (64 MiB): the temporaries of the forward and backward
STYLES = ("llama", "gemma")


def _normalized(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x in fp32 times its reciprocal root mean square, that factor): as the models compute it."""
    x32 = x.float()
    factor = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return x32 * factor, factor


def _rows(width: int) -> int:
    return max(1, CHUNK_BYTES // (4 * width))


class ChunkedRMSNorm(torch.autograd.Function):
    """x → the norm of `style` with `weight`; saves x itself, the weight and one fp32 factor per token."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float, style: str) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        dtype = x.dtype if style == "gemma" else torch.promote_types(weight.dtype, x.dtype)
        out = torch.empty(flat.shape, dtype=dtype, device=x.device)
        factors = torch.empty(flat.shape[0], 1, dtype=torch.float32, device=x.device)
        step = _rows(flat.shape[1])
        for start in range(0, flat.shape[0], step):
            y, factor = _normalized(flat[start:start + step], eps)
            factors[start:start + step] = factor
            if style == "gemma":
                out[start:start + step] = (y * (1.0 + weight.float())).to(dtype)
            else:
                out[start:start + step] = weight * y.to(x.dtype)
        ctx.save_for_backward(x, weight, factors)
        ctx.style = style
        return out.view(*x.shape[:-1], x.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, factors = ctx.saved_tensors
        flat, g_flat = x.reshape(-1, x.shape[-1]), grad.reshape(-1, x.shape[-1])
        dx = torch.empty_like(flat)
        dw = torch.zeros(flat.shape[1], dtype=torch.float32, device=x.device) if ctx.needs_input_grad[1] else None
        step = _rows(flat.shape[1])
        for start in range(0, flat.shape[0], step):  # three chunk-sized fp32 tensors at a time: y, dy, dy·y
            factor, g = factors[start:start + step], g_flat[start:start + step]
            y = flat[start:start + step].float() * factor
            if ctx.style == "gemma":
                dy = g * (1.0 + weight.float())  # fp32 by promotion: the model's g.float() · (1 + w)
                if dw is not None:
                    dw += (g * y).sum(0)
            else:  # the model's autograd: weight * y.to(dtype), then the cast's gradient back in fp32
                dy = (g * weight).float()
                if dw is not None:
                    dw += (g * y.to(x.dtype)).float().sum(0)
            # d/dx of y = x·r, r = (mean(x²) + eps)^-1/2: r·dy − x·r³·mean(dy·x) = r·(dy − y·mean(dy·y))
            dy.addcmul_(y, (dy * y).mean(-1, keepdim=True), value=-1).mul_(factor)
            dx[start:start + step] = dy
        return dx.view_as(x), (dw.to(weight.dtype) if dw is not None else None), None, None


def _eps(module: Any) -> float | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def _forward(module: Any, style: str, hidden: Any) -> Any:
    return ChunkedRMSNorm.apply(hidden, module.weight, _eps(module), style)


def _style(module: Any) -> str | None:
    """The formula the module's own forward computes ('llama', 'gemma' or None), from one small input and a random
    weight of its weight's shape and dtype (on the CPU: the module may still be on the meta device)."""
    from torch.func import functional_call

    shape, dtype = module.weight.shape, module.weight.dtype
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(shape, generator=generator).to(dtype)
    x = torch.randn(3, shape[-1], generator=generator).to(dtype)
    with torch.no_grad():
        own = functional_call(module, {"weight": weight}, (x,))
        for style in STYLES:
            ours = ChunkedRMSNorm.apply(x, weight, _eps(module), style)
            if ours.dtype == own.dtype and torch.equal(ours, own):
                return style
    return None


def chunk_norms(model: Any) -> int:
    """Replace the forward of every RMSNorm whose formula is one of STYLES; returns how many were replaced."""
    styles: dict[type, str | None] = {}
    changed = 0
    for module in model.modules():
        kind = type(module)
        if not kind.__name__.endswith("RMSNorm") or getattr(module, "weight", None) is None or _eps(module) is None:
            continue
        if isinstance(module.forward, functools.partial):
            continue  # replaced already
        if kind not in styles:
            styles[kind] = _style(module)
        if styles[kind] is not None:
            module.forward = functools.partial(_forward, module, styles[kind])
            changed += 1
    left = sorted(k.__name__ for k, s in styles.items() if s is None)
    if left:
        log.warning("chunked_rms_norm: %s computes another formula than the norms ft knows: left as it is",
                    ", ".join(left))
    log.info("chunked_rms_norm: %d RMSNorms keep their input as it is (no fp32 copy) and work in chunks of %d MiB",
             changed, CHUNK_BYTES >> 20)
    return changed
