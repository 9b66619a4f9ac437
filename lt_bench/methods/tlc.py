"""TLC: Trustworthy Long-Tailed Classification (Li, Han, Li, Fu, Zhang; CVPR 2022).

methods.md §2, official code ``lblaoke/TLC@204f50b`` (``model/ResnetCifar.py``, ``model/loss.py``).
Experts on a ``MultiExpertNet`` trunk (CIFAR: only the stem shared, per-expert layer1-3; timm
ResNets: shared through layer3), each with a cosine head times s = 30 giving logits ``z_k``.

Evidential quantities per expert k (C classes)::

    e_k = exp(z_k),  α_k = e_k + 1,  S_k = Σ_c α_kc,  b_k = e_k / S_k,  u_k = C / S_k

Dempster–Shafer chain and engagement weights (as coded): ``w_0 = 1`` and, for k = 0..K-1,
``w_{k+1} = w_k · u_k / (1 - Γ_k)`` with ``Γ_0 = 0`` and ``Γ_k = Σ_{i≠j} b_{k-1,i} b_{k,j}`` the
conflict between the previous expert's *raw* belief and expert k's. Expert k reads ``w_k``; the last
entry ``w_K`` is the sample's uncertainty (``outputs["uncertainty"]``). For two experts ``w_2`` is
exactly the uncertainty of the Dempster–Shafer combination of the two opinions (``ds_combine``).

Numerics: the chain is computed in log space (``log_engagement_weights``) with
``1 - Γ = u_{k-1} + Σ_i b_{k-1,i} (b_{k,i} + u_k)``, a sum of non-negative terms equal to the official
``1 - [(Σb_{k-1})(Σb_k) - Σ b_{k-1,i} b_{k,i}]``. The official float expression cancels: two confident
experts that disagree (logits ±30) give ``1 - Γ`` rounded to 0 or below, so ``w`` becomes inf/negative
and the batch softmax and the engagement mask NaN. Where the official float value is finite the two
agree to rounding; the engagement mask compares ``log w_k - max_batch log w_k`` with ``log τ``.

Aggregated output ``ŷ = Σ_k a_k ⊙ z_k``:

* ``aggregation: per_sample`` (default, a deviation): ``a_k[n] = softmax_k(w_k[n] / η)`` over the
  experts of one sample, so a test prediction never depends on the other samples of its batch;
* ``aggregation: batch`` (official): ``a_k[n] = exp(w_k[n]/η) / Σ_{m∈batch} exp(w_k[m]/η)``. Its
  scale is ~K/B, so ``logits`` is this output times ``B / K`` (same argmax; each expert's weights
  then average 1/K over the batch) to keep softmax calibration meaningful.

The two weightings differ in kind. The chain never grows (``1 ≥ w_1 ≥ w_2 ≥ ...``), so the per-sample
softmax always gives expert 0 the largest weight: for a confident sample (``w_k ≈ 0`` for k ≥ 1) it is
``(e^{1/η}, 1, 1) / (e^{1/η} + 2) ≈ (0.987, 0.007, 0.007)`` at η = 0.2, K = 3, so ŷ is expert 0's
logits nudged by the others. The official weights give expert 0 ``1/B`` everywhere and expert k ≥ 1
``1/(B · mean_batch e^{w_k/η})`` on a confident sample (comparable to expert 0's) and up to ``e^{1/η}``
times more on the batch's uncertain samples.

``logits`` (what ``LTMetrics`` receives) is ŷ: a convex combination of expert logits per sample in
the default variant; ``softmax(ŷ)`` is the predicted distribution.

Loss per expert k and sample n (``tlc_expert_losses``), epoch ``t`` counted from 1 as the official
trainer does (``t = current_epoch + 1``), m_y the LDAM margins (max 0.5), ω the DRW weights
(β = 0.9999) once ``t > reweight_epoch`` and 1 before::

    z̃ = z_k - s·m_y·onehot_y,   α̃ = exp(z̃)                           (no +1)
    ℓ_nll = -ω_y log(α̃_y / Σ α̃)
    α̂ = y + (1 - y) ⊙ (α̃ + 1)
    ℓ_KL = lnΓ(Σα̂) - lnΓ(C) - Σ lnΓ(α̂_c) + Σ (α̂_c - 1)(ψ(α̂_c) - ψ(Σα̂))
    div = 0.01 · T̄² · KL(softmax(ŷ/T) ‖ softmax(z_k/T)),  ŷ without gradient
    ℓ = ℓ_nll + (t / T_ann) ℓ_KL - div,     T_ann = (reweight_epoch + annealing) / reweight_factor
    L_k = Σ_n mask_kn ℓ_n / Σ_n mask_kn,   mask_kn = [w_k[n] / max_batch w_k > τ],   L = Σ_k L_k

(``engagement_loss: masked_plus_mean`` adds ``mean_n ℓ_n`` to each L_k: the official loss before commit
204f50b, "fix a bug in dynamic engagement", 2024; the paper's numbers come from that code.)

with T_c = (C π_c f + 1 - f) / max_c(...) (f = reweight_factor) once ``t > reweight_epoch`` and T = 1
before; T̄ = mean_c T_c.

Deviations from the official code (also listed in configs/method/tlc.yaml):

* per-sample aggregation by default (above); the official batch-normalised one is ``aggregation:
  batch``. The diversity target ŷ is the official batch-normalised output in both cases
  (``diversity_target: batch``; ``prediction`` uses ``logits`` instead);
* the evidential KL is evaluated in float64 (α̃ reaches e^30: float32 lgamma/digamma cancel badly);
* the CIFAR-LT training set is the standard LDAM-DRW construction (methods.md §0.1), not TLC's own
  unseeded generator (500…7 images, effective IF ≈ 71 on CIFAR-100);
* Many/Medium/Few are the >100 / 20–100 / <20 groups, not TLC's equal thirds of class indices;
* the evaluated model is the last epoch's (the official trainer selects on test).

Uncertainty quality (``record_extras()["tlc_uncertainty"]``, per evaluation set): AUROC of ``u`` for
failure prediction (positive = misclassified) and for tail detection (positive = a test sample of a
few- or medium-shot class, negative = many-shot; on CIFAR-10-LT only medium exists). OOD AUROC:
``ood_auroc`` is provided, but lt-bench has no out-of-distribution evaluation set yet (TODO).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lt_bench.errors import ConfigError
from lt_bench.methods.base import Outputs, limited_batches
from lt_bench.methods.baselines import class_balanced_weights, ldam_margins
from lt_bench.methods.sade import MultiExpertMethod
from lt_bench.methods.tensor_ops import one_hot
from lt_bench.metrics import LTMetrics
from lt_bench.metrics.shots import shot_groups
from lt_bench.registry import register_method

AGGREGATIONS = ("per_sample", "batch")
ENGAGEMENT_LOSSES = ("masked", "masked_plus_mean")
DIVERSITY_TARGETS = ("batch", "prediction")
#: weight of the diversity term (hard-coded ``0.01`` in the official ``TLCLoss``)
DIVERSITY_WEIGHT = 0.01
#: β of the DRW class-balanced weights (official ``betas = [0, 0.9999]``)
DRW_BETA = 0.9999


# --- evidential quantities and Dempster–Shafer combination -----------------------------------------
def log_strength(logits: Tensor) -> Tensor:
    """``log S = log(Σ_c e^{z_c} + C)`` ``[...]`` without forming ``e^z`` (no overflow)."""
    log_c = torch.full_like(logits[..., :1], math.log(logits.shape[-1]))
    return torch.logsumexp(torch.cat([logits, log_c], dim=-1), dim=-1)


def evidential(logits: Tensor) -> dict[str, Tensor]:
    """``e = exp(z)``, ``α = e + 1``, ``S = Σα``, belief ``b = e/S`` ``[..., C]``, ``u = C/S`` ``[...]``.

    ``b`` and ``u`` come from ``log S`` (finite even where ``e`` or ``S`` overflow)."""
    evidence = torch.exp(logits)
    log_s = log_strength(logits)
    return {
        "evidence": evidence,
        "alpha": evidence + 1,
        "strength": torch.exp(log_s),
        "belief": torch.exp(logits - log_s.unsqueeze(-1)),
        "uncertainty": torch.exp(math.log(logits.shape[-1]) - log_s),
    }


def conflict(belief_a: Tensor, belief_b: Tensor) -> Tensor:
    """``Γ = Σ_{i≠j} a_i b_j = (Σa)(Σb) - Σ a_i b_i`` over the last dimension."""
    return belief_a.sum(-1) * belief_b.sum(-1) - (belief_a * belief_b).sum(-1)


def agreement(belief_a: Tensor, uncertainty_a: Tensor, belief_b: Tensor, uncertainty_b: Tensor) -> Tensor:
    """``1 - Γ`` of two opinions (``Σb + u = 1``) as a sum of non-negative terms::

        1 - Γ = 1 - (1 - u_a)(1 - u_b) + Σ a_i b_i = u_a + Σ_i a_i (b_i + u_b)

    Equal to ``1 - conflict(a, b)``, without its cancellation: two confident experts that disagree
    have Γ within float rounding of 1, and ``1 - Γ`` rounds to 0 or below.
    """
    return uncertainty_a + (belief_a * (belief_b + uncertainty_b.unsqueeze(-1))).sum(-1)


def ds_combine(
    belief_a: Tensor, uncertainty_a: Tensor, belief_b: Tensor, uncertainty_b: Tensor
) -> tuple[Tensor, Tensor]:
    """Dempster's rule for two subjective opinions (``b``, ``u`` with ``Σb + u = 1``)::

    b_c = (a_c b_c + a_c u_b + b_c u_a) / (1 - Γ),   u = u_a u_b / (1 - Γ)
    """
    scale = agreement(belief_a, uncertainty_a, belief_b, uncertainty_b)
    belief = (
        belief_a * belief_b + belief_a * uncertainty_b.unsqueeze(-1) + belief_b * uncertainty_a.unsqueeze(-1)
    ) / scale.unsqueeze(-1)
    return belief, uncertainty_a * uncertainty_b / scale


def log_agreement(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """``log(1 - Γ)`` between the raw opinions of two experts' logits ``[..., C]``: ``agreement`` in
    log space, ``log(u_a + Σ_i a_i (b_i + u_b))`` with ``log a_i = z_a,i - log S_a``,
    ``log u_a = log C - log S_a`` and ``log(b_i + u_b) = log(e^{z_b,i} + C) - log S_b``."""
    log_c = math.log(logits_a.shape[-1])
    log_s_a, log_s_b = log_strength(logits_a), log_strength(logits_b)
    log_b_plus_u = torch.logaddexp(logits_b, torch.full_like(logits_b, log_c)) - log_s_b.unsqueeze(-1)
    terms = torch.cat(
        [(log_c - log_s_a).unsqueeze(-1), logits_a - log_s_a.unsqueeze(-1) + log_b_plus_u], dim=-1
    )
    return torch.logsumexp(terms, dim=-1)


def log_engagement_weights(expert_logits: Tensor) -> Tensor:
    """``log w`` ``[K + 1, B]`` of the official chain (``engagement_weights``), in log space::

        log w_0 = 0,   log w_{k+1} = log w_k + (log C - log S_k) - log(1 - Γ_k)

    Each step is ``≤ 0`` (``u_k ≤ 1 - Γ_k``), so ``w`` never overflows, and ``log w`` stays finite
    where ``w`` itself would underflow (many experts, confident logits).
    """
    log_c = math.log(expert_logits.shape[-1])
    log_w = [expert_logits.new_zeros(expert_logits.shape[1])]
    previous = None
    for logits in expert_logits:
        step = log_c - log_strength(logits)
        if previous is not None:
            step = step - log_agreement(previous, logits)
        log_w.append(log_w[-1] + step)
        previous = logits
    return torch.stack(log_w)


def engagement_weights(expert_logits: Tensor) -> Tensor:
    """The official chain ``w`` ``[K + 1, B]`` for expert logits ``[K, B, C]``.

    ``w_0 = 1``; ``w_{k+1} = w_k u_k / (1 - Γ_k)`` with Γ between expert k-1's and expert k's raw
    beliefs (``Γ_0 = 0``). Expert k is weighted by ``w_k``; ``w_K`` is the sample's uncertainty.
    Computed as ``exp(log_engagement_weights)``: the official float expression
    ``w u / (1 - Γ)`` reaches ``inf`` or a negative value when two confident experts disagree.
    """
    return torch.exp(log_engagement_weights(expert_logits))


def engagement_mask(log_weights: Tensor, tau: float) -> Tensor:
    """``[w_k[n] / max_batch w_k > τ]`` ``[K(+1), B]`` from ``log w`` (no 0/0 where all ``w_k``
    underflow); the batch's most uncertain sample is always engaged."""
    return log_weights - log_weights.max(dim=-1, keepdim=True).values > math.log(tau)


