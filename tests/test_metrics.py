"""LTMetrics and relative_accuracy against independent references (sklearn, scipy, NumPy, by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import gmean, hmean
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    log_loss,
    precision_score,
    recall_score,
)
from torchmetrics.classification import MulticlassCalibrationError

from lt_bench.metrics import LTMetrics, relative_accuracy

CIFAR10_LT_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
SIX_CLASSES = [500, 200, 80, 30, 10, 5]
# Groups written out by hand (many n > 100, medium 20..100, few n < 20).
GROUPS = {
    "cifar10": {"many": list(range(8)), "medium": [8, 9], "few": []},
    "six": {"many": [0, 1], "medium": [2, 3], "few": [4, 5]},
}
COUNTS = {"cifar10": CIFAR10_LT_IF100, "six": SIX_CLASSES}


def make_data(
    num_classes: int, n: int, seed: int, absent: tuple[int, ...] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Logits that are right about half the time, labels avoiding the ``absent`` classes."""
    rng = np.random.default_rng(seed)
    present = np.setdiff1d(np.arange(num_classes), absent)
    y = rng.choice(present, size=n)
    logits = rng.normal(size=(n, num_classes)) * 2.0
    logits[np.arange(n), y] += rng.uniform(0, 3, size=n)
    return logits, y


def run(counts, logits: np.ndarray, y: np.ndarray, chunks: int = 1) -> dict:
    metric = LTMetrics(counts)
    for lg, t in zip(np.array_split(logits, chunks), np.array_split(y, chunks), strict=True):
        metric.update(torch.from_numpy(lg), torch.from_numpy(t))
    return metric.compute()


