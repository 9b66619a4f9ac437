"""One-file packs of a dataset's decoded splits (``lt-bench data pack``).

A pack holds the long-tailed training split, the validation and test splits, class names and the
dataset's provenance as NumPy arrays (optionally zip-compressed), so a GPU machine can load it with
one read and without the source files. Pointing ``dataset.root`` at a ``.npz`` pack loads it; the
pack must have been written for the same dataset, imbalance factor and subset seed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.data.base import ArraySplit, LTDataset
from lt_bench.errors import DataError

PACK_VERSION = 1


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in info.items()}


def write_pack(dataset: LTDataset, path: Path, compress: bool = False) -> Path:
    """Write ``dataset`` (array splits only) to ``path`` atomically; ``compress`` trades speed for size."""
    arrays: dict[str, np.ndarray] = {}
    for split_name in ("train", "val", "test"):
        split = getattr(dataset, split_name)
        if split is None:
            continue
        if not isinstance(split, ArraySplit):
            raise DataError(
                f"dataset '{dataset.name}' reads image files; only in-memory datasets "
                "(CIFAR-LT, Fashion-MNIST-LT) can be packed"
            )
        arrays[f"{split_name}_images"] = split.images
        arrays[f"{split_name}_targets"] = split.targets
    if dataset.train_indices is not None:
        arrays["train_indices"] = dataset.train_indices
    meta = {
        "version": PACK_VERSION,
        "name": dataset.name,
        "class_names": dataset.class_names,
        "info": _jsonable(dataset.info),
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        (np.savez_compressed if compress else np.savez)(tmp, **arrays)
    os.replace(tmp.name, path)
    return path


def read_pack(path: Path, expect: dict[str, Any] | None = None) -> LTDataset:
    """Load a pack; ``expect`` maps ``name`` / ``imbalance_factor`` / ``subset_seed`` to check."""
    if not path.is_file():
        raise DataError(f"pack file '{path}' not found; write it with `lt-bench data pack`")
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(arrays.pop("meta").tobytes())
    except Exception as exc:
        raise DataError(f"pack file '{path}' is unreadable ({type(exc).__name__}); write it again") from exc
    info = meta["info"]
    for key, wanted in (expect or {}).items():
        found = meta["name"] if key == "name" else info.get(key)
        if found != wanted:
            raise DataError(
                f"pack '{path}' was written for {key}={found}, not {wanted}; "
                "pack the dataset again with the same settings"
            )

    def split(name: str) -> ArraySplit | None:
        if f"{name}_images" not in arrays:
            return None
        return ArraySplit(arrays[f"{name}_images"], arrays[f"{name}_targets"])

    info["source"] = f"pack:{path.resolve()}"
    return LTDataset(
        name=meta["name"],
        class_names=meta["class_names"],
        train=split("train"),
        val=split("val"),
        test=split("test"),
        train_indices=arrays.get("train_indices"),
        info=info,
    )
