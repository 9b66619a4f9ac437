"""``lt-bench sweep --mps``: the CUDA MPS daemon around a sweep."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lt_bench.cli import main
from lt_bench.sweep import mps_daemon

FAKE_CONTROL = """#!/bin/sh
# stands in for nvidia-cuda-mps-control: records its arguments, stdin and pipe folder
echo "args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY stdin=$(cat -)" >> "{log}"
"""


def test_mps_without_the_control_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["sweep", "cifar10_lt/ce", "seeds=0", "--mps"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nvidia-cuda-mps-control" in err and "without --mps" in err


def test_mps_daemon_starts_and_quits_around_the_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    log = tmp_path / "calls.log"
    control = tmp_path / "bin" / "nvidia-cuda-mps-control"
    control.parent.mkdir()
    control.write_text(FAKE_CONTROL.format(log=log))
    control.chmod(control.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{control.parent}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    with mps_daemon(True):
        pipe = os.environ["CUDA_MPS_PIPE_DIRECTORY"]  # what the sweep's child processes inherit
        assert Path(pipe).is_dir()
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    start, stop = log.read_text().splitlines()
    assert start.startswith("args=-d ") and f"pipe={pipe}" in start
    assert stop.startswith("args= ") and stop.endswith("stdin=quit")
