"""`use_onebitllms: true`: BitNet b1.58 training (Ma et al. 2024, "The Era of 1-bit LLMs"), as Falcon-E's
onebitllms trains it: each linear layer but the output head computes with its weight ternarized and its input
quantized to 8 bits, while the full-precision weight is what the optimizer updates (straight-through estimator).

    weight: s = 1 / max(mean |W|, 1e-5);        W_q = clamp(⌊W·s + ½⌋, −1, 1) / s   (one scale per matrix)
    input:  s = 127 / max(max_j |x_j|, 1e-5);   x_q = clamp(⌊x·s + ½⌋, −128, 127) / s (one scale per token)
    y = x_q · W_qᵀ + b, with ∂y/∂W and ∂y/∂x taken as if W_q = W and x_q = x.

onebitllms does this in Triton kernels (CUDA only); these are the same operations in torch, on any device. The
layers keep their class's weight and bias, so checkpoints hold the latent full-precision weights.
"""

from __future__ import annotations

from typing import Any

import torch


def ternary(w: torch.Tensor) -> torch.Tensor:
    """The weight ternarized, computed in fp32 (as the kernels do), in the weight's dtype."""
    f = w.float()
    scale = 1.0 / f.abs().mean().clamp(min=1e-5)
    return (torch.floor(f * scale + 0.5).clamp(-1, 1) / scale).to(w.dtype)


def eight_bit(x: torch.Tensor) -> torch.Tensor:
    """The input quantized to 8 bits per token, computed in fp32, in the input's dtype."""
    f = x.float()
    scale = 127.0 / f.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (torch.floor(f * scale + 0.5).clamp(-128, 127) / scale).to(x.dtype)


class BitLinear(torch.nn.Linear):
    """An nn.Linear whose forward uses the quantized weight and input, gradients straight through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = x + (eight_bit(x) - x).detach()
        w_q = self.weight + (ternary(self.weight) - self.weight).detach()
        return torch.nn.functional.linear(x_q, w_q, self.bias)


def to_bitnet(model: Any) -> int:
    """Every nn.Linear of the model but its output head computes as BitLinear (in place); returns how many."""
    head = model.get_output_embeddings()
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module is not head:
            module.__class__ = BitLinear
            count += 1
    return count
