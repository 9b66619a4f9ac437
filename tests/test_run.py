"""End-to-end ``lt-bench run`` on the real CIFAR-10-LT (1 short CPU epoch): the record and its files.

The first real-data load decodes 60k JPEG files into the session's decoded cache (conftest keeps it
in the session's base temporary folder); later runs read the cache.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import lightning
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from lt_bench.cli import main
from lt_bench.config import compose

pytestmark = pytest.mark.slow

METHODS = ("ce", "balanced_softmax", "ldam_drw")
# n_i = int(5000 * 0.01 ** (i / 9)), methods.md §0.1
TRAIN_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
LT_METRIC_KEYS = {
    "top1",
    "calibration_bins",
    "balanced_acc",
    "many",
    "medium",
    "few",
    "worst_class",
    "zero_recall_classes",
    "harmonic_mean",
    "geometric_mean",
    "macro_precision",
    "ece",
    "mce",
    "nll",
    "per_class",
    "num_samples",
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def run_args(method: str, root: Path, out: Path) -> list[str]:
    return [
        "run",
        f"experiment=cifar10_lt/{method}",
        f"dataset.root={root}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=2",
        "data.batch_size=32",
        f"output_dir={out}",
        "logger.progress_bar=false",
    ]


def cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory):
    """The session's decoded cache (the same folder conftest's autouse fixture uses per test).

    Module-scoped fixtures run before function-scoped ones, so it is set here as well.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LT_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="module")
def completed(
    shared_cache, cifar10_jpg: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[Path, list[str], str]]:
    """``completed(method)`` runs the method once per module; returns (record path, args, stdout)."""
    out = tmp_path_factory.mktemp("runs")
    done: dict[str, tuple[Path, list[str], str]] = {}

    def get(method: str) -> tuple[Path, list[str], str]:
        if method not in done:
            args = run_args(method, cifar10_jpg, out)
            code, stdout, stderr = cli(args)
            assert code == 0, stderr
            match = re.search(r"^record: (.+)$", stdout, re.MULTILINE)
            assert match, stdout
            done[method] = (Path(match.group(1)), args, stdout)
        return done[method]

    return get


def ldam_subset_indices(counts: list[int]) -> np.ndarray:
    """LDAM-DRW ``gen_imbalanced_data``: seed 0, per class shuffle ascending indices, keep n_i.

    The train split is class-major (class folders in label order, files 0000..4999).
    """
    targets = np.repeat(np.arange(10), 5000)
    rng = np.random.RandomState(0)  # the same stream as np.random.seed(0) + np.random.shuffle
    kept = []
    for c, n in enumerate(counts):
        idx = np.where(targets == c)[0]
        rng.shuffle(idx)
        kept.append(idx[:n])
    return np.concatenate(kept)


