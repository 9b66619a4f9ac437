"""A decoded uint8 cache under the user's cache folder, keyed by the source files' fingerprint.

Decoding 60,000 CIFAR JPEG files takes tens of seconds; reading the cached arrays takes well under
a second. The cache never lives beside the data (which may be read-only).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """``$LT_BENCH_CACHE``, else ``$XDG_CACHE_HOME/lt-bench``, else ``~/.cache/lt-bench``."""
    if os.environ.get("LT_BENCH_CACHE"):
        return Path(os.environ["LT_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lt-bench"


def fingerprint(files: list[tuple[str, os.stat_result]]) -> str:
    """Hash of each file's path, size and modification time: changes when any file changes."""
    digest = hashlib.sha1()
    for path, stat in files:
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def cached_arrays(key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load the arrays stored under ``key``, or build, store (atomically) and return them."""
    path = cache_dir() / "decoded" / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz.tmp", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)
    return arrays
