"""Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017) from its four original IDX files, gzipped or not.

The files are looked for in ``root``, then in ``root/FashionMNIST/raw`` (torchvision's layout); with
no ``root``, in Debian's ``/usr/share/datasets/fashion-mnist`` (``apt-get install
dataset-fashion-mnist``). The IDX format is parsed here with NumPy and checked (magic number,
dimensions, length), so a corrupt or truncated file raises ``DataError``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from lt_bench.data.base import ArraySplit
from lt_bench.errors import DataError

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {3: 2051, 1: 2049}  # unsigned-byte IDX files: 0x0803 (images), 0x0801 (labels)


def load_fashion_mnist(
    root: str | Path | None = None, download: bool = False
) -> tuple[ArraySplit, ArraySplit]:
    """Full train (60,000) and test (10,000) splits: images ``[N, 28, 28, 1]`` uint8, int64 labels.

    ``download=True`` fetches the files with torchvision into ``root`` when none are found.
    """
    folders = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root else [DEBIAN_DIR]
    files = _find(folders)
    if files is None and download:
        files = _download(root)
    if files is None:
        raise DataError(
            f"Fashion-MNIST IDX files not found in {', '.join(map(str, folders))}; run "
            "'apt-get install dataset-fashion-mnist' (read when dataset.root=null), or set "
            "dataset.root to a folder with "
            f"{', '.join(f'{f}[.gz]' for f in FILES.values())}, or set dataset.download=true "
            "when online"
        )
    train, test = (_split(files[f"{s}_images"], files[f"{s}_labels"]) for s in ("train", "test"))
    return train, test


def _find(folders: list[Path]) -> dict[str, Path] | None:
    """The four files from the first folder that has any of them (plain files preferred)."""
    for folder in folders:
        found = {
            key: path
            for key, name in FILES.items()
            for path in (folder / f"{name}.gz", folder / name)  # the plain file wins
            if path.is_file()
        }
        if found:
            missing = [name for key, name in FILES.items() if key not in found]
            if missing:
                raise DataError(
                    f"Fashion-MNIST folder {folder} lacks {', '.join(missing)} (plain or .gz); "
                    "copy all four IDX files there"
                )
            return found
    return None


def _download(root: str | Path | None) -> dict[str, Path] | None:
    if not root:
        raise DataError("dataset.download=true needs a folder to download into; set dataset.root as well")
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(root, download=True)
    except (OSError, RuntimeError) as err:
        raise DataError(
            f"Fashion-MNIST download into {root} failed ({' '.join(str(err).split())}); "
            "check the network, or install dataset-fashion-mnist and unset dataset.root"
        ) from err
    return _find([Path(root) / "FashionMNIST" / "raw"])


def _split(images_path: Path, labels_path: Path) -> ArraySplit:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, not 28x28; "
            "point dataset.root at the Fashion-MNIST files"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels; "
            "re-copy both files"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(
            f"{labels_path} holds label {labels.max()}, but Fashion-MNIST has 10 classes; re-copy the file"
        )
    return ArraySplit(images[..., None], labels.astype(np.int64))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array of ``ndim`` dimensions (``.gz`` is decompressed)."""
    fix = "re-copy the file (or reinstall dataset-fashion-mnist)"
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} cannot be read ({err}); {fix}") from err
    header = 4 + 4 * ndim
    magic = int.from_bytes(data[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise DataError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes (magic number {magic}, "
            f"expected {_IDX_MAGIC[ndim]}); {fix}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DataError(
            f"{path} has {len(data)} bytes, but its header {shape} needs "
            f"{header + int(np.prod(shape))} (truncated or corrupt); {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()
