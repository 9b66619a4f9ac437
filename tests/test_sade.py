"""SADE (methods.md §3) against direct transcriptions, plus its test-time aggregation and a real run.

Losses (π = n_c / N, π̃ = π mirrored in rank, ε = 1e-9): forward ``CE(z_1, y)``, uniform
``CE(z_2 + log(π + ε), y)``, backward ``CE(z_3 + log(π + ε) - τ log(π̃ + ε), y)``, total = sum.
Test time: ω = softmax(v), v starting equal, SGD on ``-mean cos(softmax(Σ ω_k z_k'), softmax(Σ ω_k z_k''))``
over two views, stopping after the first pass that leaves some ω_k < 0.05.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from stage_trainer import fake_trainer
from training_steps import assert_loss_drops, learnable_data, sgd_losses

from lt_bench.cli import main
from lt_bench.config import compose
from lt_bench.data import policies
from lt_bench.data.base import ArraySplit, FileSplit
from lt_bench.data.module import LTDataModule
from lt_bench.errors import ConfigError
from lt_bench.methods.sade import (
    aggregate,
    inverted_prior,
    learn_aggregation_weights,
    prediction_stability,
    sade_expert_losses,
)
from lt_bench.registry import METHODS

COUNTS = [40, 12, 8, 4]
SMALL = ("method.expert_widths=[8,16]",)  # narrow experts keep CPU tests fast


def build(counts: list[int] = COUNTS, *overrides: str, experiment: str = "cifar10_lt/sade"):
    cfg = compose([f"experiment={experiment}", *overrides])
    torch.manual_seed(0)
    return METHODS.get("sade")(cfg=OmegaConf.to_container(cfg), train_counts=counts, in_channels=3)


def nll_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """``mean_i -log(exp(z_{i,y_i}) / Σ_c exp(z_{i,c}))`` sample by sample, in float64."""
    total = 0.0
    for z, y in zip(logits.double().tolist(), targets.tolist(), strict=True):
        total += math.log(sum(math.exp(v) for v in z)) - z[y]
    return total / len(targets)


# --- priors and losses ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prior", "expected"),
    [
        ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5]),
        ([0.2, 0.5, 0.3], [0.5, 0.2, 0.3]),  # not sorted: mirrored ranks, not reversed positions
        ([0.1, 0.4, 0.3, 0.2], [0.4, 0.1, 0.2, 0.3]),
    ],
)
def test_inverted_prior_mirrors_ranks(prior: list[float], expected: list[float]) -> None:
    assert inverted_prior(torch.tensor(prior)).tolist() == pytest.approx(expected)


def test_expert_losses_match_the_formulas() -> None:
    counts = [500, 120, 40, 9, 5]
    g = torch.Generator().manual_seed(0)
    logits = 10 * torch.randn(3, 7, 5, generator=g)
    targets = torch.tensor([0, 1, 2, 3, 4, 4, 0])
    prior = [n / sum(counts) for n in counts]
    inverted = [prior[4], prior[3], prior[2], prior[1], prior[0]]  # counts are already sorted
    log_pi = torch.tensor([math.log(p + 1e-9) for p in prior])
    log_inv = torch.tensor([math.log(p + 1e-9) for p in inverted])
    tau = 2.0
    expected = [
        nll_by_hand(logits[0], targets),
        nll_by_hand(logits[1] + log_pi, targets),
        nll_by_hand(logits[2] + log_pi - tau * log_inv, targets),
    ]
    got = sade_expert_losses(logits, targets, torch.tensor(prior), tau)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)

    method = build(counts, *SMALL)
    assert method.method_cfg.tau == 2.0
    total = method.compute_loss({"expert_logits": logits, "logits": logits.mean(0)}, targets)
    assert total.item() == pytest.approx(sum(expected), rel=1e-5)


def test_backward_expert_tau_from_config() -> None:
    method = build(COUNTS, *SMALL, "method.tau=1.0")
    logits = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3])
    prior = torch.tensor(COUNTS, dtype=torch.float) / sum(COUNTS)
    expected = sade_expert_losses(logits, targets, prior, 1.0).sum()
    assert method.compute_loss({"expert_logits": logits}, targets).item() == pytest.approx(expected.item())
    assert expected.item() != pytest.approx(sade_expert_losses(logits, targets, prior, 2.0).sum().item())


# --- model and configs ---------------------------------------------------------------------------------
def test_forward_plain_evaluation_is_the_mean_of_expert_logits() -> None:
    method = build(COUNTS, *SMALL).eval()
    with torch.no_grad():
        out = method(torch.randn(5, 3, 16, 16))
    assert out["expert_logits"].shape == (3, 5, 4)
    torch.testing.assert_close(out["logits"], out["expert_logits"].mean(dim=0))
    torch.testing.assert_close(method.predict_logits(out), out["logits"])
    assert out["expert_features"].shape == (3, 5, 16)
    torch.testing.assert_close(out["features"][:, 16:32], out["expert_features"][1])


@pytest.mark.parametrize(
    ("experiment", "backbone", "lr", "widths", "tau", "tta"),
    [
        ("cifar10_lt/sade", "resnet32", 0.05, [32, 64], 2.0, True),
        ("cifar100_lt/sade", "resnet32", 0.1, [24, 48], 2.0, True),
        ("imagenet_lt/sade", "resnext50_32x4d", 0.025, [192, 384], 2.0, False),
        ("inaturalist2018/sade", "resnet50", 0.2, [192, 384], 1.0, False),
        ("places_lt/sade", "resnet152", 0.01, [], 1.0, False),
    ],
)
def test_experiment_configs(experiment: str, backbone: str, lr: float, widths, tau: float, tta: bool) -> None:
    cfg = compose([f"experiment={experiment}"])
    assert cfg.method.name == "sade" and cfg.backbone.name == backbone
    assert cfg.optim.lr == lr and cfg.optim.nesterov is True
    assert cfg.method.expert_widths == widths and cfg.method.tau == tau
    assert cfg.method.test_time_aggregation is tta and cfg.method.tta.epochs == 5
    if backbone == "resnet32":
        assert cfg.data.batch_size == 128 and cfg.optim.weight_decay == 5e-4
        assert cfg.schedule.milestones == [160, 180] and cfg.schedule.gamma == 0.1
        assert cfg.schedule.warmup_epochs == 5 and cfg.trainer.max_epochs == 200
        assert cfg.method.shared_until == "layer1" and cfg.method.tta.lr == 0.1
    else:
        assert cfg.method.shared_until == "layer2"


def test_places_backbone_lr_groups() -> None:
    method = build(COUNTS, *SMALL, "method.backbone_lr=0.001")
    groups = method.parameter_groups()
    heads = {id(p) for p in method.trunk.heads.parameters()}
    assert {id(p) for p in groups[0]["params"]} == heads and "lr" not in groups[0]
    assert groups[1]["lr"] == 0.001
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(method.parameters()))
    optimizer = method.configure_optimizers()["optimizer"]
    assert [g["initial_lr"] for g in optimizer.param_groups] == [0.05, 0.001]


def test_sade_needs_three_experts() -> None:
    with pytest.raises(ConfigError, match="3 experts"):
        build(COUNTS, *SMALL, "method.num_experts=2")


# --- test-time aggregation on tensors ------------------------------------------------------------------
def synthetic_views(num_batches: int = 4, batch: int = 32, classes: int = 10, seed: int = 0):
    """Expert 0 confident and identical on both views; expert 1 confidently random and different per
    view; expert 2 expert 0 plus view-dependent noise."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        good = 8 * F.one_hot(torch.randint(0, classes, (batch,), generator=g), classes).float()
        noisy = [8 * torch.randn(batch, classes, generator=g) for _ in range(2)]
        middle = [good + 2 * torch.randn(batch, classes, generator=g) for _ in range(2)]
        batches.append((torch.stack([good, noisy[0], middle[0]]), torch.stack([good, noisy[1], middle[1]])))
    return batches


