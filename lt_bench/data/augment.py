"""Batched image augmentation as tensor ops, on whatever device the batch is on.

In-memory datasets (CIFAR-LT, Fashion-MNIST-LT) hand uint8 ``[B, H, W, C]`` batches to the model's
device; these functions augment and normalise them there, so the CPU and the GPU run the same code.
Randomness comes from torch's generator of the batch's device (seeded by ``seed``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lt_bench.data.graph_ops import device_constant
from lt_bench.errors import ConfigError

AUGMENTATIONS = (
    "none",
    "crop_flip",
    "crop_flip_rotate",
    "crop_flip_cutout",
    "crop_flip_autoaugment",
    "crop_flip_autoaugment_cutout",
    "crop_flip_randaugment",
    "simclr",
)


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` and take one random ``H x W`` crop per image (``[B, H, W, C]``).

    Same distribution as torchvision ``RandomCrop(size, padding)``: offsets uniform in
    ``[0, 2 * padding]`` on each axis.
    """
    if padding == 0:
        return images
    b, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b, 1, 1), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1, 1), device=images.device)
    rows = dy + torch.arange(h, device=images.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=images.device).view(1, 1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1)
    return padded[batch, rows, cols]


def random_hflip(images: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (``[B, H, W, C]``)."""
    flip = torch.rand(images.shape[0], device=images.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(2), images)


def random_rotation(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate each image by an angle uniform in ``[-degrees, degrees]`` about its centre (``[B, H, W, C]``).

    As torchvision ``RandomRotation(degrees)`` with its defaults: nearest-neighbour sampling, no
    expansion, zero fill. Nearest sampling keeps uint8 values exact.
    """
    b = images.shape[0]
    angle = (torch.rand(b, device=images.device) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    # grid_sample maps output to input coordinates: rotating the image by +a samples at R(-a).
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    x = images.permute(0, 3, 1, 2).float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    rotated = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return rotated.permute(0, 2, 3, 1).to(images.dtype)


def to_normalized_nchw(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[B, H, W, C]`` -> float ``[B, C, H, W]``, ``(x / 255 - mean) / std``."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    # made once per device: a CUDA graph capturing the normalisation must not copy them from the host
    mean_t, std_t = (device_constant(list(v), torch.float, x.device).view(1, -1, 1, 1) for v in (mean, std))
    return (x - mean_t) / std_t


class BatchAugment:
    """Train-time augmentation of uint8 batches followed by normalisation."""

    def __init__(
        self,
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        padding: int = 4,
        rotate_degrees: float = 15.0,
        cutout_size: int = 16,
        autoaugment_fill: int = 0,
    ):
        if name not in AUGMENTATIONS:
            raise ConfigError(f"unknown data.train_augment '{name}'; valid: {', '.join(AUGMENTATIONS)}")
        self.name, self.mean, self.std, self.padding = name, list(mean), list(std), padding
        self.rotate_degrees, self.cutout_size = rotate_degrees, cutout_size
        self.autoaugment_fill = autoaugment_fill

    @classmethod
    def from_config(cls, cfg: Any) -> BatchAugment:
        """The training augmentation of a run config (``data.*``, ``dataset.mean`` / ``dataset.std``)."""
        data = cfg.data
        return cls(
            data.train_augment,
            cfg.dataset.mean,
            cfg.dataset.std,
            data.crop_padding,
            data.rotate_degrees,
            data.cutout_size,
            data.autoaugment_fill,
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from lt_bench.data import policies  # policies imports this module

        if self.name.startswith("crop_flip"):
            images = random_hflip(random_crop(images, self.padding))
        if self.name == "crop_flip_rotate":
            images = random_rotation(images, self.rotate_degrees)
        if "autoaugment" in self.name:
            images = policies.autoaugment_cifar10(images, self.autoaugment_fill)
        if "randaugment" in self.name:
            images = policies.randaugment(images)
        if self.name.endswith("_cutout"):
            images = policies.cutout(images, self.cutout_size)
        if self.name == "simclr":
            images = policies.simclr_view(images)
        return to_normalized_nchw(images, self.mean, self.std)
