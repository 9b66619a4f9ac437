"""Evaluation metrics: shot groups, the all-in-one ``LTMetrics`` and the survey's relative accuracy."""

from lt_bench.metrics.lt_metrics import LTMetrics
from lt_bench.metrics.relative import relative_accuracy
from lt_bench.metrics.shots import shot_groups

__all__ = ["LTMetrics", "relative_accuracy", "shot_groups"]
