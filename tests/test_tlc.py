"""TLC (methods.md §2) against direct transcriptions and hand-computed Dempster–Shafer numbers.

Evidence ``e = exp(z)``, ``α = e + 1``, ``S = Σα``, ``b = e/S``, ``u = C/S``; chain ``w_0 = 1``,
``w_{k+1} = w_k u_k / (1 - Γ_k)``; per-expert loss ``ℓ_nll + (t/T_ann) ℓ_KL - 0.01 T̄² KL(ŷ ‖ z_k)``
averaged over engaged samples (``w_k / max w_k > 0.54``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from scipy.special import digamma
from sklearn.metrics import roc_auc_score
from stage_trainer import fake_trainer
from training_steps import fixed_batch_losses

import lt_bench.methods.tlc  # noqa: F401  (registers "tlc")
from lt_bench.config import compose
from lt_bench.data.augment import to_normalized_nchw
from lt_bench.data.base import ArraySplit, FileSplit
from lt_bench.data.module import LTDataModule
from lt_bench.errors import ConfigError
from lt_bench.methods.tlc import (
    aggregate_experts,
    aggregation_weights,
    agreement,
    auroc,
    conflict,
    diversity_temperature,
    ds_combine,
    engagement_mask,
    engagement_weights,
    evidential,
    log_engagement_weights,
    tlc_expert_losses,
    uncertainty_quality,
)
from lt_bench.registry import METHODS

COUNTS = [150, 60, 10, 5]
SMALL = ("method.expert_widths=[8,8,8]",)  # narrow experts keep CPU tests fast


def build(*overrides: str, counts: list[int] = COUNTS, experiment: str = "cifar10_lt/tlc"):
    cfg = compose([f"experiment={experiment}", *SMALL, *overrides])
    torch.manual_seed(0)
    return METHODS.get("tlc")(cfg=OmegaConf.to_container(cfg), train_counts=counts, in_channels=3)


# --- evidential quantities and Dempster–Shafer, by hand ------------------------------------------------
# expert A: evidence (4, 1, 1) -> α (5, 2, 2), S = 9, b = (4/9, 1/9, 1/9), u = 1/3
# expert B: evidence (1, 3, 1) -> α (2, 4, 2), S = 8, b = (1/8, 3/8, 1/8), u = 3/8
# Γ = (Σb_A)(Σb_B) - Σ b_A,c b_B,c = (6/9)(5/8) - 8/72 = 22/72 = 11/36,  1 - Γ = 25/36
# u = (1/3)(3/8) / (25/36) = 9/50;  b_0 = (4/72 + 12/72 + 3/72)(36/25) = 19/50,
# b_1 = (3/72 + 3/72 + 9/72)(36/25) = 15/50,  b_2 = (1/72 + 3/72 + 3/72)(36/25) = 7/50
LOGITS_A = torch.log(torch.tensor([[4.0, 1.0, 1.0]], dtype=torch.float64))
LOGITS_B = torch.log(torch.tensor([[1.0, 3.0, 1.0]], dtype=torch.float64))


def test_evidential_quantities_by_hand() -> None:
    q = evidential(LOGITS_A)
    torch.testing.assert_close(q["alpha"], torch.tensor([[5.0, 2.0, 2.0]], dtype=torch.float64))
    assert q["strength"].item() == pytest.approx(9.0)
    torch.testing.assert_close(q["belief"], torch.tensor([[4 / 9, 1 / 9, 1 / 9]], dtype=torch.float64))
    assert q["uncertainty"].item() == pytest.approx(1 / 3)
    assert (q["belief"].sum() + q["uncertainty"]).item() == pytest.approx(1.0)


def test_dempster_shafer_two_experts_by_hand() -> None:
    a, b = evidential(LOGITS_A), evidential(LOGITS_B)
    assert conflict(a["belief"], b["belief"]).item() == pytest.approx(11 / 36)
    belief, u = ds_combine(a["belief"], a["uncertainty"], b["belief"], b["uncertainty"])
    assert belief.squeeze(0).tolist() == pytest.approx([19 / 50, 15 / 50, 7 / 50])
    assert u.item() == pytest.approx(9 / 50)
    # the official chain: w = (1, u_A, u_A u_B / (1 - Γ)); its last entry is the DS uncertainty
    w = engagement_weights(torch.stack([LOGITS_A, LOGITS_B]))
    assert w.squeeze(1).tolist() == pytest.approx([1.0, 1 / 3, 9 / 50])
    # per-sample aggregation: a = softmax over experts of (1, 1/3) / η
    eta = 0.2
    a0 = 1 / (1 + math.exp(-(1 - 1 / 3) / eta))
    expected = a0 * LOGITS_A + (1 - a0) * LOGITS_B
    got = aggregate_experts(torch.stack([LOGITS_A, LOGITS_B]), w, eta, "per_sample")
    torch.testing.assert_close(got, expected)
    # batch of one, official: each expert's weight is normalised over the batch -> 1
    got = aggregate_experts(torch.stack([LOGITS_A, LOGITS_B]), w, eta, "batch")
    torch.testing.assert_close(got, LOGITS_A + LOGITS_B)


def test_chain_uses_previous_raw_belief_for_three_experts() -> None:
    g = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    w = engagement_weights(z)
    for n in range(5):
        row, prev_b = [1.0], None
        for k in range(3):
            e = [math.exp(v) for v in z[k, n].tolist()]
            s = sum(e) + 4
            b, u = [v / s for v in e], 4 / s
            gamma = (
                0.0 if prev_b is None else sum(prev_b[i] * b[j] for i in range(4) for j in range(4) if i != j)
            )
            row.append(row[-1] * u / (1 - gamma))
            prev_b = b
        assert w[:, n].tolist() == pytest.approx(row)


# --- numerical stability: confident experts that disagree -------------------------------------------
def chain_as_coded(z: torch.Tensor) -> torch.Tensor:
    """The official float expression: ``w <- w u / (1 - Γ)``, ``Γ = (Σa)(Σb) - Σ a_i b_i`` of the raw
    beliefs ``b = (α - 1) / S``, in the dtype of ``z``."""
    rows, previous = [torch.ones(z.shape[1], dtype=z.dtype)], None
    for logits in z:
        alpha = torch.exp(logits) + 1
        strength = alpha.sum(-1, keepdim=True)
        b, u = (alpha - 1) / strength, z.shape[-1] / strength.squeeze(-1)
        gamma = 0 if previous is None else b.sum(-1) * previous.sum(-1) - (previous * b).sum(-1)
        rows.append(rows[-1] * u / (1 - gamma))
        previous = b
    return torch.stack(rows)


def chain_exact(z: list[list[float]]) -> list[float]:
    """The chain of one sample (``z[k][c]``) in exact rational arithmetic from the evidence ``exp(z)``."""
    classes = len(z[0])
    w, previous, out = Fraction(1), None, [1.0]
    for logits in z:
        e = [Fraction(math.exp(v)) for v in logits]
        strength = sum(e) + classes
        b = [v / strength for v in e]
        gamma = (
            0
            if previous is None
            else sum(previous) * sum(b) - sum(p * q for p, q in zip(previous, b, strict=True))
        )
        w = w * Fraction(classes) / strength / (1 - gamma)
        out.append(float(w))
        previous = b
    return out


def extreme_logits(experts: int = 3, batch: int = 12, classes: int = 100) -> torch.Tensor:
    """Scaled cosines at ±30: every expert is sure (+30) of one class and -30 on the others. In
    samples 1-5 the experts disagree, in 6-8 they agree; samples 9-11 are ``30 tanh(3 N(0, 1))``.
    Sample 0 is -30 everywhere: the one uncertain sample, which dominates the batch's chain."""
    z = torch.full((experts, batch, classes), -30.0)
    for n in range(1, 9):
        for k in range(experts):
            z[k, n, (n + (k if n < 6 else 0)) % classes] = 30.0
    g = torch.Generator().manual_seed(7)
    z[:, 9:] = 30 * torch.tanh(3 * torch.randn(experts, batch - 9, classes, generator=g))
    return z


