"""The dataset contract shared by every loader: train / val / test splits plus class metadata.

Small-image datasets (CIFAR, Fashion-MNIST) hold decoded uint8 arrays (``ArraySplit``), so they can
live in memory or on the GPU and be augmented in batches. Large datasets (ImageNet-LT, Places-LT,
iNaturalist) hold image paths read from the official list files (``FileSplit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.metrics.shots import shot_groups


@dataclass
class ArraySplit:
    """Decoded images ``[N, H, W, C]`` (uint8) with integer labels ``[N]``."""

    images: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError("ArraySplit.images must be uint8 [N, H, W, C]")
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if len(self.images) != len(self.targets):
            raise ValueError("ArraySplit: images and targets differ in length")

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: np.ndarray) -> ArraySplit:
        return ArraySplit(self.images[indices], self.targets[indices])


@dataclass
class FileSplit:
    """Image files ``root / paths[i]`` with integer labels, as read from an official list file."""

    root: Path
    paths: list[str]
    targets: np.ndarray

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if len(self.paths) != len(self.targets):
            raise ValueError("FileSplit: paths and targets differ in length")

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: np.ndarray) -> FileSplit:
        return FileSplit(self.root, [self.paths[i] for i in indices], self.targets[indices])


Split = ArraySplit | FileSplit


@dataclass
class LTDataset:
    """A long-tailed dataset: splits, class names and the provenance of the training subset.

    ``train_indices`` are the positions of the long-tailed training images inside the source's full
    training set (CIFAR-LT, Fashion-MNIST-LT), so a run record can cite the exact subset.
    ``eval_sets`` holds extra evaluation splits such as the test-agnostic ones (``forward_50``).
    """

    name: str
    class_names: list[str]
    train: Split
    test: Split
    val: Split | None = None
    train_indices: np.ndarray | None = None
    eval_sets: dict[str, Split] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_counts(self) -> np.ndarray:
        """Training images per class, in class order (``n_c``)."""
        return np.bincount(self.train.targets, minlength=self.num_classes)

    @property
    def imbalance_factor(self) -> float:
        """Realised imbalance factor ``max_c n_c / min_c n_c`` over classes with images."""
        counts = self.train_counts[self.train_counts > 0]
        return float(counts.max() / counts.min())

    def shot_groups(self) -> dict[str, list[int]]:
        return shot_groups(self.train_counts)
