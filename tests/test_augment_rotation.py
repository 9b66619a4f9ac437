"""Batched rotation against torchvision's RandomRotation (nearest, no expansion, zero fill)."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from lt_bench.data import augment
from lt_bench.data.augment import BatchAugment, random_rotation


@pytest.mark.parametrize("degrees", [10.0, -7.0, 15.0, -15.0, 0.0])
def test_rotation_equals_torchvision_at_a_fixed_angle(
    degrees: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = torch.randint(
        0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    # draw u such that (2u - 1) * 15 == degrees for both images
    monkeypatch.setattr(
        augment.torch, "rand", lambda n, device=None: torch.full((n,), (degrees / 15 + 1) / 2)
    )
    ours = random_rotation(images, 15.0)
    reference = TF.rotate(images.permute(0, 3, 1, 2), degrees, interpolation=InterpolationMode.NEAREST)
    assert torch.equal(ours, reference.permute(0, 2, 3, 1))


def test_rotation_angles_cover_the_range_and_keep_values() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 32, 32, 1), dtype=torch.uint8)
    rotated = random_rotation(images, 15.0)
    assert rotated.dtype == torch.uint8 and rotated.shape == images.shape
    values = set(images.unique().tolist()) | {0}
    assert set(rotated.unique().tolist()) <= values  # nearest sampling invents no value
    assert (rotated != images).any(dim=(1, 2, 3)).float().mean() > 0.8


def test_batch_augment_with_rotation_runs() -> None:
    aug = BatchAugment("crop_flip_rotate", [0.5] * 3, [0.25] * 3, padding=4, rotate_degrees=15)
    out = aug(torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
