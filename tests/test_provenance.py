"""Which commit a run record names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lt_bench.reports.provenance import (
    UNRECORDED_SEGMENT,
    checkpoint_segments,
    git_state,
    process_seconds,
    training_segment,
)


def test_commit_variable_wins_over_a_stale_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copied checkout whose .git is stale names the commit it was copied at through the variable."""
    monkeypatch.setenv("LT_BENCH_GIT_COMMIT", "abc123")
    monkeypatch.setenv("LT_BENCH_GIT_DIRTY", "0")
    assert git_state() == {"commit": "abc123", "dirty": False}


def test_without_the_variable_git_names_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LT_BENCH_GIT_COMMIT", raising=False)
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    assert git_state()["commit"] == head.stdout.strip()


def test_checkpoint_segments_of_a_checkpoint_that_predates_them() -> None:
    """A checkpoint written before segments were recorded: one segment of unknown commit and device
    for the epochs it holds; recorded segments come back as copies."""
    (legacy,) = checkpoint_segments({"next_epoch": 184}, 184)
    assert legacy["epochs"] == [0, 184] and legacy["git_commit"] is None and legacy["device"] is None
    assert legacy["note"] == UNRECORDED_SEGMENT
    recorded = [{"git_commit": "abc", "git_dirty": False, "device": "NVIDIA H200", "epochs": [0, 5]}]
    copies = checkpoint_segments({"training_segments": recorded}, 5)
    assert copies == recorded and copies[0]["epochs"] is not recorded[0]["epochs"]


def test_training_segment_names_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LT_BENCH_GIT_COMMIT", "f" * 40)
    monkeypatch.delenv("LT_BENCH_GIT_DIRTY", raising=False)
    segment = training_segment("cpu", 7)
    assert segment["git_commit"] == "f" * 40 and segment["git_dirty"] is False
    assert segment["epochs"] == [7, 7] and segment["device"].startswith("cpu (")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux /proc")
def test_process_seconds_counts_from_the_process_start() -> None:
    """A child that sleeps 1.5 s before asking has run at least that long (clock ticks: 0.01 s)."""
    code = "import time; time.sleep(1.5); import lt_bench.reports.provenance as p; print(p.process_seconds())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 1.49 <= float(child.stdout) < 30
    assert process_seconds() > 0
