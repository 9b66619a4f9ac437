"""The fast engine (lt_bench/engine): its SGD, data order, equality with the Lightning engine on a
CPU, engine choice, and (on a GPU only) CUDA-graph steps against eager steps."""

from __future__ import annotations

import csv
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fmnist_runs import cli, record_metrics, require_fashion_mnist, small_run
from host_sync import HostSyncDetector
from torch import Tensor
from torch.utils.data import DistributedSampler

from lt_bench.cli import main
from lt_bench.config import compose
from lt_bench.data import policies
from lt_bench.data.augment import BatchAugment
from lt_bench.data.base import ArraySplit, FileSplit
from lt_bench.engine.choice import choose_engine
from lt_bench.engine.fast import CAPTURABLE_AUGMENTS, WARMUP_STEPS, FastEngine, epoch_permutation
from lt_bench.engine.sgd import GraphSGD
from lt_bench.engine.stop import StopRequests
from lt_bench.errors import ConfigError, RunInterrupted
from lt_bench.methods.base import BaseMethod, limited_batches
from lt_bench.registry import METHODS
from lt_bench.runner import in_channels

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_graph_sgd_equals_torch_sgd() -> None:
    """Two groups (plain and Nesterov, different lr), weight decay, and a parameter without a gradient."""
    torch.manual_seed(0)
    ours = [torch.randn(5, 3, requires_grad=True) for _ in range(4)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    options = {"momentum": 0.9, "weight_decay": 5e-4}
    torch_sgd = torch.optim.SGD(
        [{"params": theirs[:2], "lr": 0.1}, {"params": theirs[2:], "lr": 0.01, "nesterov": True}], **options
    )
    graph_sgd = GraphSGD(
        [
            {"params": ours[:2], "lr": 0.1, "nesterov": False, **options},
            {"params": ours[2:], "lr": 0.01, "nesterov": True, **options},
        ],
        torch.device("cpu"),
    )
    for step in range(5):
        if step == 3:
            graph_sgd.set_lrs([0.05, 0.005])
            for group, lr in zip(torch_sgd.param_groups, [0.05, 0.005], strict=True):
                group["lr"] = lr
        for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            grad = torch.randn(5, 3)
            a.grad, b.grad = (None, None) if k == 3 else (grad, grad.clone())
        torch_sgd.step()
        graph_sgd.step()
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert graph_sgd.lrs() == pytest.approx([0.05, 0.005])


def test_epoch_order_is_the_distributed_samplers() -> None:
    sampler = DistributedSampler(range(103), num_replicas=1, rank=0, shuffle=True, seed=7)
    for epoch in (0, 1, 5):
        sampler.set_epoch(epoch)
        assert epoch_permutation(103, 7, epoch).tolist() == list(sampler)


def test_limited_batches_follow_lightning() -> None:
    cases = [(None, 10), (3, 10), (30, 10), (0.25, 10), (1.0, 10)]
    assert [limited_batches(limit, total) for limit, total in cases] == [10, 3, 10, 2, 10]


def _epoch_losses(run: Path, engine: str) -> list[float]:
    if engine == "fast":
        with (run / "train_log.csv").open() as f:
            return [float(row["train/loss_epoch"]) for row in csv.DictReader(f)]
    with (run / "logs" / "metrics.csv").open() as f:
        return [float(row["train/loss_epoch"]) for row in csv.DictReader(f) if row.get("train/loss_epoch")]


def test_fast_engine_trains_as_the_lightning_engine_on_a_cpu(tmp_path: Path) -> None:
    """Same data order, augmentation stream, schedule and SGD: the same losses and test results
    (up to float rounding of the two SGD implementations)."""
    require_fashion_mnist()
    results = {}
    for engine in ("lightning", "fast"):
        assert main(["run", *small_run(tmp_path / engine, f"train.engine={engine}")]) == 0
        results[engine] = (_epoch_losses(tmp_path / engine / "r", engine), record_metrics(tmp_path / engine))
    (loss_l, metrics_l), (loss_f, metrics_f) = results["lightning"], results["fast"]
    assert len(loss_f) == len(loss_l) == 3
    np.testing.assert_allclose(loss_f, loss_l, rtol=1e-4)
    assert abs(metrics_f["test"]["top1"] - metrics_l["test"]["top1"]) <= 0.005
    assert metrics_f["test"]["nll"] == pytest.approx(metrics_l["test"]["nll"], rel=1e-3)


def test_engine_choice(tmp_path: Path) -> None:
    cfg = compose(["experiment=fashion_mnist_lt/ce", "trainer.accelerator=cpu"])
    memory = ArraySplit(np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, np.int64))
    files = FileSplit(tmp_path, ["a.jpg"], [0])
    assert choose_engine(cfg, memory) == "lightning"  # auto: fast only on a GPU
    assert choose_engine(compose(["experiment=fashion_mnist_lt/ce", "train.engine=fast"]), memory) == "fast"
    for overrides, words in [
        (["train.engine=fast"], "image files"),
        (["train.engine=fast", "evaluation.checkpoint=best_val"], "validation during training"),
        (["train.engine=fast", "trainer.precision=16-mixed"], "trains in 32, 32-true, bf16-mixed"),
    ]:
        split = files if words == "image files" else memory
        with pytest.raises(Exception, match="train.engine=lightning") as err:
            choose_engine(compose(["experiment=fashion_mnist_lt/ce", *overrides]), split)
        assert words in str(err.value)
    compiled = ["experiment=fashion_mnist_lt/ce", "trainer.accelerator=cpu", "train.compile=default"]
    assert choose_engine(compose(compiled), memory) == "fast"  # a fast-engine option: auto picks it
    with pytest.raises(
        ConfigError, match="train.compile=default is a fast-engine option .*train.engine=lightning"
    ):
        choose_engine(compose([*compiled, "train.engine=lightning"]), memory)


