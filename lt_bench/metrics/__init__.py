"""Evaluation metrics: shot groups, the all-in-one ``LTMetrics`` and the survey's relative accuracy.

``LTMetrics`` and ``shot_groups`` (torch, torchmetrics) load on first use, so tables and reports, which
need only ``relative_accuracy``, start without importing torch (PEP 562)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from lt_bench.metrics.relative import relative_accuracy

if TYPE_CHECKING:
    from lt_bench.metrics.lt_metrics import LTMetrics
    from lt_bench.metrics.shots import shot_groups

__all__ = ["LTMetrics", "relative_accuracy", "shot_groups"]

_LAZY = {"LTMetrics": "lt_bench.metrics.lt_metrics", "shot_groups": "lt_bench.metrics.shots"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
