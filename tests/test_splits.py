"""Validation splits from unused images, and the test-agnostic sets (metrics.md §2.6).

The skewed test sets follow SADE's ``TestAgnosticImbalanceCIFAR100DataLoader``: LDAM-DRW's
generator run on the balanced test set, ``n_i = int(100 * rho ** (i / 99))`` (forward) or
``int(100 * rho ** ((99 - i) / 99))`` (backward, ``reverse=True``), ``np.random.seed(0)`` and one
shuffle per class. The reference is transcribed inline below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lt_bench.data import splits  # test_agnostic_* via the module, so pytest does not collect them
from lt_bench.data.base import ArraySplit
from lt_bench.data.splits import TEST_AGNOSTIC_IMBALANCES, validation_from_unused

RHO = {2: 0.5, 5: 0.2, 10: 0.1, 25: 0.04, 50: 0.02}  # SADE's imb_factor for each IR


def sade_counts(img_max: int, cls_num: int, imb_factor: float, reverse: bool) -> list[int]:
    """``get_img_num_per_cls`` of SADE's ImbalanceCIFAR100 with its ``reverse`` flag."""
    out = []
    for cls_idx in range(cls_num):
        if reverse:
            num = img_max * (imb_factor ** ((cls_num - 1 - cls_idx) / (cls_num - 1.0)))
        else:
            num = img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))
        out.append(int(num))
    return out


