"""Official list files (ImageNet-LT, Places-LT, iNaturalist-2018) and image-file decoding."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lt_bench.data.base import FileSplit
from lt_bench.data.images import FileImageDataset, decode_image_file, open_image
from lt_bench.data.lists import (
    IMAGENET_LT,
    INATURALIST2018,
    LIST_DATASETS,
    PLACES_LT,
    load_list_dataset,
    parse_list_file,
)
from lt_bench.errors import DataError
from lt_bench.metrics.shots import shot_groups

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def splits_dir() -> Path:
    """``../shared/data/splits``: skipped where absent, a failure on CI."""
    path = SHARED / "splits"
    if not path.is_dir():
        message = f"shared split lists not found at {path}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message
    return message


# --- the official lists -------------------------------------------------------------------------


def test_places_lt_train_list(splits_dir: Path) -> None:
    paths, labels = parse_list_file(splits_dir / "Places_LT" / "Places_LT_train.txt")
    counts = np.bincount(labels)
    assert len(paths) == len(labels) == 62_500
    assert len(counts) == 365 and counts.max() == 4_980 and counts.min() == 5
    assert paths[0] == "train/airfield/00004851.jpg" and labels.dtype == np.int64
    groups = shot_groups(counts)
    assert [len(groups[g]) for g in ("many", "medium", "few")] == [131, 163, 71]


@pytest.mark.parametrize(("file", "lines", "per_class"), [("val", 20_000, 20), ("test", 50_000, 50)])
def test_imagenet_lt_eval_lists(splits_dir: Path, file: str, lines: int, per_class: int) -> None:
    paths, labels = parse_list_file(splits_dir / "ImageNet_LT" / f"ImageNet_LT_{file}.txt")
    assert len(paths) == lines
    assert np.array_equal(np.bincount(labels), np.full(1000, per_class))


def test_inaturalist_val_list(splits_dir: Path) -> None:
    paths, labels = parse_list_file(splits_dir / "iNaturalist18" / "iNaturalist18_val.txt")
    assert len(paths) == 24_426
    assert np.array_equal(np.bincount(labels), np.full(8_142, 3))


@pytest.mark.parametrize("file", ["ImageNet_LT/ImageNet_LT_open.txt", "Places_LT/Places_LT_open.txt"])
def test_open_lists_need_allow_open(splits_dir: Path, file: str) -> None:
    _, labels = parse_list_file(splits_dir / file, allow_open=True)
    assert set(labels.tolist()) == {-1}
    with pytest.raises(DataError, match="line 1:"):
        parse_list_file(splits_dir / file)


def test_places_lt_spec_loads_against_an_image_root(splits_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    ds = PLACES_LT.load(tmp_path, splits_dir / "Places_LT")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (62_500, 7_300, 36_500)
    assert ds.num_classes == 365 and ds.class_names[:2] == ["airfield", "airplane_cabin"]
    assert ds.imbalance_factor == 4_980 / 5
    assert ds.test.root == tmp_path and ds.test.paths[0].startswith("val/airfield/")
    expected = hashlib.sha256((splits_dir / "Places_LT" / "Places_LT_train.txt").read_bytes())
    assert ds.info["list_sha256"]["train"] == expected.hexdigest()


def test_inaturalist_spec_tests_on_val_and_has_no_val(splits_dir: Path, tmp_path: Path) -> None:
    list_dir = tmp_path / "lists"
    list_dir.mkdir()
    (list_dir / "iNaturalist18_val.txt").symlink_to(splits_dir / "iNaturalist18" / "iNaturalist18_val.txt")
    (list_dir / "iNaturalist18_train.txt").write_text(
        "train_val2018/Animalia/0/a.jpg 0\ntrain_val2018/Protozoa/8141/b.jpg 8141\n"
    )
    (tmp_path / "images" / "train_val2018").mkdir(parents=True)
    ds = INATURALIST2018.load(tmp_path / "images", list_dir)
    assert ds.val is None and len(ds.test) == 24_426 and ds.num_classes == 8_142
    assert ds.info["lists"]["test"].endswith("iNaturalist18_val.txt") and "val" in ds.info["note"]
    assert ds.class_names[8141] == "Protozoa/8141"


def test_missing_train_list_names_its_source(splits_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        IMAGENET_LT.load(tmp_path, splits_dir / "ImageNet_LT")
    message = one_line_error(excinfo)
    assert "ImageNet_LT_train.txt" in message and "classifier-balancing" in message


def test_specs() -> None:
    assert {n: s.num_classes for n, s in LIST_DATASETS.items()} == {
        "imagenet_lt": 1000,
        "places_lt": 365,
        "inaturalist2018": 8142,
    }
    assert INATURALIST2018.val_list is None and INATURALIST2018.test_list == "iNaturalist18_val.txt"


# --- parsing rules ------------------------------------------------------------------------------


def test_trailing_whitespace_and_blank_final_lines(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"train/a/1.jpg 0 \r\ntrain/b/2.jpg 1\t\n\n\n")
    paths, labels = parse_list_file(path)
    assert paths == ["train/a/1.jpg", "train/b/2.jpg"] and labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("bad_line", "allow_open"),
    [
        ("train/a/3.jpg", False),  # no label
        ("train/a/3.jpg 1 2", False),  # three fields
        ("train/a/3.jpg\t1", False),  # tab separator
        ("train/a/3.jpg  1", False),  # two spaces
        (" train/a/3.jpg 1", False),  # leading space
        ("train/a/3.jpg 1.5", False),  # not an integer
        ("train/a/3.jpg cat", False),  # not an integer
        ("train/a/3.jpg -1", False),  # open-set label in a closed list
        ("train/a/3.jpg -2", True),  # only -1 is the open-set label
        ("", False),  # blank line inside the file
    ],
)
def test_malformed_line_names_file_line_and_text(tmp_path: Path, bad_line: str, allow_open: bool) -> None:
    path = tmp_path / "broken_list.txt"
    path.write_text(f"train/a/1.jpg 0\ntrain/a/2.jpg 0\n{bad_line}\ntrain/b/4.jpg 1\n")
    with pytest.raises(DataError) as excinfo:
        parse_list_file(path, allow_open=allow_open)
    message = one_line_error(excinfo)
    assert "broken_list.txt line 3:" in message
    assert repr(bad_line) in message and "<relative/path> <integer label>" in message


def test_missing_and_empty_list_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        parse_list_file(tmp_path / "nope.txt")
    assert "nope.txt not found" in one_line_error(excinfo)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        parse_list_file(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"train/caf\xe9.jpg 0\n")
    with pytest.raises(DataError, match="UTF-8"):
        parse_list_file(tmp_path / "latin1.txt")


# --- load_list_dataset --------------------------------------------------------------------------


@pytest.fixture
def tiny_lists(tmp_path: Path) -> Path:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("train/cat/1.jpg 0\ntrain/cat/2.jpg 0\ntrain/dog/3.jpg 1\n")
    (lists / "val.txt").write_text("train/cat/4.jpg 0\ntrain/dog/5.jpg 1\n")
    (lists / "test.txt").write_text("val/cat/6.jpg 0\nval/dog/7.jpg 1\nval/eel/8.jpg 2\n")
    return lists


def test_load_list_dataset(tiny_lists: Path, tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    ds = load_list_dataset("tiny", root, tiny_lists, "train.txt", "val.txt", "test.txt", 4, {"k": 1})
    assert ds.class_names == ["cat", "dog", "eel", "3"]
    assert ds.train_counts.tolist() == [2, 1, 0, 0] and len(ds.val) == 2 and len(ds.test) == 3
    assert ds.info["k"] == 1 and set(ds.info["lists"]) == {"train", "val", "test"}
    no_val = load_list_dataset("tiny", root, tiny_lists, "train.txt", None, "test.txt", 4)
    assert no_val.val is None and set(no_val.info["list_sha256"]) == {"train", "test"}


def test_missing_image_root(tiny_lists: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_list_dataset("tiny", tmp_path / "nope", tiny_lists, "train.txt", "val.txt", "test.txt", 3)
    message = one_line_error(excinfo)
    assert "image root" in message and "nope not found" in message
    assert "dataset.root=<folder that holds train/, val/>" in message


def test_image_root_without_a_listed_folder(tiny_lists: Path, tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"has no val/ folder; set dataset.root="):
        load_list_dataset("tiny", tmp_path, tiny_lists, "train.txt", "val.txt", "test.txt", 3)


def test_label_out_of_range(tiny_lists: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_list_dataset("tiny", tmp_path, tiny_lists, "train.txt", "val.txt", "test.txt", 2)
    message = one_line_error(excinfo)
    assert "test.txt line 3: label 2 is outside [0, 2)" in message


# --- image files --------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path: Path) -> tuple[FileSplit, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (8, 6, 3), dtype=np.uint8) for _ in range(3)]
    arrays[1] = np.broadcast_to(np.arange(0, 240, 30, dtype=np.uint8)[:, None, None], (8, 6, 3)).copy()
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(arrays[0]).save(tmp_path / "train" / "a" / "0.png")
    Image.fromarray(arrays[1]).save(tmp_path / "train" / "a" / "1.jpg", quality=95)
    Image.fromarray(arrays[2][..., 0]).save(tmp_path / "train" / "a" / "2.png")  # grayscale
    paths = ["train/a/0.png", "train/a/1.jpg", "train/a/2.png"]
    return FileSplit(tmp_path, paths, np.array([0, 1, 2])), arrays


def test_file_image_dataset(image_folder: tuple[FileSplit, list[np.ndarray]]) -> None:
    split, arrays = image_folder
    dataset = FileImageDataset(split, transform=np.asarray)
    assert len(dataset) == 3
    image, label = dataset[0]
    assert label == 0 and image.shape == (8, 6, 3) and np.array_equal(image, arrays[0])
    jpeg, _ = dataset[1]
    assert np.abs(jpeg.astype(int) - arrays[1]).mean() < 8  # lossy, but the same picture
    gray, label = dataset[2]
    assert label == 2 and np.array_equal(gray, np.repeat(arrays[2][..., :1], 3, axis=2))
    raw, _ = FileImageDataset(split)[1]
    assert isinstance(raw, Image.Image) and raw.mode == "RGB"


def test_decode_image_file(image_folder: tuple[FileSplit, list[np.ndarray]]) -> None:
    split, arrays = image_folder
    decoded = decode_image_file(split.root / split.paths[0])
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, arrays[0])


def test_truncated_jpeg_raises(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:-40])
    with pytest.raises(DataError) as excinfo:
        decode_image_file(path)
    message = one_line_error(excinfo)
    assert str(path) in message and "truncated" in message and "re-copy it" in message


def test_missing_and_corrupt_images(tmp_path: Path) -> None:
    split = FileSplit(tmp_path, ["train/x.jpg", "train/y.jpg"], np.array([0, 1]))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "y.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError) as excinfo:
        FileImageDataset(split, transform=None)[0]
    assert "x.jpg not found" in one_line_error(excinfo)
    with pytest.raises(DataError) as excinfo:
        open_image(tmp_path / "train" / "y.jpg")
    assert "cannot be decoded" in one_line_error(excinfo)
