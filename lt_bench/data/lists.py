"""ImageNet-LT, Places-LT and iNaturalist-2018 from the official list files (methods.md §0.3).

A list file holds one ``<relative/path> <integer label>`` per line, separated by one space; the path
is relative to an image root chosen by the user (``dataset.root``). The lists are those published
with OLTR / Decoupling (facebookresearch/classifier-balancing ``data/``), also shipped by RIDE, SADE
and MDCS. Images are not opened here: a missing image fails when it is read
(``lt_bench.data.images.FileImageDataset``), so building iNaturalist's 437k-image split stays fast.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.data.base import FileSplit, LTDataset
from lt_bench.errors import DataError

LIST_FORMAT = "'<relative/path> <integer label>' separated by one space"
LISTS_SOURCE = (
    "the official lists come with facebookresearch/classifier-balancing (data/) "
    "and Vanint/SADE-AgnosticLT (data_txt/)"
)
OPEN_LABEL = -1
_LABEL = re.compile(r"-?[0-9]+")


def parse_list_file(path: str | Path, allow_open: bool = False) -> tuple[list[str], np.ndarray]:
    """Read a list file into relative paths and int64 labels.

    ``allow_open`` accepts the label -1 of the open-set lists (``*_open.txt``). Trailing whitespace
    and trailing blank lines are tolerated; any other deviation raises ``DataError``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"list file {path} not found; {LISTS_SOURCE}: set dataset.list_dir to the folder that holds them"
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark is not part of the first path
        lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip().split("\n")
    except UnicodeDecodeError as err:
        raise DataError(
            f"list file {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
            "re-copy the official list file"
        ) from err
    if lines == [""]:
        raise DataError(f"list file {path} is empty; re-copy the official list file")
    paths: list[str] = []
    labels = np.empty(len(lines), dtype=np.int64)
    for i, line in enumerate(lines):
        fields = line.rstrip().split(" ")
        label = _parse_label(fields, allow_open)
        if label is None:
            raise DataError(
                f"{path} line {i + 1}: expected {LIST_FORMAT}"
                f"{' (label >= 0, or -1 in an open-set list)' if allow_open else ' (label >= 0)'}, "
                f"got {line[:120]!r}; fix the line or re-copy the official list file"
            )
        paths.append(fields[0])
        labels[i] = label
    return paths, labels


def _parse_label(fields: list[str], allow_open: bool) -> int | None:
    """The label of a list line split on spaces, or None when the line is malformed."""
    if len(fields) != 2 or not fields[0] or not _LABEL.fullmatch(fields[1]):
        return None
    label = int(fields[1])
    if label > np.iinfo(np.int64).max or (label < 0 and not (allow_open and label == OPEN_LABEL)):
        return None
    return label


def load_list_dataset(
    name: str,
    root: str | Path,
    list_dir: str | Path,
    train_list: str,
    val_list: str | None,
    test_list: str,
    num_classes: int,
    info: Mapping[str, Any] | None = None,
) -> LTDataset:
    """Build train / val / test ``FileSplit``s from list files in ``list_dir`` against ``root``.

    ``val_list=None`` gives no validation split. ``info`` is merged into ``LTDataset.info``, which
    also records the list files used and their sha256.
    """
    root, list_dir = Path(root), Path(list_dir)
    files = {"train": train_list, "val": val_list, "test": test_list}
    splits: dict[str, FileSplit] = {}
    for split, file in files.items():
        if file is None:
            continue
        paths, labels = parse_list_file(list_dir / file)
        _check_labels(list_dir / file, labels, num_classes, name)
        splits[split] = FileSplit(root, paths, labels)
    _check_root(root, splits.values())
    return LTDataset(
        name=name,
        class_names=_class_names(splits.values(), num_classes),
        train=splits["train"],
        val=splits.get("val"),
        test=splits["test"],
        info={
            "image_root": str(root),
            "lists": {s: str(list_dir / f) for s, f in files.items() if f is not None},
            "list_sha256": {s: _sha256(list_dir / f) for s, f in files.items() if f is not None},
            **(info or {}),
        },
    )


def _check_labels(path: Path, labels: np.ndarray, num_classes: int, name: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(
            f"{path} line {bad[0] + 1}: label {labels[bad[0]]} is outside [0, {num_classes}) for "
            f"{name}; use the list files that belong to {name}"
        )


def _check_root(root: Path, splits: Iterable[FileSplit]) -> None:
    """The root must exist and hold the top-level folders that the list paths start with."""
    tops = sorted({p.split("/", 1)[0] for split in splits for p in split.paths})
    wanted = ", ".join(f"{t}/" for t in tops)
    if not root.is_dir():
        raise DataError(f"image root {root} not found; set dataset.root=<folder that holds {wanted}>")
    missing = [t for t in tops if not (root / t).is_dir()]
    if missing:
        raise DataError(
            f"image root {root} has no {', '.join(f'{t}/' for t in missing)} folder; "
            f"set dataset.root=<folder that holds {wanted}>"
        )


def _class_names(splits: Iterable[FileSplit], num_classes: int) -> list[str]:
    """Class names from the folders in the list paths (``train/<name>/file.jpg`` -> ``<name>``).

    ImageNet gives WordNet ids, Places scene names, iNaturalist ``<supercategory>/<id>``. A class
    that no list mentions is named by its index.
    """
    names = [str(c) for c in range(num_classes)]
    for split in splits:
        labels, first = np.unique(split.targets, return_index=True)
        for label, index in zip(labels, first, strict=True):
            folder = split.paths[index].split("/")[1:-1]
            if folder:
                names[label] = "/".join(folder)
    return names


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class ListDatasetSpec:
    """The official list files and class count of one list-file dataset."""

    name: str
    num_classes: int
    train_list: str
    val_list: str | None
    test_list: str
    note: str = ""

    def load(self, root: str | Path, list_dir: str | Path) -> LTDataset:
        info = {"note": self.note} if self.note else None
        return load_list_dataset(
            self.name,
            root,
            list_dir,
            self.train_list,
            self.val_list,
            self.test_list,
            self.num_classes,
            info,
        )


IMAGENET_LT = ListDatasetSpec(
    "imagenet_lt", 1000, "ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt"
)
PLACES_LT = ListDatasetSpec(
    "places_lt", 365, "Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt"
)
INATURALIST2018 = ListDatasetSpec(
    "inaturalist2018",
    8142,
    "iNaturalist18_train.txt",
    None,
    "iNaturalist18_val.txt",
    note=(
        "test = the official iNaturalist-2018 val set, as every paper reports (methods.md §0.3); "
        "there is no validation split, because the test set must never select checkpoints"
    ),
)
LIST_DATASETS = {spec.name: spec for spec in (IMAGENET_LT, PLACES_LT, INATURALIST2018)}