def sade_subset(targets: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        kept = []
        for the_class, n in zip(np.unique(targets), counts, strict=True):
            idx = np.where(targets == the_class)[0]
            np.random.shuffle(idx)
            kept.append(idx[:n])
        return np.concatenate(kept)
    finally:
        np.random.set_state(saved)


def cifar100_lt_train_counts(imbalance: float = 100) -> np.ndarray:
    return np.array([int(500 * (1 / imbalance) ** (i / 99)) for i in range(100)])


@pytest.fixture(scope="module")
def cifar100_test() -> ArraySplit:
    """10,000 tiny test 'images' (100 per class, interleaved) that store their own index."""
    targets = np.random.default_rng(5).permutation(np.repeat(np.arange(100), 100))
    index = np.arange(len(targets))
    images = np.zeros((len(targets), 1, 1, 2), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = index % 256, index // 256
    return ArraySplit(images, targets)


def stored_index(split: ArraySplit) -> np.ndarray:
    return split.images[:, 0, 0, 0].astype(np.int64) + 256 * split.images[:, 0, 0, 1].astype(np.int64)


# --- validation_from_unused -----------------------------------------------------------------------


def test_validation_from_unused_hand_cases() -> None:
    unused = [np.array([], dtype=np.int64), np.array([14, 10, 12, 11]), np.array([7, 3, 9]), np.array([5])]
    indices, missing = validation_from_unused(unused, 3)
    # first ``per_class`` in the given (shuffled) order, not sorted; a class with exactly 3 counts
    assert indices.tolist() == [14, 10, 12, 7, 3, 9]
    assert indices.dtype == np.int64
    assert missing == [0, 3]


def test_validation_from_unused_none_or_all_missing() -> None:
    indices, missing = validation_from_unused([np.array([1]), np.array([], dtype=np.int64)], 2)
    assert indices.tolist() == [] and indices.dtype == np.int64 and missing == [0, 1]
    indices, missing = validation_from_unused([np.array([4, 2]), np.array([8, 6, 0])], 1)
    assert indices.tolist() == [4, 8] and missing == []


def test_validation_per_class_zero_takes_nothing() -> None:
    indices, missing = validation_from_unused([np.array([1, 2]), np.array([], dtype=np.int64)], 0)
    assert indices.tolist() == [] and missing == []


# --- test_agnostic_counts ------------------------------------------------------------------------


@pytest.mark.parametrize("imbalance", TEST_AGNOSTIC_IMBALANCES)
def test_cifar100_forward_and_backward_counts(imbalance: int) -> None:
    test_counts = np.full(100, 100)
    train_counts = cifar100_lt_train_counts(100)
    forward = splits.test_agnostic_counts(test_counts, train_counts, "forward", imbalance)
    backward = splits.test_agnostic_counts(test_counts, train_counts, "backward", imbalance)
    assert forward == sade_counts(100, 100, RHO[imbalance], reverse=False)
    assert backward == sade_counts(100, 100, RHO[imbalance], reverse=True)
    assert backward == forward[::-1]
    assert forward[0] == 100 and forward[-1] == int(100 * RHO[imbalance])


def test_cifar100_forward50_size() -> None:
    train_counts = cifar100_lt_train_counts(100)  # decreasing, with ties in the tail
    forward = splits.test_agnostic_counts(np.full(100, 100), train_counts, "forward", 50)
    assert sum(forward) == sum(int(100 * 0.02 ** (i / 99)) for i in range(100))
    assert forward[-1] == 2


def test_rank_follows_training_frequency_not_class_index() -> None:
    rng = np.random.default_rng(11)
    distinct = 1000 - 7 * np.arange(100)  # strictly decreasing
    train_counts = rng.permutation(distinct)
    rank = np.array([(train_counts > n).sum() for n in train_counts])  # 0 = most frequent
    for imbalance in (10, 50):
        rho = RHO[imbalance]
        forward = splits.test_agnostic_counts(np.full(100, 100), train_counts, "forward", imbalance)
        backward = splits.test_agnostic_counts(np.full(100, 100), train_counts, "backward", imbalance)
        assert forward == [int(100 * rho ** (r / 99)) for r in rank]
        assert backward == [int(100 * rho ** ((99 - r) / 99)) for r in rank]
    head = int(np.argmax(train_counts))
    assert splits.test_agnostic_counts(np.full(100, 100), train_counts, "forward", 50)[head] == 100


def test_ties_keep_class_index_order() -> None:
    counts = splits.test_agnostic_counts(np.full(4, 100), np.array([5, 9, 5, 9]), "forward", 8)
    # ranks: class 1 -> 0, class 3 -> 1, class 0 -> 2, class 2 -> 3
    assert counts == [int(100 * 0.125 ** (2 / 3)), 100, int(100 * 0.125), int(100 * 0.125 ** (1 / 3))]


def test_unequal_test_counts_scale_per_class() -> None:
    counts = splits.test_agnostic_counts(np.array([50, 40, 30]), np.array([30, 20, 10]), "forward", 4)
    assert counts == [50, int(40 * 0.5), int(30 * 0.25)]


def test_bad_direction_raises() -> None:
    with pytest.raises(ValueError, match="forward or backward"):
        splits.test_agnostic_counts(np.full(3, 10), np.array([3, 2, 1]), "sideways", 2)


def test_places_lt_forward50_size(splits_dir: Path) -> None:
    """metrics.md §2.6: Places-LT forward50 has 8,989 images, at least 2 per class."""
    from lt_bench.data.lists import parse_list_file

    _, train_labels = parse_list_file(splits_dir / "Places_LT" / "Places_LT_train.txt")
    _, test_labels = parse_list_file(splits_dir / "Places_LT" / "Places_LT_test.txt")
    train_counts, test_counts = np.bincount(train_labels), np.bincount(test_labels)
    for direction in ("forward", "backward"):
        counts = splits.test_agnostic_counts(test_counts, train_counts, direction, 50)
        assert sum(counts) == 8_989 and min(counts) == 2 and max(counts) == 100


# --- test_agnostic_sets --------------------------------------------------------------------------


def test_sets_on_cifar100(cifar100_test: ArraySplit) -> None:
    sets = splits.test_agnostic_sets(cifar100_test, cifar100_lt_train_counts(100))
    names = [f"forward_{r}" for r in TEST_AGNOSTIC_IMBALANCES]
    names += ["uniform"] + [f"backward_{r}" for r in TEST_AGNOSTIC_IMBALANCES]
    assert list(sets) == names
    assert sets["uniform"] is cifar100_test or (
        np.array_equal(sets["uniform"].images, cifar100_test.images)
        and np.array_equal(sets["uniform"].targets, cifar100_test.targets)
    )
    for imbalance in TEST_AGNOSTIC_IMBALANCES:
        rho = RHO[imbalance]
        for direction, reverse in (("forward", False), ("backward", True)):
            split = sets[f"{direction}_{imbalance}"]
            counts = sade_counts(100, 100, rho, reverse)
            assert len(split) == sum(counts)
            assert np.bincount(split.targets, minlength=100).tolist() == counts
            chosen = sade_subset(cifar100_test.targets, counts)
            assert np.array_equal(stored_index(split), chosen)
            assert np.array_equal(split.targets, cifar100_test.targets[chosen])
    assert len(sets["forward_50"]) == sum(int(100 * 0.02 ** (i / 99)) for i in range(100))
    assert len(sets["backward_50"]) == len(sets["forward_50"])


def test_sets_follow_training_rank_for_permuted_classes(cifar100_test: ArraySplit) -> None:
    train_counts = np.random.default_rng(3).permutation(1000 - 7 * np.arange(100))
    rank = np.array([(train_counts > n).sum() for n in train_counts])
    sets = splits.test_agnostic_sets(cifar100_test, train_counts, imbalances=(50,))
    assert list(sets) == ["forward_50", "uniform", "backward_50"]
    forward = np.bincount(sets["forward_50"].targets, minlength=100)
    backward = np.bincount(sets["backward_50"].targets, minlength=100)
    assert forward.tolist() == [int(100 * 0.02 ** (r / 99)) for r in rank]
    assert backward.tolist() == [int(100 * 0.02 ** ((99 - r) / 99)) for r in rank]


def test_sets_are_deterministic_and_leave_the_global_rng_alone(cifar100_test: ArraySplit) -> None:
    np.random.seed(99)
    state = np.random.get_state()
    first = splits.test_agnostic_sets(cifar100_test, cifar100_lt_train_counts(10), imbalances=(5, 25))
    second = splits.test_agnostic_sets(cifar100_test, cifar100_lt_train_counts(10), imbalances=(5, 25))
    assert np.array_equal(np.random.get_state()[1], state[1]) and np.random.get_state()[2] == state[2]
    assert list(first) == list(second)
    for name in first:
        assert np.array_equal(first[name].images, second[name].images)
        assert np.array_equal(first[name].targets, second[name].targets)
    other_seed = splits.test_agnostic_sets(
        cifar100_test, cifar100_lt_train_counts(10), imbalances=(5,), seed=1
    )
    assert len(other_seed["forward_5"]) == len(first["forward_5"])
    assert not np.array_equal(other_seed["forward_5"].images, first["forward_5"].images)