def aggregation_weights(weights: Tensor, eta: float, mode: str) -> Tensor:
    """``a`` ``[K, B]`` from the chain ``w[:K]``: softmax over experts (``per_sample``) or over the
    samples of the batch (``batch``, official)."""
    if mode == "per_sample":
        return torch.softmax(weights / eta, dim=0)
    if mode == "batch":
        return torch.softmax(weights / eta, dim=1)
    raise ConfigError(f"method.aggregation='{mode}'; valid: {', '.join(AGGREGATIONS)}")


def aggregate_experts(expert_logits: Tensor, weights: Tensor, eta: float, mode: str) -> Tensor:
    """``ŷ = Σ_k a_k ⊙ z_k`` ``[B, C]`` for expert logits ``[K, B, C]`` and chain ``w`` ``[K(+1), B]``."""
    a = aggregation_weights(weights[: expert_logits.shape[0]], eta, mode)
    return (a.unsqueeze(-1) * expert_logits).sum(dim=0)


# --- loss --------------------------------------------------------------------------------------------
def evidential_kl(alpha_hat: Tensor) -> Tensor:
    """``KL(Dir(α̂) ‖ Dir(1))`` per row of ``α̂`` ``[B, C]``."""
    total = alpha_hat.sum(dim=-1, keepdim=True)
    return (
        torch.lgamma(total.squeeze(-1))
        - math.lgamma(alpha_hat.shape[-1])
        - torch.lgamma(alpha_hat).sum(dim=-1)
        + ((alpha_hat - 1) * (torch.digamma(alpha_hat) - torch.digamma(total))).sum(dim=-1)
    )


