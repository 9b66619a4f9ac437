"""CAR (methods.md §1) against direct transcriptions of §1.2-1.4.

Surrogate: ``C_t[i, j] = mean_{n: y_n = j} sigmoid(sg(f_i - f_j)) * softmax_i((f - sg(f_j)) / T)``
for ``i != j``; EMA ``Cbar_t = beta * sg(Cbar_{t-1}) + (1 - beta) * C_t`` with ``Cbar_1 = sg(C_1)``;
loss ``CE + lambda * sigma_max(Cbar_t @ diag(w))`` with ``w_j = 1 / sqrt(n_j / N + r0)`` normalised
to mean 1 and floored at 1e-3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from training_steps import assert_loss_drops, learnable_data, sgd_losses

from lt_bench.config import compose
from lt_bench.errors import ConfigError
from lt_bench.methods.car import CARRegularizer, car_class_weights, soft_confusion, spectral_norm
from lt_bench.registry import METHODS

# compute_loss logs its parts; outside a Trainer Lightning warns and skips the logging
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")

COUNTS = [40, 12, 8, 4]


def build(counts: list[int] = COUNTS, *overrides: str):
    cfg = compose(["experiment=cifar10_lt/car", "backbone=small_cnn", *overrides])
    torch.manual_seed(0)
    return METHODS.get("car")(cfg=OmegaConf.to_container(cfg), train_counts=counts, in_channels=3)


def confusion_by_loop(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """§1.2 sample by sample: softmax over all C, entry j zeroed; detached sigmoid gate; column means."""
    num_classes = logits.shape[1]
    total = [[logits.new_zeros(()) for _ in range(num_classes)] for _ in range(num_classes)]
    count = [0] * num_classes
    for f, j in zip(logits, targets.tolist(), strict=True):
        count[j] += 1
        shifted = [(f[k] - f[j].detach()) / temperature for k in range(num_classes)]
        denominator = sum(torch.exp(x) for x in shifted)
        for i in range(num_classes):
            if i != j:
                gate = 1.0 / (1.0 + torch.exp(-(f[i] - f[j]).detach()))
                total[i][j] = total[i][j] + gate * torch.exp(shifted[i]) / denominator
    rows = [
        torch.stack([total[i][j] / max(count[j], 1) for j in range(num_classes)]) for i in range(num_classes)
    ]
    return torch.stack(rows)


def random_logits(batch: int, num_classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(batch, num_classes, generator=g, dtype=torch.float64)).requires_grad_()


TARGETS = torch.tensor([0, 1, 2, 3, 0, 0, 1, 2, 0, 3, 0, 1])  # class 4 absent, B = 12, C = 5


# --- the confusion surrogate -------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_soft_confusion_matches_the_loop_with_gradients(temperature: float) -> None:
    logits = random_logits(12, 5, seed=1)
    got = soft_confusion(logits, TARGETS, 5, temperature)
    expected = confusion_by_loop(logits, TARGETS, temperature)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert torch.all(got.diagonal() == 0)
    assert torch.all(got[:, 4] == 0)  # absent class: zero column
    assert torch.all(got.sum(dim=0)[:4] > 0) and torch.all(got.sum(dim=0) < 1)

    upstream = torch.rand(5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (grad,) = torch.autograd.grad((got * upstream).sum(), logits)
    (grad_loop,) = torch.autograd.grad((expected * upstream).sum(), logits)
    torch.testing.assert_close(grad, grad_loop, rtol=1e-10, atol=1e-12)


def test_soft_confusion_gradient_closed_form() -> None:
    """One sample, label j: dC[i, j]/df_k = (1/T) g_i s_i (delta_ik - p_k), p = softmax(f / T).

    The gate is a constant, and f_j still gets -(1/T) g_i s_i p_j through the softmax denominator.
    """
    temperature, j = 2.0, 1
    logits = random_logits(1, 4, seed=3)
    confusion = soft_confusion(logits, torch.tensor([j]), 4, temperature)
    f = logits.detach()[0]
    p = torch.softmax(f / temperature, dim=0)
    for i in (0, 2, 3):
        gate = torch.sigmoid(f[i] - f[j])
        (grad,) = torch.autograd.grad(confusion[i, j], logits, retain_graph=True)
        expected = gate * p[i] * (torch.eye(4, dtype=f.dtype)[i] - p) / temperature
        torch.testing.assert_close(grad[0], expected, rtol=1e-10, atol=1e-14)
        assert grad[0, j] < 0  # the true logit is pushed up


def test_soft_confusion_stop_gradient_switches() -> None:
    logits = random_logits(12, 5, seed=4)
    upstream = torch.rand(5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def value_and_grad(**switches: bool) -> tuple[torch.Tensor, torch.Tensor]:
        confusion = soft_confusion(logits, TARGETS, 5, 1.0, **switches)
        return confusion.detach(), torch.autograd.grad((confusion * upstream).sum(), logits)[0]

    default_value, default_grad = value_and_grad()
    # detaching the softmax baseline f_j changes nothing: softmax(x - c) = softmax(x) for any c
    value, grad = value_and_grad(detach_baseline=False)
    torch.testing.assert_close(value, default_value, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, default_grad, rtol=1e-9, atol=1e-12)
    # an attached gate adds its own gradient through f_i - f_j
    value, grad = value_and_grad(detach_gate=False)
    torch.testing.assert_close(value, default_value, rtol=1e-12, atol=1e-14)
    assert (grad - default_grad).abs().max() > 1e-3


# --- class weights -----------------------------------------------------------------------------------
def test_class_weights_hand_numbers() -> None:
    # m = (0.75, 0.25); 1/sqrt(1.0) = 1, 1/sqrt(0.5) = 1.414214; mean 1.207107
    weights = car_class_weights(torch.tensor([3.0, 1.0]), r0=0.25)
    assert weights.tolist() == pytest.approx([0.828427, 1.171573], abs=1e-6)
    assert car_class_weights(torch.tensor([3.0, 1.0]), r0=0.25, use_weights=False).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("r0", [0.2, 0.5])
def test_class_weights_formula(r0: float) -> None:
    raw = [1 / math.sqrt(n / sum(COUNTS) + r0) for n in COUNTS]
    expected = [w / (sum(raw) / len(raw)) for w in raw]
    assert car_class_weights(torch.tensor(COUNTS), r0).tolist() == pytest.approx(expected, rel=1e-6)


def test_class_weights_floor() -> None:
    # r0 = 0: raw weights (1.0, 31623, 31623) have mean 21082; the head weight 4.7e-5 is floored
    weights = car_class_weights(torch.tensor([1e9, 1.0, 1.0], dtype=torch.float64), r0=0.0)
    assert weights[0].item() == pytest.approx(1e-3)
    assert weights[1].item() == pytest.approx(1.5, rel=1e-4)


# --- spectral norm -----------------------------------------------------------------------------------
def dense_reference(matrix: torch.Tensor) -> tuple[float, np.ndarray]:
    """sigma_max = sqrt(max eigenvalue of A^T A); gradient u_1 v_1^T from numpy's SVD."""
    a = matrix.detach().double()
    sigma = torch.linalg.eigvalsh(a.T @ a)[-1].sqrt().item()
    u, _, vt = np.linalg.svd(a.numpy())
    return sigma, np.outer(u[:, 0], vt[0])


