"""Learning-rate schedules as per-epoch multipliers of the base learning rate (methods.md §0.6)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from lt_bench.errors import ConfigError

SCHEDULES = ("warmup_step", "cosine", "balms_cosine", "constant")


def warmup_step(warmup_epochs: int, milestones: Sequence[int], gamma: float) -> Callable[[int], float]:
    """``f(e) = gamma ** #{m in milestones : e >= m}``, times ``(e + 1) / warmup`` while ``e < warmup``.

    ``e`` counts completed epochs (0 during the first). With milestones (160, 180), gamma 0.01 and
    warm-up 5 this is LDAM-DRW's ``adjust_learning_rate``; SADE/MDCS use gamma 0.1.
    """

    def factor(epoch: int) -> float:
        f = gamma ** sum(epoch >= m for m in milestones)
        if epoch < warmup_epochs:
            f *= (epoch + 1) / warmup_epochs
        return f

    return factor


def cosine(warmup_epochs: int, max_epochs: int, min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up, then ``r + (1 - r) * (1 + cos(pi * t)) / 2`` with ``t`` the decay progress."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / warmup_epochs
        span = max(max_epochs - warmup_epochs, 1)
        t = min((epoch - warmup_epochs) / span, 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def balms_cosine(warmup_epochs: int, max_epochs: int, peak_factor: float) -> Callable[[int], float]:
    """BALMS's ``CosineAnnealingLRWarmup`` (BatchFormer's BalancedSoftmax code), stepped at each epoch's
    start, so epoch ``e`` (0-based) runs at its step ``t = e + 1``: a linear rise from the base rate
    (factor 1 at t = 1) to ``peak_factor`` over ``warmup_epochs`` steps, then cosine from the peak to 0::

        f = 1 + (peak - 1) * (t - 1) / (W - 1)                      if t < W
        f = peak * (1 + cos(pi * (t - W) / (T - W))) / 2            otherwise

    with ``T = max_epochs``: the last epoch runs at rate 0, as in the official code.
    """
    if warmup_epochs < 2 or max_epochs <= warmup_epochs:
        raise ConfigError(
            f"schedule balms_cosine needs 2 <= schedule.warmup_epochs < trainer.max_epochs, got "
            f"{warmup_epochs} and {max_epochs}; set schedule.warmup_epochs (e.g. "
            f"schedule.warmup_epochs={max(2, min(warmup_epochs, max_epochs - 1))}) or trainer.max_epochs"
        )

    def factor(epoch: int) -> float:
        t = epoch + 1
        if t < warmup_epochs:
            return 1 + (peak_factor - 1) * (t - 1) / (warmup_epochs - 1)
        progress = min((t - warmup_epochs) / (max_epochs - warmup_epochs), 1.0)
        return peak_factor * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def lr_factor(schedule: dict, lr: float, max_epochs: int) -> Callable[[int], float]:
    """The multiplier function named by a ``schedule`` config node."""
    name = schedule["name"]
    if name == "warmup_step":
        return warmup_step(schedule["warmup_epochs"], schedule["milestones"], schedule["gamma"])
    if name == "cosine":
        return cosine(schedule["warmup_epochs"], max_epochs, schedule.get("min_lr", 0.0) / lr)
    if name == "balms_cosine":
        return balms_cosine(schedule["warmup_epochs"], max_epochs, schedule["peak_factor"])
    if name == "constant":
        return lambda epoch: 1.0
    raise ConfigError(f"unknown schedule.name '{name}'; valid: {', '.join(SCHEDULES)}")