def test_checkpoint_of_the_other_engine_is_refused(tmp_path: Path) -> None:
    require_fashion_mnist()
    assert main(["run", *small_run(tmp_path, "train.engine=fast", "trainer.max_epochs=1")]) == 0
    (tmp_path / "r" / "record.json").unlink()
    refused = cli(small_run(tmp_path, "train.engine=lightning", "trainer.max_epochs=1"))
    assert refused.returncode == 2
    assert "fast engine" in refused.stderr and "train.engine=fast" in refused.stderr


def _synthetic(n: int = 70, classes: int = 4, size: int = 16) -> ArraySplit:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    for c in range(classes):  # a class-coloured square: learnable in a few steps
        images[targets == c, 4:12, 4:12, c % 3] = 200 + 10 * c
    return ArraySplit(images, targets)


def _method_and_augment(cfg, split: ArraySplit) -> tuple[BaseMethod, BatchAugment]:
    """The configured method for ``split``'s class counts and channels, and the run's batch augmentation."""
    counts = np.bincount(split.targets, minlength=4).tolist()
    return METHODS.get(cfg.method.name)(
        cfg=cfg, train_counts=counts, in_channels=in_channels(split)
    ), BatchAugment.from_config(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=cifar10_lt/ldam_drw", "backbone=small_cnn"],
        ["experiment=cifar10_lt/mdcs"],
        ["experiment=cifar10_lt/sade"],
    ],
)
def test_fast_engine_runs_methods_with_views_and_variants(overrides: list[str], tmp_path: Path) -> None:
    """LDAM-DRW switches its loss at the DRW epoch, MDCS builds its own views and its loss changes
    every warm-up epoch, SADE has three experts: each trains eagerly on a CPU and its loss goes down."""
    split = _synthetic()
    cfg = compose(
        [
            "data.batch_size=32",
            *overrides,
            "trainer.max_epochs=4",
            "schedule.warmup_epochs=0",
            "optim.lr=0.01",
        ]
    )
    if "drw_epoch" in cfg.method:
        cfg.method.drw_epoch = 2
    method, augment = _method_and_augment(cfg, split)
    engine = FastEngine(method, split, augment, cfg, torch.device("cpu"), tmp_path)
    summary = engine.fit()
    assert summary.step_mode == "eager" and summary.train_images == 4 * 70
    losses = _epoch_losses(tmp_path, "fast")
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