def counting(batches):
    passes = []

    def epoch_batches():
        passes.append(1)
        return iter(batches)

    return epoch_batches, passes


def test_stability_objective_by_hand() -> None:
    z1 = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # E = 2, B = 1, C = 2
    z2 = torch.tensor([[[0.0, 1.0]], [[2.0, 0.0]]])
    w = torch.tensor([0.25, 0.75])
    a1, a2 = aggregate(z1, w), aggregate(z2, w)
    torch.testing.assert_close(a1, torch.tensor([[0.25, 1.5]]))
    torch.testing.assert_close(a2, torch.tensor([[1.5, 0.25]]))
    p = [1 / (1 + math.exp(1.25)), 1 / (1 + math.exp(-1.25))]
    cos = (2 * p[0] * p[1]) / (p[0] ** 2 + p[1] ** 2)
    assert prediction_stability(a1, a2).item() == pytest.approx(cos, rel=1e-6)


def test_weights_move_toward_the_consistent_expert() -> None:
    epoch_batches, passes = counting(synthetic_views())
    weights, made = learn_aggregation_weights(epoch_batches, 3, epochs=1, lr=0.1)
    assert made == 1 == len(passes)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[0] > 1 / 3 > weights[1]
    assert weights[0] > weights[2] > weights[1]


