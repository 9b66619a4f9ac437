"""A third-party method registers through the ``lt_bench.methods`` entry-point group and runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import pytest

from lt_bench.cli import main
from lt_bench.config import compose, list_group
from lt_bench.data.fashion_mnist import DEBIAN_DIR
from lt_bench.errors import ConfigError
from lt_bench.methods.base import BaseMethod
from lt_bench.registry import METHODS

PLUGIN_MODULE = "my_plugin_mod"
PLUGIN_SOURCE = '''
"""A tiny lt-bench method plugin: plain cross-entropy on a linear head."""

import torch.nn.functional as F

from lt_bench.methods.base import BaseMethod


class MyMethod(BaseMethod):
    default_config = {"classifier": "linear"}

    def compute_loss(self, outputs, targets):
        return F.cross_entropy(outputs["logits"], targets)
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install the distribution ``my-plugin`` (module + dist-info) on sys.path; undo it afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    dist = site / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[lt_bench.methods]\nmy_plugin = {PLUGIN_MODULE}:MyMethod\n")
    monkeypatch.syspath_prepend(str(site))

    loaded = METHODS._loaded
    METHODS._loaded = False  # so the next lookup reads the entry points again
    try:
        yield
    finally:
        METHODS._entries.pop("my_plugin", None)
        METHODS._meta.pop("my_plugin", None)
        METHODS._loaded = loaded
        sys.modules.pop(PLUGIN_MODULE, None)


@pytest.fixture
def fashion_mnist() -> Path:
    if not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        message = f"Fashion-MNIST not found at {DEBIAN_DIR} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return DEBIAN_DIR


def test_plugin_is_registered(plugin) -> None:
    cls = METHODS.get("my_plugin")
    assert issubclass(cls, BaseMethod) and cls.__name__ == "MyMethod"
    assert METHODS.meta("my_plugin") == {"plugin": f"{PLUGIN_MODULE}:MyMethod"}
    assert "my_plugin" in METHODS.names() and "my_plugin" in METHODS
    # the built-ins are still there
    assert {"ce", "balanced_softmax", "ldam_drw"} <= set(METHODS.names())
    assert "my_plugin" in list_group("method")


def test_plugin_config_comes_from_default_config(plugin) -> None:
    cfg = compose(["method=my_plugin", "dataset=fashion_mnist_lt", "backbone=small_cnn"])
    assert dict(cfg.method) == {"classifier": "linear", "name": "my_plugin"}
    with pytest.raises(ConfigError, match="method.classifier"):
        compose(["method=my_plugin", "method.tau=1"])  # unknown key lists the plugin's keys


def test_plugin_listed_by_cli(plugin, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("my_plugin") and f"plugin {PLUGIN_MODULE}:MyMethod" in line for line in lines)


def test_unknown_without_plugin() -> None:
    """Without the plugin installed the name is unknown (the fixture cleaned up after itself)."""
    assert "my_plugin" not in list_group("method")


@pytest.mark.slow
def test_plugin_run_writes_a_record(plugin, fashion_mnist: Path, tmp_path: Path) -> None:
    args = [
        "run",
        "method=my_plugin",
        "dataset=fashion_mnist_lt",
        "backbone=small_cnn",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.batch_size=32",
        "data.eval_batch_size=50",
        f"output_dir={tmp_path / 'runs'}",
        "logger.progress_bar=false",
    ]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    assert code == 0, err.getvalue()
    records = list((tmp_path / "runs").rglob("record.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["method"] == record["method_name"] == "my_plugin"
    assert record["config"]["method"] == {"classifier": "linear", "name": "my_plugin"}
    assert record["dataset"] == "fashion_mnist_lt"
    assert len(record["train_counts"]) == 10 and record["train_counts"][0] == 6000
    assert record["metrics"]["test"]["num_samples"] == 50
    assert record["timing"]["epochs"] == 1
    assert "| fashion_mnist_lt | 100 | my_plugin | 1 |" in out.getvalue()
    assert sys.modules[PLUGIN_MODULE].MyMethod is METHODS.get("my_plugin")