def ref_calibration(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> tuple[float, float]:
    """MiSLAS ``calibration``: np.digitize(conf, linspace(0, 1, n + 1), right=True), bins (lo, hi]."""
    idx = np.digitize(conf, np.linspace(0.0, 1.0, n_bins + 1), right=True)
    ece, gaps = 0.0, []
    for b in range(1, n_bins + 1):
        sel = idx == b
        if sel.any():
            gap = abs(correct[sel].mean() - conf[sel].mean())
            ece += sel.sum() / len(conf) * gap
            gaps.append(gap)
    return ece, max(gaps)


def assert_same(a: dict, b: dict, rel: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.allclose(a[key], b[key], rtol=rel, atol=0, equal_nan=True), key


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("name", ["cifar10", "six"])
@pytest.mark.parametrize("absent", [(), (1,), (0, 5)])
def test_against_sklearn(name: str, absent: tuple[int, ...]) -> None:
    counts = COUNTS[name]
    c = len(counts)
    logits, y = make_data(c, 400, seed=len(absent) + c, absent=absent)
    out = run(counts, logits, y)
    pred = logits.argmax(1)
    labels = np.arange(c)
    tested = np.setdiff1d(labels, absent)
    recall = recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)

    assert out["num_samples"] == len(y)
    assert out["top1"] == pytest.approx(accuracy_score(y, pred), rel=1e-12)
    assert out["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred), rel=1e-12)
    np.testing.assert_allclose(out["per_class"], recall, rtol=1e-12)
    assert np.isnan(out["per_class"]).sum() == len(absent)
    for group, members in GROUPS[name].items():
        vals = [recall[i] for i in members if i not in absent]
        expected = float(np.mean(vals)) if vals else math.nan
        assert out[group] == pytest.approx(expected, rel=1e-12, nan_ok=True), group
    assert out["worst_class"] == pytest.approx(recall[tested].min(), rel=1e-12)
    assert out["zero_recall_classes"] == int((recall[tested] == 0).sum())
    assert out["harmonic_mean"] == pytest.approx(hmean(recall[tested]), rel=1e-12)
    assert out["geometric_mean"] == pytest.approx(gmean(recall[tested]), rel=1e-12)
    macro_p = precision_score(y, pred, labels=tested, average="macro", zero_division=0)
    assert out["macro_precision"] == pytest.approx(macro_p, rel=1e-12)
    probs = softmax(logits, axis=1)
    assert out["nll"] == pytest.approx(log_loss(y, probs, labels=labels), rel=1e-9)
    ece, mce = ref_calibration(probs.max(1), (pred == y).astype(float))
    assert out["ece"] == pytest.approx(ece, rel=1e-12)
    assert out["mce"] == pytest.approx(mce, rel=1e-12)


def test_hand_built_confusion_matrix() -> None:
    # rows = true, cols = predicted:  class 0: 3 right, 1 -> class 1;  class 1: 1 right, 1 -> 0;
    # class 2: 0 right, 2 -> class 1;  class 3: no test samples.
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 1, 1])
    metric = LTMetrics([500, 50, 5, 5])
    metric.update(torch.nn.functional.one_hot(pred, 4).double() * 10.0, y)
    expected_cm = torch.tensor([[3, 1, 0, 0], [1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(metric.confusion_matrix(), expected_cm)
    assert metric.confusion_matrix().dtype == torch.int64
    assert torch.equal(metric.test_counts(), torch.tensor([4, 2, 2, 0]))
    out = metric.compute()
    assert out["top1"] == pytest.approx(4 / 8)
    assert out["per_class"][:3] == pytest.approx([0.75, 0.5, 0.0]) and math.isnan(out["per_class"][3])
    assert out["balanced_acc"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert (out["many"], out["medium"], out["few"]) == pytest.approx((0.75, 0.5, 0.0))
    assert out["worst_class"] == 0.0
    assert out["zero_recall_classes"] == 1
    assert out["harmonic_mean"] == 0.0 and out["geometric_mean"] == 0.0
    # precision: class 0 = 3/4, class 1 = 1/4, class 2 never predicted -> 0; class 3 untested.
    assert out["macro_precision"] == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)


def test_harmonic_geometric_hand_case() -> None:
    # recalls 1/2 and 1/4 (2 and 4 test samples): H = 2 / (2 + 4) = 1/3, G = sqrt(1/8).
    y = torch.tensor([0, 0, 1, 1, 1, 1])
    pred = torch.tensor([0, 1, 1, 0, 0, 0])
    metric = LTMetrics([200, 10])
    metric.update(torch.nn.functional.one_hot(pred, 2).float(), y)
    out = metric.compute()
    assert out["harmonic_mean"] == pytest.approx(1 / 3)
    assert out["geometric_mean"] == pytest.approx(math.sqrt(1 / 8))
    assert out["zero_recall_classes"] == 0


def test_empty_groups_are_nan() -> None:
    logits, y = make_data(10, 200, seed=0)
    out = run(CIFAR10_LT_IF100, logits, y)
    assert math.isnan(out["few"])
    assert not math.isnan(out["many"]) and not math.isnan(out["medium"])
    # A group whose classes are all untested is NaN too.
    logits, y = make_data(10, 200, seed=1, absent=(8, 9))
    assert math.isnan(run(CIFAR10_LT_IF100, logits, y)["medium"])


@pytest.mark.parametrize("norm,key", [("l1", "ece"), ("max", "mce")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_matches_torchmetrics_off_edges(norm: str, key: str, seed: int) -> None:
    logits, y = make_data(10, 500, seed=seed)
    conf = softmax(logits, axis=1).max(1)
    assert not np.isin(conf, np.arange(16) / 15).any()  # no confidence on a bin edge
    tm = MulticlassCalibrationError(num_classes=10, n_bins=15, norm=norm)
    tm.update(torch.from_numpy(logits), torch.from_numpy(y))
    assert run(CIFAR10_LT_IF100, logits, y)[key] == pytest.approx(tm.compute().item(), rel=1e-6)


def test_calibration_bins_are_left_open() -> None:
    # Uniform scores over 3 classes give confidence exactly 1/3 = 5/15, a bin edge; a huge margin
    # gives exactly 1.0. (lo, hi] puts them in bins 4 and 14; torchmetrics' [lo, hi) in 5 and 15.
    logits = torch.tensor(
        [[0.0, 0.0, 0.0], [0.0, -1e3, -1e3], [math.log(0.95), math.log(0.05), -1e3]],
        dtype=torch.float64,
    )
    y = torch.tensor([0, 1, 0])  # right at 1/3; wrong at 1.0; right at 0.95
    metric = LTMetrics([100, 100, 100])
    metric.update(logits, y)
    expected_count = torch.zeros(15, dtype=torch.float64)
    expected_count[4], expected_count[14] = 1, 2
    assert torch.equal(metric.bin_count, expected_count)
    out = metric.compute()
    conf = np.array([1 / 3, 1.0, 0.95])
    correct = np.array([1.0, 0.0, 1.0])
    assert (out["ece"], out["mce"]) == pytest.approx(ref_calibration(conf, correct), rel=1e-12)
    # By hand: bin 4 gap 2/3, bin 14 (1.0 wrong + 0.95 right) gap |0.5 - 0.975| = 0.475.
    assert out["ece"] == pytest.approx((2 / 3 + 2 * 0.475) / 3)
    assert out["mce"] == pytest.approx(2 / 3)
    # torchmetrics splits 1.0 from 0.95 ([lo, hi)), so it reports a larger ECE.
    tm = MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1")
    tm.update(logits, y)
    assert tm.compute().item() == pytest.approx((2 / 3 + 1.0 + 0.05) / 3)


@pytest.mark.parametrize("chunks", [2, 7])
def test_accumulation_equals_one_update(chunks: int) -> None:
    logits, y = make_data(6, 300, seed=3, absent=(4,))
    assert_same(run(SIX_CLASSES, logits, y, chunks=chunks), run(SIX_CLASSES, logits, y))


def test_log_probabilities_and_low_precision() -> None:
    logits, y = make_data(10, 300, seed=4)
    ref = run(CIFAR10_LT_IF100, logits, y)
    logp = torch.from_numpy(logits).log_softmax(1).numpy()
    assert_same(run(CIFAR10_LT_IF100, logp, y), ref, rel=1e-9)
    metric = LTMetrics(CIFAR10_LT_IF100)
    metric.update(torch.from_numpy(logits).bfloat16(), torch.from_numpy(y).int())
    assert metric.compute()["num_samples"] == len(y)


def test_many_classes_is_fast() -> None:
    logits, y = make_data(1000, 2048, seed=5)
    out = run(np.arange(1000, 0, -1), logits, y, chunks=8)
    assert out["top1"] == pytest.approx(accuracy_score(y, logits.argmax(1)), rel=1e-12)
    assert len(out["per_class"]) == 1000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    logits, y = make_data(10, 500, seed=6, absent=(2,))
    metric = LTMetrics(CIFAR10_LT_IF100).cuda()
    metric.update(torch.from_numpy(logits).cuda(), torch.from_numpy(y).cuda())
    assert metric.confusion_matrix().is_cuda
    assert_same(metric.compute(), run(CIFAR10_LT_IF100, logits, y), rel=1e-9)


@pytest.mark.parametrize(
    "bad_logits,bad_target",
    [((4, 3), (4,)), ((4, 10), (3,)), ((4, 10), (4, 1))],
)
def test_shape_errors(bad_logits: tuple, bad_target: tuple) -> None:
    with pytest.raises(ValueError):
        LTMetrics(CIFAR10_LT_IF100).update(torch.zeros(bad_logits), torch.zeros(bad_target, dtype=torch.long))


@pytest.mark.parametrize("label", [-1, 10])
def test_label_out_of_range(label: int) -> None:
    with pytest.raises(ValueError, match="target labels"):
        LTMetrics(CIFAR10_LT_IF100).update(torch.zeros(1, 10), torch.tensor([label]))


@pytest.mark.parametrize("counts", [[], [[1, 2]], [1.5, 2.0], [3, -1]])
def test_bad_train_counts(counts: list) -> None:
    with pytest.raises(ValueError):
        LTMetrics(counts)


@pytest.mark.parametrize(
    "acc,vanilla,method,expected",
    [
        (45.5, 57.3, None, 0.794),  # survey Table 4: Softmax, 90 epochs
        (58.8, 63.2, None, 0.930),  # SADE, 200 epochs
        (56.1, 60.9, None, 0.921),  # RIDE, 200 epochs
        (0.5, 0.4, 0.6, 0.5 / 0.6),  # A_u = max(A_v, A_b)
        (0.5, 0.6, 0.4, 0.5 / 0.6),
    ],
)
def test_relative_accuracy(acc: float, vanilla: float, method: float | None, expected: float):
    assert relative_accuracy(acc, vanilla, method) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(
    "vanilla,method", [(0.0, None), (-1.0, None), (math.nan, None), (0.5, 0.0), (0.5, math.inf)]
)
def test_relative_accuracy_rejects_bad_reference(vanilla: float, method: float | None) -> None:
    with pytest.raises(ValueError, match="positive"):
        relative_accuracy(0.4, vanilla, method)
