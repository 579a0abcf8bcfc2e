"""The `lr_scheduler:` names ft accepts, each mapped to a transformers SchedulerType value."""

from __future__ import annotations

from ft.registry import Registry

SCHEDULERS: Registry[str] = Registry("lr_scheduler")

for _name in (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
):
    SCHEDULERS.add(_name, _name)


def cosine_then_constant(step: int, warmup: int, total: int, constant_ratio: float, min_ratio: float) -> float:
    """The learning rate's factor: linear warmup, a half cosine from 1 down to `min_ratio` reached at
    `constant_ratio` × `total` steps, then `min_ratio` to the end (Axolotl's cosine_constant_lr_ratio)."""
    import math

    if step < warmup:
        return step / max(1, warmup)
    floor_at = max(warmup + 1, int(constant_ratio * total))
    if step >= floor_at:
        return min_ratio
    progress = (step - warmup) / (floor_at - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