#: step configurations the graph tests cover (each method, its step variants and its spectral/view options)
STEP_CASES = {
    "ce": ["experiment=cifar10_lt/ce"],
    "balanced_softmax": ["experiment=cifar10_lt/balanced_softmax"],
    "ldam_drw": ["experiment=cifar10_lt/ldam_drw"],
    "car": ["experiment=cifar10_lt/car"],
    "car_power": ["experiment=cifar10_lt/car", "method.spectral=power"],
    # the official exact SVD reads back to the host: eager step, views replayed from a graph
    "car_svd": ["experiment=cifar10_lt/car", "method.spectral=svd"],
    # AutoAugment + Cutout views; a warm-up that fits a 3-epoch test
    "batchformer": ["experiment=cifar10_lt/batchformer", "schedule.warmup_epochs=2"],
    "sade": ["experiment=cifar10_lt/sade"],
    "tlc": ["experiment=cifar10_lt/tlc"],
    "mdcs": ["experiment=cifar10_lt/mdcs"],
    "mdcs_randaugment": ["experiment=cifar10_lt/mdcs", "method.strong_augment=randaugment"],
    "concutmix": ["experiment=cifar10_lt/concutmix"],
    "concutmix_dp4": ["experiment=cifar10_lt/concutmix_dp4"],  # batch norm per quarter of the views
    "concutmix_car": ["experiment=cifar10_lt/concutmix_car"],
    "concutmix_car_power": ["experiment=cifar10_lt/concutmix_car", "method.car.spectral=power"],
    "concutmix_car_svd": ["experiment=cifar10_lt/concutmix_car", "method.car.spectral=svd"],
    "sbcl": ["experiment=cifar10_lt/sbcl"],
    "batchformer_sade": ["experiment=cifar10_lt/batchformer_sade"],
}


def _step_tensors(engine: FastEngine) -> dict[str, Tensor]:
    """Everything a training step writes: weights and buffers, momentum, the running sums."""
    method = engine.method  # parameters and every buffer, the non-persistent ones included
    tensors = {f"model.{k}": v for k, v in [*method.named_parameters(), *method.named_buffers()]}
    for g, group in enumerate(engine.optimizer.groups):
        tensors.update({f"momentum.{g}.{i}": b for i, b in enumerate(group["buffers"])})
    tensors.update({f"sum.{k}": v for k, v in engine.term_sums.items()})
    tensors.update(loss_sum=engine.loss_sum, step_count=engine.step_count)
    return tensors


def _step_state(engine: FastEngine) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in _step_tensors(engine).items()}


def _restore_step_state(engine: FastEngine, state: dict[str, Tensor]) -> None:
    """Write ``state`` back in place (a captured graph keeps reading the same tensors)."""
    with torch.no_grad():
        for k, v in _step_tensors(engine).items():
            v.copy_(state[k])


def _random_state(device: torch.device) -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state() if device.type == "cuda" else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def _set_random_state(state: tuple[Any, ...]) -> None:
    cpu, cuda, numpy_state, python_state = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_a_replayed_step_writes_what_the_eager_step_writes(case: str, device: str, tmp_path: Path) -> None:
    """From the same weights, momentum, running sums and random-number state, one step replayed from
    its captured CUDA graph writes what the same step run eagerly writes, up to float rounding: the
    graph freezes no random draw, batch or learning rate and skips no state update. With the exact SVD
    CAR's step stays eager and replays only its views. On a CPU both steps are eager: the step is a
    function of the tensors compared here and the random state, which is what a graph relies on."""
    on_gpu = device == "cuda"
    split = _synthetic(n=300, size=32)
    cfg = compose([*STEP_CASES[case], "data.batch_size=64"])
    torch.manual_seed(0)
    method, augment = _method_and_augment(cfg, split)
    engine = FastEngine(method, split, augment, cfg, torch.device(device), tmp_path, use_graphs=on_gpu)
    if on_gpu:
        assert engine.use_graphs != case.endswith("svd") and engine.views_in_graph
    variant, batch_size = engine.begin_epoch(0)
    key = (variant, batch_size)
    for _ in range(WARMUP_STEPS + 1):  # eager warm-ups, then the capture (and its first replay)
        engine.step(torch.randperm(300, device=device)[:batch_size], key)
    assert engine.captures == int(on_gpu), engine.notes
    index = torch.randperm(300, device=device)[:batch_size]
    before, random_state = _step_state(engine), _random_state(engine.device)
    engine.step(index, key)
    replayed = _step_state(engine)
    _restore_step_state(engine, before)
    _set_random_state(random_state)
    engine._eager_step(index)
    eager = _step_state(engine)
    assert int(replayed["step_count"]) == int(before["step_count"]) + 1
    weights = [k for k in before if k.startswith("model.") and before[k].is_floating_point()]
    assert any(not torch.equal(replayed[k], before[k]) for k in weights)  # the step trained
    for k in before:
        torch.testing.assert_close(replayed[k], eager[k], rtol=1e-4, atol=1e-5, equal_nan=True, msg=k)