def diversity_temperature(class_counts: Tensor, factor: float) -> Tensor:
    """RIDE's per-class temperature ``T_c = (C π_c f + 1 - f) / max_c(...)``."""
    prior = class_counts / class_counts.sum()
    t = len(class_counts) * prior * factor + 1 - factor
    return t / t.max()


def tlc_expert_losses(
    expert_logits: Tensor,
    targets: Tensor,
    target_output: Tensor,
    log_weights: Tensor,
    *,
    margins: Tensor,
    scale: float,
    class_weights: Tensor | None,
    kl_coef: float | Tensor,
    temperature: Tensor | None,
    tau: float,
    plus_mean: bool = False,
) -> Tensor:
    """``[L_0, ..., L_{K-1}]`` (module docstring) for expert logits ``[K, B, C]``, the diversity
    target ŷ ``[B, C]`` (detached here), the chain as ``log w`` ``[K(+1), B]`` (``engagement_mask``),
    LDAM ``margins`` ``[C]``, DRW ``class_weights`` (None: 1) and the diversity ``temperature``
    ``[C]`` (None: 1). ``plus_mean``: ``L_k = Σ_n mask_kn ℓ_n / Σ_n mask_kn + mean_n ℓ_n``, the official
    loss before commit 204f50b (2024), with which the paper's numbers were produced: every expert
    learns every sample, the engaged ones count twice."""
    num_classes = expert_logits.shape[-1]
    onehot = one_hot(targets, num_classes, expert_logits.dtype)
    t = torch.ones(num_classes, device=expert_logits.device) if temperature is None else temperature
    t_mean = t.mean()
    target_dist = torch.softmax(target_output.detach() / t, dim=1)
    masks = engagement_mask(log_weights[: expert_logits.shape[0]].detach(), tau)
    losses = []
    for k, logits in enumerate(expert_logits):
        margin_logits = logits - scale * margins[targets].unsqueeze(1) * onehot
        nll = F.nll_loss(F.log_softmax(margin_logits, dim=1), targets, weight=class_weights, reduction="none")
        alpha_tilde = torch.exp(margin_logits.double())
        alpha_hat = onehot.double() + (1 - onehot.double()) * (alpha_tilde + 1)
        kl = evidential_kl(alpha_hat).to(logits.dtype)
        div = F.kl_div(F.log_softmax(logits / t, dim=1), target_dist, reduction="none").sum(dim=1)
        per_sample = nll + kl_coef * kl - DIVERSITY_WEIGHT * t_mean**2 * div
        mask = masks[k].to(per_sample.dtype)
        engaged = (mask * per_sample).sum() / mask.sum()
        losses.append(engaged + per_sample.mean() if plus_mean else engaged)
    return torch.stack(losses)


