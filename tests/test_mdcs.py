"""MDCS (methods.md §4) against direct transcriptions, its views, the raw-batch hook and a few steps.

``ẑ_k = z_k + log(n^λ_k + 1e-9)`` with λ = (−0.5, 1, 2.5); ``L_DL = Σ_k CE(ẑ_k, y)`` over both views;
``L_CS = Σ_k mean_{i: argmax ẑ_k(x^w_i) = y_i} KL(softmax ẑ_k(x^w_i) ‖ softmax ẑ_k(x^s_i))``;
``L = L_DL + 0.6 min(e / 20, 1) L_CS`` with e counted from 1.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from training_steps import fixed_batch_losses

import lt_bench.methods.mdcs  # noqa: F401  (registers "mdcs")
from lt_bench.config import compose
from lt_bench.data.base import ArraySplit
from lt_bench.data.module import LTDataModule
from lt_bench.errors import ConfigError
from lt_bench.methods.mdcs import (
    adjusted_logits,
    confident_mask,
    consistency_loss,
    cs_weight,
    diversity_loss,
    mdcs_loss,
)
from lt_bench.registry import METHODS

COUNTS = [40, 12, 8, 4]
LAMBDAS = (-0.5, 1.0, 2.5)
SMALL = ("method.expert_widths=[8,16]",)


def build(counts: list[int] = COUNTS, *overrides: str, experiment: str = "cifar10_lt/mdcs"):
    cfg = compose([f"experiment={experiment}", *SMALL, *overrides])
    torch.manual_seed(0)
    return METHODS.get("mdcs")(cfg=OmegaConf.to_container(cfg), train_counts=counts, in_channels=3)


def log_softmax_by_hand(z: list[float]) -> list[float]:
    top = max(z)
    lse = top + math.log(sum(math.exp(v - top) for v in z))
    return [v - lse for v in z]


def adjusted_by_hand(z: list[float], counts: list[int], lam: float) -> list[float]:
    return [v + math.log(n**lam + 1e-9) for v, n in zip(z, counts, strict=True)]


# --- losses ----------------------------------------------------------------------------------------
def test_adjusted_logits_and_diversity_loss_match_the_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    logits = (5 * torch.randn(3, 6, 4, generator=g)).double()
    targets = torch.tensor([0, 1, 2, 3, 0, 2])
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    adjusted = adjusted_logits(logits, counts, LAMBDAS)
    expected = []
    for k, lam in enumerate(LAMBDAS):
        total = 0.0
        for i, y in enumerate(targets.tolist()):
            z = adjusted_by_hand(logits[k, i].tolist(), COUNTS, lam)
            assert adjusted[k, i].tolist() == pytest.approx(z, rel=1e-9)
            total -= log_softmax_by_hand(z)[y]
        expected.append(total / len(targets))
    assert diversity_loss(adjusted, targets).tolist() == pytest.approx(expected, rel=1e-9)


def test_consistency_loss_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(1)
    adjusted = (3 * torch.randn(3, 10, 4, generator=g)).double()
    targets = torch.tensor([0, 1, 2, 3, 0])
    got = consistency_loss(adjusted, targets)
    for k in range(3):
        kls = []
        for i, y in enumerate(targets.tolist()):
            weak, strong = adjusted[k, i].tolist(), adjusted[k, 5 + i].tolist()
            if max(range(4), key=lambda c: weak[c]) != y:
                continue
            log_p, log_q = log_softmax_by_hand(weak), log_softmax_by_hand(strong)
            kls.append(sum(math.exp(a) * (a - b) for a, b in zip(log_p, log_q, strict=True)))
        expected = sum(kls) / len(kls) if kls else 0.0
        assert got[k].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_consistency_gradient_flows_only_through_the_strong_view() -> None:
    adjusted = torch.randn(3, 8, 4, dtype=torch.float64, requires_grad=True)
    targets = adjusted[:, :4].argmax(-1)[0].detach()  # expert 0 confident everywhere
    consistency_loss(adjusted, targets).sum().backward()
    assert torch.all(adjusted.grad[:, :4] == 0)
    assert adjusted.grad[0, 4:].abs().sum() > 0


def test_confident_instance_sampling_is_per_expert() -> None:
    targets = torch.tensor([0, 1, 2])
    teacher = torch.tensor(
        [
            [[5.0, 0, 0], [0, 5, 0], [0, 5, 0]],  # expert 0: right, right, wrong
            [[0, 5.0, 0], [0, 5, 0], [0, 0, 5]],  # expert 1: wrong, right, right
            [[0, 0, 5.0], [5, 0, 0], [0, 5, 0]],  # expert 2: all wrong
        ]
    )
    mask = confident_mask(teacher, targets)
    assert mask.tolist() == [[True, True, False], [False, True, True], [False, False, False]]
    # an expert with no confident sample contributes exactly 0; others average over their own samples
    student = torch.randn(3, 3, 3)
    cs = consistency_loss(torch.cat([teacher, student], dim=1), targets)
    assert cs[2].item() == 0.0
    p = teacher[0, :2].softmax(-1)
    kl0 = (p * (p.log() - student[0, :2].log_softmax(-1))).sum(-1).mean()
    assert cs[0].item() == pytest.approx(kl0.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("epoch", "expected"), [(1, 0.03), (10, 0.3), (19, 0.57), (20, 0.6), (21, 0.6), (400, 0.6)]
)
def test_cs_weight_ramp(epoch: int, expected: float) -> None:
    assert cs_weight(epoch) == pytest.approx(expected)


def test_method_loss_uses_the_one_indexed_epoch() -> None:
    method = build()
    g = torch.Generator().manual_seed(2)
    logits = 4 * torch.randn(3, 8, 4, generator=g)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    counts = torch.tensor(COUNTS, dtype=torch.float)
    adjusted = adjusted_logits(logits, counts, LAMBDAS)
    dl = diversity_loss(adjusted, targets).sum()
    cs = consistency_loss(adjusted, targets[:4]).sum()
    for current_epoch in (0, 4, 30):
        method.trainer = SimpleNamespace(current_epoch=current_epoch, global_rank=0)
        method.on_train_epoch_start()  # sets the epoch's consistency weight (a device buffer)
        got = method.compute_loss({"expert_logits": logits}, targets)
        weight = 0.6 * min((current_epoch + 1) / 20, 1.0)
        assert got.item() == pytest.approx((dl + weight * cs).item(), rel=1e-5)
    terms = mdcs_loss(logits, targets, counts, LAMBDAS, cs_weight(1))
    assert terms["dl"].shape == (3,) and terms["cs"].shape == (3,)


# --- views, configs and the raw-batch hook -----------------------------------------------------------
def test_views_shapes_and_cutout() -> None:
    method = build()
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    weak, strong = method.weak_view(images), method.strong_view(images)
    assert weak.shape == strong.shape == (4, 3, 32, 32) and weak.dtype == torch.float32
    method_ra = build(COUNTS, "method.strong_augment=randaugment")
    assert method_ra.strong_view(images).shape == (4, 3, 32, 32)
    with pytest.raises(ConfigError):
        build(COUNTS, "method.strong_augment=mixup")
    with pytest.raises(ConfigError):
        build(COUNTS, "method.lambdas=[1.0,2.0]")


@pytest.mark.parametrize(
    ("experiment", "epochs", "milestones", "warmup"),
    [
        ("cifar10_lt/mdcs", 400, [200, 320, 380], 20),
        ("cifar10_lt/mdcs_200ep", 200, [160, 180], 20),
        ("cifar100_lt/mdcs", 400, [200, 320, 380], 10),
        ("cifar100_lt/mdcs_200ep", 200, [160, 180], 10),
    ],
)
def test_experiment_configs(experiment: str, epochs: int, milestones: list[int], warmup: int) -> None:
    cfg = compose([f"experiment={experiment}"])
    assert cfg.method.name == "mdcs" and cfg.backbone.name == "resnet32"
    assert (
        cfg.method.lambdas == [-0.5, 1.0, 2.5] and cfg.method.cs_weight == 0.6 and cfg.method.cs_warmup == 20
    )
    assert cfg.method.expert_widths == [24, 48] and cfg.method.shared_until == "layer1"
    assert cfg.data.batch_size == 64 and cfg.optim.lr == 0.1 and cfg.optim.weight_decay == 5e-4
    assert cfg.optim.nesterov is True and cfg.schedule.gamma == 0.1
    assert cfg.trainer.max_epochs == epochs and cfg.schedule.milestones == milestones
    assert cfg.schedule.warmup_epochs == warmup


def _datamodule() -> LTDataModule:
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8).numpy()
    split = ArraySplit(images, torch.tensor([0, 1, 2, 3]).numpy())
    return LTDataModule(split, None, {"test": split}, [0.5] * 3, [0.25] * 3, 2, 2)


@pytest.mark.parametrize("raw", [False, True])
def test_raw_train_batch_hook(raw: bool) -> None:
    dm = _datamodule()
    images = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    targets = torch.tensor([0, 1])
    module = SimpleNamespace(raw_train_batches=True) if raw else SimpleNamespace()
    dm.trainer = SimpleNamespace(training=True, lightning_module=module)
    out, _ = dm.on_after_batch_transfer((images, targets), 0)
    if raw:
        assert out is images
    else:
        assert out.dtype == torch.float32 and out.shape == (2, 3, 8, 8)
    # evaluation batches are always normalised, whatever the module asks for
    dm.trainer = SimpleNamespace(training=False, lightning_module=module)
    out, _ = dm.on_after_batch_transfer((images, targets), 0)
    torch.testing.assert_close(out, (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25)


# --- training ----------------------------------------------------------------------------------------
def test_a_few_cpu_steps_lower_the_loss() -> None:
    method = build(COUNTS, "data.crop_padding=1", "data.cutout_size=2")
    method.trainer = SimpleNamespace(current_epoch=25)  # CS at full weight
    torch.manual_seed(3)
    images = torch.randint(0, 256, (8, 8, 8, 3), dtype=torch.uint8)
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 3, 0])
    views = torch.cat([method.weak_view(images), method.strong_view(images)])  # fixed views
    labels = torch.cat([targets, targets])
    losses = fixed_batch_losses(method, views, labels, steps=8, lr=0.02)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]


def test_training_step_builds_two_views_from_raw_batches() -> None:
    method = build(COUNTS, "data.crop_padding=1", "data.cutout_size=2")
    seen = []
    original = method.forward
    method.forward = lambda x: (seen.append(x.shape), original(x))[1]
    method.trainer = SimpleNamespace(
        current_epoch=0, global_step=0, log_every_n_steps=1, num_training_batches=1
    )
    method.log = lambda *a, **k: None
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    loss = method.training_step((images, torch.tensor([0, 1, 2, 3])), 0)
    assert seen == [(8, 3, 8, 8)] and torch.isfinite(loss) and method.train_images_seen == 4
    with pytest.raises(ConfigError):
        method.training_step((torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])), 0)


# --- two views on image-file datasets -----------------------------------------------------------------------
def test_two_views_of_a_file_image() -> None:
    from PIL import Image

    from lt_bench.methods.mdcs import TwoViews

    torch.manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8).numpy())
    views = TwoViews(32, [0.5] * 3, [0.25] * 3, ops=2, magnitude=10)(image)
    assert views.shape == (2, 3, 32, 32) and views.dtype == torch.float32
    assert not torch.equal(views[0], views[1])


def test_training_step_takes_two_views_from_file_batches() -> None:
    method = build(COUNTS)
    seen = []
    original = method.forward
    method.forward = lambda x: (seen.append(x.shape), original(x))[1]
    method.trainer = SimpleNamespace(
        current_epoch=0, global_step=0, log_every_n_steps=1, num_training_batches=1
    )
    method.log = lambda *a, **k: None
    loss = method.training_step((torch.randn(4, 2, 3, 8, 8), torch.tensor([0, 1, 2, 3])), 0)
    assert seen == [(8, 3, 8, 8)] and torch.isfinite(loss)


def test_data_module_uses_the_methods_file_transform(tmp_path) -> None:
    """Image-file training batches come as [B, 2, 3, S, S] when the method is MDCS."""
    from PIL import Image

    from lt_bench.data.base import FileSplit

    for i in range(4):
        Image.new("RGB", (40, 40), (60 * i, 20, 200)).save(tmp_path / f"{i}.png")
    split = FileSplit(tmp_path, [f"{i}.png" for i in range(4)], [0, 1, 2, 3])
    dm = LTDataModule(split, None, {"test": split}, [0.5] * 3, [0.25] * 3, 4, 4, image_size=16)
    dm.trainer = SimpleNamespace(lightning_module=build(COUNTS), world_size=1, global_rank=0)
    images, targets, indices = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 2, 3, 16, 16) and sorted(targets.tolist()) == [0, 1, 2, 3]
    assert targets.tolist() == [split.targets[i] for i in indices.tolist()]
    test_images, _ = next(iter(dm.test_dataloader()[0]))
    assert test_images.shape == (4, 3, 16, 16)  # evaluation keeps the standard single view


def test_large_dataset_recipes_compose() -> None:
    for experiment in ("imagenet_lt/mdcs", "inaturalist2018/mdcs", "places_lt/mdcs"):
        cfg = compose([f"experiment={experiment}"])
        assert cfg.method.name == "mdcs" and cfg.method.strong_augment == "randaugment"