def test_chain_is_finite_and_exact_where_the_coded_expression_overflows() -> None:
    z = extreme_logits()
    coded = chain_as_coded(z)
    assert not torch.isfinite(coded).all() or (coded < 0).any()  # the official float32 value breaks
    w = engagement_weights(z)
    assert torch.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()
    for n in range(z.shape[1]):
        assert w[:, n].tolist() == pytest.approx(chain_exact(z[:, n].double().tolist()), rel=1e-4, abs=0)
    # each of the chain's steps is at most 1 (u_k <= 1 - Γ_k): w never grows
    assert (w[1:] <= w[:-1] * (1 + 1e-6)).all()


def test_stable_forms_equal_the_coded_ones_on_moderate_logits() -> None:
    g = torch.Generator().manual_seed(2)
    z = 3 * torch.randn(4, 32, 10, generator=g, dtype=torch.float64)
    a, b = evidential(z[0]), evidential(z[1])
    torch.testing.assert_close(
        agreement(a["belief"], a["uncertainty"], b["belief"], b["uncertainty"]),
        1 - conflict(a["belief"], b["belief"]),
    )
    coded = chain_as_coded(z)
    torch.testing.assert_close(engagement_weights(z), coded)
    torch.testing.assert_close(log_engagement_weights(z), coded.log())
    assert torch.equal(
        engagement_mask(coded.log(), 0.54), coded / coded.max(dim=1, keepdim=True).values > 0.54
    )
    assert (engagement_mask(coded.log(), 0.54).sum(dim=1) >= 1).all()