# --- uncertainty quality ---------------------------------------------------------------------------
def auroc(scores: np.ndarray | Sequence[float], positive: np.ndarray | Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann–Whitney U with mid-ranks for
    ties): ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2``. NaN when either class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2  # mean of 1-based ranks start+1..end
    u_stat = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u_stat / (n_pos * n_neg))


def ood_auroc(uncertainty_in: np.ndarray, uncertainty_out: np.ndarray) -> float:
    """AUROC of the uncertainty for out-of-distribution (positive) vs in-distribution samples."""
    scores = np.concatenate([np.asarray(uncertainty_in), np.asarray(uncertainty_out)])
    positive = np.r_[np.zeros(len(uncertainty_in), bool), np.ones(len(uncertainty_out), bool)]
    return auroc(scores, positive)


def uncertainty_quality(
    uncertainty: np.ndarray, correct: np.ndarray, targets: np.ndarray, train_counts: Sequence[int]
) -> dict[str, float]:
    """Failure-prediction and tail-detection AUROC of a per-sample uncertainty (NaN when undefined)."""
    groups = shot_groups(train_counts)
    tail = np.zeros(len(train_counts), dtype=bool)
    tail[groups["medium"] + groups["few"]] = True
    many = np.zeros(len(train_counts), dtype=bool)
    many[groups["many"]] = True
    keep = tail[targets] | many[targets]
    return {
        "failure_auroc": auroc(uncertainty, ~correct),
        "tail_auroc": auroc(uncertainty[keep], tail[targets][keep]),
        "mean_uncertainty": float(np.mean(uncertainty)) if len(uncertainty) else float("nan"),
        "num_samples": len(uncertainty),
    }


