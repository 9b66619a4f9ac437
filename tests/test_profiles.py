"""Imbalance profiles and the standard CIFAR-LT subset construction (methods.md §0.1).

The reference below is our own transcription of LDAM-DRW's ``IMBALANCECIFAR10`` generator
(``get_img_num_per_cls`` + ``gen_imbalanced_data``): ``imb_factor = 1/IF`` as a literal, class
counts from ``img_max * imb_factor ** (cls_idx / (cls_num - 1.0))`` truncated by ``int``, then
``np.random.seed(0)`` once and, for the classes of ``np.unique(targets)`` in order,
``np.random.shuffle`` of ``np.where(targets == c)[0]`` keeping the first ``n_c``.
"""

from __future__ import annotations

import numpy as np
import pytest

from lt_bench.data.profiles import check_imbalance_factor, class_counts, long_tailed_indices
from lt_bench.errors import ConfigError

# imb_factor as LDAM-DRW's command line passes it (``--imb_factor 0.01``)
IMB_FACTOR = {100: 0.01, 50: 0.02, 10: 0.1, 200: 0.005}


def ldam_counts(img_max: int, cls_num: int, imb_factor: float) -> list[int]:
    """``IMBALANCECIFAR10.get_img_num_per_cls`` for ``imb_type='exp'``."""
    img_num_per_cls = []
    for cls_idx in range(cls_num):
        num = img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))
        img_num_per_cls.append(int(num))
    return img_num_per_cls


def ldam_subset(targets: np.ndarray, img_num_per_cls: list[int], seed: int = 0) -> list[np.ndarray]:
    """``IMBALANCECIFAR10.gen_imbalanced_data``: the kept indices of each class, class by class.

    The global legacy RNG is restored afterwards so that the reference leaves no trace either.
    """
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        targets_np = np.array(targets, dtype=np.int64)
        classes = np.unique(targets_np)
        kept = []
        for the_class, the_img_num in zip(classes, img_num_per_cls, strict=True):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            kept.append(idx[:the_img_num])
        return kept
    finally:
        np.random.set_state(saved)


