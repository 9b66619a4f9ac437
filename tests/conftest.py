"""Shared fixtures: where the real data lives, and how its absence is reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("LT_BENCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
CIFAR10_JPG = SHARED_DATA / "cifar10-jpg"
SPLITS = SHARED_DATA / "splits"


def require(path: Path, what: str) -> Path:
    """``path`` if it exists; otherwise fail under CI (``CI=true``) and skip elsewhere."""
    if path.exists():
        return path
    message = f"{what} not found at {path}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must have it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def cifar10_jpg() -> Path:
    return require(CIFAR10_JPG, "CIFAR-10 JPEG copy (../shared/data/cifar10-jpg)")


@pytest.fixture(scope="session")
def splits_dir() -> Path:
    return require(SPLITS, "official split lists (../shared/data/splits)")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the decoded cache of each test session in a temporary folder."""
    monkeypatch.setenv("LT_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