# --- the method ------------------------------------------------------------------------------------
@register_method("tlc", paper="Li et al., TLC (Trustworthy Long-Tailed Classification), CVPR 2022")
class TLC(MultiExpertMethod):
    """Evidential experts, Dempster–Shafer engagement, ``tlc_expert_losses`` (module docstring).

    ``forward`` adds ``uncertainty`` ``[B]`` (``w_K``), ``engagement`` (the chain ``w`` ``[K+1, B]``),
    ``log_engagement`` (``log w``) and ``batch_output`` (the official batch-normalised ŷ) to the
    multi-expert outputs; ``logits`` is ŷ of ``method.aggregation``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        m = self.method_cfg
        if m.aggregation not in AGGREGATIONS:
            raise ConfigError(f"method.aggregation='{m.aggregation}'; valid: {', '.join(AGGREGATIONS)}")
        if m.engagement_loss not in ENGAGEMENT_LOSSES:
            raise ConfigError(
                f"method.engagement_loss='{m.engagement_loss}'; valid: {', '.join(ENGAGEMENT_LOSSES)}"
            )
        if m.diversity_target not in DIVERSITY_TARGETS:
            raise ConfigError(
                f"method.diversity_target='{m.diversity_target}'; valid: {', '.join(DIVERSITY_TARGETS)}"
            )
        self.register_buffer("margins", ldam_margins(self.class_counts, m.max_m))
        self.register_buffer("drw_weights", class_balanced_weights(self.class_counts, DRW_BETA))
        self.register_buffer("temperature", diversity_temperature(self.class_counts, m.reweight_factor))
        # the KL coefficient t / T_ann lives on the device, set at each epoch start, so that one
        # captured training step serves every epoch of a DRW phase
        self.register_buffer("kl_coef", torch.tensor(1.0 / self.annealing_period), persistent=False)
        self._uncertainty: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}
        self.uncertainty_results: dict[str, dict[str, float]] = {}

    @property
    def annealing_period(self) -> float:
        """``T_ann = (reweight_epoch + annealing) / reweight_factor``."""
        m = self.method_cfg
        return (m.reweight_epoch + m.annealing) / m.reweight_factor

    def expert_outputs(self, out: Outputs, batch: int) -> Outputs:
        outputs = super().expert_outputs(out, batch)
        expert_logits = outputs["expert_logits"]
        log_w = log_engagement_weights(expert_logits)
        w = torch.exp(log_w)
        eta = self.method_cfg.eta
        batch_output = aggregate_experts(expert_logits, w, eta, "batch")
        if self.method_cfg.aggregation == "per_sample":
            logits = aggregate_experts(expert_logits, w, eta, "per_sample")
        else:
            logits = batch_output * (batch / expert_logits.shape[0])
        outputs.update(
            logits=logits, uncertainty=w[-1], engagement=w, log_engagement=log_w, batch_output=batch_output
        )
        return outputs

    def test_time_stage(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """With ``aggregation: per_sample``, also evaluate the official batch-normalised aggregation.

        Each evaluation set is cut into blocks of ``method.batch_eval_size`` consecutive images (the
        official validation batch: 4,096, in the split's order); within a block the expert weights are
        ``exp(w_k[n]/η) / Σ_{m∈block} exp(w_k[m]/η)`` and the logits ``ŷ · B/K`` as under
        ``aggregation: batch``. Results: ``<set>_tlc_batch``, table row ``tlc+batch``. The images are
        those the main evaluation scored (``trainer.limit_test_batches`` applies).
        """
        size = self.method_cfg.batch_eval_size
        if self.method_cfg.aggregation != "per_sample" or not size:
            return
        with self._on_trainer_device(trainer) as device:
            eval_size = datamodule.eval_batch_size
            for name, split in datamodule.test_sets.items():
                # the main evaluation scores limit_test_batches batches per process, each process every
                # world_size-th image (UnrepeatedDistributedSampler): together the leading images
                per_pass = eval_size * trainer.world_size
                passes = limited_batches(trainer.limit_test_batches, math.ceil(len(split) / per_pass))
                scored = min(len(split), per_pass * passes)
                metric = LTMetrics(self.class_counts.long().tolist()).to(device)
                for block in range(trainer.global_rank, math.ceil(scored / size), trainer.world_size):
                    start, stop = block * size, min((block + 1) * size, scored)
                    logits, targets = [], []
                    for images, y in datamodule.eval_chunks(split, start, stop, device):
                        logits.append(self._expert_logits(images, trainer))
                        targets.append(y)
                    expert_logits = torch.cat(logits, dim=1)
                    weights = torch.exp(log_engagement_weights(expert_logits))
                    block_logits = aggregate_experts(expert_logits, weights, self.method_cfg.eta, "batch")
                    metric.update(block_logits * (stop - start) / expert_logits.shape[0], torch.cat(targets))
                self._finish(f"{name}_tlc_batch", metric)
                if name == "test":
                    self.result_variants["batch"] = "test_tlc_batch"

    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        m = self.method_cfg
        drw = self.drw_active()
        target = outputs["batch_output"] if m.diversity_target == "batch" else outputs["logits"]
        losses = tlc_expert_losses(
            outputs["expert_logits"],
            targets,
            target,
            outputs["log_engagement"],
            margins=self.margins,
            scale=self.classifier_scale(),
            class_weights=self.drw_weights if drw else None,
            kl_coef=self.kl_coef,
            temperature=self.temperature if drw else None,
            tau=m.tau,
            plus_mean=m.engagement_loss == "masked_plus_mean",
        )
        return losses.sum()

    def drw_active(self) -> bool:
        """DRW weights and diversity temperatures from the official epoch ``reweight_epoch + 1``."""
        return self.epoch + 1 > self.method_cfg.reweight_epoch

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.kl_coef.fill_((self.epoch + 1) / self.annealing_period)  # the official trainer counts from 1

    def step_variant(self) -> bool:
        return self.drw_active()

    # --- evaluation: per-sample uncertainty and its quality ------------------------------------
    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._uncertainty = {name: [] for name in self.test_metrics}

    def update_test_metrics(self, outputs: Outputs, targets: Tensor, dataloader_idx: int) -> None:
        super().update_test_metrics(outputs, targets, dataloader_idx)
        correct = self.predict_logits(outputs).argmax(dim=1) == targets
        name = list(self.test_metrics)[dataloader_idx]
        self._uncertainty[name].append((outputs["uncertainty"].detach().double(), correct, targets))

    def _gather(self, values: Tensor) -> Tensor:
        """All processes' ``values`` concatenated (unequal lengths padded for the all-gather)."""
        if self._trainer is None or self.trainer.world_size <= 1:
            return values
        length = torch.tensor([len(values)], device=values.device)
        lengths = self.all_gather(length).flatten().tolist()
        padded = torch.zeros(max(lengths), dtype=values.dtype, device=values.device)
        padded[: len(values)] = values
        gathered = self.all_gather(padded)
        return torch.cat([gathered[r, :n] for r, n in enumerate(lengths)])

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        counts = self.class_counts.long().tolist()
        for name, parts in self._uncertainty.items():
            if parts:
                u, correct, targets = (torch.cat(p) for p in zip(*parts, strict=True))
            else:
                u = torch.zeros(0, dtype=torch.float64, device=self.device)
                correct = torch.zeros(0, dtype=torch.bool, device=self.device)
                targets = torch.zeros(0, dtype=torch.long, device=self.device)
            u, correct, targets = self._gather(u), self._gather(correct), self._gather(targets)
            self.uncertainty_results[name] = uncertainty_quality(
                u.cpu().numpy(), correct.cpu().numpy().astype(bool), targets.cpu().numpy(), counts
            )
        self._uncertainty = {}

    def record_extras(self) -> dict[str, Any]:
        m = self.method_cfg
        extras: dict[str, Any] = {
            "tlc_aggregation": m.aggregation,
            "tlc_ood_auroc": "not computed: no out-of-distribution evaluation set in lt-bench yet",
        }
        if self.uncertainty_results:
            extras["tlc_uncertainty"] = self.uncertainty_results
        return extras
