"""Which commit a run record names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lt_bench.reports.provenance import git_state


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