def test_mask_without_underflow_for_many_confident_experts() -> None:
    # eight confident experts that agree: w_7 underflows to 0 for every sample in float32 (the
    # coded mask w / max w would be 0/0), its log does not and the batch's most uncertain sample engages
    z = extreme_logits(experts=8)[:, 6:9]
    log_w = log_engagement_weights(z)
    assert torch.isfinite(log_w).all() and (torch.exp(log_w[7]) == 0).all()
    mask = engagement_mask(log_w, 0.54)
    assert (mask.sum(dim=1) >= 1).all() and mask[7, log_w[7].argmax()]


@pytest.mark.parametrize("aggregation", ["per_sample", "batch"])
@pytest.mark.parametrize("epoch", [0, 170])
def test_extreme_logits_give_a_finite_loss_and_gradients(aggregation: str, epoch: int) -> None:
    counts = [max(2, int(500 * 0.95**c)) for c in range(100)]
    method = build(f"method.aggregation={aggregation}", counts=counts)
    method.engine_epoch = epoch  # 170: DRW weights, diversity temperatures, KL coefficient 171/13200
    method.on_train_epoch_start()
    z = extreme_logits().requires_grad_()
    features = torch.randn(3, z.shape[1], 8, requires_grad=True)
    outputs = method.expert_outputs({"expert_logits": z, "expert_features": features}, z.shape[1])
    for key in ("logits", "engagement", "log_engagement", "batch_output", "uncertainty"):
        assert torch.isfinite(outputs[key]).all(), key
    targets = torch.arange(z.shape[1]) % 100
    loss = method.compute_loss(outputs, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # the uncertain sample 0 dominates: every expert engages it
    assert engagement_mask(outputs["log_engagement"][:3], 0.54)[:, 0].all()


# --- loss against a transcription ---------------------------------------------------------------------
def loss_by_hand(z, y, target, w, margins, weights, kl_coef, temp, tau, scale=30.0, plus_mean=False):
    """Per expert: masked mean over samples of ℓ_nll + kl_coef ℓ_KL - 0.01 T̄² KL, in Python floats;
    ``plus_mean``: plus the mean over all samples (the official loss before commit 204f50b)."""
    num_experts, batch, num_classes = len(z), len(z[0]), len(z[0][0])
    t_mean = sum(temp) / num_classes
    out = []
    for k in range(num_experts):
        wk = w[k]
        mask = [wk[n] / max(wk) > tau for n in range(batch)]
        total, count, everyone = 0.0, 0, 0.0
        for n in range(batch):
            zt = [z[k][n][c] - (scale * margins[y[n]] if c == y[n] else 0.0) for c in range(num_classes)]
            at = [math.exp(v) for v in zt]
            nll = -weights[y[n]] * math.log(at[y[n]] / sum(at))
            ah = [1.0 if c == y[n] else at[c] + 1 for c in range(num_classes)]
            sh = sum(ah)
            kl = (
                math.lgamma(sh)
                - math.lgamma(num_classes)
                - sum(math.lgamma(a) for a in ah)
                + sum((a - 1) * (digamma(a) - digamma(sh)) for a in ah)
            )
            p = [math.exp(target[n][c] / temp[c]) for c in range(num_classes)]
            p = [v / sum(p) for v in p]
            q = [math.exp(z[k][n][c] / temp[c]) for c in range(num_classes)]
            q = [v / sum(q) for v in q]
            div = sum(p[c] * (math.log(p[c]) - math.log(q[c])) for c in range(num_classes))
            sample_loss = nll + kl_coef * kl - 0.01 * t_mean**2 * div
            everyone += sample_loss
            if mask[n]:
                total += sample_loss
                count += 1
        out.append(total / count + (everyone / batch if plus_mean else 0.0))
    return out


@pytest.mark.parametrize("plus_mean", [False, True])
@pytest.mark.parametrize("drw", [False, True])
def test_expert_losses_match_the_formula(drw: bool, plus_mean: bool) -> None:
    g = torch.Generator().manual_seed(1)
    z = 3 * torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 3, 0])
    target = torch.randn(6, 4, generator=g, dtype=torch.float64)
    w = torch.rand(4, 6, generator=g, dtype=torch.float64)
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    margins = counts.pow(-0.25) * (0.5 / counts.pow(-0.25).max())
    cb = (1 - 0.9999) / (1 - 0.9999**counts)
    cb = cb / cb.sum() * 4
    temp = diversity_temperature(counts, 0.05)
    prior = (counts / counts.sum()).tolist()
    raw_t = [4 * p * 0.05 + 1 - 0.05 for p in prior]
    assert temp.tolist() == pytest.approx([t / max(raw_t) for t in raw_t])
    got = tlc_expert_losses(
        z,
        y,
        target,
        w.log(),
        margins=margins,
        scale=30.0,
        class_weights=cb if drw else None,
        kl_coef=0.37,
        temperature=temp if drw else None,
        tau=0.54,
        plus_mean=plus_mean,
    )
    expected = loss_by_hand(
        z.tolist(),
        y.tolist(),
        target.tolist(),
        w.tolist(),
        margins.tolist(),
        cb.tolist() if drw else [1.0] * 4,
        0.37,
        temp.tolist() if drw else [1.0] * 4,
        0.54,
        plus_mean=plus_mean,
    )
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_method_loss_schedule_and_engagement() -> None:
    method = build()
    assert method.annealing_period == pytest.approx((160 + 500) / 0.05)
    out = method(torch.randn(5, 3, 8, 8))
    y = torch.tensor([0, 1, 2, 3, 0])
    # epoch 0 (0-indexed) = official epoch 1: KL coefficient 1/13200, no DRW, T = 1, target = batch output
    expected = tlc_expert_losses(
        out["expert_logits"],
        y,
        out["batch_output"],
        out["log_engagement"],
        margins=method.margins,
        scale=30.0,
        class_weights=None,
        kl_coef=1 / 13200,
        temperature=None,
        tau=0.54,
    ).sum()
    assert method.compute_loss(out, y).item() == pytest.approx(expected.item(), rel=1e-6)
    # the coefficient is set on the device at each epoch start (one captured step for all epochs)
    method.engine_epoch = 9
    method.on_train_epoch_start()
    assert method.kl_coef.item() == pytest.approx(10 / 13200) and method.step_variant() is False
    method.engine_epoch = 160  # official epoch 161: DRW on
    assert method.step_variant() is True
    # expert 0 always engages every sample (w_0 = 1)
    assert torch.all(out["engagement"][0] == 1)