#: (epochs, first epoch compared with the last) where three epochs of the synthetic set do not show
#: training: SBCL's stage 2 trains a classifier on the frozen encoder (LDAM with class-balanced weights),
#: a loss of another scale than stage 1's contrastive one, so it gets 2 + 4 epochs and its first and
#: last stage-2 epochs are compared; ConCutMix with batch norm per quarter of a 64-image batch rises in
#: its second epoch (eagerly as with graphs, measured on an H200: 5.83, 11.9, 6.01), then falls (3.30
#: after 8 epochs).
LOSS_CHECK = {
    "sbcl": (["trainer.max_epochs=6", "method.stage1_epochs=2", "method.stage2_epochs=4"], 2),
    "concutmix_dp4": (["trainer.max_epochs=6"], 0),
}


@GPU
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_graph_training_lowers_the_loss(case: str, tmp_path: Path) -> None:
    """Three epochs (``LOSS_CHECK``: more) with replayed graphs (a new capture whenever the step
    variant or batch size changes) run in the expected step mode and lower the loss."""
    split = _synthetic(n=300, size=32)
    epochs, first = LOSS_CHECK.get(case, (["trainer.max_epochs=3"], 0))
    cfg = compose([*STEP_CASES[case], *epochs, "data.batch_size=64"])
    if "drw_epoch" in cfg.method:
        cfg.method.drw_epoch = 1
    torch.manual_seed(0)
    method, augment = _method_and_augment(cfg, split)
    summary = FastEngine(method, split, augment, cfg, torch.device("cuda"), tmp_path, use_graphs=True).fit()
    expected = "eager (graph views)" if case.endswith("svd") else "graph"
    assert summary.step_mode == expected, summary.notes
    losses = _epoch_losses(tmp_path, "fast")
    assert len(losses) == cfg.trainer.max_epochs
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[first], losses


def test_fast_engine_follows_the_methods_batch_size_per_epoch(tmp_path: Path) -> None:
    """SBCL: stage 1 at data.batch_size, stage 2 at method.stage2_batch_size (70 images: 3 then 5 steps)."""
    split = _synthetic()
    cfg = compose(
        [
            "experiment=cifar10_lt/sbcl",
            "data.batch_size=32",
            "method.stage2_batch_size=16",
            "method.stage1_epochs=1",
            "method.stage2_epochs=1",
            "method.warmup_epochs=0",
            "trainer.max_epochs=2",
        ]
    )
    method, augment = _method_and_augment(cfg, split)
    FastEngine(method, split, augment, cfg, torch.device("cpu"), tmp_path).fit()
    with (tmp_path / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == [3, 8]
    assert rows[0]["train/subclass_epoch"] and not rows[1]["train/subclass_epoch"]  # stage-1 terms only


@GPU
def test_replayed_graphs_draw_fresh_augmentation() -> None:
    """Each replay of a captured crop + flip draws new random numbers; reseeding repeats them
    (the per-epoch reseed of BaseMethod reaches the graphs)."""
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8, device="cuda")
    augment = BatchAugment("crop_flip", [0.5] * 3, [0.25] * 3)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        augment(images)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = augment(images)
    views = []
    for seed in (1, 1):
        torch.manual_seed(seed)
        for _ in range(2):
            graph.replay()
            views.append(out.clone())
    assert not torch.equal(views[0], views[1])
    assert torch.equal(views[0], views[2]) and torch.equal(views[1], views[3])


