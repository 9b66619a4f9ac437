"""Baselines: cross-entropy, logit adjustment / Balanced Softmax, LDAM-DRW (methods.md §0.5, §7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lt_bench.methods.base import BaseMethod, Outputs
from lt_bench.methods.tensor_ops import one_hot
from lt_bench.registry import register_method


@register_method("ce", paper="ERM baseline; recipe of Cao et al., NeurIPS 2019")
class CrossEntropy(BaseMethod):
    """``L = CE(z, y)``."""

    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs["logits"], targets)


@register_method(
    "balanced_softmax",
    paper="Ren et al., Balanced Meta-Softmax, NeurIPS 2020; Menon et al., Logit Adjustment, ICLR 2021",
)
class BalancedSoftmax(BaseMethod):
    """Logit-adjusted loss ``L = CE(z + tau * log pi, y)``, ``pi_c = n_c / N``.

    ``tau = 1`` is Balanced Softmax (``CE(z + log n, y)`` up to a constant shift). With
    ``posthoc_tau > 0`` prediction uses ``z - posthoc_tau * log pi`` (post-hoc logit adjustment).
    """

    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        tau = self.method_cfg.tau
        return F.cross_entropy(outputs["logits"] + tau * self.class_prior.log(), targets)

    def predict_logits(self, outputs: Outputs) -> Tensor:
        tau = self.method_cfg.posthoc_tau
        logits = outputs["logits"]
        return logits - tau * self.class_prior.log() if tau else logits


def ldam_margins(class_counts: Tensor, max_m: float) -> Tensor:
    """``m_j = C / n_j^{1/4}`` with ``C`` chosen so that ``max_j m_j = max_m``."""
    margins = class_counts.pow(-0.25)
    return margins * (max_m / margins.max())


def class_balanced_weights(class_counts: Tensor, beta: float) -> Tensor:
    """``w_j = (1 - beta) / (1 - beta^{n_j})`` normalised so that ``sum_j w_j = C`` (Cui et al.)."""
    weights = (1.0 - beta) / (1.0 - torch.pow(beta, class_counts))
    return weights / weights.sum() * len(class_counts)


@register_method("ldam_drw", paper="Cao et al., LDAM-DRW, NeurIPS 2019")
class LDAMDRW(BaseMethod):
    """``L = w_y-weighted CE(s * (cos - m_y * onehot_y), y)`` on cosine logits (NormedLinear).

    The model outputs scaled cosines ``s * cos`` (the logits LDAM's loss sees without margin), so
    ``z_y - s * m_y`` is the margin. Deferred re-weighting: weights are 1 before epoch
    ``drw_epoch`` (0-indexed) and class-balanced (``beta``) from then on.
    """

    def classifier_scale(self) -> float:
        return self.method_cfg.s

    def build_model(self) -> None:
        super().build_model()
        self.register_buffer("margins", ldam_margins(self.class_counts, self.method_cfg.max_m))
        self.register_buffer("drw_weights", class_balanced_weights(self.class_counts, self.method_cfg.beta))

    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        logits = outputs["logits"]
        margin = self.method_cfg.s * self.margins[targets]
        adjusted = logits - one_hot(targets, self.num_classes) * margin.unsqueeze(1)
        weight = self.drw_weights if self.drw_active() else None
        return F.cross_entropy(adjusted, targets, weight=weight)

    def drw_active(self) -> bool:
        return self.epoch >= self.method_cfg.drw_epoch

    def step_variant(self) -> bool:
        return self.drw_active()