# --- aggregation: per-sample vs batch -----------------------------------------------------------------
def test_per_sample_prediction_does_not_depend_on_the_batch() -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 3, 8, 8)
    other = x.clone()
    other[1:] = 5 * torch.randn(3, 3, 8, 8)
    method = build().eval()
    with torch.no_grad():
        a, b = method(x), method(other)
    torch.testing.assert_close(a["logits"][0], b["logits"][0])
    torch.testing.assert_close(a["uncertainty"][0], b["uncertainty"][0])
    batch = build("method.aggregation=batch").eval()
    with torch.no_grad():
        a, b = batch(x), batch(other)
    torch.testing.assert_close(a["uncertainty"][0], b["uncertainty"][0])
    assert not torch.allclose(a["logits"][0], b["logits"][0])


def test_aggregation_functions_on_random_logits() -> None:
    g = torch.Generator().manual_seed(4)
    z = 5 * torch.randn(3, 6, 5, generator=g)
    z2 = z.clone()
    z2[:, 1:] = 5 * torch.randn(3, 5, 5, generator=g)
    per = [aggregate_experts(v, engagement_weights(v), 0.2, "per_sample")[0] for v in (z, z2)]
    torch.testing.assert_close(per[0], per[1])
    with pytest.raises(ConfigError):
        aggregate_experts(z, engagement_weights(z), 0.2, "experts")
    with pytest.raises(ConfigError):
        build("method.aggregation=mean")


