"""CAR: Confusion-Aware Spectral Regularizer (CVPR 2026, arXiv 2603.16732; methods.md §1).

The loss adds the spectral norm of an EMA-smoothed, differentiable soft confusion matrix whose
columns (true classes) are re-weighted by inverse frequency::

    L = base(f, y) + lambda * sigma_max(Cbar_t @ diag(w))

with ``base`` = CE here (the official ``car/car/train_car_tail.py``). Only the CE + CAR part is
implemented; the paper's ConCutMix host (methods.md §1.6) can reuse ``CARRegularizer`` unchanged.

Deviation from methods.md §1.2: its sentence "gradients reach the network only through the softmax
over f_i" is not what the code computes. The softmax runs over all C classes, so the true logit f_j
still receives ``-(1/T) * p_j * sum_i g_i s_i`` through the softmax denominator; and because a
softmax is shift invariant, detaching the baseline ``f_j`` (``detach_baseline``) changes neither the
value nor the gradient. The switch is kept to mirror the official ``--detach-softmax-baseline``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lt_bench.errors import ConfigError
from lt_bench.methods.base import BaseMethod, Outputs
from lt_bench.methods.tensor_ops import one_hot
from lt_bench.registry import register_method

SPECTRAL_METHODS = ("svd", "squaring", "power")
BASE_LOSSES = ("ce",)


def soft_confusion(
    logits: Tensor,
    targets: Tensor,
    num_classes: int,
    temperature: float = 1.0,
    detach_baseline: bool = True,
    detach_gate: bool = True,
) -> Tensor:
    """Differentiable batch confusion ``C_t`` (rows: predicted class i, columns: true class j).

    For sample n with label ``j = y_n`` and class ``i != j``::

        s_{n,i} = softmax_i((f_n - sg(f_{n,j})) / T) * 1[i != j]   (softmax over all C, then zero j)
        g_{n,i} = sigmoid(sg(f_{n,i} - f_{n,j})) * 1[i != j]
        C_t[i, j] = (1 / max(|B_j|, 1)) * sum_{n: y_n = j} g_{n,i} * s_{n,i}

    Columns of classes absent from the batch are 0; the diagonal is 0 by construction.
    ``detach_baseline`` / ``detach_gate`` switch the two stop-gradients ``sg`` (both on by default).
    """
    target_rows = one_hot(targets, num_classes, logits.dtype)
    off_target = 1.0 - target_rows
    true_logit = logits.gather(1, targets[:, None])
    baseline = true_logit.detach() if detach_baseline else true_logit
    competition = torch.softmax((logits - baseline) / temperature, dim=1) * off_target
    margin = logits - true_logit
    gate = torch.sigmoid(margin.detach() if detach_gate else margin) * off_target
    column_sums = (gate * competition).T @ target_rows
    return column_sums / target_rows.sum(dim=0).clamp(min=1.0)


def car_class_weights(class_counts: Tensor, r0: float, use_weights: bool = True) -> Tensor:
    """Column weights ``w_j = 1 / sqrt(m_j + r0)`` with ``m_j = n_j / N`` (a fraction).

    Then ``w <- w / mean(w)`` and ``w <- max(w, 1e-3)``; ``use_weights=False`` gives ``w = 1``
    (the official ``--no-w``).
    """
    if not use_weights:
        return torch.ones_like(class_counts, dtype=torch.float)
    fractions = class_counts.float() / class_counts.sum()
    weights = (fractions + r0).rsqrt()
    return (weights / weights.mean()).clamp(min=1e-3)


#: rounds per step when ``spectral_norm`` is not given ``iters``: power iterations, squarings
DEFAULT_ITERS = {"power": 4, "squaring": 32}


def spectral_norm(
    matrix: Tensor,
    method: str = "squaring",
    state: tuple[Tensor, Tensor] | None = None,
    iters: int | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``sigma_max(A)`` with gradient ``u_1 v_1^T``, and the detached top singular pair ``(u_1, v_1)``.

    ``"svd"``: ``torch.linalg.svd`` (exact; the official code). ``"squaring"``: ``top_right_vector``
    (``iters`` squarings of ``A^T A``, 32 by default; exact to float precision, no host synchronisation).
    ``"power"``: ``iters`` rounds (4 by default) of ``v <- A^T u / |A^T u|``, ``u <- A v / |A v|``
    without gradient, warm-started from ``state`` (uniform vectors when None, which are never
    orthogonal to the top pair of a nonnegative matrix). Both then take ``sigma = u^T A v``, whose
    gradient is ``u v^T``.
    """
    if method == "svd":
        left, values, right_t = torch.linalg.svd(matrix, full_matrices=False)
        return values[0], (left[:, 0].detach(), right_t[0].detach())
    if method not in SPECTRAL_METHODS:
        raise ValueError(f"unknown spectral method '{method}'; valid: {', '.join(SPECTRAL_METHODS)}")
    iters = DEFAULT_ITERS[method] if iters is None else iters
    if iters < 1:
        raise ValueError(f"spectral method '{method}' needs at least one round, got {iters}")
    with torch.no_grad():
        detached = matrix.detach()
        if method == "squaring":
            right = top_right_vector(detached, iters)
            scaled = detached.double()
            scaled = scaled / scaled.abs().amax().clamp_min(torch.finfo(torch.float64).tiny)
            left = _unit(scaled @ right.double()).to(matrix.dtype)
        else:
            rows, cols = matrix.shape
            if state is None:
                left = detached.new_full((rows,), rows**-0.5)
                right = detached.new_full((cols,), cols**-0.5)
            else:
                left, right = state
            for _ in range(iters):
                right = F.normalize(detached.T @ left, dim=0)
                left = F.normalize(detached @ right, dim=0)
    return left @ matrix @ right, (left, right)


