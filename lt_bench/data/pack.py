"""One-file packs of a dataset's decoded splits (``lt-bench data pack``).

A pack holds the long-tailed training split, the validation and test splits, class names and the
dataset's provenance as NumPy arrays (optionally zip-compressed), so a GPU machine can load it with
one read and without the source files. Pointing ``dataset.root`` at a ``.npz`` pack loads it; the
pack must have been written for the same dataset, imbalance factor and subset seed.

An *encoded* pack (``lt-bench data pack --encoded``) keeps each image's source file bytes (the
CIFAR-10 JPEG copy: about a third of the decoded size) and decodes them when it is read; the SHA-256 of
the decoded pixels is stored, so a machine whose decoder gives other pixels is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from lt_bench.data import cifar
from lt_bench.data.base import ArraySplit, LTDataset
from lt_bench.data.cache import cached_arrays, fingerprint
from lt_bench.data.images import decode_image_file
from lt_bench.errors import DataError

PACK_VERSION = 1
ENCODED_PACK_VERSION = 2  # splits as the source files' bytes (``--encoded``)


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in info.items()}


def source_files(dataset: LTDataset) -> dict[str, list[str]]:
    """The image file of every training, validation and test image, in split order; only for
    datasets read from an image folder (``source`` ``folder:<root>``)."""
    source = str(dataset.info.get("source", ""))
    if not source.startswith("folder:") or dataset.train_indices is None:
        raise DataError(
            f"an encoded pack keeps the source image files' bytes, so only CIFAR-LT read from an image "
            f"folder copy can be packed so; '{dataset.name}' was read from '{source or 'arrays'}': pack "
            "it without --encoded"
        )
    root = Path(source.split(":", 1)[1])
    listing = {
        s: [p for p, _, _ in cifar.list_folder(root / s, dataset.class_names)] for s in ("train", "test")
    }
    files = {"train": [listing["train"][i] for i in dataset.train_indices], "test": listing["test"]}
    if dataset.val is not None:
        files["val"] = [listing["train"][i] for i in dataset.info["val_indices"]]
    return files


def _pixels_digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _encode(files: list[str], images: np.ndarray, split_name: str) -> dict[str, np.ndarray]:
    """The files' bytes, concatenated, and their offsets; the files must decode to ``images``."""
    blobs = [Path(f).read_bytes() for f in files]
    if not np.array_equal(np.stack([decode_image_file(io.BytesIO(b)) for b in blobs]), images):
        raise DataError(
            f"the {split_name} image files no longer decode to the loaded pixels (changed on disk?); "
            "delete ~/.cache/lt-bench and pack again"
        )
    offsets = np.cumsum([0, *(len(b) for b in blobs)], dtype=np.int64)
    return {"encoded": np.frombuffer(b"".join(blobs), dtype=np.uint8), "offsets": offsets}


def _decode(encoded: np.ndarray, offsets: np.ndarray, workers: int = 8) -> np.ndarray:
    data = encoded.tobytes()
    pieces = [io.BytesIO(data[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(decode_image_file, pieces)))


def _decode_splits(
    path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], names: list[str]
) -> dict[str, np.ndarray]:
    """``<split>_images`` of an encoded pack, each checked against the digest written with it."""
    decoded = {}
    for name in names:
        images = _decode(arrays[f"{name}_encoded"], arrays[f"{name}_offsets"])
        if _pixels_digest(images) != meta["pixels_sha256"][name]:
            raise DataError(
                f"pack '{path}': its {name} images decode to other pixels on this machine than where "
                f"it was written (another JPEG decoder; Pillow {PIL.__version__}); write a pack "
                "without --encoded for this machine"
            )
        decoded[f"{name}_images"] = images
    return decoded


def write_pack(dataset: LTDataset, path: Path, compress: bool = False, encoded: bool = False) -> Path:
    """Write ``dataset`` (array splits only) to ``path`` atomically; ``compress`` trades speed for size,
    ``encoded`` keeps the source files' bytes instead of decoded pixels."""
    arrays: dict[str, np.ndarray] = {}
    files = source_files(dataset) if encoded else {}
    digests: dict[str, str] = {}
    for split_name in ("train", "val", "test"):
        split = getattr(dataset, split_name)
        if split is None:
            continue
        if not isinstance(split, ArraySplit):
            raise DataError(
                f"dataset '{dataset.name}' reads image files; only in-memory datasets "
                "(CIFAR-LT, Fashion-MNIST-LT) can be packed"
            )
        if encoded:
            for key, value in _encode(files[split_name], split.images, split_name).items():
                arrays[f"{split_name}_{key}"] = value
            digests[split_name] = _pixels_digest(split.images)
        else:
            arrays[f"{split_name}_images"] = split.images
        arrays[f"{split_name}_targets"] = split.targets
    if dataset.train_indices is not None:
        arrays["train_indices"] = dataset.train_indices
    meta = {
        "version": ENCODED_PACK_VERSION if encoded else PACK_VERSION,
        "name": dataset.name,
        "class_names": dataset.class_names,
        "info": _jsonable(dataset.info),
        "pixels_sha256": digests,
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
    if meta.get("version", PACK_VERSION) > ENCODED_PACK_VERSION:
        raise DataError(
            f"pack '{path}' has format version {meta['version']}, newer than this lt-bench reads "
            f"({ENCODED_PACK_VERSION}); update lt-bench or pack the dataset again with this one"
        )
    info = meta["info"]
    for key, wanted in (expect or {}).items():
        found = meta["name"] if key == "name" else info.get(key)
        if found != wanted:
            raise DataError(
                f"pack '{path}' was written for {key}={found}, not {wanted}; "
                "pack the dataset again with the same settings"
            )

    encoded = [name for name in ("train", "val", "test") if f"{name}_encoded" in arrays]
    if encoded:  # decoded once per pack file into the user's cache
        key = f"pack-{fingerprint([(str(path.resolve()), path.stat())])}"
        arrays.update(cached_arrays(key, lambda: _decode_splits(path, arrays, meta, encoded)))

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