def test_stopping_rule_after_a_pass_with_a_weight_below_the_floor() -> None:
    batches = synthetic_views()
    epoch_batches, passes = counting(batches)
    weights, made = learn_aggregation_weights(epoch_batches, 3, epochs=5, lr=0.1, min_weight=0.05)
    assert made == len(passes) < 5
    assert weights.min().item() < 0.05 and weights.argmin().item() == 1
    # one pass fewer: every weight was still above the floor, so training had to go on
    before, _ = learn_aggregation_weights(counting(batches)[0], 3, epochs=made - 1, lr=0.1)
    assert before.min().item() >= 0.05


def test_no_signal_keeps_equal_weights_for_all_passes() -> None:
    z = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(3))
    same = torch.stack([z[0], z[0], z[0]])  # identical experts: the objective ignores the weights
    epoch_batches, passes = counting([(same, same)])
    weights, made = learn_aggregation_weights(epoch_batches, 3, epochs=5, lr=0.1)
    assert made == 5 == len(passes)
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3))


# --- the test loop and the test-time stage without a full run ----------------------------------------------
def tiny_datamodule(test_sets: dict, n_train: int = 8) -> LTDataModule:
    rng = np.random.default_rng(0)
    train = ArraySplit(rng.integers(0, 256, (n_train, 16, 16, 3), dtype=np.uint8), np.arange(n_train) % 4)
    return LTDataModule(train, None, test_sets, [0.5] * 3, [0.25] * 3, batch_size=8, eval_batch_size=10)


def array_split(n: int, seed: int) -> ArraySplit:
    rng = np.random.default_rng(seed)
    return ArraySplit(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), np.arange(n) % 4)


def test_test_loop_records_every_expert() -> None:
    method = build(COUNTS, *SMALL).eval()
    images = torch.randn(6, 3, 16, 16)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    method.on_test_epoch_start()
    with torch.no_grad():
        method.test_step((images, targets), 0)
        expert_logits = method(images)["expert_logits"]
    method.on_test_epoch_end()
    assert set(method.results) == {"test", "test_expert0", "test_expert1", "test_expert2"}
    for k in range(3):
        result = method.results[f"test_expert{k}"]
        correct = (expert_logits[k].argmax(1) == targets).float().mean().item()
        assert result["top1"] == pytest.approx(correct) and result["num_samples"] == 6
        assert {"many", "medium", "few", "per_class"} <= set(result)


def test_test_time_stage_adds_aggregated_results() -> None:
    sets = {"test": array_split(24, 1), "test_backward": array_split(12, 2)}
    tta = ("method.tta.batch_size=8", "method.tta.epochs=2")
    method = build(COUNTS, *SMALL, *tta).eval()
    method.test_time_stage(fake_trainer(), tiny_datamodule(sets))
    assert method.uses_test_data is True
    assert method.results["test_sade_tta"]["num_samples"] == 24
    assert method.results["test_backward_sade_tta"]["num_samples"] == 12
    assert len(method.results["test_sade_tta"]["class_counts"]) == 4
    extras = method.record_extras()["sade_tta"]
    for name in sets:
        assert sum(extras[name]["weights"]) == pytest.approx(1.0)
        assert 1 <= extras[name]["epochs"] <= 2

    # seeded: the same run gives the same weights; limit_test_batches limits both passes and scoring
    again = build(COUNTS, *SMALL, *tta).eval()
    again.test_time_stage(fake_trainer(), tiny_datamodule(sets))
    assert again.record_extras() == method.record_extras()
    # method.tta.sets picks the sets
    limited = build(COUNTS, *SMALL, *tta, "method.tta.sets=[test]").eval()
    limited.test_time_stage(fake_trainer(limit=1), tiny_datamodule(sets))
    assert set(limited.results) == {"test_sade_tta"}
    assert limited.results["test_sade_tta"]["num_samples"] == 10  # 1 batch of eval batch 10
    with pytest.raises(ConfigError, match="test_forward_50"):
        build(COUNTS, *SMALL, "method.tta.sets=[test_forward_50]").test_time_stage(
            fake_trainer(), tiny_datamodule(sets)
        )


