"""Batched augmentation against torchvision's per-sample RandomCrop / RandomHorizontalFlip / Normalize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from torchvision import transforms as T

from lt_bench.data.augment import BatchAugment, random_crop, random_hflip, to_normalized_nchw
from lt_bench.errors import ConfigError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Seed torch's global generator for each test and restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def position_coded(batch: int, size: int) -> np.ndarray:
    """``[B, size, size, 2]``: channel 0 codes the pixel position, channel 1 the image (never 0)."""
    images = np.zeros((batch, size, size, 2), dtype=np.uint8)
    images[..., 0] = 1 + np.arange(size * size).reshape(size, size)
    images[..., 1] = (1 + np.arange(batch) % 250)[:, None, None]
    return images


def crop_offsets(images: np.ndarray, out: np.ndarray, padding: int) -> np.ndarray:
    """``[B, 2]`` offsets (dy, dx) of the window of each zero-padded image that equals its output.

    Fails unless every output is exactly one window of its own padded image.
    """
    h, w = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    windows = sliding_window_view(padded, (h, w), axis=(1, 2))  # [B, 2p+1, 2p+1, C, h, w]
    windows = np.moveaxis(windows, 3, -1)  # [B, 2p+1, 2p+1, h, w, C]
    match = (windows == out[:, None, None]).all(axis=(3, 4, 5))
    assert np.all(match.sum(axis=(1, 2)) == 1), "an output is not a window of its padded input"
    return np.argwhere(match)[:, 1:]


# --- random_crop ---------------------------------------------------------------------------------


def test_random_crop_outputs_are_windows_of_the_padded_input() -> None:
    images = position_coded(4000, 6)
    out = random_crop(torch.from_numpy(images), 4)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    offsets = crop_offsets(images, out.numpy(), 4)
    # all 9 x 9 offsets 0..2p occur, and each axis is roughly uniform (expected 444 of 4000 each)
    seen = np.zeros((9, 9), dtype=np.int64)
    np.add.at(seen, (offsets[:, 0], offsets[:, 1]), 1)
    assert np.all(seen > 0)
    for axis in (0, 1):
        per_value = np.bincount(offsets[:, axis], minlength=9)
        assert len(per_value) == 9 and np.all(np.abs(per_value - 4000 / 9) < 100), per_value
    # dy and dx are drawn independently: the offsets are not all on the diagonal
    assert np.mean(offsets[:, 0] == offsets[:, 1]) < 0.2


def test_random_crop_non_square_and_padding_zero() -> None:
    images = np.random.default_rng(0).integers(1, 256, (50, 5, 7, 3), dtype=np.uint8)
    out = random_crop(torch.from_numpy(images), 2)
    assert out.shape == images.shape
    crop_offsets(images, out.numpy(), 2)
    same = random_crop(torch.from_numpy(images), 0)
    assert torch.equal(same, torch.from_numpy(images))


def test_random_crop_is_seeded() -> None:
    images = torch.from_numpy(position_coded(64, 6))
    torch.manual_seed(5)
    first = random_crop(images, 4)
    torch.manual_seed(5)
    assert torch.equal(random_crop(images, 4), first)


# --- random_hflip --------------------------------------------------------------------------------


def test_random_hflip_flips_about_half() -> None:
    images = position_coded(4000, 5)
    out = random_hflip(torch.from_numpy(images)).numpy()
    same = (out == images).all(axis=(1, 2, 3))
    flipped = (out == images[:, :, ::-1]).all(axis=(1, 2, 3))  # left-right: the width axis
    assert np.all(same ^ flipped)
    assert 0.45 < flipped.mean() < 0.55  # binomial sd 0.008


def test_random_hflip_probability_bounds() -> None:
    images = torch.from_numpy(position_coded(100, 5))
    assert torch.equal(random_hflip(images, p=0.0), images)
    assert torch.equal(random_hflip(images, p=1.0), images.flip(2))


# --- normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "mean", "std"), [(3, CIFAR_MEAN, CIFAR_STD), (1, (0.2860,), (0.3530,))])
def test_to_normalized_nchw_equals_totensor_normalize(channels: int, mean: tuple, std: tuple) -> None:
    images = np.random.default_rng(1).integers(0, 256, (6, 7, 9, channels), dtype=np.uint8)
    reference = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    expected = torch.stack([reference(img) for img in images])
    out = to_normalized_nchw(torch.from_numpy(images), mean, std)
    assert out.shape == (6, channels, 7, 9) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_batch_augment_none_only_normalises() -> None:
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    out = BatchAugment("none", CIFAR_MEAN, CIFAR_STD)(images)
    assert torch.equal(out, to_normalized_nchw(images, CIFAR_MEAN, CIFAR_STD))


def test_batch_augment_unknown_name() -> None:
    with pytest.raises(ConfigError, match="crop_flip") as excinfo:
        BatchAugment("autoaugment", CIFAR_MEAN, CIFAR_STD)
    assert "autoaugment" in str(excinfo.value) and "\n" not in str(excinfo.value)


# --- crop_flip against torchvision's per-sample pipeline ----------------------------------------------


def all_crop_flips(image: np.ndarray, padding: int) -> np.ndarray:
    """The ``(2p+1)^2 * 2`` equally likely outputs of RandomCrop(padding) + RandomHorizontalFlip."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    crops = [
        padded[dy : dy + h, dx : dx + w] for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
    ]
    return np.stack([*crops, *(c[:, ::-1] for c in crops)])


def test_crop_flip_takes_every_outcome() -> None:
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    outcomes = {c.tobytes(): i for i, c in enumerate(all_crop_flips(image, 4))}
    assert len(outcomes) == 162
    batch = torch.from_numpy(np.repeat(image[None], 4000, axis=0))
    out = random_hflip(random_crop(batch, 4)).numpy()
    hits = [outcomes.get(o.tobytes()) for o in out]
    assert None not in hits
    assert set(hits) == set(range(162))  # each has 4000/162 ~ 25 expected hits


def test_crop_flip_statistics_match_torchvision() -> None:
    """Per-position mean of the normalised output over N samples: ours, torchvision, exact.

    Tolerance: 5.5 standard errors per position, from the exact per-position standard deviation over
    the 162 equally likely outcomes (sqrt(2) more for ours vs torchvision).
    """
    n = 3000
    image = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mean, std = np.array(CIFAR_MEAN), np.array(CIFAR_STD)

    outcomes = all_crop_flips(image, 4).astype(np.float64) / 255.0
    outcomes = ((outcomes - mean) / std).transpose(0, 3, 1, 2)  # [162, C, H, W]
    exact_mean, exact_sd = outcomes.mean(axis=0), outcomes.std(axis=0)
    stderr = exact_sd / np.sqrt(n)

    batch = torch.from_numpy(np.repeat(image[None], n, axis=0))
    ours = BatchAugment("crop_flip", CIFAR_MEAN, CIFAR_STD, padding=4)(batch)
    assert ours.shape == (n, 3, 32, 32) and ours.dtype == torch.float32
    ours_mean = ours.double().mean(dim=0).numpy()

    reference = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR_MEAN, CIFAR_STD),
        ]
    )
    pil = Image.fromarray(image)
    tv_mean = torch.stack([reference(pil) for _ in range(n)]).double().mean(dim=0).numpy()

    assert np.all(np.abs(ours_mean - exact_mean) <= 5.5 * stderr + 1e-6)
    assert np.all(np.abs(tv_mean - exact_mean) <= 5.5 * stderr + 1e-6)
    assert np.all(np.abs(ours_mean - tv_mean) <= 5.5 * np.sqrt(2) * stderr + 1e-6)