@pytest.mark.parametrize(("method", "iters"), [("svd", 0), ("power", 300), ("squaring", 32)])
@pytest.mark.parametrize("shape", [(6, 6), (7, 4)])
def test_spectral_norm_and_gradient_against_dense(method: str, iters: int, shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(6)
    matrix = torch.rand(*shape, generator=g, dtype=torch.float64).requires_grad_()
    sigma, (u, v) = spectral_norm(matrix, method, iters=iters)
    (grad,) = torch.autograd.grad(sigma, matrix)
    ref_sigma, ref_grad = dense_reference(matrix)
    assert sigma.item() == pytest.approx(ref_sigma, rel=1e-9)
    np.testing.assert_allclose(grad.numpy(), ref_grad, atol=1e-8)
    assert not u.requires_grad and not v.requires_grad
    np.testing.assert_allclose(torch.outer(u, v).numpy(), ref_grad, atol=1e-8)


def ema_like(num_classes: int, g: torch.Generator) -> torch.Tensor:
    """A nonnegative, zero-diagonal batch confusion with skewed columns summing to about 0.3."""
    raw = torch.rand(num_classes, num_classes, generator=g) ** 6
    raw.fill_diagonal_(0.0)
    return 0.3 * raw / raw.sum(dim=0, keepdim=True)


@pytest.mark.parametrize("num_classes", [100, 1000])
def test_warm_started_power_iteration_matches_svd(num_classes: int) -> None:
    g = torch.Generator().manual_seed(num_classes)
    weights = car_class_weights(torch.logspace(3, 1, num_classes), r0=0.2)
    ema = ema_like(num_classes, g)
    state = None
    for _ in range(8):  # a short EMA trajectory, two power rounds per step
        ema = 0.9 * ema + 0.1 * ema_like(num_classes, g)
        _, state = spectral_norm(ema * weights, "power", state, iters=2)
    matrix = (ema * weights).requires_grad_()
    sigma, _ = spectral_norm(matrix, "power", state, iters=2)
    (grad,) = torch.autograd.grad(sigma, matrix)
    exact = matrix.detach().requires_grad_()
    sigma_svd, _ = spectral_norm(exact, "svd")
    (grad_svd,) = torch.autograd.grad(sigma_svd, exact)
    assert sigma.item() == pytest.approx(sigma_svd.item(), rel=1e-3)
    assert F.cosine_similarity(grad.flatten(), grad_svd.flatten(), dim=0).item() > 0.999


def float64_svd_reference(matrix: torch.Tensor) -> tuple[float, torch.Tensor]:
    """sigma_max and its gradient u_1 v_1^T from torch's SVD in float64."""
    exact = matrix.detach().double().requires_grad_()
    _, values, _ = torch.linalg.svd(exact)
    (grad,) = torch.autograd.grad(values[0], exact)
    return values[0].item(), grad


@pytest.mark.parametrize("num_classes", [10, 100, 1000])
def test_squaring_equals_the_svd_on_ema_confusions(num_classes: int) -> None:
    """Float32 weighted EMA confusions, as CAR builds them: sigma and gradient u v^T of ``squaring``
    against a float64 SVD, as close as the official float32 SVD gets."""
    g = torch.Generator().manual_seed(num_classes)
    weights = car_class_weights(torch.logspace(3, 1, num_classes), r0=0.2)
    ema = ema_like(num_classes, g)
    for _ in range(3 if num_classes == 1000 else 10):
        ema = 0.9 * ema + 0.1 * ema_like(num_classes, g)
        matrix = (ema * weights).requires_grad_()
        sigma, (u, v) = spectral_norm(matrix, "squaring", iters=32)
        (grad,) = torch.autograd.grad(sigma, matrix)
        ref_sigma, ref_grad = float64_svd_reference(matrix)
        official, _ = spectral_norm(matrix.detach(), "svd")
        assert sigma.item() == pytest.approx(ref_sigma, rel=1e-6)
        assert abs(sigma.item() - ref_sigma) <= max(abs(official.item() - ref_sigma), 1e-6 * ref_sigma)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=1e-6)
        assert u.dtype == v.dtype == torch.float32 and u.norm().item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("gap", [1e-1, 1e-3, 1e-5])
