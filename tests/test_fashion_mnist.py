"""Fashion-MNIST IDX reading: Debian's files, torchvision's layout, corrupt files."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from lt_bench.data.base import ArraySplit
from lt_bench.data.fashion_mnist import (
    DEBIAN_DIR,
    FASHION_MNIST_CLASSES,
    FILES,
    load_fashion_mnist,
)
from lt_bench.errors import DataError


@pytest.fixture(scope="module")
def debian() -> tuple[ArraySplit, ArraySplit]:
    """The splits read from Debian's package: skipped where absent, a failure on CI."""
    if not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        message = f"Fashion-MNIST not found at {DEBIAN_DIR} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return load_fashion_mnist()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = b"".join(n.to_bytes(4, "big") for n in (magic, *array.shape))
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_small(folder: Path, gz: bool = False, n_train: int = 12, n_test: int = 5) -> dict:
    rng = np.random.default_rng(1)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(n_test)[::-1] % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        write_idx(folder / (FILES[key] + (".gz" if gz else "")), array, gz)
    return arrays


def error_message(root: Path) -> str:
    with pytest.raises(DataError) as excinfo:
        load_fashion_mnist(str(root))
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_debian_copy(debian: tuple[ArraySplit, ArraySplit]) -> None:
    train, test = debian
    assert train.images.shape == (60_000, 28, 28, 1) and test.images.shape == (10_000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.targets.dtype == np.int64
    assert np.array_equal(np.bincount(train.targets), np.full(10, 6_000))
    assert np.array_equal(np.bincount(test.targets), np.full(10, 1_000))
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_debian_copy_matches_torchvision_reader(
    debian: tuple[ArraySplit, ArraySplit], tmp_path: Path
) -> None:
    for name in FILES.values():
        with gzip.open(DEBIAN_DIR / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    for split, prefix in zip(debian, ("train", "t10k"), strict=True):
        images = read_image_file(str(tmp_path / f"{prefix}-images-idx3-ubyte")).numpy()
        labels = read_label_file(str(tmp_path / f"{prefix}-labels-idx1-ubyte")).numpy()
        assert np.array_equal(split.images[..., 0], images)
        assert np.array_equal(split.targets, labels)
    plain_train, _ = load_fashion_mnist(str(tmp_path))  # the decompressed files read the same
    assert np.array_equal(plain_train.images, debian[0].images)


@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_layout(tmp_path: Path, gz: bool) -> None:
    arrays = write_small(tmp_path / "FashionMNIST" / "raw", gz=gz)
    train, test = load_fashion_mnist(str(tmp_path))
    assert np.array_equal(train.images[..., 0], arrays["train_images"])
    assert np.array_equal(test.targets, arrays["test_labels"]) and test.images.shape == (5, 28, 28, 1)
    if not gz:  # the test's own writer agrees with torchvision's reader
        raw = tmp_path / "FashionMNIST" / "raw"
        torch_images = read_image_file(str(raw / FILES["train_images"])).numpy()
        assert np.array_equal(torch_images, arrays["train_images"])


def test_root_itself_comes_first(tmp_path: Path) -> None:
    write_small(tmp_path / "FashionMNIST" / "raw", n_train=3)
    write_small(tmp_path, gz=True, n_train=7)
    train, _ = load_fashion_mnist(tmp_path)
    assert len(train) == 7


def test_nothing_found(tmp_path: Path) -> None:
    message = error_message(tmp_path)
    assert str(tmp_path) in message and str(tmp_path / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message and "dataset.download=true" in message


def test_incomplete_folder(tmp_path: Path) -> None:
    write_small(tmp_path)
    (tmp_path / FILES["test_labels"]).unlink()
    assert "lacks t10k-labels-idx1-ubyte" in error_message(tmp_path)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: data[:-100], "truncated or corrupt"),
        (lambda data: b"\x00\x00\x08\x01" + data[4:], "magic number 2049, expected 2051"),
        (lambda data: data[:6], "truncated or corrupt"),
    ],
)
def test_corrupt_idx(tmp_path: Path, damage, expected: str) -> None:
    write_small(tmp_path)
    path = tmp_path / FILES["train_images"]
    path.write_bytes(damage(path.read_bytes()))
    message = error_message(tmp_path)
    assert str(path) in message and expected in message


def test_corrupt_gzip(tmp_path: Path) -> None:
    write_small(tmp_path, gz=True)
    path = tmp_path / (FILES["test_images"] + ".gz")
    path.write_bytes(path.read_bytes()[:-30])
    assert "cannot be read" in error_message(tmp_path)
    path.write_bytes(b"not gzip")
    assert "cannot be read" in error_message(tmp_path)


def test_inconsistent_files(tmp_path: Path) -> None:
    write_small(tmp_path)
    write_idx(tmp_path / FILES["test_labels"], np.zeros(4, dtype=np.uint8))
    assert "holds 5 images but" in error_message(tmp_path)
    write_idx(tmp_path / FILES["test_labels"], np.full(5, 10, dtype=np.uint8))
    assert "label 10" in error_message(tmp_path)
    write_idx(tmp_path / FILES["test_images"], np.zeros((5, 32, 32), dtype=np.uint8))
    assert "not 28x28" in error_message(tmp_path)


def test_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeFashionMNIST:
        def __init__(self, root: str, download: bool) -> None:
            write_small(Path(root) / "FashionMNIST" / "raw", gz=True)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    train, test = load_fashion_mnist(str(tmp_path), download=True)
    assert (len(train), len(test)) == (12, 5)


def test_download_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(root: str, download: bool) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="download into .* failed"):
        load_fashion_mnist(str(tmp_path), download=True)
    monkeypatch.setattr("lt_bench.data.fashion_mnist.DEBIAN_DIR", tmp_path / "no-debian-package")
    with pytest.raises(DataError, match="needs a folder"):
        load_fashion_mnist(None, download=True)
