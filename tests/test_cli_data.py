"""``lt-bench data summary`` / ``data pack`` / ``list`` end to end, and how bad input is reported.

Most calls run ``lt_bench.cli.main`` in-process (fast); a few go through ``python -m lt_bench`` to
check what a user sees: exit code 2, one ``lt-bench: error:`` line, no traceback.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lt_bench.cli import main
from lt_bench.data.cache import cache_dir
from lt_bench.registry import DATASETS

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: --help, usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def summary(capsys: pytest.CaptureFixture[str], *overrides: str) -> dict:
    code, out, err = run_cli(capsys, "data", "summary", *overrides, "--json")
    assert code == 0, err
    return json.loads(out)


def assert_one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lt-bench: error: ")
    return lines[0]


def write_small_cifar10(root: Path, per_class: int = 100, test_per_class: int = 20) -> Path:
    """torchvision's ``cifar-10-batches-py`` with random images, labels interleaved, 5 batches."""
    rng = np.random.default_rng(8)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    train = rng.permutation(np.repeat(np.arange(10), per_class))
    test = rng.permutation(np.repeat(np.arange(10), test_per_class))

    def dump(name: str, obj: dict) -> None:
        with (base / name).open("wb") as fh:
            pickle.dump(obj, fh)

    for i, part in enumerate(np.array_split(train, 5), start=1):
        data = rng.integers(0, 256, (len(part), 3072), dtype=np.uint8)
        dump(f"data_batch_{i}", {b"data": data, b"labels": part.tolist()})
    dump(
        "test_batch",
        {b"data": rng.integers(0, 256, (len(test), 3072), dtype=np.uint8), b"labels": test.tolist()},
    )
    dump("batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES]})
    return root


# --- help and listings -----------------------------------------------------------------------------


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "data" in out and "list" in out
    code, out, _ = run_cli(capsys, "data", "summary", "--help")
    assert code == 0 and "dataset.root" in out and "--json" in out
    code, out, _ = run_cli(capsys, "data", "pack", "--help")
    assert code == 0 and "--output" in out


def test_help_through_python_m() -> None:
    for argv in (["--help"], ["data", "summary", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "lt_bench", *argv], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage: lt-bench")


def test_list_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list", "datasets")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert {"cifar10_lt", "cifar100_lt", "fashion_mnist_lt", "places_lt", "imagenet_lt"} <= set(names)
    assert any(line.startswith("cifar10_lt") and "LDAM-DRW" in line for line in out.splitlines())


# --- data summary on the real CIFAR-10 copy ------------------------------------------------------------


def test_summary_real_cifar10_if100(capsys: pytest.CaptureFixture[str], cifar10_jpg: Path) -> None:
    root = f"dataset.root={cifar10_jpg}"
    s = summary(capsys, "dataset=cifar10_lt", root, "dataset.imbalance_factor=100")
    assert s["dataset"] == "cifar10_lt" and s["num_classes"] == 10
    assert s["train"] == 12_406 and s["test"] == 10_000
    assert s["train_counts"] == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert s["many_classes"] == list(range(8)) and s["medium_classes"] == [8, 9]
    assert s["few_classes"] == []
    assert s["imbalance_factor"] == 100.0
    assert s["val"] == 9 * 500 and s["val_missing_classes"] == [0]
    assert s["source"].startswith("folder:")
    # the human-readable form
    code, out, _ = run_cli(capsys, "data", "summary", "dataset=cifar10_lt", root)
    assert code == 0 and "train 12,406" in out and "test 10,000" in out and "few    (0): []" in out


# --- data pack -------------------------------------------------------------------------------------------


@pytest.fixture
def small_cifar10(tmp_path: Path) -> Path:
    return write_small_cifar10(tmp_path / "src")


def test_pack_round_trip(capsys: pytest.CaptureFixture[str], small_cifar10: Path, tmp_path: Path) -> None:
    pack = tmp_path / "packs" / "c10_if100.npz"
    settings = ["dataset=cifar10_lt", "dataset.imbalance_factor=100", "dataset.val_per_class=10"]
    code, out, err = run_cli(
        capsys, "data", "pack", *settings, f"dataset.root={small_cifar10}", "-o", str(pack)
    )
    assert code == 0, err
    assert out.startswith(f"wrote {pack}") and pack.is_file()

    load = DATASETS.get("cifar10_lt")
    source = load(root=str(small_cifar10), imbalance_factor=100, val_per_class=10)
    packed = load(root=str(pack), imbalance_factor=100, val_per_class=10)
    for split in ("train", "val", "test"):
        a, b = getattr(source, split), getattr(packed, split)
        assert np.array_equal(a.images, b.images) and a.images.dtype == b.images.dtype == np.uint8
        assert np.array_equal(a.targets, b.targets)
    assert len(source.train) == sum(int(100 * 0.01 ** (i / 9)) for i in range(10))
    assert np.array_equal(source.train_indices, packed.train_indices)
    assert packed.class_names == CIFAR10_NAMES
    assert packed.info["val_missing_classes"] == source.info["val_missing_classes"] == [0]
    assert packed.info["source"].startswith("pack:")

    from_source = summary(capsys, *settings, f"dataset.root={small_cifar10}")
    from_pack = summary(capsys, *settings, f"dataset.root={pack}")
    assert from_source.pop("source") != from_pack.pop("source")
    assert from_pack == from_source


@pytest.fixture()
def cifar10_pack(capsys: pytest.CaptureFixture[str], small_cifar10: Path, tmp_path: Path) -> Path:
    """A pack of cifar10_lt with the default settings (IF 100, exp profile, subset seed 0)."""
    pack = tmp_path / "c10.npz"
    code, _, err = run_cli(
        capsys, "data", "pack", "dataset=cifar10_lt", f"dataset.root={small_cifar10}", "-o", str(pack)
    )
    assert code == 0, err
    return pack


def write_jpeg_cifar10(root: Path, per_class: int = 30, test_per_class: int = 4) -> Path:
    """A CIFAR-10 image-folder copy (``train|test/<class>/NNNN.jpg``) of random JPEG images."""
    rng = np.random.default_rng(3)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for name in CIFAR10_NAMES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{number:04d}.jpg", quality=75)
    return root


def test_encoded_pack_keeps_the_jpeg_bytes_and_decodes_to_the_same_pixels(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source_root = write_jpeg_cifar10(tmp_path / "jpg")
    settings = ["dataset=cifar10_lt", f"dataset.root={source_root}", "dataset.val_per_class=5"]
    encoded, pixels = tmp_path / "enc.npz", tmp_path / "pix.npz"
    assert run_cli(capsys, "data", "pack", *settings, "--encoded", "-o", str(encoded))[0] == 0
    assert run_cli(capsys, "data", "pack", *settings, "-o", str(pixels))[0] == 0
    assert encoded.stat().st_size < 0.6 * pixels.stat().st_size

    load = DATASETS.get("cifar10_lt")
    source = load(root=str(source_root), val_per_class=5)
    packed = load(root=str(encoded), val_per_class=5)
    for split in ("train", "val", "test"):
        a, b = getattr(source, split), getattr(packed, split)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.targets, b.targets)
    assert np.array_equal(source.train_indices, packed.train_indices)
    cached = list((cache_dir() / "decoded").glob("pack-*.npz"))
    assert len(cached) == 1  # decoded once into the user's cache; a second load reads it
    again = load(root=str(encoded), val_per_class=5)
    assert np.array_equal(again.train.images, source.train.images)
    assert list((cache_dir() / "decoded").glob("pack-*.npz")) == cached
    with np.load(encoded) as data:
        assert "train_images" not in data.files
        first = source_root / "train" / "airplane" / f"{source.train_indices[0]:04d}.jpg"
        offsets = data["train_offsets"]
        assert data["train_encoded"][offsets[0] : offsets[1]].tobytes() == first.read_bytes()


def test_encoded_pack_refuses_pixels_that_decode_differently(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Another JPEG decoder (simulated: a recorded digest that does not match) is a clear error."""
    import json as json_module

    source_root = write_jpeg_cifar10(tmp_path / "jpg", per_class=12, test_per_class=2)
    pack = tmp_path / "enc.npz"
    settings = ["dataset=cifar10_lt", f"dataset.root={source_root}", "dataset.val_per_class=0"]
    assert run_cli(capsys, "data", "pack", *settings, "--encoded", "-o", str(pack))[0] == 0
    with np.load(pack) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json_module.loads(arrays["meta"].tobytes())
    meta["pixels_sha256"]["test"] = "0" * 64
    arrays["meta"] = np.frombuffer(json_module.dumps(meta).encode(), dtype=np.uint8)
    np.savez(pack, **arrays)
    settings[1] = f"dataset.root={pack}"
    line = assert_one_line_error(*run_cli(capsys, "data", "summary", *settings))
    assert "decode to other pixels" in line and "without --encoded" in line

    assert meta["version"] == 2
    meta["version"] = 3  # a format from a later lt-bench
    arrays["meta"] = np.frombuffer(json_module.dumps(meta).encode(), dtype=np.uint8)
    np.savez(pack, **arrays)
    line = assert_one_line_error(*run_cli(capsys, "data", "summary", *settings))
    assert "format version 3" in line and "update lt-bench" in line


def test_encoded_pack_of_arrays_is_refused(
    capsys: pytest.CaptureFixture[str], small_cifar10: Path, tmp_path
) -> None:
    pack = tmp_path / "x.npz"
    args = [
        "data",
        "pack",
        "dataset=cifar10_lt",
        f"dataset.root={small_cifar10}",
        "--encoded",
        "-o",
        str(pack),
    ]
    line = assert_one_line_error(*run_cli(capsys, *args))
    assert "only CIFAR-LT read from an image folder" in line and "without --encoded" in line
    assert not pack.exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset=cifar10_lt", "dataset.imbalance_factor=50"], "imbalance_factor=100.0, not 50.0"),
        (["dataset=cifar10_lt", "dataset.subset_seed=1"], "subset_seed=0, not 1"),
        (["dataset=cifar100_lt"], "name=cifar10_lt, not cifar100_lt"),
        (["dataset=cifar10_lt", "dataset.profile=step"], "profile"),
    ],
)
def test_pack_refused_for_other_settings(
    capsys: pytest.CaptureFixture[str], cifar10_pack: Path, overrides: list[str], expected: str
) -> None:
    line = assert_one_line_error(
        *run_cli(capsys, "data", "summary", *overrides, f"dataset.root={cifar10_pack}")
    )
    assert expected in line and "pack the dataset again" in line


# --- bad input: exit 2, one line on stderr, no traceback ---------------------------------------------


def write_corrupt_jpeg_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for label, name in enumerate(CIFAR10_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(2):
                pixels = np.full((32, 32, 3), 10 * label, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{number:04d}.jpg")
    bad = root / "train" / "frog" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:50])
    return root


def write_places_with_bad_list(tmp_path: Path) -> tuple[Path, Path]:
    images, lists = tmp_path / "places", tmp_path / "lists"
    (images / "train").mkdir(parents=True)
    (images / "val").mkdir()
    lists.mkdir()
    (lists / "Places_LT_train.txt").write_text("train/a/0001.jpg 0\ntrain/a/0002.jpg\ntrain/b/0001.jpg 1\n")
    (lists / "Places_LT_val.txt").write_text("val/a/0001.jpg 0\nval/b/0001.jpg 1\n")
    (lists / "Places_LT_test.txt").write_text("val/a/0002.jpg 0\nval/b/0002.jpg 1\n")
    return images, lists


def bad_case(name: str, tmp_path: Path) -> tuple[list[str], str]:
    """The overrides of one bad-input case and a fragment its error line must contain."""
    if name == "missing_folder":
        return ["dataset=cifar10_lt", f"dataset.root={tmp_path / 'nowhere'}"], "does not exist"
    if name == "corrupt_jpeg":
        root = write_corrupt_jpeg_folder(tmp_path / "jpg")
        return ["dataset=cifar10_lt", f"dataset.root={root}"], "frog/0001.jpg cannot be decoded"
    if name == "malformed_list_line":
        images, lists = write_places_with_bad_list(tmp_path)
        return (
            ["dataset=places_lt", f"dataset.root={images}", f"dataset.list_dir={lists}"],
            "Places_LT_train.txt line 2",
        )
    if name == "unknown_dataset":
        return ["dataset=nope"], "unknown dataset 'nope'"
    if name == "imbalance_below_one":
        return ["dataset=cifar10_lt", "dataset.imbalance_factor=0.5"], "imbalance_factor=0.5 is below 1"
    if name == "unknown_key":
        return ["dataset=cifar10_lt", "dataset.imbalance=3"], "unknown config key 'dataset.imbalance'"
    if name == "not_key_value":
        return ["dataset=cifar10_lt", "dataset.root"], "is not key=value"
    raise AssertionError(name)


BAD_CASES = [
    "missing_folder",
    "corrupt_jpeg",
    "malformed_list_line",
    "unknown_dataset",
    "imbalance_below_one",
    "unknown_key",
    "not_key_value",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:
    overrides, fragment = bad_case(case, tmp_path)
    code, out, err = run_cli(capsys, "data", "summary", *overrides)
    line = assert_one_line_error(code, out, err)
    assert fragment in line
    assert out == ""


def test_bool_for_a_number_names_the_right_type(capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_one_line_error(
        *run_cli(capsys, "data", "summary", "dataset=cifar10_lt", "dataset.imbalance_factor=true")
    )
    assert "must be a number" in line


@pytest.mark.parametrize("case", ["missing_folder", "unknown_key"])
def test_bad_input_pack_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:
    overrides, fragment = bad_case(case, tmp_path)
    pack = tmp_path / "out.npz"
    line = assert_one_line_error(*run_cli(capsys, "data", "pack", *overrides, "-o", str(pack)))
    assert fragment in line and not pack.exists()


def test_bad_input_through_python_m(tmp_path: Path) -> None:
    images, lists = write_places_with_bad_list(tmp_path)
    argv = ["data", "summary", "dataset=places_lt", f"dataset.root={images}", f"dataset.list_dir={lists}"]
    proc = subprocess.run(
        [sys.executable, "-m", "lt_bench", *argv], capture_output=True, text=True, timeout=300
    )
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr)
    assert "Places_LT_train.txt line 2" in proc.stderr and proc.stdout == ""