def test_squaring_separates_close_singular_values(gap: float) -> None:
    """sigma_1 = 1, sigma_2 = 1 - gap: 32 squarings damp v_2 by (1 - gap)^(2^33), which vanishes for
    gaps above ~4e-9; the pair found is the float64 SVD's (up to sign)."""
    g = torch.Generator().manual_seed(3)
    q1, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    matrix = q1 @ torch.diag(torch.tensor([1.0, 1.0 - gap, 0.5, 0.2, 0.0], dtype=torch.float64)) @ q2.T
    matrix.requires_grad_()
    sigma, _ = spectral_norm(matrix, "squaring", iters=32)
    (grad,) = torch.autograd.grad(sigma, matrix)
    assert sigma.item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(grad, torch.outer(q1[:, 0], q2[:, 0]), rtol=0, atol=1e-9)


def test_squaring_of_zero_and_of_tiny_matrices() -> None:
    """A = 0 gives sigma 0 and a zero gradient (no NaN); a matrix of norm ~1e-30 keeps its exact sigma."""
    zero = torch.zeros(4, 4, requires_grad=True)
    sigma, (u, v) = spectral_norm(zero, "squaring")
    (grad,) = torch.autograd.grad(sigma, zero)
    assert (
        sigma.item() == 0
        and torch.count_nonzero(grad) == 0
        and torch.isfinite(u).all()
        and torch.isfinite(v).all()
    )
    tiny = torch.rand(4, 4, generator=torch.Generator().manual_seed(1)) * 1e-30
    sigma, _ = spectral_norm(tiny, "squaring")
    assert sigma.item() == pytest.approx(float64_svd_reference(tiny)[0], rel=1e-6)


