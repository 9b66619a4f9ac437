"""The installed ``lt-bench-focal`` package: its loss, its registration, and a run through the CLI.

Needs the package installed (``pip install -e examples/plugin_method``). The run uses Debian's
Fashion-MNIST (``dataset-fashion-mnist``); without it the test fails under CI and skips elsewhere.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lt_bench_focal import FocalLoss, focal_loss

from lt_bench.config import compose, list_group
from lt_bench.registry import METHODS

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def transcribed_focal(logits: list[list[float]], targets: list[int], gamma: float) -> float:
    """The docstring's formula, term by term in Python floats."""
    total = 0.0
    for z, y in zip(logits, targets, strict=True):
        p = math.exp(z[y]) / sum(math.exp(v) for v in z)
        total += -((1 - p) ** gamma) * math.log(p)
    return total / len(targets)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.5])
def test_loss_matches_the_formula(gamma: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3
    targets = torch.randint(0, 5, (7,), generator=generator)
    expected = transcribed_focal(logits.tolist(), targets.tolist(), gamma)
    assert focal_loss(logits, targets, gamma).item() == pytest.approx(expected, rel=1e-5)


def test_gamma_zero_is_cross_entropy() -> None:
    logits, targets = torch.randn(16, 10), torch.randint(0, 10, (16,))
    torch.testing.assert_close(focal_loss(logits, targets, 0.0), F.cross_entropy(logits, targets))


def test_registered_through_the_entry_point() -> None:
    assert METHODS.get("focal") is FocalLoss
    assert METHODS.meta("focal") == {"plugin": "lt_bench_focal:FocalLoss"}
    assert "focal" in list_group("method")
    cfg = compose(["method=focal", "dataset=fashion_mnist_lt", "backbone=small_cnn", "method.gamma=2"])
    assert dict(cfg.method) == {"classifier": "linear", "gamma": 2.0, "name": "focal"}


def test_lt_bench_run_writes_a_record(tmp_path: Path) -> None:
    if not FMNIST.is_file():
        message = f"Fashion-MNIST not found at {FMNIST} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    command = [
        str(Path(sys.executable).with_name("lt-bench")),
        "run",
        "method=focal",
        "dataset=fashion_mnist_lt",
        "backbone=small_cnn",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.batch_size=32",
        "data.eval_batch_size=50",
        "logger.progress_bar=false",
        f"output_dir={tmp_path / 'runs'}",
    ]
    env = {**os.environ, "LT_BENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = (tmp_path / "runs").rglob("record.json")
    record = json.loads(path.read_text())
    assert record["method"] == "focal" and record["dataset"] == "fashion_mnist_lt"
    assert record["config"]["method"] == {"classifier": "linear", "gamma": 1.0, "name": "focal"}
    assert record["metrics"]["test"]["num_samples"] == 50
    assert "| fashion_mnist_lt | 100 | focal | 1 |" in proc.stdout
