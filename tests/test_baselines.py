"""Baseline methods (CE, Balanced Softmax / logit adjustment, LDAM-DRW) against direct transcriptions.

References (methods.md §0.5, §7): LDAM margins ``m_j = max_m * n_j^-1/4 / max_k n_k^-1/4``;
class-balanced weights ``(1 - beta) / (1 - beta^n_j)`` normalised to sum to C; LDAM loss
``CE(s * cos - s * m_y * onehot_y)`` weighted by the DRW weights from ``drw_epoch`` on;
Balanced Softmax ``CE(z + tau * log pi)`` and post-hoc ``z - tau * log pi``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from training_steps import assert_loss_drops, learnable_data, sgd_losses

from lt_bench.config import compose
from lt_bench.methods.baselines import class_balanced_weights, ldam_margins
from lt_bench.registry import METHODS

COUNTS = [40, 12, 8, 4]
BASELINES = ("ce", "balanced_softmax", "ldam_drw")


def build(name: str, counts: list[int] = COUNTS, *overrides: str, backbone: str = "small_cnn"):
    """A method from the composed CIFAR-10-LT experiment config (small backbone for speed)."""
    cfg = compose([f"experiment=cifar10_lt/{name}", f"backbone={backbone}", *overrides])
    torch.manual_seed(0)
    return METHODS.get(name)(cfg=OmegaConf.to_container(cfg), train_counts=counts, in_channels=3)


def at_epoch(method, epoch: int):
    """Attach a stand-in trainer so that ``method.current_epoch`` reads ``epoch``."""
    method.trainer = SimpleNamespace(current_epoch=epoch)
    assert method.current_epoch == epoch
    return method


def ce_by_hand(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None):
    """``sum_i w_{y_i} * -log softmax(z_i)_{y_i} / sum_i w_{y_i}`` (PyTorch's weighted mean)."""
    nll = -(logits.double().log_softmax(dim=1).gather(1, targets[:, None]).squeeze(1))
    w = torch.ones_like(nll) if weight is None else weight.double()[targets]
    return (w * nll).sum() / w.sum()


def batch(n: int = 8, num_classes: int = len(COUNTS), size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    targets = torch.arange(n) % num_classes
    return images, targets


# --- helper functions ------------------------------------------------------------------------------
def test_ldam_margins_hand_numbers() -> None:
    # n^-1/4: 5000 -> 0.118921, 50 -> 0.376060; ratio (50/5000)^1/4 = 0.316228, times max_m 0.5
    margins = ldam_margins(torch.tensor([5000.0, 50.0]), max_m=0.5)
    assert margins.tolist() == pytest.approx([0.158114, 0.5], abs=1e-6)


@pytest.mark.parametrize("counts", [[5000, 2997, 1796, 50], [500, 100, 20, 5, 5], [7]])
@pytest.mark.parametrize("max_m", [0.5, 0.3])
def test_ldam_margins_formula(counts: list[int], max_m: float) -> None:
    raw = [n**-0.25 for n in counts]
    expected = [max_m * r / max(raw) for r in raw]
    got = ldam_margins(torch.tensor(counts, dtype=torch.float), max_m=max_m)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert got.max().item() == pytest.approx(max_m)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # beta^5000 = 0.606531, beta^500 = 0.951229, beta^50 = 0.995012 (beta = 0.9999)
        ([5000, 50], [0.025034, 1.974966]),
        ([5000, 500, 50], [0.034107, 0.275167, 2.690725]),
    ],
)
def test_class_balanced_weights_hand_numbers(counts: list[int], expected: list[float]) -> None:
    weights = class_balanced_weights(torch.tensor(counts, dtype=torch.float64), beta=0.9999)
    assert weights.tolist() == pytest.approx(expected, abs=2e-6)
    assert weights.sum().item() == pytest.approx(len(counts))


@pytest.mark.parametrize("beta", [0.9999, 0.999, 0.99])
def test_class_balanced_weights_formula(beta: float) -> None:
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = [w / sum(raw) * len(counts) for w in raw]
    got = class_balanced_weights(torch.tensor(counts, dtype=torch.float64), beta=beta)
    assert got.tolist() == pytest.approx(expected, rel=1e-9)


# --- output structure ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize(("backbone", "feature_dim"), [("small_cnn", 128), ("resnet32", 64)])
def test_forward_output_structure(name: str, backbone: str, feature_dim: int) -> None:
    method = build(name, COUNTS, backbone=backbone).eval()
    images, _ = batch(n=3, size=32 if backbone == "resnet32" else 16)
    with torch.no_grad():
        out = method(images)
    assert isinstance(out, dict)
    assert out["logits"].shape == (3, len(COUNTS))
    assert out["features"].shape == (3, feature_dim)
    assert method.num_classes == len(COUNTS)
    assert method.class_counts.tolist() == COUNTS


def test_methods_take_the_composed_recipe() -> None:
    ldam = build("ldam_drw")
    assert ldam.method_cfg.max_m == 0.5 and ldam.method_cfg.s == 30.0
    assert ldam.method_cfg.drw_epoch == 160 and ldam.method_cfg.beta == 0.9999
    assert ldam.cfg.optim.lr == 0.1 and ldam.cfg.optim.weight_decay == 2e-4
    bs = build("balanced_softmax")
    assert bs.method_cfg.tau == 1.0 and bs.method_cfg.posthoc_tau == 0.0