def top_right_vector(matrix: Tensor, squarings: int = 32) -> Tensor:
    """The top right singular vector ``v_1`` of ``A`` (unit length; 0 when ``A = 0``), found without
    host synchronisation, so a CUDA graph can hold it.

    ``A`` is scaled to a largest entry of 1 in float64 (no overflow or underflow at any scale), then
    ``P = A^T A`` is squared ``squarings`` times, rescaled to a largest diagonal entry of 1 (P is
    positive semi-definite, so that is its largest entry) before each squaring: ``P^(2^k)`` is
    ``v_1 v_1^T`` times a constant up to the ratio ``(sigma_2 / sigma_1)^(2^(k+1))``. Its column of
    largest diagonal entry is ``± v_1``; one power step ``v <- A^T A v`` polishes it. With a repeated
    top singular value it returns a vector of the top singular subspace, as an SVD does. Costs
    ``squarings`` C x C products in float64: meant for C up to ~1,000.
    """
    tiny = torch.finfo(torch.float64).tiny
    a = matrix.double()
    a = a / a.abs().amax().clamp_min(tiny)
    gram = a.T @ a
    for _ in range(squarings):
        gram = gram / gram.diagonal().amax().clamp_min(tiny)
        gram = gram @ gram
    column = gram.diagonal().argmax()
    right = _unit(gram.index_select(1, column.view(1)).squeeze(1))
    return _unit(a.T @ (a @ right)).to(matrix.dtype)


def _unit(vector: Tensor) -> Tensor:
    """``vector / |vector|``; the zero vector stays zero (no epsilon floor: tiny norms are kept exact)."""
    return vector / vector.norm().clamp_min(torch.finfo(vector.dtype).tiny)


