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


def jagged(step: int, period: int, warmup: int, anneal: int, floor: float) -> float:
    """Jagged restarts (Axolotl's JaggedLR, ReLoRA's schedule): the factor on the schedule's rate at `step`. After
    the first period, each period starts at `floor` and warms up linearly over `warmup` steps, and its last `anneal`
    steps fall linearly towards `floor`; the first period is the schedule's own (its warmup does that)."""
    if step < period - anneal:
        return 1.0
    at = step % period
    if at < warmup:
        share = at / warmup
    elif at > period - anneal:
        share = (period - at) / anneal
    else:
        share = 1.0
    return share * (1 - floor) + floor


def with_jagged_restarts(scheduler: object, period: int, warmup: int, anneal: int, floor: float) -> None:
    """A LambdaLR's factors times `jagged` (in place)."""
    from torch.optim.lr_scheduler import LambdaLR

    if not isinstance(scheduler, LambdaLR):
        from ft.errors import UserError

        raise UserError(f"jagged restarts reshape a schedule of factors, and this schedule is a "
                        f"{type(scheduler).__name__}; use cosine, linear or constant")

    def restarted(inner):  # noqa: ANN001, ANN202 - a plain function: LambdaLR keeps no state of it in checkpoints
        def factor(step: int) -> float:
            return inner(step) * jagged(step, period, warmup, anneal, floor)
        return factor

    scheduler.lr_lambdas = [restarted(f) for f in scheduler.lr_lambdas]
    for group, base, f in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * f(scheduler.last_epoch)
