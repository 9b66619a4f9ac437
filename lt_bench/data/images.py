"""Decoding image files, with errors that name the broken file and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from lt_bench.data.base import FileSplit
from lt_bench.errors import DataError

_FIX = "re-copy it from the original dataset, or remove its line from the list file"


def open_image(path: str | Path | BinaryIO) -> Image.Image:
    """Fully decode ``path`` into an RGB PIL image; a missing, truncated or corrupt file raises.

    Decoding happens here (``load``), not lazily, so a truncated JPEG fails instead of coming back
    partly grey.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise DataError(f"image file {path} not found; {_FIX}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"image file {path} cannot be decoded ({reason}); {_FIX}") from err


def decode_image_file(path: str | Path | BinaryIO) -> np.ndarray:
    """The image at ``path`` (or in an open binary file) as a uint8 ``[H, W, 3]`` RGB array."""
    return np.asarray(open_image(path), dtype=np.uint8)


class FileImageDataset(Dataset):
    """A torch ``Dataset`` over a ``FileSplit``: item i is ``(transform(image), label)``."""

    def __init__(self, split: FileSplit, transform: Callable[[Image.Image], Any] | None = None):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = open_image(self.split.root / self.split.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.split.targets[index])