# --- AUROC ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    scores = rng.normal(size=50)
    assert auroc(scores, labels[:50]) == pytest.approx(roc_auc_score(labels[:50], scores))
    assert math.isnan(auroc(scores, np.zeros(50, bool)))


def test_uncertainty_quality_groups() -> None:
    # classes 0 (many), 1 (medium), 2 (few); uncertainty is high exactly on tail and wrong samples
    targets = np.array([0, 0, 1, 2, 2, 0])
    u = np.array([0.1, 0.2, 0.8, 0.9, 0.7, 0.6])
    correct = np.array([True, True, False, False, True, False])
    q = uncertainty_quality(u, correct, targets, [150, 60, 10])
    assert q["tail_auroc"] == pytest.approx(roc_auc_score(targets > 0, u))
    assert q["failure_auroc"] == pytest.approx(roc_auc_score(~correct, u))
    assert q["num_samples"] == 6


def test_test_loop_records_uncertainty_quality() -> None:
    method = build().eval()
    method.on_test_epoch_start()
    with torch.no_grad():
        for _ in range(2):
            method.test_step((torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))), 0)
    method.on_test_epoch_end()
    extras = method.record_extras()
    q = extras["tlc_uncertainty"]["test"]
    assert q["num_samples"] == 16 and q["mean_uncertainty"] >= 0.0
    assert extras["tlc_aggregation"] == "per_sample"
    assert "test_expert2" in method.results