def interleaved_targets(num_classes: int, per_class: int, seed: int = 7) -> np.ndarray:
    """Balanced labels in a shuffled (interleaved) order, like the real CIFAR batches."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


# --- counts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_max", "num_classes", "imbalance", "total", "n_min"),
    [
        (5000, 10, 100, 12_406, 50),
        (5000, 10, 50, 13_996, 100),
        (5000, 10, 10, 20_431, 500),
        (500, 100, 100, 10_847, 5),
        (500, 100, 50, 12_608, 10),
        (500, 100, 10, 19_573, 50),
        (500, 100, 200, 9_502, 2),
    ],
)
def test_exp_counts_match_methods_table(
    n_max: int, num_classes: int, imbalance: int, total: int, n_min: int
) -> None:
    counts = class_counts(n_max, num_classes, imbalance)
    assert counts == ldam_counts(n_max, num_classes, IMB_FACTOR[imbalance])
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == n_min
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    assert all(isinstance(n, int) for n in counts)


def test_cifar10_if100_count_list() -> None:
    assert class_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize(
    ("imbalance", "groups"),
    [(100, (35, 35, 30)), (50, (41, 41, 18)), (10, (69, 31, 0)), (200, (30, 31, 39))],
)
def test_cifar100_shot_group_sizes(imbalance: int, groups: tuple[int, int, int]) -> None:
    counts = np.array(class_counts(500, 100, imbalance))
    many, few = int((counts > 100).sum()), int((counts < 20).sum())
    assert (many, 100 - many - few, few) == groups


def test_counts_truncate_instead_of_rounding() -> None:
    # CIFAR-10 IF=100, class 2: 5000 * 0.01 ** (2/9) = 1796.9..., which rounds to 1797
    exact = 5000 * 0.01 ** (2 / 9)
    assert round(exact) == 1797
    assert class_counts(5000, 10, 100)[2] == 1796
    # every class of CIFAR-100 IF=100: the count is the floor of the exact value
    exact_all = [500 * 0.01 ** (i / 99) for i in range(100)]
    assert class_counts(500, 100, 100) == [int(np.floor(v)) for v in exact_all]
    assert class_counts(500, 100, 100) != [round(v) for v in exact_all]


def test_float_imbalance_factor_and_if_one() -> None:
    assert class_counts(500, 100, 1) == [500] * 100
    assert class_counts(100, 3, 4.0) == [100, 50, 25]
    assert class_counts(7, 1, 100) == [7]


def test_step_profile() -> None:
    # Buda et al. step imbalance as in LDAM-DRW: the last half of the classes get n_max / IF
    assert class_counts(5000, 10, 100, profile="step") == [5000] * 5 + [50] * 5
    assert class_counts(500, 100, 10, profile="step") == [500] * 50 + [50] * 50
    assert class_counts(500, 100, 3, profile="step") == [500] * 50 + [166] * 50  # int(166.67)
    assert class_counts(500, 10, 10, profile="step", step_fraction=0.3) == [500] * 7 + [50] * 3


@pytest.mark.parametrize("imbalance", [0.5, 0.999, 0, -3, float("nan")])
def test_imbalance_factor_below_one_raises(imbalance: float) -> None:
    with pytest.raises(ConfigError, match="imbalance_factor") as excinfo:
        class_counts(500, 100, imbalance)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(ConfigError):
        check_imbalance_factor(imbalance)


def test_unknown_profile_raises() -> None:
    with pytest.raises(ConfigError, match="exp, step"):
        class_counts(500, 100, 100, profile="linear")


# --- which samples are kept -----------------------------------------------------------------------


@pytest.mark.parametrize(("num_classes", "per_class"), [(10, 500), (100, 50)])
@pytest.mark.parametrize("imbalance", [100, 50, 10])
def test_long_tailed_indices_match_ldam_generator(num_classes: int, per_class: int, imbalance: int) -> None:
    targets = interleaved_targets(num_classes, per_class)
    counts = ldam_counts(per_class, num_classes, IMB_FACTOR[imbalance])
    subset, unused = long_tailed_indices(targets, class_counts(per_class, num_classes, imbalance))
    kept = ldam_subset(targets, counts)
    assert subset.dtype == np.int64
    assert np.array_equal(subset, np.concatenate(kept))
    # class blocks, class 0 first
    assert np.array_equal(targets[subset], np.repeat(np.arange(num_classes), counts))
    # the unused rest of each class: its other images, disjoint from the kept ones
    for c in range(num_classes):
        assert len(unused[c]) == per_class - counts[c]
        assert np.all(targets[unused[c]] == c)
        assert set(unused[c]).isdisjoint(subset)
        assert sorted([*kept[c], *unused[c]]) == np.flatnonzero(targets == c).tolist()


def test_kept_samples_are_not_the_first_in_file_order() -> None:
    targets = interleaved_targets(10, 500)
    subset, _ = long_tailed_indices(targets, class_counts(500, 10, 100))
    first_in_order = np.concatenate(
        [np.flatnonzero(targets == c)[:n] for c, n in enumerate(class_counts(500, 10, 100))]
    )
    assert not np.array_equal(np.sort(subset), np.sort(first_in_order))


def test_other_seed_gives_other_subset() -> None:
    targets = interleaved_targets(10, 200)
    counts = class_counts(200, 10, 10)
    seed3 = long_tailed_indices(targets, counts, seed=3)[0]
    assert np.array_equal(seed3, np.concatenate(ldam_subset(targets, counts, seed=3)))
    assert not np.array_equal(seed3, long_tailed_indices(targets, counts, seed=0)[0])


def test_subsets_are_nested_across_imbalance_factors() -> None:
    targets = interleaved_targets(100, 500)
    blocks = {}
    for imbalance in (10, 50, 100, 200):
        counts = class_counts(500, 100, imbalance)
        subset, _ = long_tailed_indices(targets, counts)
        bounds = np.cumsum([0, *counts])
        blocks[imbalance] = [subset[bounds[c] : bounds[c + 1]] for c in range(100)]
    for c in range(100):
        ten = blocks[10][c]
        for imbalance in (50, 100, 200):
            smaller = blocks[imbalance][c]
            assert np.array_equal(ten[: len(smaller)], smaller)  # a prefix, hence a subset


def test_global_numpy_rng_state_is_unchanged() -> None:
    np.random.seed(12345)
    before = np.random.get_state()
    expected_next = np.random.random(5)
    np.random.set_state(before)
    long_tailed_indices(interleaved_targets(10, 100), class_counts(100, 10, 10))
    after = np.random.get_state()
    assert after[0] == before[0] and np.array_equal(after[1], before[1]) and after[2:] == before[2:]
    assert np.array_equal(np.random.random(5), expected_next)


def test_class_needing_more_images_than_available_raises() -> None:
    targets = np.repeat(np.arange(3), [10, 4, 10])
    with pytest.raises(ConfigError, match="class 1 needs 8 images but the source has 4"):
        long_tailed_indices(targets, [10, 8, 5])


def test_balanced_profile_has_the_exponential_total_spread_evenly() -> None:
    """The balanced variant for relative accuracy: same total (to within C - 1), equal classes."""
    from lt_bench.data.profiles import class_counts as counts

    assert counts(5000, 10, 100, "balanced") == [1240] * 10  # 12,406 // 10
    assert counts(500, 100, 100, "balanced") == [108] * 100  # 10,847 // 100


def test_tlc_profile_is_tlcs_own_generator() -> None:
    """methods.md §0.1: TLC keeps int(n_max·exp(-i/d) + 0.5) + 1 images (at most n_max): CIFAR-10
    5000 … 84, CIFAR-100 500 … 7 with 11,222 images; no imbalance factor."""
    c10 = class_counts(5000, 10, 100, "tlc")
    assert c10[0] == 5000 and c10[-1] == 84 and sum(c10) == 13_540
    assert c10 == class_counts(5000, 10, 1, "tlc")  # the imbalance factor plays no part
    assert c10[1] == int(5000 * np.exp(-1 / 2.1971) + 0.5) + 1 == 3173
    c100 = class_counts(500, 100, 100, "tlc")
    assert c100[0] == 500 and c100[-1] == 7 and sum(c100) == 11_222
    with pytest.raises(ConfigError, match="tlc profile exists for"):
        class_counts(100, 7, 100, "tlc")
