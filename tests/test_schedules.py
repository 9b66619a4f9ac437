"""Learning-rate schedules (methods.md §0.6) against transcriptions of the official code."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from lt_bench.config import compose
from lt_bench.errors import ConfigError
from lt_bench.registry import METHODS
from lt_bench.schedules import cosine, lr_factor, warmup_step


def ldam_adjust_learning_rate(epoch: int, lr: float) -> float:
    """LDAM-DRW ``cifar_train.py::adjust_learning_rate`` (called with the 0-indexed epoch)."""
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    if epoch > 180:
        return lr * 0.0001
    if epoch > 160:
        return lr * 0.01
    return lr


def custom_lr(epoch: int, warmup: int, step1: int, step2: int, gamma: float) -> float:
    """The pytorch-template ``CustomLR`` lambda (SADE, MDCS, RIDE, TLC), ``epoch`` = completed epochs."""
    if epoch >= step2:
        f = gamma * gamma
    elif epoch >= step1:
        f = gamma
    else:
        f = 1.0
    if epoch < warmup:
        f = f * float(1 + epoch) / warmup
    return f


LDAM = {"warmup_epochs": 5, "milestones": [160, 180], "gamma": 0.01}


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.2), (1, 0.4), (4, 1.0), (5, 1.0), (159, 1.0), (160, 0.01), (179, 0.01), (180, 1e-4), (199, 1e-4)],
)
def test_warmup_step_ldam_recipe_hand_values(epoch: int, expected: float) -> None:
    f = warmup_step(5, [160, 180], 0.01)
    assert f(epoch) == pytest.approx(expected, rel=1e-12)


def test_warmup_step_equals_ldam_adjust_learning_rate() -> None:
    f = warmup_step(5, [160, 180], 0.01)
    for epoch in range(200):
        assert 0.1 * f(epoch) == pytest.approx(ldam_adjust_learning_rate(epoch, 0.1), rel=1e-12), epoch


@pytest.mark.parametrize(
    ("warmup", "milestones", "gamma"),
    [(5, (160, 180), 0.1), (5, (160, 180), 0.01), (5, (60, 80), 0.1), (0, (2, 4), 0.5), (3, (2, 6), 0.1)],
)
def test_warmup_step_equals_custom_lr(warmup: int, milestones: tuple[int, int], gamma: float) -> None:
    f = warmup_step(warmup, list(milestones), gamma)
    for epoch in range(200):
        assert f(epoch) == pytest.approx(custom_lr(epoch, warmup, *milestones, gamma), rel=1e-12), epoch


def test_sade_gamma_hand_values() -> None:
    f = warmup_step(5, [160, 180], 0.1)
    assert [f(e) for e in (0, 4, 5, 159, 160, 179, 180)] == pytest.approx([0.2, 1, 1, 1, 0.1, 0.1, 0.01])


def test_cosine_endpoints() -> None:
    f = cosine(warmup_epochs=0, max_epochs=10, min_lr_ratio=0.0)
    assert f(0) == pytest.approx(1.0)
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.0, abs=1e-12)
    assert f(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))
    g = cosine(warmup_epochs=2, max_epochs=12, min_lr_ratio=0.1)
    assert [g(0), g(1)] == pytest.approx([0.5, 1.0])  # linear warm-up (e + 1) / warmup
    assert g(2) == pytest.approx(1.0)
    assert g(7) == pytest.approx(0.1 + 0.9 * 0.5)
    assert g(12) == pytest.approx(0.1)
    assert g(50) == pytest.approx(0.1)  # past the end it stays at the floor


def test_cosine_matches_torch_cosine_annealing() -> None:
    """After warm-up, the factor equals torch's CosineAnnealingLR with T_max = max_epochs - warmup."""
    lr, min_lr, warmup, max_epochs = 0.05, 0.0005, 1, 8
    f = lr_factor({"name": "cosine", "warmup_epochs": warmup, "min_lr": min_lr}, lr, max_epochs)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs - warmup, eta_min=min_lr)
    for epoch in range(warmup, max_epochs + 1):
        assert lr * f(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), epoch
        opt.step()
        ref.step()


def test_lr_factor_dispatch() -> None:
    step = lr_factor({"name": "warmup_step", **LDAM}, 0.1, 200)
    assert [step(e) for e in (0, 160, 180)] == pytest.approx([0.2, 0.01, 1e-4])
    const = lr_factor({"name": "constant"}, 0.1, 200)
    assert [const(e) for e in (0, 100, 199)] == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="poly.*warmup_step"):
        lr_factor({"name": "poly"}, 0.1, 200)


def optimizer_and_scheduler(*overrides: str):
    cfg = compose(["experiment=cifar10_lt/ce", "backbone=small_cnn", *overrides])
    method = METHODS.get("ce")(cfg=OmegaConf.to_container(cfg), train_counts=[50, 5], in_channels=3)
    conf = method.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == "epoch"
    return conf["optimizer"], conf["lr_scheduler"]["scheduler"]


