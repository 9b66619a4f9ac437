"""CIFAR-10/100-LT through the registered datasets: torchvision pickles, image folders, errors.

CIFAR-100 is not available on these machines, so the tests write it in torchvision's on-disk format
(``cifar-100-python/{train,test,meta}``) with cheap images that encode their own index and label.
The expected subsets come from an inline transcription of LDAM-DRW's generator, not from our code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lt_bench.data import cifar
from lt_bench.data.base import LTDataset
from lt_bench.errors import ConfigError, DataError
from lt_bench.registry import DATASETS

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR10_IF100_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
IMB_FACTOR = {100: 0.01, 50: 0.02, 10: 0.1}  # LDAM-DRW's ``--imb_factor`` = 1 / IF


# --- independent reference: LDAM-DRW IMBALANCECIFAR10/100 --------------------------------------------


def ldam_counts(img_max: int, cls_num: int, imb_factor: float) -> list[int]:
    return [int(img_max * (imb_factor ** (i / (cls_num - 1.0)))) for i in range(cls_num)]


def ldam_permutations(targets: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Each class's indices after ``np.random.seed(seed)`` + one ``np.random.shuffle`` per class."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        targets_np = np.array(targets, dtype=np.int64)
        perms = []
        for the_class in np.unique(targets_np):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            perms.append(idx)
        return perms
    finally:
        np.random.set_state(saved)


def ldam_train_indices(targets: np.ndarray, counts: list[int]) -> np.ndarray:
    return np.concatenate([perm[:n] for perm, n in zip(ldam_permutations(targets), counts, strict=True)])


# --- synthetic torchvision-format CIFAR -------------------------------------------------------------


def encoded_rows(targets: np.ndarray, is_test: bool) -> np.ndarray:
    """``[N, 3072]`` rows (torchvision order: R plane, G plane, B plane, each row-major 32x32).

    R pixels (0,0), (0,1), (0,2) hold the index in little-endian bytes, R (0,3) is 1 for test rows,
    G (0,0) holds the label and B (31,31) is 255, so the channel/row layout can be checked.
    """
    n = len(targets)
    index = np.arange(n)
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[:, 0], data[:, 1], data[:, 2] = index % 256, (index // 256) % 256, index // 65536
    data[:, 3] = int(is_test)
    data[:, 1024] = targets
    data[:, 3071] = 255
    return data


def decoded_index(images: np.ndarray) -> np.ndarray:
    """The index stored by ``encoded_rows`` in HWC images."""
    pixels = images[:, 0, :3, 0].astype(np.int64)
    return pixels[:, 0] + 256 * pixels[:, 1] + 65536 * pixels[:, 2]


def dump(path: Path, obj: dict) -> None:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=4)


def write_cifar100(root: Path, train_targets: np.ndarray, test_targets: np.ndarray) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    for name, targets in (("train", train_targets), ("test", test_targets)):
        dump(
            base / name,
            {
                b"data": encoded_rows(targets, name == "test"),
                b"fine_labels": targets.tolist(),
                b"coarse_labels": (targets // 5).tolist(),
            },
        )
    dump(base / "meta", {b"fine_label_names": [f"class{c:02d}".encode() for c in range(100)]})
    return root


def write_cifar10(root: Path, train_targets: np.ndarray, test_targets: np.ndarray, batches: int = 5) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rows = encoded_rows(train_targets, False)
    for i, part in enumerate(np.array_split(np.arange(len(train_targets)), batches), start=1):
        dump(base / f"data_batch_{i}", {b"data": rows[part], b"labels": train_targets[part].tolist()})
    dump(base / "test_batch", {b"data": encoded_rows(test_targets, True), b"labels": test_targets.tolist()})
    dump(base / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES]})
    return root


def interleaved(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


@pytest.fixture(scope="session")
def cifar100_pickles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    train_targets, test_targets = interleaved(100, 500, 1), interleaved(100, 100, 2)
    root = write_cifar100(tmp_path_factory.mktemp("cifar100"), train_targets, test_targets)
    return root, train_targets, test_targets


@pytest.fixture(scope="session")
def cifar10_pickles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    train_targets, test_targets = interleaved(10, 5000, 3), interleaved(10, 1000, 4)
    root = write_cifar10(tmp_path_factory.mktemp("cifar10"), train_targets, test_targets)
    return root, train_targets, test_targets


@pytest.fixture(scope="module")
def cifar100_lt(cifar100_pickles: tuple[Path, np.ndarray, np.ndarray]) -> dict[int, LTDataset]:
    root = cifar100_pickles[0]
    return {f: DATASETS.get("cifar100_lt")(root=str(root), imbalance_factor=f) for f in (100, 50, 10)}


# --- CIFAR-100-LT (synthetic pickles) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("imbalance", "size", "groups"),
    [(100, 10_847, (35, 35, 30)), (50, 12_608, (41, 41, 18)), (10, 19_573, (69, 31, 0))],
)
def test_cifar100_lt_sizes_and_shot_groups(
    cifar100_lt: dict[int, LTDataset], imbalance: int, size: int, groups: tuple[int, int, int]
) -> None:
    ds = cifar100_lt[imbalance]
    assert ds.name == "cifar100_lt" and ds.num_classes == 100
    assert len(ds.train) == size
    assert ds.train_counts.tolist() == ldam_counts(500, 100, IMB_FACTOR[imbalance])
    shot = ds.shot_groups()
    assert (len(shot["many"]), len(shot["medium"]), len(shot["few"])) == groups
    assert ds.imbalance_factor == imbalance  # 500/5, 500/10, 500/50


@pytest.mark.parametrize("imbalance", [100, 50, 10])
def test_cifar100_lt_subset_is_the_ldam_subset(
    cifar100_lt: dict[int, LTDataset],
    cifar100_pickles: tuple[Path, np.ndarray, np.ndarray],
    imbalance: int,
) -> None:
    _, train_targets, _ = cifar100_pickles
    ds = cifar100_lt[imbalance]
    expected = ldam_train_indices(train_targets, ldam_counts(500, 100, IMB_FACTOR[imbalance]))
    assert np.array_equal(ds.train_indices, expected)
    # the images and labels are those of the source at these indices
    assert np.array_equal(decoded_index(ds.train.images), expected)
    assert np.array_equal(ds.train.targets, train_targets[expected])
    assert np.array_equal(ds.train.images[:, 0, 0, 1], train_targets[expected])  # label in G (0,0)
    assert np.all(ds.train.images[:, 0, 3, 0] == 0)  # training rows
    assert np.all(ds.train.images[:, 31, 31, 2] == 255)  # B plane, last pixel
    assert ds.train.images.shape[1:] == (32, 32, 3) and ds.train.images.dtype == np.uint8


@pytest.mark.parametrize("imbalance", [100, 50, 10])
def test_cifar100_lt_validation_split(
    cifar100_lt: dict[int, LTDataset],
    cifar100_pickles: tuple[Path, np.ndarray, np.ndarray],
    imbalance: int,
) -> None:
    _, train_targets, _ = cifar100_pickles
    ds = cifar100_lt[imbalance]
    counts = ldam_counts(500, 100, IMB_FACTOR[imbalance])
    missing = [c for c in range(100) if 500 - counts[c] < 20]
    assert 0 in missing and ds.info["val_missing_classes"] == missing
    if imbalance == 100:
        assert missing == [0]
    val_idx = np.asarray(ds.info["val_indices"])
    assert set(val_idx.tolist()).isdisjoint(ds.train_indices.tolist())
    assert len(set(val_idx.tolist())) == len(val_idx)
    # balanced: 20 per class over the classes that can supply them, none from the others
    val_counts = np.bincount(ds.val.targets, minlength=100)
    assert all(val_counts[c] == (0 if c in missing else 20) for c in range(100))
    # taken from each class's unused images, in the generator's shuffled order
    perms = ldam_permutations(train_targets)
    expected = np.concatenate([perms[c][counts[c] : counts[c] + 20] for c in range(100) if c not in missing])
    assert np.array_equal(val_idx, expected)
    assert np.array_equal(decoded_index(ds.val.images), val_idx)
    assert np.array_equal(ds.val.targets, train_targets[val_idx])


def test_cifar100_test_set_is_untouched(
    cifar100_lt: dict[int, LTDataset], cifar100_pickles: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    _, _, test_targets = cifar100_pickles
    for ds in cifar100_lt.values():
        assert len(ds.test) == 10_000
        assert np.array_equal(ds.test.targets, test_targets)
        assert np.array_equal(decoded_index(ds.test.images), np.arange(10_000))
        assert np.all(ds.test.images[:, 0, 3, 0] == 1)
        assert ds.class_names == [f"class{c:02d}" for c in range(100)]
        assert ds.info["source"].startswith("pickle:")


def test_cifar100_root_may_be_the_pickle_folder_itself(
    cifar100_pickles: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    root, train_targets, _ = cifar100_pickles
    ds = DATASETS.get("cifar100_lt")(root=str(root / "cifar-100-python"), imbalance_factor=100)
    assert np.array_equal(ds.train_indices, ldam_train_indices(train_targets, ldam_counts(500, 100, 0.01)))


def test_cifar100_imbalance_below_one_raises(cifar100_pickles: tuple[Path, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ConfigError, match="imbalance_factor"):
        DATASETS.get("cifar100_lt")(root=str(cifar100_pickles[0]), imbalance_factor=0.5)


# --- CIFAR-10-LT (synthetic pickles, five training batches) -----------------------------------------


def test_cifar10_lt_from_pickles(cifar10_pickles: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, train_targets, test_targets = cifar10_pickles
    ds = DATASETS.get("cifar10_lt")(root=str(root), imbalance_factor=100)
    assert ds.class_names == CIFAR10_NAMES
    assert len(ds.train) == 12_406 and ds.train_counts.tolist() == CIFAR10_IF100_COUNTS
    expected = ldam_train_indices(train_targets, CIFAR10_IF100_COUNTS)
    assert np.array_equal(ds.train_indices, expected)
    # the five batches are concatenated in order: the stored index is the global position
    assert np.array_equal(decoded_index(ds.train.images), expected)
    assert np.array_equal(ds.train.targets, train_targets[expected])
    assert len(ds.test) == 10_000 and np.array_equal(ds.test.targets, test_targets)
    assert np.array_equal(decoded_index(ds.test.images), np.arange(10_000))
    shot = ds.shot_groups()
    assert (len(shot["many"]), len(shot["medium"]), len(shot["few"])) == (8, 2, 0)
    # val_per_class=500: class 0 has no unused image; every other class has at least 2,003
    assert ds.info["val_missing_classes"] == [0] and len(ds.val) == 9 * 500


# --- real CIFAR-10 (JPEG folder copy) ---------------------------------------------------------------


@pytest.fixture(scope="session")
def real_cifar10_if100(cifar10_jpg: Path, tmp_path_factory: pytest.TempPathFactory) -> LTDataset:
    """Decodes the 60,000 JPEG files once per session into the session's cache folder.

    The folder is the one the autouse ``_isolated_cache`` fixture sets for every test, so later
    loads in this session (CLI tests included) read the decoded cache.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LT_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        return DATASETS.get("cifar10_lt")(root=str(cifar10_jpg), imbalance_factor=100)