# --- training and configs -----------------------------------------------------------------------------
def test_a_few_cpu_steps_lower_the_loss() -> None:
    method = build()
    torch.manual_seed(5)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    # experts 1-2 engage only the few samples with w_k / max w_k > 0.54, so the loss is noisy at
    # larger learning rates; a small one fits the fixed batch steadily
    losses = fixed_batch_losses(method, x, y, steps=10, lr=0.01)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    ("experiment", "backbone", "wd", "shared", "eta", "reweight", "factor"),
    [
        ("cifar10_lt/tlc", "resnet32", 2e-4, "stem", 0.2, 160, 0.05),
        ("cifar100_lt/tlc", "resnet32", 5e-4, "stem", 0.2, 160, 0.05),
        ("imagenet_lt/tlc", "resnet50", 2e-4, "layer3", 0.5, 80, 0.02),
    ],
)
def test_experiment_configs(experiment, backbone, wd, shared, eta, reweight, factor) -> None:
    cfg = compose([f"experiment={experiment}"])
    assert cfg.method.name == "tlc" and cfg.backbone.name == backbone
    assert cfg.optim.lr == 0.1 and cfg.optim.nesterov is True and cfg.optim.weight_decay == wd
    m = cfg.method
    assert (m.shared_until, m.eta, m.reweight_epoch, m.reweight_factor) == (shared, eta, reweight, factor)
    assert m.tau == 0.54 and m.num_experts == 3 and m.aggregation == "per_sample" and m.scale == 30.0
    if backbone == "resnet32":
        assert cfg.data.batch_size == 128 and cfg.trainer.max_epochs == 200
        assert cfg.schedule.milestones == [160, 180] and cfg.schedule.gamma == 0.01
        assert cfg.data.train_augment == "crop_flip_rotate"
    else:
        assert cfg.data.batch_size == 256 and cfg.trainer.max_epochs == 100
        assert cfg.schedule.milestones == [60, 80] and cfg.schedule.gamma == 0.1


def test_per_sample_weights_favour_expert_zero_unlike_the_batch_weights() -> None:
    # the chain never grows, so softmax_k(w_k / η) is largest for expert 0 (w_0 = 1) on every sample
    z = extreme_logits()
    w = engagement_weights(z)
    per_sample = aggregation_weights(w[:3], 0.2, "per_sample")
    assert (per_sample.argmax(dim=0) == 0).all()
    rest = 1 / (math.exp(5) + 2)  # sample 1: every expert sure, so w_1, w_2 ≈ 0
    assert per_sample[:, 1].tolist() == pytest.approx([math.exp(5) * rest, rest, rest])
    # official: B a_0 = 1 everywhere; experts 1-2 weigh 1 / mean_batch e^{w_k/η} on the sure samples
    # and e^{w_k/η} / mean_batch e^{w_k/η} (here > 10) on the unsure sample 0
    batch = aggregation_weights(w[:3], 0.2, "batch") * z.shape[1]
    assert batch[0].tolist() == pytest.approx([1.0] * z.shape[1])
    mean_exp = torch.exp(w[1:3] / 0.2).mean(dim=1)
    torch.testing.assert_close(batch[1:, 1], 1 / mean_exp, rtol=1e-4, atol=0)
    assert (batch[1:, 0] > 10).all()


# --- the official batch aggregation as a second evaluation ---------------------------------------------
def _datamodule(test: ArraySplit, eval_batch_size: int = 3) -> LTDataModule:
    return LTDataModule(
        test, None, {"test": test}, [0.5] * 3, [0.25] * 3, batch_size=8, eval_batch_size=eval_batch_size
    )


def test_batch_aggregation_is_scored_on_blocks_of_consecutive_images() -> None:
    """``test_tlc_batch`` equals ``aggregation=batch`` forwarded block by block (4, 4, 2 images),
    whatever the chunking of the forward passes (eval batch 3)."""
    rng = np.random.default_rng(0)
    test = ArraySplit(rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8), np.arange(10) % 4)
    method = build("method.batch_eval_size=4").eval()
    method.test_time_stage(fake_trainer(), _datamodule(test))
    assert method.result_variants == {"batch": "test_tlc_batch"}
    result = method.results["test_tlc_batch"]

    official = build("method.aggregation=batch")
    official.load_state_dict(method.state_dict())
    official.eval()
    images = to_normalized_nchw(torch.from_numpy(test.images), [0.5] * 3, [0.25] * 3)
    targets = torch.from_numpy(test.targets)
    with torch.no_grad():
        logits = torch.cat([official(images[a:b])["logits"] for a, b in ((0, 4), (4, 8), (8, 10))])
    assert result["num_samples"] == 10
    assert result["top1"] == pytest.approx((logits.argmax(1) == targets).float().mean().item())
    assert result["nll"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)


