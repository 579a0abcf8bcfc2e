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
