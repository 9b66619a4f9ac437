"""Held-out validation splits and the test-agnostic evaluation sets (metrics.md §2.6)."""

from __future__ import annotations

import numpy as np

from lt_bench.data.base import Split
from lt_bench.data.profiles import long_tailed_indices

TEST_AGNOSTIC_IMBALANCES = (2, 5, 10, 25, 50)


def validation_from_unused(unused: list[np.ndarray], per_class: int) -> tuple[np.ndarray, list[int]]:
    """A class-balanced validation split from training images the long-tailed subset leaves unused.

    Each class with at least ``per_class`` unused images gives the first ``per_class`` of them (in
    the order the subset construction shuffled them); the others give none and are returned as the
    missing classes. The long-tailed training set is untouched, so it stays identical to the papers'.
    """
    chosen, missing = [], []
    for c, rest in enumerate(unused):
        if len(rest) >= per_class:
            chosen.append(rest[:per_class])
        else:
            missing.append(c)
    indices = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return indices.astype(np.int64), missing


def test_agnostic_counts(
    test_counts: np.ndarray, train_counts: np.ndarray, direction: str, imbalance: float
) -> list[int]:
    """Per-class sizes of a skewed test set (SADE / LADE protocol).

    Classes are ranked by training frequency (most frequent first, ties by class index). The class
    of rank k keeps ``int(m_c * (1/IF) ** (k / (C-1)))`` of its ``m_c`` test images for ``forward``
    and ``int(m_c * (1/IF) ** ((C-1-k) / (C-1)))`` for ``backward``.
    """
    num_classes = len(train_counts)
    rank = np.empty(num_classes, dtype=np.int64)
    rank[np.argsort(-np.asarray(train_counts), kind="stable")] = np.arange(num_classes)
    if direction == "forward":
        exponent = rank / max(num_classes - 1, 1)
    elif direction == "backward":
        exponent = (num_classes - 1 - rank) / max(num_classes - 1, 1)
    else:
        raise ValueError(f"direction must be forward or backward, not {direction!r}")
    return [int(m * (1.0 / imbalance) ** e) for m, e in zip(test_counts, exponent, strict=True)]


def test_agnostic_sets(
    test: Split,
    train_counts: np.ndarray,
    imbalances: tuple[float, ...] = TEST_AGNOSTIC_IMBALANCES,
    seed: int = 0,
) -> dict[str, Split]:
    """``forward_<IF>``, ``uniform`` and ``backward_<IF>`` subsets of the test split.

    Images are chosen as in the training-subset construction (legacy ``np.random.seed(seed)``, a
    per-class shuffle in class order), so the sets are deterministic. ``uniform`` is the full test
    split. Evaluate them without augmentation (SADE's code augments them; we do not).
    """
    test_counts = np.bincount(test.targets, minlength=len(train_counts))
    sets: dict[str, Split] = {}
    for imbalance in imbalances:
        counts = test_agnostic_counts(test_counts, train_counts, "forward", imbalance)
        sets[f"forward_{imbalance:g}"] = test.subset(long_tailed_indices(test.targets, counts, seed)[0])
    sets["uniform"] = test
    for imbalance in imbalances:
        counts = test_agnostic_counts(test_counts, train_counts, "backward", imbalance)
        sets[f"backward_{imbalance:g}"] = test.subset(long_tailed_indices(test.targets, counts, seed)[0])
    return sets
