"""The `lr_scheduler:` names ft accepts, each mapped to a transformers SchedulerType value."""

from __future__ import annotations

from typing import Optional

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


def cosine_then_constant(step: int, warmup: int, total: int, constant_ratio: Optional[float], min_ratio: float,
                         quadratic: bool = False) -> float:
    """The learning rate's factor: warmup (linear, or along (step / warmup)² with `quadratic`: Axolotl's
    lr_quadratic_warmup), a half cosine from 1 down to `min_ratio` reached at `constant_ratio` × `total` steps (at
    the last step when None), then `min_ratio` to the end (Axolotl's cosine_constant_lr_ratio)."""
    import math

    if step < warmup:
        share = step / max(1, warmup)
        return share * share if quadratic else share
    floor_at = max(warmup + 1, int(constant_ratio * total) if constant_ratio is not None else total)
    if step >= floor_at:
        return min_ratio
    progress = (step - warmup) / (floor_at - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