def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: object) -> np.ndarray:
        raise AssertionError(f"decoded {path}: the decoded cache was not used")

    monkeypatch.setattr(cifar, "decode_image_file", refuse)


def test_real_cifar10_lt_if100(real_cifar10_if100: LTDataset) -> None:
    ds = real_cifar10_if100
    assert ds.class_names == CIFAR10_NAMES
    assert len(ds.train) == 12_406
    assert ds.train_counts.tolist() == CIFAR10_IF100_COUNTS
    assert len(ds.test) == 10_000
    assert np.bincount(ds.test.targets).tolist() == [1000] * 10
    assert ds.shot_groups()["few"] == []
    # the folder's full training set is laid out in class blocks of 5,000, in file-number order
    full_targets = np.repeat(np.arange(10), 5000)
    assert np.array_equal(ds.train_indices, ldam_train_indices(full_targets, CIFAR10_IF100_COUNTS))
    assert np.array_equal(ds.train.targets, ds.train_indices // 5000)
    assert ds.train.images.shape == (12_406, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.info["source"].startswith("folder:")


def test_real_cifar10_images_are_the_indexed_files(real_cifar10_if100: LTDataset, cifar10_jpg: Path) -> None:
    """Labels follow the standard class order: decode a few files by hand and compare."""
    ds = real_cifar10_if100
    for pos in (0, 1, 4999, 5000, 9000, 12_405):
        j = int(ds.train_indices[pos])
        label = int(ds.train.targets[pos])
        path = cifar10_jpg / "train" / CIFAR10_NAMES[label] / f"{j % 5000:04d}.jpg"
        assert label == j // 5000
        with Image.open(path) as image:
            assert np.array_equal(ds.train.images[pos], np.asarray(image.convert("RGB")))
    for k in (0, 999, 1000, 5555, 9999):
        path = cifar10_jpg / "test" / CIFAR10_NAMES[k // 1000] / f"{k % 1000:04d}.jpg"
        assert ds.test.targets[k] == k // 1000
        with Image.open(path) as image:
            assert np.array_equal(ds.test.images[k], np.asarray(image.convert("RGB")))


def test_real_cifar10_other_factors_nest_and_use_the_cache(
    real_cifar10_if100: LTDataset, cifar10_jpg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_decoding(monkeypatch)  # the fixture decoded the files once; these loads must not
    load = DATASETS.get("cifar10_lt")
    if50 = load(root=str(cifar10_jpg), imbalance_factor=50)
    if10 = load(root=str(cifar10_jpg), imbalance_factor=10)
    assert len(if50.train) == 13_996 and len(if10.train) == 20_431
    assert if50.train_counts.tolist() == ldam_counts(5000, 10, 0.02)
    assert if10.train_counts.tolist() == ldam_counts(5000, 10, 0.1)
    assert len(if50.test) == len(if10.test) == 10_000
    assert np.array_equal(if10.test.images, real_cifar10_if100.test.images)
    for c in range(10):
        small = real_cifar10_if100.train_indices[real_cifar10_if100.train.targets == c]
        large = if10.train_indices[if10.train.targets == c]
        assert set(small.tolist()) <= set(large.tolist())
        assert np.array_equal(large[: len(small)], small)


def test_real_cifar10_second_load_is_identical_and_cached(
    real_cifar10_if100: LTDataset, cifar10_jpg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_decoding(monkeypatch)
    again = DATASETS.get("cifar10_lt")(root=str(cifar10_jpg), imbalance_factor=100)
    assert np.array_equal(again.train.images, real_cifar10_if100.train.images)
    assert np.array_equal(again.train_indices, real_cifar10_if100.train_indices)


# --- image-folder copies and errors -------------------------------------------------------------------


def write_image_folder(root: Path, train: int = 3, test: int = 2, suffix: str = ".png") -> Path:
    """``train/<class>/N.png`` and ``test/<class>/N.png``; pixel (0,0) holds (class, number, split)."""
    for split, n in (("train", train), ("test", test)):
        for label, name in enumerate(CIFAR10_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(n):
                pixels = np.full((32, 32, 3), 40, dtype=np.uint8)
                pixels[0, 0] = (label, number, split == "test")
                stem = str(number) if suffix == ".png" else f"{number:04d}"
                Image.fromarray(pixels).save(folder / f"{stem}{suffix}")
    return root


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_image_folder_order_and_labels(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "small", train=12, test=2)
    train, test, names = cifar.load_folder(root, CIFAR10_NAMES, 10)
    assert names == CIFAR10_NAMES
    assert train.targets.tolist() == np.repeat(np.arange(10), 12).tolist()
    # class blocks, each in numeric file order (2.png before 10.png)
    assert train.images[:, 0, 0, 0].tolist() == train.targets.tolist()
    assert train.images[:, 0, 0, 1].tolist() == list(range(12)) * 10
    assert np.all(train.images[:, 0, 0, 2] == 0) and np.all(test.images[:, 0, 0, 2] == 1)
    assert test.targets.tolist() == np.repeat(np.arange(10), 2).tolist()


def test_small_image_folder_through_the_registry(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "small", train=4, test=2)
    ds = DATASETS.get("cifar10_lt")(root=str(root), imbalance_factor=4)
    assert ds.train_counts.tolist() == ldam_counts(4, 10, 0.25)
    assert np.array_equal(ds.train_indices, ldam_train_indices(np.repeat(np.arange(10), 4), ds.train_counts))
    assert ds.val is None and ds.info["val_missing_classes"] == list(range(10))


def test_missing_root_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        DATASETS.get("cifar10_lt")(root=str(tmp_path / "nowhere"))
    message = one_line(excinfo)
    assert "does not exist" in message and "dataset.root" in message


@pytest.mark.parametrize("num_classes", [10, 100])
def test_folder_without_either_layout(tmp_path: Path, num_classes: int) -> None:
    (tmp_path / "train").mkdir()  # train/ alone is not the image-folder layout
    with pytest.raises(DataError) as excinfo:
        DATASETS.get(f"cifar{num_classes}_lt")(root=str(tmp_path))
    message = one_line(excinfo)
    folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    assert "not found" in message and folder in message and "train/<class>/" in message


def test_corrupt_jpeg_in_image_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "small", train=3, test=1, suffix=".jpg")
    bad = root / "train" / "cat" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError) as excinfo:
        cifar.load_folder(root, CIFAR10_NAMES, 10)
    message = one_line(excinfo)
    assert str(bad) in message and "re-copy" in message
    with pytest.raises(DataError, match="0001.jpg"):
        DATASETS.get("cifar10_lt")(root=str(root), imbalance_factor=1)


def test_image_folder_with_wrong_class_folders(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "small", train=1, test=1)
    (root / "train" / "cat").rename(root / "train" / "kitten")
    with pytest.raises(DataError, match="expected") as excinfo:
        cifar.load_folder(root, CIFAR10_NAMES, 10)
    one_line(excinfo)


def test_image_folder_with_mixed_sizes(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "small", train=2, test=1)
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(root / "train" / "dog" / "1.png")
    with pytest.raises(DataError, match="32x32") as excinfo:
        cifar.load_folder(root, CIFAR10_NAMES, 10)
    one_line(excinfo)


def test_truncated_pickle(tmp_path: Path) -> None:
    targets = np.repeat(np.arange(100), 2)
    root = write_cifar100(tmp_path / "c100", targets, targets)
    train = root / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[: os.path.getsize(train) // 2])
    with pytest.raises(DataError) as excinfo:
        DATASETS.get("cifar100_lt")(root=str(root), imbalance_factor=1)
    message = one_line(excinfo)
    assert "corrupt CIFAR file" in message and str(train) in message and "re-extract" in message


def test_missing_pickle_batch(tmp_path: Path) -> None:
    targets = np.repeat(np.arange(10), 5)
    root = write_cifar10(tmp_path / "c10", targets, targets)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3") as excinfo:
        DATASETS.get("cifar10_lt")(root=str(root), imbalance_factor=1)
    assert "missing CIFAR file" in one_line(excinfo)


# --- the decoded cache -----------------------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"not a zip archive" * 8)
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped byte inside the first member's data: a CRC mismatch
        path.write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])


@pytest.mark.parametrize(
    "how",
    [
        "garbage",
        "truncated",
        "bad_crc",
    ],
)
def test_damaged_cache_entry_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.setenv("LT_BENCH_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "small", train=2, test=1)
    first = cifar.load_folder(root, CIFAR10_NAMES, 10)[0]
    (entry,) = (tmp_path / "cache" / "decoded").glob("*.npz")
    damage(entry, how)
    again = cifar.load_folder(root, CIFAR10_NAMES, 10)[0]
    assert np.array_equal(again.images, first.images)
    assert np.array_equal(again.targets, first.targets)


def test_changed_file_invalidates_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LT_BENCH_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "small", train=2, test=1)
    cifar.load_folder(root, CIFAR10_NAMES, 10)
    pixels = np.full((32, 32, 3), 200, dtype=np.uint8)
    Image.fromarray(pixels).save(root / "train" / "ship" / "1.png")
    train = cifar.load_folder(root, CIFAR10_NAMES, 10)[0]
    assert np.array_equal(train.images[8 * 2 + 1], pixels)  # ship = class 8, second file
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npz"))) == 2