def test_batch_aggregation_scores_the_images_the_main_evaluation_scored() -> None:
    """limit_test_batches=1 at eval batch 3: one process scores images 0-2, two processes 0-5 (each
    every second image); the blocks of 4 split them between the processes."""
    rng = np.random.default_rng(1)
    test = ArraySplit(rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8), np.arange(10) % 4)
    one = build("method.batch_eval_size=4").eval()
    one.test_time_stage(fake_trainer(limit=1), _datamodule(test))
    assert one.results["test_tlc_batch"]["num_samples"] == 3
    counts = []
    for rank in (0, 1):
        part = build("method.batch_eval_size=4").eval()
        part.test_time_stage(fake_trainer(limit=1, rank=rank, world_size=2), _datamodule(test))
        counts.append(part.results["test_tlc_batch"]["num_samples"])
    assert counts == [4, 2]  # block 0 (images 0-3) on rank 0, block 1 (images 4-5) on rank 1


def test_batch_aggregation_evaluation_off() -> None:
    test = ArraySplit(np.zeros((4, 16, 16, 3), dtype=np.uint8), np.arange(4))
    for overrides in (("method.batch_eval_size=null",), ("method.aggregation=batch",)):
        method = build(*overrides).eval()
        method.test_time_stage(fake_trainer(), _datamodule(test))
        assert method.results == {} and method.result_variants == {}


def test_eval_chunks_of_image_files_follow_the_evaluation_transform(tmp_path) -> None:
    from PIL import Image

    paths = []
    for i in range(5):
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    split = FileSplit(tmp_path, paths, np.arange(5) % 2)
    dm = LTDataModule(
        split, None, {"test": split}, [0.5] * 3, [0.25] * 3, 8, eval_batch_size=2, image_size=16
    )
    chunks = list(dm.eval_chunks(split, 1, 4, torch.device("cpu")))
    assert [len(t) for _, t in chunks] == [2, 1]  # eval_batch_size at a time, images 1..3 in order
    images = torch.cat([x for x, _ in chunks])
    assert images.shape == (3, 3, 16, 16)
    expected = (torch.tensor([40.0, 80.0, 120.0]) / 255 - 0.5) / 0.25
    torch.testing.assert_close(images.mean(dim=(1, 2, 3)), expected, atol=1e-5, rtol=0)
    assert torch.cat([t for _, t in chunks]).tolist() == [1, 0, 1]


def test_the_2022_engagement_loss_is_selected_by_config() -> None:
    """``cifar10_lt/tlc_2022``: each expert's loss adds the mean over all samples (pre-204f50b code)."""
    method = build(experiment="cifar10_lt/tlc_2022")
    assert method.method_cfg.engagement_loss == "masked_plus_mean"
    out = method(torch.randn(5, 3, 8, 8))
    y = torch.tensor([0, 1, 2, 3, 0])
    args = (out["expert_logits"], y, out["batch_output"], out["log_engagement"])
    kwargs = dict(
        margins=method.margins, scale=30.0, class_weights=None, kl_coef=1 / 13200, temperature=None, tau=0.54
    )
    with_mean = tlc_expert_losses(*args, **kwargs, plus_mean=True).sum()
    assert method.compute_loss(out, y).item() == pytest.approx(with_mean.item(), rel=1e-6)
    assert with_mean.item() != pytest.approx(tlc_expert_losses(*args, **kwargs).sum().item(), rel=1e-3)


def test_unknown_engagement_loss_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="method.engagement_loss='both'; valid: masked, masked_plus_mean"):
        build("method.engagement_loss=both")