def lr_after(optimizer, scheduler, steps: int) -> list[float]:
    """The learning rate at the start of each of ``steps + 1`` epochs."""
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_configure_optimizers_ldam_recipe() -> None:
    optimizer, scheduler = optimizer_and_scheduler()
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 2e-4, False)
    assert group["initial_lr"] == 0.1
    lrs = lr_after(optimizer, scheduler, 199)
    for epoch, lr in enumerate(lrs):
        assert lr == pytest.approx(ldam_adjust_learning_rate(epoch, 0.1), rel=1e-9), epoch
    assert lrs[0] == pytest.approx(0.02) and lrs[4] == pytest.approx(0.1)
    assert lrs[160] == pytest.approx(1e-3) and lrs[180] == pytest.approx(1e-5)


def test_configure_optimizers_sade_gamma() -> None:
    optimizer, scheduler = optimizer_and_scheduler("schedule.gamma=0.1", "optim.lr=0.05")
    lrs = lr_after(optimizer, scheduler, 185)
    expected = {0: 0.01, 4: 0.05, 159: 0.05, 160: 0.005, 180: 0.0005, 185: 0.0005}
    for epoch, lr in expected.items():
        assert lrs[epoch] == pytest.approx(lr, rel=1e-9), epoch


def test_configure_optimizers_cosine() -> None:
    optimizer, scheduler = optimizer_and_scheduler(
        "schedule.name=cosine", "schedule.warmup_epochs=1", "schedule.min_lr=0.001", "trainer.max_epochs=5"
    )
    lrs = lr_after(optimizer, scheduler, 5)
    # warm-up epoch at lr/1, then 0.001 + 0.099 * (1 + cos(pi * k / 4)) / 2 for k = 0..4
    expected = [0.1] + [0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[-1] == pytest.approx(0.001)


def test_unknown_optimizer_is_rejected_before_training() -> None:
    with pytest.raises(ConfigError, match="adamw.*sgd"):
        compose(["experiment=cifar10_lt/ce", "backbone=small_cnn", "optim.name=adamw"])


class BalmsCosineAnnealingLRWarmup(torch.optim.lr_scheduler.LRScheduler):
    """BALMS's ``utils.CosineAnnealingLRWarmup`` (BatchFormer's BalancedSoftmax code), transcribed."""

    def __init__(self, optimizer, T_max, eta_min=0.0, warmup_epochs=5, base_lr=0.05, warmup_lr=0.1):
        self.T_max, self.eta_min, self.warmup_epochs = T_max, eta_min, warmup_epochs
        self.base_lr, self.warmup_lr = base_lr, warmup_lr
        super().__init__(optimizer)

    def get_lr(self):
        t, w = self.last_epoch, self.warmup_epochs
        if t < w:
            return [
                ((self.warmup_lr - self.base_lr) / (w - 1) * (t - 1) + self.base_lr) / self.base_lr * b
                for b in self.base_lrs
            ]
        cos = (1 + math.cos(math.pi * (t - w) / (self.T_max - w))) / 2
        return [
            self.eta_min + (self.warmup_lr - self.eta_min) * cos / self.base_lr * b for b in self.base_lrs
        ]


@pytest.mark.parametrize(("warmup", "epochs"), [(32, 520), (37, 591), (2, 5)])
def test_balms_cosine_equals_the_official_scheduler_stepped_at_each_epoch_start(
    warmup: int, epochs: int
) -> None:
    """``run_networks.py`` steps the scheduler before each epoch's batches: epoch ``e`` (0-based) trains
    at the official rate of step ``e + 1``; from 0.05 up to 0.1, then cosine down to 0 at the last epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    official = BalmsCosineAnnealingLRWarmup(optimizer, T_max=epochs, warmup_epochs=warmup)
    ours = lr_factor({"name": "balms_cosine", "warmup_epochs": warmup, "peak_factor": 2.0}, 0.05, epochs)
    for epoch in range(epochs):
        official.step()
        assert 0.05 * ours(epoch) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12, abs=1e-15), (
            epoch
        )
    assert ours(0) == 1.0 and ours(warmup - 1) == 2.0 and ours(epochs - 1) == 0.0


@pytest.mark.parametrize(("warmup", "epochs"), [(1, 10), (10, 10)])
def test_balms_cosine_refuses_warmups_it_cannot_run(warmup: int, epochs: int) -> None:
    with pytest.raises(ConfigError, match="balms_cosine"):
        lr_factor({"name": "balms_cosine", "warmup_epochs": warmup, "peak_factor": 2.0}, 0.05, epochs)


def test_a_run_shorter_than_balms_warm_up_is_refused_before_any_data_is_loaded() -> None:
    with pytest.raises(ConfigError, match="schedule.warmup_epochs=2"):
        compose(["experiment=cifar10_lt/batchformer", "trainer.max_epochs=3"])
    assert compose(["experiment=cifar10_lt/batchformer", "trainer.max_epochs=3", "schedule.warmup_epochs=2"])
