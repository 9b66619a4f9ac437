"""Which commit a run record names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lt_bench.reports.provenance import UNRECORDED_SEGMENT, checkpoint_segments, git_state, training_segment


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
