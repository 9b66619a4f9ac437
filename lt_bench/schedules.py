"""Learning-rate schedules as per-epoch multipliers of the base learning rate (methods.md §0.6)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from lt_bench.errors import ConfigError

SCHEDULES = ("warmup_step", "cosine", "constant")


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


def lr_factor(schedule: dict, lr: float, max_epochs: int) -> Callable[[int], float]:
    """The multiplier function named by a ``schedule`` config node."""
    name = schedule["name"]
    if name == "warmup_step":
        return warmup_step(schedule["warmup_epochs"], schedule["milestones"], schedule["gamma"])
    if name == "cosine":
        return cosine(schedule["warmup_epochs"], max_epochs, schedule.get("min_lr", 0.0) / lr)
    if name == "constant":
        return lambda epoch: 1.0
    raise ConfigError(f"unknown schedule.name '{name}'; valid: {', '.join(SCHEDULES)}")
