"""Run records: one JSON file per run plus per-class arrays; tables are built only from these.

``<output_dir>/<run_id>/record.json`` holds the resolved config, seeds, metrics, class counts and
shot groups, per-class accuracy, provenance and timing. ``per_class.csv`` has one row per class;
``arrays.npz`` the training-subset indices and the confusion matrices (C <= 1000).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lt_bench.errors import LTBenchError

RECORD_FILE = "record.json"
SCHEMA_VERSION = 1


def _clean(value: Any) -> Any:
    """JSON-safe copy: NumPy scalars/arrays to Python, NaN to None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(text)
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates 0600; records are meant to be shared
    os.replace(tmp.name, path)


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    path = run_dir / RECORD_FILE
    write_atomic(path, json.dumps(_clean(record), indent=1, allow_nan=False) + "\n")
    return path


def write_per_class(
    run_dir: Path,
    class_names: list[str],
    train_counts: np.ndarray,
    results: dict[str, dict[str, Any]],
) -> Path:
    """``per_class.csv``: class, name, train count, and per evaluation set its test count and recall."""
    columns: dict[str, Any] = {
        "class": range(len(class_names)),
        "name": class_names,
        "train_count": train_counts,
    }
    for split, result in results.items():
        columns[f"{split}_count"] = result["class_counts"]
        columns[f"{split}_acc"] = result["per_class"]
    table = pd.DataFrame(columns)
    path = run_dir / "per_class.csv"
    write_atomic(path, table.to_csv(index=False))
    return path


def write_arrays(run_dir: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = run_dir / "arrays.npz"
    with tempfile.NamedTemporaryFile(dir=run_dir, suffix=".tmp", delete=False) as tmp:
        np.savez_compressed(tmp, **arrays)
    os.replace(tmp.name, path)
    return path


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LTBenchError(
            f"run record '{path}' is unreadable ({exc}); delete the run folder and run it again"
        ) from exc
    if not isinstance(record, dict) or "metrics" not in record:
        raise LTBenchError(
            f"'{path}' is not an lt-bench run record; point at record.json files or their folders"
        )
    return record


def find_records(paths: list[Path]) -> list[Path]:
    """``record.json`` files given directly or found under the given folders."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob(RECORD_FILE)))
        else:
            raise LTBenchError(f"'{path}' does not exist; give run folders or record.json files")
    return found