def test_fast_engine_bf16_autocast_and_channels_last(tmp_path: Path) -> None:
    """``trainer.precision=bf16-mixed`` (autocast around the loss) and ``train.channels_last``
    train too (here on a CPU); their speed is measured in bench/, their accuracy in results/."""
    split = _synthetic()
    cfg = compose(
        [
            "experiment=cifar10_lt/ce",
            "backbone=small_cnn",
            "trainer.precision=bf16-mixed",
            "train.channels_last=true",
            "trainer.max_epochs=4",
            "data.batch_size=32",
            "schedule.warmup_epochs=0",
            "optim.lr=0.05",
        ]
    )
    method, augment = _method_and_augment(cfg, split)
    engine = FastEngine(method, split, augment, cfg, torch.device("cpu"), tmp_path)
    assert engine.autocast and next(p for p in method.parameters() if p.dim() == 4).is_contiguous(
        memory_format=torch.channels_last
    )
    engine.fit()
    losses = _epoch_losses(tmp_path, "fast")
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_compiled_backbone_trains_as_the_eager_one(tmp_path: Path) -> None:
    """``train.compile=default`` compiles the backbone for training (here with inductor on a CPU): dynamo
    builds graphs, the epoch losses equal the uncompiled run's up to float rounding, and after training
    the backbone runs uncompiled again (evaluation does not recompile for eval mode and its batches)."""
    split = _synthetic()
    losses = {}
    for mode in ("null", "default"):
        cfg = compose(
            [
                "experiment=cifar10_lt/ce",
                "backbone=small_cnn",
                f"train.compile={mode}",
                "trainer.max_epochs=2",
                "data.batch_size=32",
                "schedule.warmup_epochs=0",
                "optim.lr=0.05",
            ]
        )
        torch.manual_seed(0)
        method, augment = _method_and_augment(cfg, split)
        engine = FastEngine(method, split, augment, cfg, torch.device("cpu"), tmp_path / mode)
        assert (engine.compiled is method.backbone) == (mode == "default")
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        engine.fit()
        assert (torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0) == (mode == "default")
        assert method.backbone._compiled_call_impl is None
        losses[mode] = _epoch_losses(tmp_path / mode, "fast")
    np.testing.assert_allclose(losses["default"], losses["null"], rtol=1e-4)


def test_multi_expert_methods_compile_their_trunk() -> None:
    """SADE, TLC, MDCS and BatchFormer on SADE keep their network in ``trunk``: that is what
    ``train.compile`` compiles (the others: ``backbone``)."""
    split = _synthetic()
    for experiment, network in [
        ("sade", "trunk"),
        ("tlc", "trunk"),
        ("mdcs", "trunk"),
        ("batchformer_sade", "trunk"),
        ("ce", "backbone"),
        ("concutmix", "backbone"),
        ("sbcl", "backbone"),
    ]:
        method, _ = _method_and_augment(compose([f"experiment=cifar10_lt/{experiment}"]), split)
        assert method.compiled_network() is getattr(method, network), experiment


@pytest.mark.parametrize(
    "case", [c for c in STEP_CASES if not c.endswith(("_power", "_svd", "_randaugment"))]
)
def test_every_methods_bf16_loss_is_its_float32_loss_up_to_rounding(case: str, tmp_path: Path) -> None:
    """Under ``trainer.precision=bf16-mixed`` (with channels_last) every method's first loss, on the same
    weights and views, through the engine's own autocast (``FastEngine.forward_loss``), is its float32
    loss to within 2 % and each of its terms to within 10 % (measured: totals below 0.4 %, terms below
    4.5 %, MDCS's small consistency term the largest), with finite gradients pointing the same way
    (cosine above 0.97; measured 0.982 and more): no term overflows or loses its scale in bf16 (here with
    the CPU's autocast; the GPU runs' accuracy is in results/)."""
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        split = _synthetic(n=128, size=32)
        cfg = compose([*STEP_CASES[case], "data.batch_size=64", f"trainer.precision={precision}"])
        cfg.train.channels_last = precision == "bf16-mixed"
        torch.manual_seed(0)
        method, augment = _method_and_augment(cfg, split)
        engine = FastEngine(method, split, augment, cfg, torch.device("cpu"), tmp_path, use_graphs=False)
        assert engine.autocast == (precision == "bf16-mixed")
        _, batch_size = engine.begin_epoch(0)
        torch.manual_seed(1)
        loss, terms = engine.forward_loss(engine._inputs(torch.arange(batch_size)))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None])
        assert grads.numel() and bool(torch.isfinite(grads).all()), (case, precision)
        terms = {k: float(v.detach().float()) for k, v in terms.items()}
        results[precision] = float(loss.detach()), terms, grads
    (loss32, terms32, grads32), (loss16, terms16, grads16) = results["32-true"], results["bf16-mixed"]
    assert np.isfinite(loss16) and loss16 != loss32  # bf16 changed the computation
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert terms16.keys() == terms32.keys()
    for name, value in terms32.items():
        assert terms16[name] == pytest.approx(value, rel=0.1, abs=1e-6), (case, name)
    assert float(torch.nn.functional.cosine_similarity(grads16, grads32, dim=0)) > 0.97


