"""Small real training runs on Fashion-MNIST-LT, shared by the reliability and engine tests."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def require_fashion_mnist() -> None:
    """Fail under CI=true, skip elsewhere, when Debian's dataset-fashion-mnist is missing."""
    if not FMNIST.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Fashion-MNIST not found at {FMNIST}: CI must install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST (Debian's dataset-fashion-mnist) is not installed")


def small_run(output: Path, *extra: str) -> list[str]:
    """A 3-epoch Fashion-MNIST-LT CE run on the CPU (about 10 s) in ``output/r``."""
    return [
        "experiment=fashion_mnist_lt/ce",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=12",
        "trainer.limit_val_batches=2",
        "data.batch_size=64",
        "dataset.val_per_class=50",
        "trainer.accelerator=cpu",
        "logger.progress_bar=false",
        "run_id=r",
        f"output_dir={output}",
        *extra,
    ]


def cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lt_bench", "run", *args], capture_output=True, text=True, **kwargs
    )


def record_metrics(path: Path) -> dict:
    return json.loads((path / "r" / "record.json").read_text())["metrics"]


def assert_same_metrics(a: dict, b: dict, rel: float = 0.0) -> None:
    """Equal keys; accuracies and counts exact, float sums within ``rel`` (summation order)."""
    assert a.keys() == b.keys()
    for split in a:
        for key, value in a[split].items():
            other = b[split][key]
            if rel and isinstance(value, float) and key in ("ece", "mce", "nll"):
                assert math.isclose(value, other, rel_tol=rel), (split, key)
            elif rel and key == "calibration_bins":
                assert value["count"] == other["count"], (split, key)
                for part in ("conf", "acc"):
                    assert all(map(lambda x, y: math.isclose(x, y, rel_tol=rel), value[part], other[part]))
            else:
                assert value == other, (split, key)
