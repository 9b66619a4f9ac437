"""The built-in datasets, registered by name; each factory takes its config keys as arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lt_bench.data import cifar, lists
from lt_bench.data.base import ArraySplit, LTDataset
from lt_bench.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from lt_bench.data.pack import read_pack
from lt_bench.data.profiles import class_counts, long_tailed_indices
from lt_bench.data.splits import validation_from_unused
from lt_bench.registry import register_dataset


def long_tailed_from_balanced(
    name: str,
    train: ArraySplit,
    test: ArraySplit,
    class_names: list[str],
    imbalance_factor: float,
    profile: str,
    subset_seed: int,
    val_per_class: int,
) -> LTDataset:
    """Draw the standard long-tailed subset (methods.md §0.1) and a validation split from the rest."""
    num_classes = len(class_names)
    n_max = int(np.bincount(train.targets, minlength=num_classes).min())
    counts = class_counts(n_max, num_classes, imbalance_factor, profile)
    subset, unused = long_tailed_indices(train.targets, counts, subset_seed)
    val_idx, val_missing = validation_from_unused(unused, val_per_class)
    return LTDataset(
        name=name,
        class_names=class_names,
        train=train.subset(subset),
        val=train.subset(val_idx) if len(val_idx) else None,
        test=test,
        train_indices=subset,
        info={
            "imbalance_factor": float(imbalance_factor),
            "profile": profile,
            "subset_seed": subset_seed,
            "val_per_class": val_per_class,
            "val_indices": val_idx,
            "val_missing_classes": val_missing,
        },
    )


def _read_matching_pack(
    path: Path, name: str, imbalance_factor: float, profile: str, subset_seed: int, val_per_class: int
) -> LTDataset:
    """A pack, refused unless it was written with the same subset and validation settings."""
    expect = {
        "name": name,
        "imbalance_factor": float(imbalance_factor),
        "profile": profile,
        "subset_seed": subset_seed,
        "val_per_class": val_per_class,
    }
    return read_pack(path, expect=expect)


def _cifar_lt(
    num_classes: int,
    root: str,
    imbalance_factor: float,
    profile: str,
    subset_seed: int,
    val_per_class: int,
    download: bool,
) -> LTDataset:
    name = f"cifar{num_classes}_lt"
    path = Path(root).expanduser()
    if path.suffix == ".npz":
        return _read_matching_pack(path, name, imbalance_factor, profile, subset_seed, val_per_class)
    if download and not path.exists():
        cifar.download(path, num_classes)
    source = cifar.find_source(path, num_classes)
    if source == "pickle":
        train, test, class_names = cifar.load_pickle(path, num_classes)
    else:
        names = cifar.CIFAR10_CLASSES if num_classes == 10 else None
        train, test, class_names = cifar.load_folder(path, names, num_classes)
    ds = long_tailed_from_balanced(
        name, train, test, class_names, imbalance_factor, profile, subset_seed, val_per_class
    )
    ds.info["source"] = f"{source}:{path.resolve()}"
    return ds


@register_dataset("cifar10_lt", paper="Cao et al., LDAM-DRW, NeurIPS 2019")
def cifar10_lt(
    root: str = "data/cifar10",
    imbalance_factor: float = 100,
    profile: str = "exp",
    subset_seed: int = 0,
    val_per_class: int = 500,
    download: bool = False,
) -> LTDataset:
    return _cifar_lt(10, root, imbalance_factor, profile, subset_seed, val_per_class, download)


@register_dataset("cifar100_lt", paper="Cao et al., LDAM-DRW, NeurIPS 2019")
def cifar100_lt(
    root: str = "data/cifar100",
    imbalance_factor: float = 100,
    profile: str = "exp",
    subset_seed: int = 0,
    val_per_class: int = 20,
    download: bool = False,
) -> LTDataset:
    return _cifar_lt(100, root, imbalance_factor, profile, subset_seed, val_per_class, download)


@register_dataset("fashion_mnist_lt", paper="Xiao et al., Fashion-MNIST, 2017")
def fashion_mnist_lt(
    root: str | None = None,
    imbalance_factor: float = 100,
    profile: str = "exp",
    subset_seed: int = 0,
    val_per_class: int = 500,
    download: bool = False,
) -> LTDataset:
    if root is not None and Path(root).suffix == ".npz":
        return _read_matching_pack(
            Path(root), "fashion_mnist_lt", imbalance_factor, profile, subset_seed, val_per_class
        )
    train, test = load_fashion_mnist(root, download)
    return long_tailed_from_balanced(
        "fashion_mnist_lt",
        train,
        test,
        list(FASHION_MNIST_CLASSES),
        imbalance_factor,
        profile,
        subset_seed,
        val_per_class,
    )


def _list_factory(spec: lists.ListDatasetSpec):
    def factory(root: str = f"data/{spec.name}", list_dir: str | None = None) -> LTDataset:
        """Official list files in ``list_dir`` (default: ``root``) against the image ``root``."""
        return spec.load(root, list_dir if list_dir is not None else root)

    factory.__name__ = spec.name
    return factory


for _spec, _paper in (
    (lists.IMAGENET_LT, "Liu et al., OLTR, CVPR 2019"),
    (lists.PLACES_LT, "Liu et al., OLTR, CVPR 2019"),
    (lists.INATURALIST2018, "Van Horn et al., iNaturalist, CVPR 2018"),
):
    register_dataset(_spec.name, paper=_paper)(_list_factory(_spec))