@pytest.mark.parametrize("case", [c for c in STEP_CASES if not c.endswith(("_power", "_svd"))])
def test_every_method_trains_on_one_channel_images(case: str, tmp_path: Path) -> None:
    """Fashion-MNIST-LT's grayscale images (``[N, 28, 28, 1]``): every method's views and first loss
    (ConCutMix's and SBCL's SimCLR views failed on one channel before colour jitter handled it)."""
    rng = np.random.default_rng(0)
    split = ArraySplit(rng.integers(0, 256, (96, 28, 28, 1)).astype(np.uint8), rng.integers(0, 4, 96))
    cfg = compose([*STEP_CASES[case], "dataset=fashion_mnist_lt", "data.batch_size=32"])
    method, augment = _method_and_augment(cfg, split)
    engine = FastEngine(method, split, augment, cfg, torch.device("cpu"), tmp_path)
    _, batch_size = engine.begin_epoch(0)
    loss, _ = engine.forward_loss(engine._inputs(torch.arange(batch_size)))
    assert bool(torch.isfinite(loss))


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_steps_marked_capturable_never_read_back_to_the_host(case: str, monkeypatch: pytest.MonkeyPatch):
    """What a method lets the engine capture (its loss when ``graph_capturable``; its views when
    ``views_capturable``, or the batch augmentation) makes no host read-back and no tensor from
    Python data, at the first, a middle and the last epoch (each step variant): checked on a CPU with
    a dispatch mode, the GPU path of AutoAugment / RandAugment forced."""
    monkeypatch.setattr(policies, "graph_safe_device", lambda device: True)
    split = _synthetic(n=16, size=32)
    cfg = compose([*STEP_CASES[case], "data.batch_size=8"])
    method, augment = _method_and_augment(cfg, split)
    method.train_split = split
    method.train()
    images, targets = torch.from_numpy(split.images[:8]), torch.from_numpy(split.targets[:8]).long()
    method.batch_indices = torch.arange(8)
    raw = method.raw_train_batches
    views_capturable = method.views_capturable if raw else augment.name in CAPTURABLE_AUGMENTS

    def views() -> tuple[torch.Tensor, ...]:
        return method.train_views(images, targets) if method.raw_train_batches else (augment(images), targets)

    last = cfg.trainer.max_epochs - 1
    for epoch in (0, last // 2, last):
        method.engine_epoch = epoch
        method.on_train_epoch_start()
        inputs = views()  # first calls fill the caches (index maps, kernels, tables)
        method.training_loss(*inputs)
        checks = ((views_capturable, views, ()), (method.graph_capturable, method.training_loss, inputs))
        for capturable, step, args in checks:
            if capturable:
                with HostSyncDetector() as detector:
                    step(*args)
                assert detector.found == [], (case, epoch, detector.found)


def test_stop_requests_end_the_fast_engine_before_training_and_after_the_last_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop requested before training starts trains nothing; one in the last epoch still raises,
    and the resumed run trains no further epoch (it goes straight to evaluation)."""
    split = _synthetic()
    cfg = compose(
        ["experiment=cifar10_lt/ce", "backbone=small_cnn", "data.batch_size=32", "trainer.max_epochs=2"]
    )
    method, augment = _method_and_augment(cfg, split)
    engine = FastEngine(method, split, augment, cfg, torch.device("cpu"), tmp_path)
    with StopRequests() as stop:
        stop.received = "SIGTERM"
        with pytest.raises(RunInterrupted, match="before training epoch 1"):
            engine.fit()
    assert not engine.checkpoint_path.exists()

    start = method.on_train_epoch_start

    def signal_in_last_epoch() -> None:
        start()
        if method.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(method, "on_train_epoch_start", signal_in_last_epoch)
    with pytest.raises(RunInterrupted, match="after epoch 2 of 2"):
        engine.fit()
    assert torch.load(engine.checkpoint_path, weights_only=False)["next_epoch"] == 2
    resumed_method, _ = _method_and_augment(cfg, split)
    resumed = FastEngine(resumed_method, split, augment, cfg, torch.device("cpu"), tmp_path)
    assert resumed.fit(engine.checkpoint_path).epoch_seconds == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
