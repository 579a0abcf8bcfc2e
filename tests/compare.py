"""Comparing tensors across two computations, relative to the size of what is compared.

Two computations of the same thing in fp32 (packed against one by one, chunked against plain, tiled against
whole) differ by rounding: the same sums added in another order. That rounding scales with the magnitude of
the values, and it differs from CPU to CPU (AVX512-BF16 and AMX machines choose other kernels, so other
summation orders), so an absolute bound that holds on one machine fails on another. Every comparison here
is relative: each tensor's largest difference over its own largest entry. fp32 round-off measured this way
is a few 1e-7; the bugs the tests plant (a row seeing another row) are 1e-1 and more.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Union

Tensors = Union[Mapping[str, Any], Iterable[Any]]


def _pairs(got: Tensors, want: Tensors) -> list[tuple[Any, Any]]:
    if isinstance(want, Mapping):
        assert isinstance(got, Mapping) and set(got) == set(want), "the two sides hold different tensors"
        return [(got[k], want[k]) for k in want]
    pairs = [(a, b) for a, b in zip(got, want) if b is not None]
    assert pairs, "nothing to compare"
    return pairs


def relative_difference(got: Tensors, want: Tensors) -> float:
    """max over tensors of max|got - want| / max|want| (a tensor of zeros is compared absolutely)."""
    worst = 0.0
    for a, b in _pairs(got, want):
        a, b = a.detach().double(), b.detach().double()
        scale = float(b.abs().max()) if b.numel() else 0.0
        worst = max(worst, float((a - b).abs().max()) / (scale if scale > 0 else 1.0) if b.numel() else 0.0)
    return worst


def scaled_difference(got: Tensors, want: Tensors) -> float:
    """max over tensors of max|got - want|, over the largest entry of all `want` tensors together: the bf16
    measure (a small tensor's relative error in bf16 can be large without anything being wrong)."""
    pairs = _pairs(got, want)
    scale = max(float(b.detach().abs().max()) for _, b in pairs) or 1.0
    return max(float((a.detach().double() - b.detach().double()).abs().max()) for a, b in pairs) / scale


def update_difference(got: Tensors, want: Tensors, start: Tensors) -> float:
    """Weights trained two ways from the same `start`: max over tensors of max|got - want| over the largest change
    training made to that tensor (max|want - start|). After several Adam steps this is the measure to bound: Adam
    divides each gradient by its own running size, so a weight whose gradient is near zero moves by a step-sized
    amount whatever its rounding, and the weights of two summation orders differ by a share of the update, not of
    the weight (a weight that did not move is compared absolutely)."""
    worst = 0.0
    starts = _pairs(start, want)
    for (a, b), (s, _) in zip(_pairs(got, want), starts):
        a, b, s = a.detach().double(), b.detach().double(), s.detach().double()
        moved = float((b - s).abs().max()) if b.numel() else 0.0
        worst = max(worst, float((a - b).abs().max()) / (moved if moved > 0 else 1.0) if b.numel() else 0.0)
    return worst