class CARRegularizer(nn.Module):
    """``lambda * sigma_max(Cbar_t @ diag(w))`` with the EMA confusion ``Cbar_t`` as a buffer.

    ``Cbar_t = beta * sg(Cbar_{t-1}) + (1 - beta) * C_t`` and ``Cbar_1 = sg(C_1)``: the stored history
    never carries a graph, so each call back-propagates only through the current batch term, scaled
    by ``1 - beta``; the first call has no gradient. Call it once per training step with the raw
    logits and hard labels; the state (EMA, update count, singular vectors) persists in checkpoints and
    is never reset.
    """

    def __init__(
        self,
        class_counts: Tensor,
        lam: float = 0.3,
        beta: float = 0.9,
        temperature: float = 1.0,
        r0: float = 0.2,
        use_weights: bool = True,
        spectral: str = "squaring",
        power_iters: int = 4,
        squarings: int = 32,
        detach_baseline: bool = True,
        detach_gate: bool = True,
    ) -> None:
        super().__init__()
        if spectral not in SPECTRAL_METHODS:
            raise ConfigError(f"unknown CAR spectral '{spectral}'; valid: {', '.join(SPECTRAL_METHODS)}")
        if spectral == "power" and power_iters < 1:
            raise ConfigError(f"CAR power_iters must be at least 1, got {power_iters}")
        if spectral == "squaring" and squarings < 1:
            raise ConfigError(f"CAR squarings must be at least 1, got {squarings}")
        self.num_classes = len(class_counts)
        self.lam, self.beta, self.temperature = lam, beta, temperature
        self.spectral = spectral
        self.iters = {"power": power_iters, "squaring": squarings}.get(spectral, 0)
        self.detach_baseline, self.detach_gate = detach_baseline, detach_gate
        size = self.num_classes
        self.register_buffer("weights", car_class_weights(class_counts, r0, use_weights))
        self.register_buffer("ema", torch.zeros(size, size))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("left", torch.full((size,), size**-0.5))
        self.register_buffer("right", torch.full((size,), size**-0.5))

    @classmethod
    def from_config(cls, class_counts: Tensor, cfg: Mapping[str, Any]) -> CARRegularizer:
        """Build from a method config with the keys of ``configs/method/car.yaml``."""
        return cls(
            class_counts,
            lam=cfg["lambda"],
            beta=cfg["beta"],
            temperature=cfg["temperature"],
            r0=cfg["r0"],
            use_weights=cfg["use_weights"],
            spectral=cfg["spectral"],
            power_iters=cfg["power_iters"],
            squarings=cfg["squarings"],
            detach_baseline=cfg["detach_baseline"],
            detach_gate=cfg["detach_gate"],
        )

    def forward(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Update the EMA with this batch; return ``(lambda * sigma, sigma)``.

        Runs in the EMA's precision (float32 by default) with autocast off: the spectral norm needs it. A
        non-finite batch (a step that ``train.nonfinite_loss=skip`` drops) leaves the state unchanged.
        """
        with torch.autocast(device_type=logits.device.type, enabled=False):
            batch = soft_confusion(
                logits.to(self.ema.dtype),
                targets,
                self.num_classes,
                self.temperature,
                self.detach_baseline,
                self.detach_gate,
            )
            smoothed = torch.where(
                self.num_updates > 0, self.beta * self.ema + (1.0 - self.beta) * batch, batch.detach()
            )
            finite = torch.isfinite(batch).all()
            smoothed = torch.where(finite, smoothed, self.ema)
            sigma, (left, right) = spectral_norm(
                smoothed * self.weights, self.spectral, (self.left, self.right), self.iters
            )
        self.ema.copy_(smoothed.detach())
        self.left.copy_(left)
        self.right.copy_(right)
        self.num_updates += finite.long()
        return self.lam * sigma, sigma

    def weighted_ema(self) -> Tensor:
        """``Cbar_t @ diag(w)`` (detached)."""
        return self.ema * self.weights

    def final_spectral_norm(self) -> float:
        """Exact ``sigma_max(Cbar_t @ diag(w))`` of the stored EMA (0 before the first update)."""
        return torch.linalg.matrix_norm(self.weighted_ema(), ord=2).item()

    def offdiag_mass(self) -> float:
        """Mean over true classes j of the column sum ``sum_{i != j} Cbar_t[i, j]`` (each in [0, 1))."""
        return self.ema.sum(dim=0).mean().item()


@register_method(
    "car",
    paper="Confusion-Aware Spectral Regularizer for Long-Tailed Recognition, CVPR 2026, arXiv 2603.16732",
)
class CAR(BaseMethod):
    """``L = CE(f, y) + lambda * sigma_max(Cbar_t @ diag(w))`` on the raw logits ``f`` (methods.md §1.4).

    ``method.base_loss`` is ``ce`` (with the official ``label_smoothing``, 0 by default); a host with a
    different base loss (ConCutMix) builds its own ``CARRegularizer`` and adds its output.
    """

    def build_model(self) -> None:
        super().build_model()
        if self.method_cfg.base_loss not in BASE_LOSSES:
            raise ConfigError(
                f"unknown CAR base_loss '{self.method_cfg.base_loss}'; valid: {', '.join(BASE_LOSSES)}"
            )
        self.car = CARRegularizer.from_config(self.class_counts, self.method_cfg)

    @property
    def graph_capturable(self) -> bool:  # type: ignore[override]
        """``torch.linalg.svd`` copies to the host (no CUDA graph); squaring and power iteration do not."""
        return self.car.spectral != "svd"

    def loss_terms(self, outputs: Outputs, targets: Tensor) -> dict[str, Tensor]:
        logits = outputs["logits"]
        base = F.cross_entropy(logits, targets, label_smoothing=self.method_cfg.label_smoothing)
        penalty, sigma = self.car(logits, targets)
        return {"ce": base, "car_penalty": penalty, "car_sigma": sigma}

    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        terms = self.loss_terms(outputs, targets)
        return terms["ce"] + terms["car_penalty"]

    def training_loss(self, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        terms = self.loss_terms(self(images), targets)
        return terms["ce"] + terms["car_penalty"], {k: v.detach() for k, v in terms.items()}

    def final_spectral_norm(self) -> float:
        """``sigma_max(Cbar_t @ diag(w))`` of the EMA confusion as it stands now."""
        return self.car.final_spectral_norm()

    def record_extras(self) -> dict[str, Any]:
        return {
            "car_spectral_norm_final": self.car.final_spectral_norm(),
            "car_ema_confusion_offdiag_mass": self.car.offdiag_mass(),
        }