def test_squaring_with_a_repeated_top_singular_value_returns_a_top_singular_pair() -> None:
    """sigma_1 = sigma_2: any unit vector of the top right singular subspace is a valid v (an SVD
    picks one too); sigma is exact and the gradient u v^T has unit norm with A v = sigma u."""
    g = torch.Generator().manual_seed(5)
    q1, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    matrix = q1 @ torch.diag(torch.tensor([2.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ q2.T
    sigma, (u, v) = spectral_norm(matrix, "squaring")
    assert sigma.item() == pytest.approx(2.0, rel=1e-12)
    torch.testing.assert_close(matrix @ v, 2.0 * u, rtol=0, atol=1e-10)
    assert torch.linalg.norm(q2[:, :2].T @ v).item() == pytest.approx(1.0, rel=1e-12)  # v in the top subspace


@pytest.mark.parametrize("shape", [(4, 7), (7, 4)])
@pytest.mark.parametrize("scale", [1e-200, 1e-30, 1.0, 1e30, 1e200])
def test_squaring_of_rectangular_matrices_at_any_scale(shape: tuple[int, int], scale: float) -> None:
    """Wide and tall float64 matrices from 1e-200 to 1e200: sigma to 1e-12 and the gradient as the SVD's."""
    g = torch.Generator().manual_seed(7)
    matrix = (torch.rand(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()
    sigma, _ = spectral_norm(matrix, "squaring")
    (grad,) = torch.autograd.grad(sigma, matrix)
    ref_sigma, ref_grad = float64_svd_reference(matrix)
    assert sigma.item() == pytest.approx(ref_sigma, rel=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-10)


# --- the EMA estimator -------------------------------------------------------------------------------
def test_ema_first_step_no_gradient_then_current_batch_only() -> None:
    lam, beta, counts = 0.5, 0.8, torch.tensor([30.0, 10.0, 5.0, 3.0, 1.0])
    reg = CARRegularizer(counts, lam=lam, beta=beta).double()
    weights = car_class_weights(counts, r0=0.2).double()

    logits1 = random_logits(12, 5, seed=7)
    penalty1, sigma1 = reg(logits1, TARGETS)
    batch1 = soft_confusion(logits1, TARGETS, 5).detach()
    torch.testing.assert_close(reg.ema, batch1)
    assert penalty1.item() == pytest.approx(lam * dense_reference(batch1 * weights)[0], rel=1e-9)
    assert penalty1.item() == pytest.approx(lam * sigma1.item())
    (grad1,) = torch.autograd.grad(penalty1, logits1)
    assert torch.all(grad1 == 0)  # Cbar_1 = sg(C_1)

    logits2 = random_logits(12, 5, seed=8)
    penalty2, _ = reg(logits2, TARGETS)
    assert not reg.ema.requires_grad and reg.ema.grad_fn is None
    assert reg.num_updates.item() == 2
    batch2 = soft_confusion(logits2, TARGETS, 5)
    smoothed = beta * batch1 + (1 - beta) * batch2.detach()
    torch.testing.assert_close(reg.ema, smoothed)
    sigma, outer = dense_reference(smoothed * weights)
    assert penalty2.item() == pytest.approx(lam * sigma, rel=1e-9)
    # d sigma(M W) / dM = u v^T W; the EMA passes (1 - beta) of it to the current batch term only
    upstream = lam * torch.from_numpy(outer) * weights
    (expected,) = torch.autograd.grad(batch2, logits2, grad_outputs=(1 - beta) * upstream)
    (grad2,) = torch.autograd.grad(penalty2, logits2)
    torch.testing.assert_close(grad2, expected, rtol=1e-7, atol=1e-12)


def test_ema_state_persists_through_a_checkpoint() -> None:
    method = build()
    logits, targets = torch.randn(8, 4), torch.arange(8) % 4
    method.car(logits, targets)
    state = method.state_dict()
    assert {"car.ema", "car.num_updates", "car.weights", "car.left", "car.right"} <= set(state)
    restored = build()
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.car.ema, method.car.ema)
    new_logits = torch.randn(8, 4)
    restored.car(new_logits, targets)  # continues the EMA, no restart
    expected = 0.9 * method.car.ema + 0.1 * soft_confusion(new_logits, targets, 4)
    torch.testing.assert_close(restored.car.ema, expected)


def test_non_finite_batch_leaves_the_state_unchanged() -> None:
    reg = CARRegularizer(torch.tensor([30.0, 10.0, 5.0, 3.0, 1.0]))
    reg(torch.randn(12, 5), TARGETS)
    before = {name: buffer.clone() for name, buffer in reg.named_buffers()}
    logits = torch.randn(12, 5)
    logits[3, 2] = float("nan")
    penalty, _ = reg(logits, TARGETS)  # no SVD error; the caller's loss is non-finite anyway
    assert torch.isfinite(penalty)
    for name, buffer in reg.named_buffers():
        torch.testing.assert_close(buffer, before[name])


# --- the method ---------------------------------------------------------------------------------------
def test_composed_config_and_loss() -> None:
    for dataset in ("cifar10_lt", "cifar100_lt"):
        cfg = compose([f"experiment={dataset}/car"])
        assert cfg.method.name == "car" and cfg.dataset.name == dataset and cfg.backbone.name == "resnet32"
        assert cfg.optim.lr == 0.1 and cfg.trainer.max_epochs == 200
    method = build()
    m = method.method_cfg
    assert (m["lambda"], m.beta, m.temperature, m.r0) == (0.3, 0.9, 1.0, 0.2)
    assert m.use_weights and m.detach_baseline and m.detach_gate and m.spectral == "squaring"
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(9))
    targets = torch.tensor([0, 1, 2, 3, 3, 0])
    loss = method.compute_loss({"logits": logits}, targets)
    weighted = soft_confusion(logits, targets, 4) * car_class_weights(torch.tensor(COUNTS), 0.2)
    expected = F.cross_entropy(logits, targets) + 0.3 * dense_reference(weighted)[0]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        ["method.spectral=lanczos"],
        ["method.base_loss=focal"],
        ["method.spectral=power", "method.power_iters=0"],
        ["method.spectral=squaring", "method.squarings=0"],
    ],
)
def test_invalid_options_fail(overrides: list[str]) -> None:
    with pytest.raises(ConfigError):
        build(COUNTS, *overrides)


@pytest.mark.slow
def test_training_with_squaring_follows_training_with_the_official_svd() -> None:
    """The same init and data: twelve SGD steps of CE + CAR give the same losses with either spectral
    method (float rounding apart), so the default ``squaring`` trains as the official SVD does."""
    images, targets = learnable_data()
    svd = sgd_losses(build(COUNTS, "method.spectral=svd"), images, targets)
    squaring = sgd_losses(build(COUNTS, "method.spectral=squaring"), images, targets)
    np.testing.assert_allclose(squaring, svd, rtol=1e-5)
    without_car = sgd_losses(build(COUNTS, "method.lambda=0"), images, targets)
    assert np.abs(np.array(without_car) - np.array(svd)).max() > 1e-3  # the spectral term does train


@pytest.mark.slow
@pytest.mark.parametrize("spectral", ["svd", "squaring", "power"])
def test_training_steps_lower_the_loss_and_record_extras(spectral: str) -> None:
    images, targets = learnable_data()
    method = build(COUNTS, f"method.spectral={spectral}")
    losses = sgd_losses(method, images, targets)
    assert_loss_drops(losses)

    extras = method.record_extras()
    assert set(extras) == {"car_spectral_norm_final", "car_ema_confusion_offdiag_mass"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in extras.values())
    exact = torch.linalg.matrix_norm(method.car.ema * method.car.weights, ord=2).item()
    assert extras["car_spectral_norm_final"] == pytest.approx(exact) == method.final_spectral_norm()
    assert 0 < extras["car_ema_confusion_offdiag_mass"] < 1
