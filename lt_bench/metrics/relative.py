"""Relative accuracy of the long-tailed survey (Zhang et al., TPAMI 2023, §4.1; metrics.md §2.2)."""

from __future__ import annotations

import math


def relative_accuracy(
    acc_lt: float, acc_vanilla_balanced: float, acc_method_balanced: float | None = None
) -> float:
    """``A_r = A_t / A_u`` with the upper reference ``A_u = max(A_v, A_b)``.

    ``acc_lt`` (A_t) is the method's top-1 accuracy when trained on the long-tailed set;
    ``acc_vanilla_balanced`` (A_v) is plain cross-entropy trained on the size-matched balanced
    variant of the training set; ``acc_method_balanced`` (A_b) is the method itself trained on that
    balanced set (omit it when it is known not to beat A_v, so ``A_u = A_v``). All three are tested
    on the balanced test set and share one unit (fractions or percent). Survey Table 4, Softmax:
    45.5 / 57.3 = 0.794.
    """
    refs = {
        "acc_vanilla_balanced": acc_vanilla_balanced,
        "acc_method_balanced": acc_method_balanced,
    }
    for name, value in refs.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite accuracy, got {value}")
    upper = max(v for v in refs.values() if v is not None)
    return acc_lt / upper