# --- losses ------------------------------------------------------------------------------------------
def test_ce_loss_is_plain_cross_entropy() -> None:
    method = build("ce")
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3, 3, 0])
    loss = method.compute_loss({"logits": logits, "features": torch.zeros(6, 1)}, targets)
    assert loss.item() == pytest.approx(ce_by_hand(logits, targets).item(), rel=1e-6)
    assert torch.equal(method.predict_logits({"logits": logits}), logits)


def test_balanced_softmax_loss_and_prediction() -> None:
    counts = [500, 50, 5]
    method = build("balanced_softmax", counts)
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 2, 1])
    log_pi = torch.tensor([math.log(n / sum(counts)) for n in counts])
    log_n = torch.tensor([math.log(n) for n in counts])
    loss = method.compute_loss({"logits": logits}, targets).item()
    assert loss == pytest.approx(ce_by_hand(logits + log_pi, targets).item(), rel=1e-5)
    # Balanced Softmax's CE(z + log n): a constant shift of the logits, the same loss
    assert loss == pytest.approx(ce_by_hand(logits + log_n, targets).item(), rel=1e-5)
    # posthoc_tau = 0 (the default): prediction uses the raw logits
    assert torch.equal(method.predict_logits({"logits": logits}), logits)


def test_balanced_softmax_tau_and_posthoc() -> None:
    counts = [500, 50, 5]
    method = build("balanced_softmax", counts, "method.tau=0.5", "method.posthoc_tau=1.0")
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([2, 0, 1, 2])
    log_pi = torch.tensor([math.log(n / sum(counts)) for n in counts])
    loss = method.compute_loss({"logits": logits}, targets).item()
    assert loss == pytest.approx(ce_by_hand(logits + 0.5 * log_pi, targets).item(), rel=1e-5)
    adjusted = method.predict_logits({"logits": logits})
    torch.testing.assert_close(adjusted, logits - log_pi, rtol=1e-5, atol=1e-5)
    # the adjustment favours the rare class: its score rises the most
    assert (adjusted - logits).argmax().item() == 2


def ldam_loss_by_hand(method, images: torch.Tensor, targets: torch.Tensor, weight=None) -> float:
    """LDAM from the model's parts: cosine of normalised features and weight columns, times s."""
    s, max_m = 30.0, 0.5
    counts = method.class_counts.tolist()
    raw = [n**-0.25 for n in counts]
    margins = torch.tensor([max_m * r / max(raw) for r in raw])
    with torch.no_grad():
        features = method.backbone(images)
        w = method.classifier.weight  # NormedLinear: [in_features, C]
        cos = F.normalize(features, dim=1) @ F.normalize(w, dim=0)
    logits = s * cos
    logits[torch.arange(len(targets)), targets] -= s * margins[targets]
    return ce_by_hand(logits, targets, weight).item()


def test_ldam_drw_loss_before_and_after_drw_epoch() -> None:
    counts = [500, 50, 20, 5]
    method = build("ldam_drw", counts).eval()
    images, targets = batch(n=8, num_classes=4)
    beta = 0.9999
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    cb = torch.tensor([w / sum(raw) * len(counts) for w in raw])

    with torch.no_grad():
        out = method(images)
    # the model outputs s * cos (no margin)
    assert out["logits"].abs().max().item() <= 30.0 + 1e-4

    plain = ldam_loss_by_hand(method, images, targets)
    weighted = ldam_loss_by_hand(method, images, targets, cb)
    assert plain != pytest.approx(weighted, rel=1e-3)  # the check can tell the two apart

    # no trainer attached: current_epoch is 0, before DRW
    assert method.compute_loss(out, targets).item() == pytest.approx(plain, rel=1e-5)
    for epoch, expected in [(0, plain), (159, plain), (160, weighted), (161, weighted), (199, weighted)]:
        loss = at_epoch(method, epoch).compute_loss(out, targets).item()
        assert loss == pytest.approx(expected, rel=1e-5), epoch


def test_ldam_drw_epoch_from_config() -> None:
    counts = [500, 5]
    method = build("ldam_drw", counts, "method.drw_epoch=2").eval()
    images, targets = batch(n=4, num_classes=2)
    with torch.no_grad():
        out = method(images)
    before = at_epoch(method, 1).compute_loss(out, targets).item()
    after = at_epoch(method, 2).compute_loss(out, targets).item()
    assert before == pytest.approx(ldam_loss_by_hand(method, images, targets), rel=1e-5)
    cb = class_balanced_weights(torch.tensor(counts, dtype=torch.float64), 0.9999)
    assert after == pytest.approx(ldam_loss_by_hand(method, images, targets, cb), rel=1e-5)


def test_ldam_margin_lowers_only_the_true_logit() -> None:
    """A sample whose true class has the largest margin loses more than one with a small margin."""
    method = build("ldam_drw", [5000, 50])
    logits = torch.zeros(2, 2)
    loss_head = method.compute_loss({"logits": logits[:1]}, torch.tensor([0])).item()
    loss_tail = method.compute_loss({"logits": logits[1:]}, torch.tensor([1])).item()
    # CE of logits (0 - 30 m_y, 0) for the true class y: log(1 + exp(30 m_y))
    assert loss_head == pytest.approx(math.log1p(math.exp(30 * 0.158114)), rel=1e-4)
    assert loss_tail == pytest.approx(math.log1p(math.exp(30 * 0.5)), rel=1e-4)


# --- a few real training steps -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_training_steps_lower_the_loss(name: str) -> None:
    images, targets = learnable_data()
    method = build(name, [40, 12, 8, 4])
    losses = sgd_losses(method, images, targets)
    assert_loss_drops(losses)
