"""Resume after a kill, determinism, non-finite losses, checkpoint checks and 2-process DDP evaluation."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.nn.functional as F

from lt_bench.cli import main
from lt_bench.methods.baselines import CrossEntropy
from lt_bench.registry import METHODS

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture(scope="module", autouse=True)
def _needs_fashion_mnist() -> None:
    if not FMNIST.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Fashion-MNIST not found at {FMNIST}: CI must install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST (Debian's dataset-fashion-mnist) is not installed")


def small_run(output: Path, *extra: str) -> list[str]:
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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    assert main(["run", *small_run(out)]) == 0
    return out


def test_same_seed_gives_identical_record_metrics(uninterrupted: Path, tmp_path: Path) -> None:
    assert main(["run", *small_run(tmp_path)]) == 0
    assert_same_metrics(record_metrics(uninterrupted), record_metrics(tmp_path))


def test_run_killed_mid_epoch_resumes_to_the_same_metrics(uninterrupted: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lt_bench", "run", *small_run(tmp_path, "trainer.limit_train_batches=25")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the second epoch
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "r" / "record.json").exists()

    resumed = cli(small_run(tmp_path, "trainer.limit_train_batches=25"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    reference = tmp_path.parent / "reference"
    assert main(["run", *small_run(reference, "trainer.limit_train_batches=25")]) == 0
    assert_same_metrics(record_metrics(reference), record_metrics(tmp_path))


def test_checkpoint_of_another_method_is_refused(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    source = uninterrupted / "r" / "checkpoints" / "last.ckpt"
    (tmp_path / "r" / "checkpoints" / "last.ckpt").write_bytes(source.read_bytes())
    assert main(["run", *small_run(tmp_path, "method=ldam_drw")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "from method 'ce'" in err and "resume=false" in err


def test_resume_true_without_checkpoint_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["run", *small_run(tmp_path, "resume=true")]) == 2
    assert "does not exist" in capsys.readouterr().err


class NaNAtStepTwo(CrossEntropy):
    """CE whose loss is NaN at global step 2 (a stand-in for a diverging run)."""

    def compute_loss(self, outputs, targets):
        loss = F.cross_entropy(outputs["logits"], targets)
        return loss * float("nan") if self.global_step == 2 else loss


@pytest.fixture()
def nan_method():
    METHODS.add("nan_at_step_two", NaNAtStepTwo)
    yield "nan_at_step_two"
    METHODS._entries.pop("nan_at_step_two")
    METHODS._meta.pop("nan_at_step_two")


def test_nonfinite_loss_stops_the_run_naming_the_step(nan_method: str, tmp_path: Path, capsys) -> None:
    assert main(["run", *small_run(tmp_path, f"method={nan_method}")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step 2" in err and nan_method in err
    assert not (tmp_path / "r" / "record.json").exists()


def test_nonfinite_loss_skipped_when_configured(nan_method: str, tmp_path: Path) -> None:
    args = small_run(tmp_path, f"method={nan_method}", "train.nonfinite_loss=skip")
    assert main(["run", *args]) == 0
    record = json.loads((tmp_path / "r" / "record.json").read_text())
    assert record["timing"]["skipped_nonfinite_steps"] == 1
    assert math.isfinite(record["metrics"]["test"]["top1"])


def test_two_process_ddp_evaluation_equals_one_process(uninterrupted: Path, tmp_path: Path) -> None:
    """Evaluate the uninterrupted run's final checkpoint with 2 CPU processes (gloo)."""
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    source = uninterrupted / "r" / "checkpoints" / "last.ckpt"
    (tmp_path / "r" / "checkpoints" / "last.ckpt").write_bytes(source.read_bytes())
    ddp = cli(small_run(tmp_path, "trainer.devices=2", "trainer.strategy=ddp"), timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert_same_metrics(record_metrics(uninterrupted), record_metrics(tmp_path), rel=1e-12)