def test_test_time_views_are_the_official_strong_views(monkeypatch: pytest.MonkeyPatch) -> None:
    """``method.tta.views=strong``: each view is test_training_cifar.py's ``train_trsfm`` — RandomCrop(32,
    padding 4), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, blur σ ∈ [0.1, 2] with p 0.2,
    flip — then the dataset's normalisation; ``train_augment`` is the run's training augmentation."""
    calls = []
    real = policies.simclr_view

    def recording(images, *args, **kwargs):
        calls.append(kwargs)
        return real(images, *args, **kwargs)

    monkeypatch.setattr(policies, "simclr_view", recording)
    datamodule = tiny_datamodule({"test": array_split(8, 1)})
    view = build(COUNTS, *SMALL)._tta_view(datamodule)
    batch = torch.from_numpy(array_split(8, 1).images)
    out = view(batch)
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    assert calls == [{"padding": 4, "blur_p": 0.2, "blur_kernel": 9}]
    signature = inspect.signature(real).parameters  # the defaults the call keeps
    assert signature["jitter"].default == (0.4, 0.4, 0.4, 0.1) and signature["jitter_p"].default == 0.8
    assert signature["grayscale_p"].default == 0.2 and signature["blur_sigma"].default == (0.1, 2.0)
    plain = build(COUNTS, *SMALL, "method.tta.views=train_augment")._tta_view(datamodule)
    assert plain is datamodule.augment
    with pytest.raises(ConfigError, match="tta.views"):
        build(COUNTS, *SMALL, "method.tta.views=weak").test_time_stage(fake_trainer(), datamodule)


def test_test_time_stage_off_and_file_datasets() -> None:
    method = build(COUNTS, *SMALL, "method.test_time_aggregation=false")
    method.test_time_stage(fake_trainer(), tiny_datamodule({"test": array_split(10, 1)}))
    assert method.results == {} and method.uses_test_data is False and method.record_extras() == {}

    files = FileSplit(Path("/nonexistent"), ["a.jpg"], np.array([0]))
    with pytest.raises(ConfigError, match="test_time_aggregation=false"):
        build(COUNTS, *SMALL).test_time_stage(fake_trainer(), tiny_datamodule({"test": files}))


# --- a few training steps ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_steps_lower_the_loss() -> None:
    images, targets = learnable_data()
    method = build([40, 12, 8, 4], *SMALL)
    losses = sgd_losses(method, images, targets)
    assert_loss_drops(losses)


# --- end to end on the real CIFAR-10-LT ---------------------------------------------------------------------
@pytest.mark.slow
def test_cli_run_records_plain_aggregated_and_expert_results(cifar10_jpg: Path, tmp_path: Path) -> None:
    args = [
        "run",
        "experiment=cifar10_lt/sade",
        f"dataset.root={cifar10_jpg}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=2",
        "data.batch_size=32",
        "method.tta.batch_size=32",
        f"output_dir={tmp_path}",
        "logger.progress_bar=false",
    ]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    assert code == 0, err.getvalue()
    record = json.loads(Path(re.search(r"^record: (.+)$", out.getvalue(), re.MULTILINE).group(1)).read_text())
    assert record["method"] == "sade" and record["uses_test_data_for_training"] is True
    metrics = record["metrics"]
    assert {"val", "test", "test_sade_tta", "test_expert0", "test_expert1", "test_expert2"} <= set(metrics)
    for name in ("test", "test_sade_tta", "test_expert0", "test_expert1", "test_expert2"):
        assert metrics[name]["num_samples"] == 200  # 2 test batches of 100
        assert 0.0 <= metrics[name]["top1"] <= 1.0 and "many" in metrics[name]
    tta = record["method_extras"]["sade_tta"]["test"]
    assert sum(tta["weights"]) == pytest.approx(1.0) and 1 <= tta["epochs"] <= 5
