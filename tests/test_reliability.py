"""Resume after a kill, determinism, non-finite losses, checkpoint checks and 2-process DDP evaluation."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fmnist_runs import assert_same_metrics, cli, record_metrics, require_fashion_mnist, small_run

from lt_bench.cli import main
from lt_bench.methods.baselines import CrossEntropy
from lt_bench.registry import METHODS


@pytest.fixture(scope="module", autouse=True)
def _needs_fashion_mnist() -> None:
    require_fashion_mnist()


def segment_epochs(path: Path) -> list[list[int]]:
    """``[first, end)`` of each training segment in the record under ``path``; each names a device."""
    segments = json.loads((path / "r" / "record.json").read_text())["provenance"]["training_segments"]
    assert all(s["device"].startswith("cpu") and "git_commit" in s for s in segments)
    return [s["epochs"] for s in segments]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    assert main(["run", *small_run(out)]) == 0
    return out


def test_same_seed_gives_identical_record_metrics(uninterrupted: Path, tmp_path: Path) -> None:
    assert main(["run", *small_run(tmp_path)]) == 0
    assert_same_metrics(record_metrics(uninterrupted), record_metrics(tmp_path))
    assert segment_epochs(tmp_path) == [[0, 3]]  # one process trained epochs 0-2


@pytest.mark.parametrize("engine", ["lightning", "fast"])
def test_run_killed_mid_epoch_resumes_to_the_same_metrics(engine: str, tmp_path: Path) -> None:
    args = small_run(tmp_path, "trainer.limit_train_batches=25", f"train.engine={engine}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lt_bench", "run", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # into the second epoch
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "r" / "record.json").exists()

    resumed = cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    reference = tmp_path.parent / f"reference_{engine}"
    assert (
        main(["run", *small_run(reference, "trainer.limit_train_batches=25", f"train.engine={engine}")]) == 0
    )
    assert_same_metrics(record_metrics(reference), record_metrics(tmp_path))
    # the killed process (last.ckpt after each epoch, Lightning's too), then the resumed one
    (first, end), (resumed_at, last) = segment_epochs(tmp_path)
    assert first == 0 and end == resumed_at and 1 <= resumed_at < 3 and last == 3


def test_sigterm_stops_a_fast_run_at_the_epoch_boundary_and_it_resumes(tmp_path: Path) -> None:
    """SIGTERM mid-epoch: the epoch finishes and is checkpointed, exit code 130, then the same command
    resumes to the uninterrupted run's metrics."""
    extra = ("trainer.limit_train_batches=25", "trainer.max_epochs=6", "train.engine=fast")
    extra += ("evaluation.test_curve=true",)
    args = small_run(tmp_path, *extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lt_bench", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "stopped by SIGTERM after epoch" in stderr and "run the same command again to resume" in stderr
    next_epoch = torch.load(last, weights_only=False)["next_epoch"]
    with (tmp_path / "r" / "train_log.csv").open() as f:
        assert len(f.readlines()) - 1 == next_epoch < 6  # every epoch begun was finished and logged
    assert not (tmp_path / "r" / "record.json").exists()

    resumed = cli(args)
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path.parent / "reference_sigterm"
    assert main(["run", *small_run(reference, *extra)]) == 0
    assert_same_metrics(record_metrics(reference), record_metrics(tmp_path))
    # the test curve keeps the epochs trained before the stop (read back from the log)
    curves = [json.loads((d / "r" / "record.json").read_text())["diagnostics"] for d in (tmp_path, reference)]
    assert list(curves[0]["test_top1_by_epoch"]) == [str(e) for e in range(6)] and curves[0] == curves[1]
    assert segment_epochs(tmp_path) == [[0, next_epoch], [next_epoch, 6]]


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
    """CE whose loss is NaN at training step 2 (a stand-in for a diverging run)."""

    calls = 0

    def compute_loss(self, outputs, targets):
        loss = F.cross_entropy(outputs["logits"], targets)
        self.calls += 1
        return loss * float("nan") if self.calls == 3 else loss


@pytest.fixture()
def nan_method():
    METHODS.add("nan_at_step_two", NaNAtStepTwo)
    yield "nan_at_step_two"
    METHODS._entries.pop("nan_at_step_two")
    METHODS._meta.pop("nan_at_step_two")


@pytest.mark.parametrize("engine", ["lightning", "fast"])
def test_nonfinite_loss_stops_the_run_naming_the_step(
    nan_method: str, engine: str, tmp_path: Path, capsys
) -> None:
    assert main(["run", *small_run(tmp_path, f"method={nan_method}", f"train.engine={engine}")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step 2" in err and nan_method in err
    assert not (tmp_path / "r" / "record.json").exists()


@pytest.mark.parametrize("engine", ["lightning", "fast"])
def test_nonfinite_loss_skipped_when_configured(nan_method: str, engine: str, tmp_path: Path) -> None:
    args = small_run(tmp_path, f"method={nan_method}", "train.nonfinite_loss=skip", f"train.engine={engine}")
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


def test_test_curve_scores_every_epoch_without_changing_the_run(tmp_path: Path) -> None:
    """``evaluation.test_curve=true`` (a fast-engine diagnostic, chosen by ``train.engine=auto`` on a
    CPU too): test top-1 after every epoch in the log and the record; the last epoch's value is the
    record's test top-1; training and metrics are those of the same run without it."""
    assert main(["run", *small_run(tmp_path, "evaluation.test_curve=true")]) == 0
    record = json.loads((tmp_path / "r" / "record.json").read_text())
    assert record["timing"]["engine"] == "fast"
    curve = record["diagnostics"]["test_top1_by_epoch"]
    assert list(curve) == ["0", "1", "2"] and curve["2"] == record["metrics"]["test"]["top1"]
    best = record["diagnostics"]["best_epoch"]
    assert curve[str(best)] == max(curve.values())
    assert record["diagnostics"]["best_minus_last"] == curve[str(best)] - curve["2"] >= 0
    log = pd.read_csv(tmp_path / "r" / "train_log.csv")
    assert log["diag/test_top1"].tolist() == list(curve.values())

    plain = tmp_path / "plain"
    assert main(["run", *small_run(plain, "train.engine=fast")]) == 0
    assert json.loads((plain / "r" / "record.json").read_text())["diagnostics"] is None
    plain_log = pd.read_csv(plain / "r" / "train_log.csv")
    assert plain_log["train/loss_epoch"].tolist() == log["train/loss_epoch"].tolist()
    assert_same_metrics(record_metrics(plain), record["metrics"])


def test_test_curve_needs_the_fast_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = small_run(tmp_path, "evaluation.test_curve=true", "train.engine=lightning")
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert "evaluation.test_curve=true" in err and "train.engine=lightning" in err
    assert not (tmp_path / "r").exists()


def test_best_val_keeps_the_segments_of_the_whole_training(tmp_path: Path) -> None:
    """Evaluating ``best.ckpt`` loads a checkpoint but trains nothing: the record still names the
    process that trained all epochs, and the checkpoint of the best epoch is beside last.ckpt."""
    args = small_run(tmp_path, "evaluation.checkpoint=best_val", "evaluation.val_every_n_epochs=1")
    assert main(["run", *args]) == 0
    assert segment_epochs(tmp_path) == [[0, 3]]
    assert {p.name for p in (tmp_path / "r" / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
