"""CIFAR-10 / CIFAR-100 sources: torchvision's on-disk format or an image-folder copy.

Both return the *full* balanced training and test sets; ``lt_bench.data.catalog`` then draws the
long-tailed subset. In the image-folder form ``train/<class>/NNNN.jpg`` the file number stands for
the original order within the class, so the full training set is laid out in class blocks, each in
file-number order.
"""

from __future__ import annotations

import os
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lt_bench.data.base import ArraySplit
from lt_bench.data.cache import cached_arrays, fingerprint
from lt_bench.data.images import decode_image_file
from lt_bench.errors import DataError

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

_PICKLE_LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
         "batches.meta", b"labels", b"label_names"),
    100: ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}  # fmt: skip
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def find_source(root: Path, num_classes: int) -> str:
    """``"pickle"`` or ``"folder"``, whichever layout ``root`` holds; a DataError otherwise."""
    folder = _PICKLE_LAYOUT[num_classes][0]
    if (root / folder).is_dir() or root.name == folder:
        return "pickle"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folder"
    if not root.exists():
        raise DataError(
            f"CIFAR-{num_classes} data root '{root}' does not exist; set dataset.root to the folder "
            f"that holds '{folder}/' (torchvision format) or train/<class>/ and test/<class>/ images, "
            "or add dataset.download=true on a machine with internet access"
        )
    raise DataError(
        f"CIFAR-{num_classes} files not found under '{root}': expected '{folder}/' (torchvision "
        "format) or train/<class>/ and test/<class>/ image folders; put them there or add "
        "dataset.download=true on a machine with internet access"
    )


def download(root: Path, num_classes: int) -> None:
    """Download through torchvision (needs internet)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if num_classes == 10 else CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # torchvision raises URLError, RuntimeError, ... offline
        raise DataError(
            f"could not download CIFAR-{num_classes} into '{root}' ({exc}); copy the torchvision "
            "archive's extracted folder there by hand or check the network"
        ) from exc


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing CIFAR file '{path}'; re-extract the torchvision CIFAR archive there")
    try:
        with path.open("rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except Exception as exc:
        raise DataError(
            f"corrupt CIFAR file '{path}' ({type(exc).__name__}); re-extract the archive"
        ) from exc


def load_pickle(root: Path, num_classes: int) -> tuple[ArraySplit, ArraySplit, list[str]]:
    """Read torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` folder."""
    folder, train_files, test_files, meta_file, label_key, names_key = _PICKLE_LAYOUT[num_classes]
    base = root if root.name == folder else root / folder

    def read(files: list[str]) -> ArraySplit:
        images, labels = [], []
        for name in files:
            entry = _unpickle(base / name)
            try:
                data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels.append(np.asarray(entry[label_key], dtype=np.int64))
            except (KeyError, ValueError) as exc:
                raise DataError(
                    f"CIFAR file '{base / name}' lacks the expected arrays ({exc}); re-extract it"
                ) from exc
            images.append(data.transpose(0, 2, 3, 1))
        return ArraySplit(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))

    meta = _unpickle(base / meta_file)
    class_names = [n.decode() if isinstance(n, bytes) else n for n in meta[names_key]]
    return read(train_files), read(test_files), class_names


def _file_number(name: str, folder: Path) -> int:
    match = re.search(r"(\d+)", name)
    if match is None:
        raise DataError(
            f"image file '{folder / name}' has no number in its name; name files NNNN.jpg in original order"
        )
    return int(match.group(1))


def list_folder(split_dir: Path, class_names: list[str]) -> list[tuple[str, int, os.stat_result]]:
    """``(path, label, stat)`` per image, class by class, in file-number order."""
    present = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if sorted(class_names) != present:
        raise DataError(
            f"class folders in '{split_dir}' are {present[:12]}, expected {class_names}; "
            "name one folder per class"
        )
    files = []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        entries = [e for e in os.scandir(folder) if os.path.splitext(e.name)[1].lower() in _IMAGE_SUFFIXES]
        entries.sort(key=lambda e: _file_number(e.name, folder))
        files.extend((e.path, label, e.stat()) for e in entries)
    return files


def load_folder(
    root: Path, class_names: list[str] | None, num_classes: int, workers: int = 8
) -> tuple[ArraySplit, ArraySplit, list[str]]:
    """Read ``train/<class>/NNNN.jpg`` and ``test/<class>/NNNN.jpg``, through the decoded cache.

    Without ``class_names`` the label order is the sorted folder names (CIFAR-100's own order).
    """
    root = root.resolve()
    if class_names is None:
        class_names = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(class_names) != num_classes:
        raise DataError(
            f"'{root / 'train'}' has {len(class_names)} class folders, expected {num_classes}; "
            "point dataset.root at the right copy"
        )
    listing = {split: list_folder(root / split, class_names) for split in ("train", "test")}
    key = f"folder-{fingerprint([(p, st) for split in listing.values() for p, _, st in split])}"

    def build() -> dict[str, np.ndarray]:
        with ThreadPoolExecutor(workers) as pool:
            arrays = {}
            for split, entries in listing.items():
                decoded = list(pool.map(decode_image_file, [p for p, _, _ in entries]))
                shapes = {a.shape for a in decoded}
                if len(shapes) != 1:
                    raise DataError(
                        f"images under '{root / split}' differ in size {sorted(shapes)[:3]}; "
                        "all CIFAR images must be 32x32 RGB"
                    )
                arrays[f"{split}_images"] = np.stack(decoded)
                arrays[f"{split}_targets"] = np.array([y for _, y, _ in entries], dtype=np.int64)
            return arrays

    arrays = cached_arrays(key, build)
    train = ArraySplit(arrays["train_images"], arrays["train_targets"])
    test = ArraySplit(arrays["test_images"], arrays["test_targets"])
    return train, test, list(class_names)