@pytest.mark.parametrize("method", METHODS)
def test_run_writes_a_complete_record(method: str, completed, cifar10_jpg: Path) -> None:
    path, args, stdout = completed(method)
    assert path.name == "record.json" and path.is_file()
    run_dir = path.parent
    record = json.loads(path.read_text())

    # identity and config
    assert record["method"] == record["method_name"] == method
    assert record["dataset"] == "cifar10_lt" and record["imbalance_factor"] == 100
    assert record["experiment"] == f"cifar10_lt/{method}"
    assert record["seed"] == 0 and record["subset_seed"] == 0
    assert record["checkpoint"] == "last"
    assert record["uses_test_data_for_training"] is False
    assert record["config"] == OmegaConf.to_container(compose(args[1:]))
    assert record["config"]["trainer"]["limit_train_batches"] == 3
    assert record["run_id"] == run_dir.name
    assert re.fullmatch(rf"cifar10_lt-if100-{method}-seed0-[0-9a-f]{{8}}", record["run_id"])

    # data
    assert record["class_names"] == CIFAR10_CLASSES
    assert [int(5000 * 0.01 ** (i / 9)) for i in range(10)] == TRAIN_COUNTS
    assert record["train_counts"] == TRAIN_COUNTS
    assert record["num_train"] == sum(TRAIN_COUNTS) == 12406
    assert record["shot_groups"] == {"many": list(range(8)), "medium": [8, 9], "few": []}
    assert record["val_missing_classes"] == [0]  # class 0 keeps all 5000 of its images
    assert record["num_val"] == 9 * 500

    # metrics: limit_test_batches=2 at eval batch 100 -> 200 test images; 1 val batch -> 100
    test = record["metrics"]["test"]
    assert set(test) >= LT_METRIC_KEYS
    assert test["num_samples"] == 200 and sum(test["class_counts"]) == 200
    assert len(test["per_class"]) == 10
    assert 0.0 <= test["top1"] <= 1.0 and test["ece"] >= 0.0 and test["nll"] > 0.0
    assert test["few"] is None  # CIFAR-10-LT has no few-shot class: NaN is written as null
    val = record["metrics"]["val"]
    assert set(val) >= LT_METRIC_KEYS
    assert val["num_samples"] == 100
    assert val["class_counts"][0] == 0

    # provenance
    prov = record["provenance"]
    assert {"git_commit", "git_dirty", "versions", "device", "started", "finished"} <= set(prov)
    assert prov["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", prov["git_commit"])
    assert prov["git_dirty"] in (True, False, None)
    assert {"python", "torch", "lightning", "lt-bench"} <= set(prov["versions"])
    assert prov["versions"]["torch"] and prov["versions"]["lightning"]
    assert isinstance(prov["device"], str) and prov["device"]
    started, finished = (datetime.fromisoformat(prov[k]) for k in ("started", "finished"))
    assert started <= finished and started.tzinfo is not None

    # timing
    timing = record["timing"]
    assert timing["epochs"] == 1
    for key in ("train_seconds", "eval_seconds", "train_images_per_second"):
        assert timing[key] > 0, key
    assert timing["process_seconds"] >= timing["train_seconds"] + timing["eval_seconds"]
    # 3 training batches of 32 images in train_seconds
    assert timing["train_images_per_second"] == pytest.approx(96 / timing["train_seconds"], rel=0.01)

    # per_class.csv
    per_class = pd.read_csv(run_dir / "per_class.csv")
    assert list(per_class["class"]) == list(range(10))
    assert list(per_class["name"]) == CIFAR10_CLASSES
    assert list(per_class["train_count"]) == TRAIN_COUNTS
    assert list(per_class["test_count"]) == test["class_counts"]
    np.testing.assert_allclose(
        per_class["test_acc"].to_numpy(), np.array(test["per_class"], dtype=float), equal_nan=True
    )

    # arrays.npz
    with np.load(run_dir / "arrays.npz") as arrays:
        indices = arrays["train_indices"]
        assert indices.shape == (12406,)
        np.testing.assert_array_equal(indices, ldam_subset_indices(TRAIN_COUNTS))
        assert arrays["confusion_test"].shape == (10, 10)
        assert arrays["confusion_test"].sum() == 200
        np.testing.assert_array_equal(arrays["confusion_test"].sum(axis=1), test["class_counts"])

    # the command also printed the one-row table
    assert f"| cifar10_lt | 100 | {method} | 1 |" in stdout


def test_rerun_reports_complete_and_does_not_retrain(completed, monkeypatch: pytest.MonkeyPatch) -> None:
    path, args, _ = completed("ce")
    before = path.read_bytes(), path.stat().st_mtime_ns

    def no_fit(*_args, **_kwargs):
        raise AssertionError("a completed run must not train again")

    monkeypatch.setattr(lightning.Trainer, "fit", no_fit)
    code, stdout, stderr = cli(args)
    assert code == 0, stderr
    assert "already complete" in stdout
    assert f"record: {path}" in stdout
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_missing_data_root_exits_2(tmp_path: Path) -> None:
    args = run_args("ce", tmp_path / "no-such-cifar", tmp_path / "out")
    code, stdout, stderr = cli(args)
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("lt-bench: error:")
    assert "no-such-cifar" in stderr and "dataset.root" in stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("record.json"))


def test_unknown_method_exits_2(tmp_path: Path) -> None:
    code, stdout, stderr = cli(["run", "method=nope", f"output_dir={tmp_path}"])
    assert code == 2
    assert stderr.count("\n") == 1
    assert "unknown method 'nope'" in stderr and "ldam_drw" in stderr
    assert not list(tmp_path.iterdir())
