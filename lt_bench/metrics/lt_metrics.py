"""All long-tailed evaluation metrics from one pass over (logits, target) (metrics.md §2.1-2.5).

``LTMetrics`` keeps only summed state, so torchmetrics' DDP synchronisation (``sum``) is exact:

* ``confmat``: int64 ``[C, C]`` confusion matrix, **rows = true class, columns = predicted class**;
* ``bin_count``, ``bin_conf``, ``bin_correct``: float64 ``[n_bins]`` calibration bins (number of
  samples, sum of top-1 confidence, number of correct top-1 predictions);
* ``nll_sum``: float64 sum of ``-log p(y | x)``.

Every recall-based value is computed over the *tested* classes (those with at least one test sample),
because skewed or small test sets (SADE's forward/backward splits, iNat18) leave some classes empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from lt_bench.metrics.shots import shot_groups


def _mean(x: np.ndarray) -> float:
    """Mean of ``x``; NaN (not 0, unlike Decoupling's ``shot_acc``) when ``x`` is empty."""
    return float(x.mean()) if x.size else math.nan


def _harmonic_geometric(r: np.ndarray) -> tuple[float, float]:
    """``(K / Σ 1/r_k, (Π r_k)^(1/K))``; both 0.0 when any ``r_k = 0`` (no epsilon), NaN if empty."""
    if r.size == 0:
        return math.nan, math.nan
    if (r == 0).any():
        return 0.0, 0.0
    return float(r.size / (1.0 / r).sum()), float(np.exp(np.log(r).mean()))


class LTMetrics(Metric):
    """Accuracy, shot-group, worst-class, calibration and NLL metrics for a long-tailed test set.

    ``update(logits, target)`` takes unnormalised scores (or log-probabilities, which give the same
    softmax) ``[B, C]`` and integer labels ``[B]``. ``compute()`` returns a dict of Python numbers,
    fractions in [0, 1] (not x100). With ``r_c`` the recall of class c and T the set of tested classes:

    * ``top1`` = Σ_c correct_c / N (micro); ``balanced_acc`` = mean_{c∈T} r_c;
    * ``many`` / ``medium`` / ``few`` = mean of r_c over the tested classes of each group of
      ``shot_groups(train_counts)`` (many ``n_c > 100``, few ``n_c < 20``); NaN when the group has
      no tested class (e.g. no few group on CIFAR-10-LT);
    * ``worst_class`` = min_{c∈T} r_c; ``zero_recall_classes`` = #{c ∈ T : r_c = 0};
    * ``harmonic_mean`` = |T| / Σ_{c∈T} 1/r_c and ``geometric_mean`` = (Π_{c∈T} r_c)^(1/|T|).
      Epsilon policy: none. Both are exactly 0.0 (their limit) as soon as one tested class has
      ``r_c = 0``; ``zero_recall_classes`` reports how many;
    * ``macro_precision`` = mean_{c∈T} correct_c / predicted_as_c, 0 for a class never predicted
      (sklearn ``precision_score(average="macro", labels=T, zero_division=0)``);
    * ``ece`` = Σ_b (|B_b| / N) |acc(B_b) - conf(B_b)| and ``mce`` = max_b |acc(B_b) - conf(B_b)|
      over non-empty bins of the top-1 softmax confidence, ``n_bins`` equal-width bins
      ``(b/n, (b+1)/n]`` as in MiSLAS/LiVT (``np.digitize(conf, linspace(0, 1, n + 1), right=True)``);
      confidence 0 joins the first bin. torchmetrics ``MulticlassCalibrationError`` bins
      ``[lo, hi)`` instead, and puts conf == 1.0 in an extra bin, so the two differ only for
      confidences on a bin edge (common with bf16 softmax, which often gives exactly 1.0);
    * ``nll`` = -(1/N) Σ_i log p(y_i | x_i);
    * ``per_class`` = [r_c for every class], NaN for untested classes; ``num_samples`` = N.

    Probabilities are taken in float64. ``confusion_matrix()`` and ``test_counts()`` return the
    (synchronised) counts, e.g. to save them next to the scores.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    confmat: Tensor
    bin_count: Tensor
    bin_conf: Tensor
    bin_correct: Tensor
    nll_sum: Tensor

    def __init__(self, train_counts: Sequence[int] | np.ndarray, n_bins: int = 15, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        counts = np.asarray(train_counts)
        if counts.ndim != 1 or counts.size == 0 or not np.issubdtype(counts.dtype, np.integer):
            raise ValueError("train_counts must be a non-empty 1-D sequence of ints")
        if (counts < 0).any():
            raise ValueError("train_counts must be non-negative")
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.train_counts = counts
        self.num_classes = int(counts.size)
        self.n_bins = n_bins
        self.groups = shot_groups(counts)
        c = self.num_classes
        self.add_state("confmat", torch.zeros(c, c, dtype=torch.int64), dist_reduce_fx="sum")
        for name in ("bin_count", "bin_conf", "bin_correct"):
            self.add_state(name, torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("nll_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch: ``logits`` ``[B, C]`` (scores or log-probabilities), ``target`` ``[B]``."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [B, {self.num_classes}], got {tuple(logits.shape)}")
        if target.ndim != 1 or target.shape[0] != logits.shape[0]:
            raise ValueError(f"target must be [{logits.shape[0]}], got {tuple(target.shape)}")
        target = target.long()
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"target labels must lie in [0, {self.num_classes})")
        logits = logits.double()
        conf, pred = logits.softmax(dim=1).max(dim=1)
        correct = (pred == target).double()
        self.confmat.index_put_((target, pred), torch.ones_like(target), accumulate=True)
        # Bin b holds (b/n, (b+1)/n]: bucketize(right=False) on the inner edges.
        edges = torch.arange(1, self.n_bins, dtype=torch.float64, device=conf.device) / self.n_bins
        onehot = torch.nn.functional.one_hot(torch.bucketize(conf, edges), self.n_bins).double()
        self.bin_count += onehot.sum(dim=0)
        self.bin_conf += conf @ onehot
        self.bin_correct += correct @ onehot
        logp = logits.log_softmax(dim=1).gather(1, target[:, None])
        self.nll_sum -= logp.sum()

    def confusion_matrix(self) -> Tensor:
        """The int64 ``[C, C]`` confusion matrix (rows true, columns predicted), summed over ranks.

        In DDP this is a collective call: every rank must make it.
        """
        with self.sync_context(should_unsync=True):
            return self.confmat.clone()

    def calibration_bins(self) -> dict[str, list]:
        """Per bin ``(b/n, (b+1)/n]``: sample count, mean top-1 confidence and accuracy (0 when empty).

        In DDP this is a collective call: every rank must make it.
        """
        with self.sync_context(should_unsync=True):
            states = (self.bin_count, self.bin_conf, self.bin_correct)
            count, conf, correct = (t.cpu().numpy() for t in states)

        def mean(total: np.ndarray) -> list[float]:
            return np.divide(total, count, out=np.zeros_like(count), where=count > 0).tolist()

        return {"count": count.astype(int).tolist(), "conf": mean(conf), "acc": mean(correct)}

    def test_counts(self) -> Tensor:
        """Test samples per class, ``[C]`` int64 (row sums of the confusion matrix)."""
        return self.confusion_matrix().sum(dim=1)

    def compute(self) -> dict[str, Any]:
        cm = self.confmat
        tp = cm.diagonal().double().cpu().numpy()
        support = cm.sum(dim=1).double().cpu().numpy()
        predicted = cm.sum(dim=0).double().cpu().numpy()
        n = support.sum()
        tested = support > 0
        recall = np.full(self.num_classes, math.nan)
        recall[tested] = tp[tested] / support[tested]
        r = recall[tested]
        harmonic, geometric = _harmonic_geometric(r)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)

        count = self.bin_count.cpu().numpy()
        full = count > 0
        gap = np.abs(self.bin_correct.cpu().numpy()[full] - self.bin_conf.cpu().numpy()[full])
        gap /= count[full]

        out: dict[str, Any] = {
            "top1": float(tp.sum() / n) if n else math.nan,
            "balanced_acc": _mean(r),
        }
        for name, idx in self.groups.items():
            g = recall[idx]
            out[name] = _mean(g[~np.isnan(g)])
        out.update(
            worst_class=float(r.min()) if r.size else math.nan,
            zero_recall_classes=int((r == 0).sum()),
            harmonic_mean=harmonic,
            geometric_mean=geometric,
            macro_precision=_mean(precision[tested]),
            ece=float((count[full] * gap).sum() / n) if n else math.nan,
            mce=float(gap.max()) if gap.size else math.nan,
            nll=float(self.nll_sum.item() / n) if n else math.nan,
            per_class=recall.tolist(),
            num_samples=int(n),
        )
        return out
