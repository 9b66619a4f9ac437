"""Graph-safe versions of the image ops whose torchvision kernels cannot run inside a CUDA graph.

torchvision's geometric ops and ``adjust_sharpness`` copy a small tensor from the host on every call,
and ``autocontrast`` assigns through a boolean mask (a host sync); a captured CUDA graph allows
neither. The versions here give bit-for-bit torchvision's uint8 results (tests/test_policies.py):

* a nearest-neighbour geometric op at a fixed size is a pixel gather, so its source index of every
  output pixel is computed once, by running torchvision's own op on an image of pixel indices, and
  cached on the device (``-1``: the pixel is filled);
* sharpness, autocontrast and HSV -> RGB repeat torchvision's arithmetic with cached constants and
  ``where``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_INDEX_MAPS: dict[tuple, Tensor] = {}
_CONSTANTS: dict[tuple[str, torch.dtype, str], Tensor] = {}


def geometric_index_map(
    transform: Callable[[Tensor], Tensor], key: Hashable, height: int, width: int, device: torch.device
) -> Tensor:
    """``[H * W]`` source pixel of each output pixel of ``transform`` (nearest, zero fill), ``-1``
    where it fills; computed on the CPU once per (``key``, size, device) and cached."""
    cache_key = (key, height, width, str(device))
    if cache_key not in _INDEX_MAPS:
        index_image = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, 1, height, width)
        _INDEX_MAPS[cache_key] = (transform(index_image).flatten().round().long() - 1).to(device)
    return _INDEX_MAPS[cache_key]


def fill_value(fill: float | Sequence[float] | None, channels: int, images: Tensor) -> Tensor:
    """The fill colour as ``[1, C, 1]`` of the images' dtype, rounded as torchvision rounds it."""
    if fill is None or not isinstance(fill, Sequence):
        value = torch.full((1, channels, 1), float(fill or 0.0), device=images.device)
    else:
        value = device_constant(list(fill), torch.float32, images.device).view(1, -1, 1)
    return value.round().to(images.dtype) if not images.is_floating_point() else value.to(images.dtype)


def gather_pixels(images: Tensor, source: Tensor, fill: float | Sequence[float] | None) -> Tensor:
    """``out[..., p] = images[..., source[p]]`` for ``[N, C, H, W]``, ``fill`` where ``source < 0``."""
    n, c, h, w = images.shape
    moved = images.reshape(n, c, h * w)[:, :, source.clamp(min=0)]
    return torch.where(source >= 0, moved, fill_value(fill, c, images)).view(n, c, h, w)


def device_constant(values: Sequence, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.tensor(values, dtype)`` on ``device``, copied there once per (values, dtype, device):
    a CUDA graph must not copy from the host, and each call would cost a copy."""
    key = (repr(values), dtype, str(device))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, dtype=dtype).to(device)
    return _CONSTANTS[key]


def _sharpness_kernel(device: torch.device) -> Tensor:
    a, b = 1.0 / 13.0, 5.0 / 13.0
    return device_constant([[a, a, a], [a, b, a], [a, a, a]], torch.float32, device)


def adjust_sharpness(images: Tensor, factor: float) -> Tensor:
    """torchvision ``adjust_sharpness`` of uint8 ``[N, C, H, W]``: the interior blended with its
    3x3 smoothing (kernel 1s around a 5, /13, rounded), ``x + (1 - factor) (blur - x)``."""
    channels = images.shape[1]
    output = images.to(torch.float32, copy=True)
    kernel = _sharpness_kernel(images.device).expand(channels, 1, 3, 3)
    blurred = F.conv2d(output, kernel, groups=channels).round_()
    view = output[..., 1:-1, 1:-1]
    view.add_(blurred.sub_(view), alpha=1.0 - factor)
    return output.clamp_(0, 255).to(images.dtype)


def autocontrast(images: Tensor) -> Tensor:
    """torchvision ``autocontrast`` of uint8 ``[N, C, H, W]``: each channel stretched to [0, 255]
    (left as is when constant)."""
    x = images.to(torch.float32)
    minimum = x.amin(dim=(-2, -1), keepdim=True)
    maximum = x.amax(dim=(-2, -1), keepdim=True)
    constant = maximum == minimum
    inv_scale = torch.where(constant, 1.0, (maximum - minimum).mul_(1.0 / 255))
    minimum = torch.where(constant, 0.0, minimum)
    return x.sub_(minimum).div_(inv_scale).clamp_(0, 255).to(images.dtype)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """torchvision's HSV -> RGB of float ``[..., 3, H, W]`` in [0, 1]: sector ``i = floor(6h) mod 6``
    picks (v, p, q, t) per channel, ``p = v(1 - s)``, ``q = v(1 - s f)``, ``t = v(1 - s(1 - f))``."""
    h, s, v = hsv.unbind(dim=-3)
    h6 = h.mul(6)
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.to(torch.long).remainder_(6)
    q = (1.0 - s * f).mul_(v).clamp_(0.0, 1.0)
    t = (s * f + (1.0 - s)).mul_(v).clamp_(0.0, 1.0)
    p = (1.0 - s).mul_(v).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = device_constant(
        [[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], torch.long, hsv.device
    )
    return vpqt.gather(-3, select[:, sector].moveaxis(0, -3))
