"""Imbalance profiles and the standard long-tailed subset construction (methods.md §0.1).

The standard CIFAR-LT (LDAM-DRW ``IMBALANCECIFAR10/100``, copied by SADE, MDCS, SBCL, RIDE):

* exponential profile ``n_i = int(n_max * (1/IF) ** (i / (C - 1)))`` (``int`` truncates);
* ``np.random.seed(seed)`` once (legacy global RNG, seed 0), then for classes ``0 .. C-1`` in order:
  take the class's indices in ascending order, ``np.random.shuffle`` them, keep the first ``n_i``.

Every class array has the same length, so each shuffle consumes the same randomness whatever
``n_i`` is: the subsets are nested across imbalance factors.
"""

from __future__ import annotations

import math

import numpy as np

from lt_bench.errors import ConfigError

PROFILES = ("exp", "step", "balanced", "tlc")
#: TLC's ``decay_stride`` per class count (lblaoke/TLC ``data_loader/imbalance_cifar.py``)
TLC_DECAY_STRIDE = {10: 2.1971, 100: 21.9714}


def check_imbalance_factor(imbalance_factor: float) -> float:
    if not 1 <= imbalance_factor < float("inf"):
        raise ConfigError(
            f"dataset.imbalance_factor={imbalance_factor} is below 1 or not finite; "
            "use a ratio n_max/n_min >= 1 "
            "(e.g. dataset.imbalance_factor=100)"
        )
    return float(imbalance_factor)


def class_counts(
    n_max: int,
    num_classes: int,
    imbalance_factor: float,
    profile: str = "exp",
    step_fraction: float = 0.5,
) -> list[int]:
    """Images per class under an imbalance profile.

    ``exp``: ``n_i = int(n_max * IF ** (-i / (C - 1)))``.
    ``step`` (Buda et al., as in LDAM-DRW): the first ``C - int(step_fraction * C)`` classes keep
    ``n_max``, the rest get ``int(n_max / IF)``.
    ``balanced``: the balanced variant of the ``exp`` set for relative accuracy (survey §4.1,
    metrics.md §2.2): ``int(sum(exp counts) / C)`` images per class, the same total size.
    ``tlc``: TLC's own generator (methods.md §0.1, §2.7), which has no imbalance factor (the argument
    is ignored): ``n_i = int(n_max · exp(-i / d) + 0.5)``, of which TLC keeps ``n_i + 1`` images (at
    most the ``n_max`` there are), ``d`` = 2.1971 for 10 classes and 21.9714 for 100: CIFAR-10 5000
    … 84 (13,540 images, effective IF ≈ 60), CIFAR-100 500 … 7 (11,222, IF ≈ 71). The subset is then
    drawn as for every profile (seeded; TLC's own shuffle is unseeded).
    """
    imbalance_factor = check_imbalance_factor(imbalance_factor)
    if profile == "exp":
        if num_classes == 1:
            return [n_max]
        return [int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1))) for i in range(num_classes)]
    if profile == "balanced":
        total = sum(class_counts(n_max, num_classes, imbalance_factor, "exp"))
        return [total // num_classes] * num_classes
    if profile == "tlc":
        if num_classes not in TLC_DECAY_STRIDE:
            raise ConfigError(
                f"the tlc profile exists for {sorted(TLC_DECAY_STRIDE)} classes (TLC's CIFAR generators), "
                f"not {num_classes}; use profile exp"
            )
        stride = TLC_DECAY_STRIDE[num_classes]
        return [min(n_max, int(n_max * math.exp(-i / stride) + 0.5) + 1) for i in range(num_classes)]
    if profile == "step":
        n_minor = int(step_fraction * num_classes)
        return [n_max] * (num_classes - n_minor) + [int(n_max / imbalance_factor)] * n_minor
    raise ConfigError(f"unknown imbalance profile '{profile}'; valid profiles: {', '.join(PROFILES)}")


def class_permutations(targets: np.ndarray, num_classes: int, seed: int = 0) -> list[np.ndarray]:
    """Per-class shuffled indices exactly as the LDAM-DRW generator draws them.

    ``np.random.seed(seed)`` then, class by class, ``np.random.shuffle`` of the class's indices in
    ascending order. The legacy global RNG is saved and restored so callers are unaffected.
    """
    targets = np.asarray(targets)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        perms = []
        for c in range(num_classes):
            idx = np.where(targets == c)[0]
            np.random.shuffle(idx)
            perms.append(idx)
        return perms
    finally:
        np.random.set_state(state)


def long_tailed_indices(
    targets: np.ndarray, counts: list[int], seed: int = 0
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Indices of the long-tailed subset (class blocks, class 0 first) and each class's unused rest.

    Returns ``(subset, unused)`` where ``subset`` concatenates the first ``counts[c]`` of each class's
    permutation and ``unused[c]`` is the remainder of that permutation, in permutation order.
    """
    perms = class_permutations(targets, len(counts), seed)
    for c, (perm, n) in enumerate(zip(perms, counts, strict=True)):
        if n > len(perm):
            raise ConfigError(
                f"class {c} needs {n} images but the source has {len(perm)}; "
                "lower dataset.n_max or check the dataset files"
            )
    subset = np.concatenate([perm[:n] for perm, n in zip(perms, counts, strict=True)])
    unused = [perm[n:] for perm, n in zip(perms, counts, strict=True)]
    return subset.astype(np.int64), unused
