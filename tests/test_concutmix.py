"""ConCutMix and ConCutMix + CAR (methods.md §1.6) against hand numbers and direct transcriptions.

Semantic label ``ŷ = ω a(ỹ) norm₁(topK 1/‖f̃ − c̃_k‖) + (1 − ω a(ỹ)) ỹ``, ``a(ỹ) = log(Σ n_k ỹ_k) / Σ log n_k``;
BalSCL with class-averaged denominators and class centres as extra keys; LA-CE ``CE(z + τ log π, ŷ)``;
CutMix box of side ``int(S sqrt(1 − λ))`` and ``λ`` corrected to the clipped box's area.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from training_steps import assert_loss_drops, learnable_data

from lt_bench.config import compose
from lt_bench.data.base import ArraySplit
from lt_bench.errors import ConfigError
from lt_bench.methods.car import CARRegularizer
from lt_bench.methods.concutmix import (
    ThreeViews,
    area_label,
    balanced_scl,
    car_labels,
    cutmix_box,
    logit_adjusted_soft_ce,
    semantic_label,
)
from lt_bench.registry import METHODS

COUNTS = [40, 12, 8, 4]
EXPERIMENTS = [
    f"{d}/{m}" for d in ("cifar10_lt", "cifar100_lt", "imagenet_lt") for m in ("concutmix", "concutmix_car")
]


def build(name: str = "concutmix", *overrides: str, counts: list[int] = COUNTS):
    cfg = compose([f"experiment=cifar10_lt/{name}", "backbone=small_cnn", "method.feat_dim=16", *overrides])
    torch.manual_seed(0)
    return METHODS.get(name)(cfg=OmegaConf.to_container(cfg), train_counts=counts, in_channels=3)


def file_views(images: torch.Tensor) -> torch.Tensor:
    """Three fixed views ``[B, 3, C, H, W]`` of float images (the image-file batch layout)."""
    g = torch.Generator().manual_seed(1)
    noisy = [images + 0.3 * torch.randn(images.shape, generator=g) for _ in range(2)]
    return torch.stack([images, *noisy], dim=1)


# --- the semantic label -----------------------------------------------------------------------------
def test_semantic_label_hand_example() -> None:
    """n = (100, 10, 1); centres (0,0), (3,0), (0,4); f̃ = (1,0); ỹ = 0.75 e_0 + 0.25 e_2; K = 2; ω = 20/255.

    Distances 1, 2, sqrt(17): similarities 1, 1/2, 0.2425 -> top-2 -> norm₁ (2/3, 1/3, 0).
    a = log(75.25) / (log 100 + log 10 + log 1) = 4.320816 / 6.907755 = 0.625502; ω a = 0.049059.
    ŷ = 0.049059 (2/3, 1/3, 0) + 0.950941 (0.75, 0, 0.25) = (0.745912, 0.016353, 0.237735).
    """
    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    features = torch.tensor([[1.0, 0.0]])
    area = torch.tensor([[0.75, 0.0, 0.25]])
    label = semantic_label(features, centers, area, torch.tensor([100.0, 10.0, 1.0]), topk=2, omega=20 / 255)
    assert label[0].tolist() == pytest.approx([0.745912, 0.016353, 0.237735], abs=1e-6)
    assert label.sum().item() == pytest.approx(1.0)


def test_semantic_label_keeps_ties_and_is_detached() -> None:
    """f̃ = (1.5, 0) is 1.5 from both c_0 and c_1: top-1 keeps both (the official mask is ``sim < kth``)."""
    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], requires_grad=True)
    features = torch.tensor([[1.5, 0.0]], requires_grad=True)
    area = torch.tensor([[0.0, 0.0, 1.0]])  # a = log(1) / ... = 0: the label stays ỹ
    counts = torch.tensor([100.0, 10.0, 1.0])
    label = semantic_label(features, centers, area, counts, topk=1, omega=1.0)
    assert label[0].tolist() == pytest.approx([0.0, 0.0, 1.0])
    area = torch.tensor([[1.0, 0.0, 0.0]])  # a = log 100 / log 1000 = 2/3
    label = semantic_label(features, centers, area, counts, topk=1, omega=0.75)
    assert label[0].tolist() == pytest.approx([0.25 + 0.5, 0.25, 0.0])
    assert not label.requires_grad


# --- BalSCL -------------------------------------------------------------------------------------------
def balscl_by_loop(features: torch.Tensor, targets: list[int], centers: torch.Tensor, temperature: float):
    """BCL's BalSCL anchor by anchor: keys = 2B features + C centres; each key's exp divided by the
    number of keys of its class (minus the anchor itself for the anchor's class); mean over positives."""
    labels = targets + targets + list(range(centers.shape[0]))
    keys = torch.cat([features, centers])
    losses = []
    for i in range(features.shape[0]):
        denominator = 0.0
        for j in range(keys.shape[0]):
            if j != i:
                size = labels.count(labels[j]) - (labels[j] == labels[i])
                denominator = denominator + torch.exp(features[i] @ keys[j] / temperature) / size
        positives = [j for j in range(keys.shape[0]) if j != i and labels[j] == labels[i]]
        terms = [features[i] @ keys[p] / temperature - torch.log(denominator) for p in positives]
        losses.append(-sum(terms) / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_balanced_scl_matches_the_loop(temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    targets = [0, 2, 2, 1, 0]  # class 3 absent from the batch: only its centre is a key
    features = F.normalize(torch.randn(10, 6, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    centers = F.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    got = balanced_scl(features, torch.tensor(targets), centers, temperature)
    expected = balscl_by_loop(features, targets, centers, temperature)
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)
    grads = torch.autograd.grad(got, (features, centers))
    expected_grads = torch.autograd.grad(expected, (features, centers))
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# --- the classification loss and CutMix -----------------------------------------------------------------
def test_area_label_ce_is_the_official_lambda_mix() -> None:
    """Before l_d_warm: CE_LA(z, ỹ) = λ CE(z + τ log π, a) + (1 − λ) CE(z + τ log π, b)."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    a, b, lam, counts = (
        torch.tensor([0, 1, 2, 3, 0, 1]),
        torch.tensor([3, 3, 0, 1, 2, 1]),
        0.3,
        torch.tensor(COUNTS),
    )
    soft = area_label(a, b, torch.tensor(lam, dtype=torch.float64), 4)
    adjusted = logits + 0.85 * torch.log(counts / counts.sum())
    expected = lam * F.cross_entropy(adjusted, a) + (1 - lam) * F.cross_entropy(adjusted, b)
    assert logit_adjusted_soft_ce(logits, soft, counts.double(), 0.85).item() == pytest.approx(
        expected.item()
    )
    assert soft[0].tolist() == pytest.approx([0.3, 0.0, 0.0, 0.7])


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.75, 0.99])
def test_cutmix_box_area_and_lambda_correction(lam: float) -> None:
    """The official ``rand_bbox`` (transcribed here) for every centre row of a 32 x 24 image."""
    for cy in range(32):
        for cx in range(0, 24, 5):
            inside, corrected = cutmix_box(32, 24, torch.tensor(lam), torch.tensor(cy), torch.tensor(cx))
            cut_h, cut_w = int(32 * math.sqrt(1 - lam)), int(24 * math.sqrt(1 - lam))
            top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, 32)
            left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, 24)
            expected = torch.zeros(32, 24, dtype=torch.bool)
            expected[top:bottom, left:right] = True
            assert torch.equal(inside, expected)
            assert corrected.item() == pytest.approx(1 - (bottom - top) * (right - left) / (32 * 24))
            assert corrected.item() >= lam - 1e-12  # clipping and side // 2 only shrink the box


def test_cutmix_box_hand_case() -> None:
    """λ = 0.75 at the centre of a 32 x 32 image: a full 16 x 16 box, λ stays exactly 0.75."""
    inside, corrected = cutmix_box(32, 32, torch.tensor(0.75), torch.tensor(16), torch.tensor(16))
    assert corrected.item() == 0.75 and inside.sum() == 256 and inside[8:24, 8:24].all()


def test_car_label_options_on_a_mixed_batch() -> None:
    targets_a = torch.tensor([0, 1, 2])
    soft = torch.tensor([[0.3, 0.0, 0.0, 0.7], [0.0, 0.6, 0.4, 0.0], [0.1, 0.0, 0.2, 0.7]])
    assert car_labels("target_a", targets_a, soft).tolist() == [0, 1, 2]
    assert car_labels("skip_mixed", targets_a, soft).tolist() == [0, 1, 2]
    assert car_labels("argmax_semantic", targets_a, soft).tolist() == [3, 1, 3]


@pytest.mark.parametrize("mode", ["target_a", "argmax_semantic", "skip_mixed"])
def test_car_term_per_option(mode: str) -> None:
    method = build("concutmix_car", f"method.car_label={mode}")
    reference = CARRegularizer.from_config(method.class_counts, method.method_cfg.car)
    g = torch.Generator().manual_seed(3)
    targets_a = torch.tensor([0, 1, 2, 3])
    soft = torch.tensor([[0.2, 0.8, 0, 0], [0, 0.9, 0.1, 0], [0, 0, 0.3, 0.7], [0, 0, 0, 1.0]])
    for mixed in (1.0, 0.0, 1.0):
        logits = torch.randn(4, 4, generator=g)
        before = method.car.ema.clone()
        penalty, _ = method.car_term(logits, targets_a, soft, torch.tensor(mixed))
        if mode == "skip_mixed" and mixed:
            torch.testing.assert_close(method.car.ema, before)
            assert penalty.item() == 0.0
            continue
        labels = soft.argmax(1) if mode == "argmax_semantic" else targets_a
        expected, _ = reference(logits, labels)
        torch.testing.assert_close(method.car.ema, reference.ema)
        assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)


# --- views, structure, and the method in training --------------------------------------------------------
@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_train_views_have_one_structure(prob: float) -> None:
    method = build("concutmix", f"method.cutmix_prob={prob}")
    images = torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    views, targets_a, targets_b, lam, mixed = method.train_views(images, targets)
    assert views.shape == (18, 3, 8, 8) and views.dtype == torch.float32
    assert targets_a.shape == targets_b.shape == (6,) and lam.shape == mixed.shape == ()
    assert mixed.item() == prob
    if prob == 0.0:
        assert lam.item() == 1.0 and torch.equal(targets_b, targets)
    else:
        assert 0.0 <= lam.item() <= 1.0


def test_balanced_partner_draw_from_the_training_split() -> None:
    method = build("concutmix")
    labels = np.repeat(np.arange(4), COUNTS)
    images = np.broadcast_to(labels[:, None, None, None], (len(labels), 8, 8, 3)).astype(np.uint8)
    method.train_split = ArraySplit(images, labels)
    torch.manual_seed(0)
    drawn, classes = method._balanced_draw(4000, torch.device("cpu"))
    assert torch.equal(drawn[:, 0, 0, 0].long(), classes)  # each image is of its drawn class
    assert torch.bincount(classes, minlength=4).tolist() == pytest.approx([1000] * 4, rel=0.1)
    # a mixed raw batch of class-0 images takes its partners (and targets_b) from the whole split
    method.method_cfg.cutmix_prob = 1.0
    _, targets_a, targets_b, lam, mixed = method.train_views(
        torch.zeros(64, 8, 8, 3, dtype=torch.uint8), torch.zeros(64, dtype=torch.long)
    )
    assert mixed.item() == 1.0 and targets_a.eq(0).all() and len(set(targets_b.tolist())) == 4


SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero")


def _refuse(*args, **kwargs):
    raise AssertionError("host sync in training_loss")


@pytest.mark.parametrize("name", ["concutmix", "concutmix_car"])
@pytest.mark.parametrize("epoch", [0, 101])
def test_training_loss_has_no_host_sync_and_one_output_structure(name: str, epoch: int) -> None:
    """Mixed and unmixed batches give the same output structure; reading a tensor back raises."""
    method = build(name, *(["method.car_label=skip_mixed"] if name == "concutmix_car" else []))
    method.engine_epoch = epoch
    images, targets = learnable_data()
    outputs = []
    for prob in (1.0, 0.0):
        method.method_cfg.cutmix_prob = prob
        inputs = method.train_views(file_views(images[:8]), targets[:8])
        with pytest.MonkeyPatch.context() as patch:
            for attr in SYNCS:
                patch.setattr(torch.Tensor, attr, _refuse)
            loss, terms = method.training_loss(*inputs)
        outputs.append((loss.shape, {k: v.shape for k, v in terms.items()}))
        assert torch.isfinite(loss)
    assert outputs[0] == outputs[1]
    assert method.step_variant() is (epoch > 100)


def test_semantic_branch_in_a_training_step() -> None:
    """After l_d_warm a mixed batch trains on ŷ built from the mixed view's f̃ and the raw centres."""
    method = build("concutmix", "method.cutmix_prob=1.0")
    images, targets = learnable_data()
    views, targets_a, targets_b, lam, mixed = method.train_views(file_views(images[:8]), targets[:8])
    method.engine_epoch = 100
    before = method.loss_terms(views, targets_a, targets_b, lam, mixed)
    torch.testing.assert_close(before["soft"], area_label(targets_a, targets_b, lam, 4))
    method.engine_epoch = 101
    after = method.loss_terms(views, targets_a, targets_b, lam, mixed)
    m = method.method_cfg
    hidden = method.backbone(views)
    expected = semantic_label(
        method.head(hidden)[:8],
        method.center_head(method.classifier.weight),
        area_label(targets_a, targets_b, lam, 4),
        method.class_counts,
        m.topk,
        m.scaling_factor[0] / m.scaling_factor[1],
    )
    torch.testing.assert_close(after["soft"], expected)
    assert not torch.allclose(after["soft"], before["soft"])
    after["loss"].backward()
    assert all(p.grad is not None for p in method.center_head.parameters())
    # an unmixed batch keeps its one-hot label after l_d_warm
    unmixed = method.loss_terms(views, targets_a, targets_a, torch.tensor(1.0), torch.tensor(0.0))
    torch.testing.assert_close(unmixed["soft"], F.one_hot(targets_a, 4).float())


@pytest.mark.parametrize("name", ["concutmix", "concutmix_car"])
def test_a_few_training_steps_lower_the_loss(name: str) -> None:
    method = build(name, "method.l_d_warm=-1")  # semantic labels on from the first step
    images, targets = learnable_data()
    views = file_views(images)
    optimizer = method.configure_optimizers()["optimizer"]
    method.train()
    losses = []
    for step in range(12):
        idx = torch.arange(16) + (step * 16) % len(targets)
        loss, _ = method.training_loss(*method.train_views(views[idx], targets[idx]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert_loss_drops(losses, factor=0.85)
    if name == "concutmix_car":
        extras = method.record_extras()
        assert set(extras) == {"car_spectral_norm_final", "car_ema_confusion_offdiag_mass"}
        assert extras["car_spectral_norm_final"] == pytest.approx(
            torch.linalg.matrix_norm(method.car.ema * method.car.weights, ord=2).item()
        )


def test_three_views_of_a_file_image() -> None:
    from PIL import Image

    torch.manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8).numpy())
    transform = build("concutmix").file_train_transform(32, [0.5] * 3, [0.25] * 3)
    views = transform(image)
    assert (
        isinstance(transform, ThreeViews)
        and views.shape == (3, 3, 32, 32)
        and not torch.equal(views[1], views[2])
    )


# --- configs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_configs_compose(experiment: str) -> None:
    cfg = compose([f"experiment={experiment}"])
    assert cfg.method.name == experiment.split("/")[1]
    expected = {
        "cifar10_lt": (0.85, 3, [2, 255], 0.15, 200),
        "cifar100_lt": (0.9, 30, [20, 255], 0.15, 200),
        "imagenet_lt": (0.99, 30, [200, 255], 0.1, 90),
    }[cfg.dataset.name]
    m = cfg.method
    assert (m.tau, m.topk, list(m.scaling_factor), cfg.optim.lr, cfg.trainer.max_epochs) == expected
    assert cfg.data.batch_size == 256 and cfg.optim.weight_decay == 5e-4 and m.cutmix_prob == 0.5
    if cfg.dataset.name != "imagenet_lt":
        assert (m.alpha, m.beta, m.temperature, m.feat_dim, m.l_d_warm) == (2.0, 0.6, 0.1, 128, 100)
        assert cfg.schedule.milestones == [160, 180] and cfg.schedule.gamma == 0.1
    else:
        assert (m.alpha, m.beta, m.temperature, m.feat_dim, m.l_d_warm) == (1.0, 0.35, 0.07, 1024, 60)
        assert m.classifier == "cosine" and m.scale == 30.0


def test_concutmix_car_shares_the_concutmix_options() -> None:
    plain = compose(["method=concutmix"]).method
    with_car = compose(["method=concutmix_car"]).method
    shared = {k: v for k, v in with_car.items() if k not in ("name", "car", "car_label")}
    assert shared == {k: v for k, v in plain.items() if k != "name"}
    assert with_car.car_label == "target_a"
    assert OmegaConf.to_container(with_car.car) == {
        k: v
        for k, v in OmegaConf.to_container(compose(["method=car"]).method).items()
        if k not in ("name", "classifier", "base_loss", "label_smoothing")
    }


def test_car_with_exact_svd_is_not_graph_capturable() -> None:
    assert build("concutmix").graph_capturable
    assert build("concutmix_car").graph_capturable  # spectral: squaring
    assert not build("concutmix_car", "method.car.spectral=svd").graph_capturable  # reads back to the host
    assert build("concutmix_car", "method.car.spectral=power").graph_capturable


@pytest.mark.parametrize(
    "overrides",
    [
        ["method.car_label=mixup"],
        ["method.partner=reverse"],
        ["method.topk=5"],
        ["method.cls_augment=cutout"],
        ["method.data_parallel_replicas=0"],
    ],
)
def test_invalid_options_fail(overrides: list[str]) -> None:
    with pytest.raises(ConfigError):
        build("concutmix_car", *overrides)


def test_cifar_model_matches_bcl_model_32() -> None:
    """CIFAR: both projection MLPs 512 wide (``model_dict['resnet32'] = [resnet32, 512]``) and the linear
    classifier at PyTorch's default initialisation (``BCLModel_32``'s ``fc``: U(±1/sqrt(64)))."""
    method = build()
    assert method.head[0].out_features == method.center_head[0].out_features == 512
    bound = 1 / method.backbone.feature_dim**0.5
    assert method.classifier.weight.abs().max() <= bound


def test_data_parallel_replicas_normalise_each_quarter_of_the_views() -> None:
    """``method.data_parallel_replicas=4`` (the official 4-GPU DataParallel batch norm, see
    tests/test_data_parallel.py): the loss differs from the one-pass loss, and the backbone's running
    statistics are those of its first quarter of the 3B views alone (classification views only)."""
    plain, split, first_quarter = build(), build("concutmix", "method.data_parallel_replicas=4"), build()
    split.load_state_dict(plain.state_dict())
    first_quarter.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(3)
    batch = 8
    views = torch.randn(3 * batch, 3, 32, 32, generator=g)
    targets = torch.randint(0, len(COUNTS), (batch,), generator=g)
    args = (views, targets, targets.roll(1), torch.tensor(0.7), torch.tensor(1.0))
    for method in (plain, split, first_quarter):
        method.train()
    loss_plain, loss_split = plain.loss_terms(*args)["loss"], split.loss_terms(*args)["loss"]
    assert torch.isfinite(loss_split) and not torch.allclose(loss_split, loss_plain)
    first_quarter.backbone(views.chunk(4)[0])
    expected = first_quarter.backbone.state_dict()
    running = [name for name in expected if "running_mean" in name]
    assert running  # the backbone has batch norms
    for name in running:
        torch.testing.assert_close(split.backbone.state_dict()[name], expected[name], msg=name)
        assert not torch.allclose(plain.backbone.state_dict()[name], expected[name])
