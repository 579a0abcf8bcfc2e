"""`optimizer: muon`: Muon (Jordan et al., 2024) on the hidden layers' weight matrices, AdamW on the rest.

Muon's update of a weight matrix is its Nesterov momentum made orthogonal by five Newton–Schulz iterations (in
bf16 when training in bf16 or fp16, as PyTorch's torch.optim.Muon always does; in fp32 when training in fp32,
where bf16's rounding would be blown up in the directions the gradient barely has), scaled by
sqrt(max(1, rows / cols)); the weight also decays by lr × weight_decay. AdamW's step is written here too, so
that one optimizer (one state to checkpoint and shard) holds both groups. Embeddings, the head and every vector (norms, biases) take AdamW (the config's betas and
epsilon) at the same learning rate, as Muon's authors train them. One process gives what torch.optim.Muon and
torch.optim.AdamW give (tests/test_muon.py). A weight FSDP2 shards has its update gathered once a step and made
orthogonal whole on each process, which keeps its own rows (sharded DTensors would be redistributed at each of
the iteration's matrix products); the momentum and AdamW's moments stay sharded. Two processes train as one
(tests/test_fsdp_cpu.py).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic iteration's coefficients (Jordan et al.)
NS_STEPS = 5
NS_EPS = 1e-7


def orthogonalize(update: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The matrix's orthogonal part, approximately (U S' V^T with S' near 1), by the quintic Newton–Schulz
    iteration in `dtype` on the wider orientation."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=NS_EPS)
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _mine(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's part of `whole`, laid out as the sharded `like` (a DTensor), or `whole` itself."""
    if not hasattr(like, "device_mesh"):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


class Muon(torch.optim.Optimizer):
    """Groups with `muon: True` take Muon's update, the others AdamW's."""

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, weight_decay: float = 0.0, momentum: float = 0.95,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 ns_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__(list(groups), dict(lr=lr, weight_decay=weight_decay, momentum=momentum, betas=betas, eps=eps,
                                            muon=False))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._muon if group["muon"] else self._adamw)(p, group)
        return loss

    def _muon(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf, momentum = state["momentum_buffer"], group["momentum"]
        buf.lerp_(p.grad, 1 - momentum)
        update = _mine(orthogonalize(_whole(p.grad.lerp(buf, momentum)), self.ns_dtype), p)
        rows, cols = p.shape[:2]
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update.to(p.dtype), alpha=-group["lr"] * math.sqrt(max(1, rows / cols)))

    def _adamw(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        (beta1, beta2), lr = group["betas"], group["lr"]
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        p.mul_(1 - lr * group["weight_decay"])
        denominator = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** step)).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1 ** step))


def muon_groups(model: Any) -> list[dict[str, Any]]:
    """The trainable parameters in two groups: the hidden layers' weight matrices (Muon), and the embeddings, the
    head and every vector (AdamW)."""
    outer = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    matrices, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (matrices if p.ndim == 2 and id(p) not in outer else rest).append(p)
    return [{"params": matrices, "muon": True}, {"params": rest, "muon": False}]
