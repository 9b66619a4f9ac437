"""Batched augmentation policies: Cutout, AutoAugment (CIFAR-10), RandAugment and SimCLR views.

Like :mod:`lt_bench.data.augment`, every function takes a uint8 ``[B, H, W, C]`` batch on any device,
draws its randomness from torch's global generator of that device, and returns the same layout. The
random choices are per sample and follow torchvision's per-image transforms:

* ``cutout``: DeVries & Taylor (2017), one square hole, centre uniform over the image, clipped at
  the border.
* ``autoaugment_cifar10``: ``torchvision.transforms.v2.AutoAugment(AutoAugmentPolicy.CIFAR10)``.
* ``randaugment``: ``torchvision.transforms.v2.RandAugment(num_ops, magnitude)``.
* ``simclr_view``: ``RandomResizedCrop(size, (0.2, 1))``, ``RandomHorizontalFlip``,
  ``RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)``, ``RandomGrayscale(0.2)`` and, when
  ``blur_p > 0``, ``RandomApply([GaussianBlur(k, (0.1, 2.0))], p=blur_p)``.

AutoAugment and RandAugment draw one discrete action (op, signed magnitude) per sample and op
slot, and every image gets bit-for-bit torchvision's result for its action. On a CPU the batch is
sorted by action and torchvision's functional op runs once per action present on that subset (the
actions come from the CPU generator). On a GPU every action runs on the whole batch and each image
keeps its own (``apply_all_actions``, with ``lt_bench.data.graph_ops`` standing in for the
torchvision kernels that copy from the host): no host sync, so the views can be captured in a CUDA
graph. The SimCLR view uses per-sample parameters directly (gathers,
broadcast factors, grouped convolution); off the CPU it does not sync at all (on the CPU its colour
jitter indexes the samples that chose each adjustment, which costs nothing there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

# private but stable helper of torchvision's own adjust_hue
from torchvision.transforms.v2.functional._color import _rgb_to_hsv

from lt_bench.data import graph_ops
from lt_bench.data.augment import random_crop, random_hflip

Fill = float | Sequence[float] | None
Action = tuple[str, float]

IDENTITY: Action = ("Identity", 0.0)

# (op, probability, magnitude bin) pairs of the 25 CIFAR-10 sub-policies (Cubuk et al. 2019), in
# torchvision's order.
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)

# RandAugment's op space, in torchvision's order (the op is drawn uniformly by index).
RANDAUGMENT_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)

_SIGNED = {
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
}


def magnitudes(op: str, num_bins: int, height: int, width: int) -> torch.Tensor | None:
    """torchvision's magnitude table of ``op`` (AutoAugment and RandAugment); None if it has none."""
    if op in ("ShearX", "ShearY"):
        return torch.linspace(0.0, 0.3, num_bins)
    if op == "TranslateX":
        return torch.linspace(0.0, 150.0 / 331.0 * width, num_bins)
    if op == "TranslateY":
        return torch.linspace(0.0, 150.0 / 331.0 * height, num_bins)
    if op == "Rotate":
        return torch.linspace(0.0, 30.0, num_bins)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return torch.linspace(0.0, 0.9, num_bins)
    if op == "Posterize":
        return (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4))).round().int()
    if op == "Solarize":
        return torch.linspace(1.0, 0.0, num_bins)
    return None


def apply_op(images: torch.Tensor, op: str, magnitude: float, fill: Fill = None) -> torch.Tensor:
    """One AutoAugment op on uint8 ``[N, C, H, W]``, as torchvision's ``_apply_image_or_video_transform``.

    ``magnitude`` is the signed value from the magnitude table (0 for ops without one); geometric
    ops use nearest sampling and fill the exposed area with ``fill`` (None: 0).
    """
    fill_ = None if fill is None else [float(v) for v in fill] if isinstance(fill, Sequence) else float(fill)
    nearest = InterpolationMode.NEAREST
    if op == "Identity":
        return images
    if op in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        return TF.affine(
            images,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=[shear, 0.0] if op == "ShearX" else [0.0, shear],
            interpolation=nearest,
            fill=fill_,
            center=[0, 0],
        )
    if op in ("TranslateX", "TranslateY"):
        shift = int(magnitude)
        return TF.affine(
            images,
            angle=0.0,
            translate=[shift, 0] if op == "TranslateX" else [0, shift],
            scale=1.0,
            interpolation=nearest,
            shear=[0.0, 0.0],
            fill=fill_,
        )
    if op == "Rotate":
        return TF.rotate(images, angle=magnitude, interpolation=nearest, fill=fill_)
    if op == "Brightness":
        return TF.adjust_brightness(images, brightness_factor=1.0 + magnitude)
    if op == "Color":
        return TF.adjust_saturation(images, saturation_factor=1.0 + magnitude)
    if op == "Contrast":
        return TF.adjust_contrast(images, contrast_factor=1.0 + magnitude)
    if op == "Sharpness":
        return TF.adjust_sharpness(images, sharpness_factor=1.0 + magnitude)
    if op == "Posterize":
        return TF.posterize(images, bits=int(magnitude))
    if op == "Solarize":
        return TF.solarize(images, threshold=255.0 * magnitude)
    if op == "AutoContrast":
        return TF.autocontrast(images)
    if op == "Equalize":
        return TF.equalize(images)
    if op == "Invert":
        return TF.invert(images)
    raise ValueError(f"unknown augmentation op '{op}'")


def apply_actions(
    images: torch.Tensor, action: torch.Tensor, table: Sequence[Action], fill: Fill = None
) -> torch.Tensor:
    """Apply ``table[action[i]]`` to image ``i`` of uint8 ``[B, C, H, W]``, one op call per action present.

    ``action`` lives on the CPU (a device tensor would cost a host sync to size the subsets).
    """
    action = action.cpu()
    counts = torch.bincount(action, minlength=len(table)).tolist()
    order = torch.argsort(action, stable=True)
    out = images.clone()
    start = 0
    for (op, magnitude), n in zip(table, counts, strict=True):
        if n and op != "Identity":
            idx = order[start : start + n]
            out[idx] = apply_op(images[idx], op, magnitude, fill)
        start += n
    return out


GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def graph_safe_device(device: torch.device) -> bool:
    """Whether AutoAugment / RandAugment take the graph-safe path (all actions on the whole batch) on
    ``device``: on a GPU; on a CPU the subset path is cheaper."""
    return device.type == "cuda"


def graph_safe_op(images: torch.Tensor, op: str, magnitude: float, fill: Fill = None) -> torch.Tensor:
    """``apply_op`` with no host copy or sync (``lt_bench.data.graph_ops``): the same uint8 result."""
    if op in GEOMETRIC_OPS:
        _, _, h, w = images.shape
        source = graph_ops.geometric_index_map(
            lambda index_image: apply_op(index_image, op, magnitude), (op, magnitude), h, w, images.device
        )
        return graph_ops.gather_pixels(images, source, fill)
    if op == "Sharpness":
        return graph_ops.adjust_sharpness(images, 1.0 + magnitude)
    if op == "AutoContrast":
        return graph_ops.autocontrast(images)
    return apply_op(images, op, magnitude, fill)


def apply_all_actions(
    images: torch.Tensor, action: torch.Tensor, table: Sequence[Action], fill: Fill = None
) -> torch.Tensor:
    """``apply_actions`` for a CUDA graph: every action of ``table`` runs on the whole batch and each
    image keeps its own (``action`` on the images' device; fixed shapes, no host sync)."""
    out = images
    for k, (op, magnitude) in enumerate(table):
        if op != "Identity":
            chosen = (action == k).view(-1, 1, 1, 1)
            out = torch.where(chosen, graph_safe_op(images, op, magnitude, fill), out)
    return out


_DEVICE_TABLES: dict[tuple, tuple] = {}


def _on_device(build: Callable[..., tuple], args: tuple, device: torch.device) -> tuple:
    """``build(*args)``'s tables with their tensors on ``device``, built and moved once (each call
    would cost host work, and a CUDA graph must not copy them)."""
    key = (build.__name__, *args, str(device))
    if key not in _DEVICE_TABLES:
        _DEVICE_TABLES[key] = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in build(*args))
    return _DEVICE_TABLES[key]


def _index(table: list[Action], action: Action) -> int:
    if action not in table:
        table.append(action)
    return table.index(action)


def autoaugment_cifar10_tables(
    height: int, width: int
) -> tuple[list[Action], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Action table and, per sub-policy and slot ``[25, 2]``: probability, +/-magnitude actions."""
    table: list[Action] = [IDENTITY]
    prob = torch.zeros(len(CIFAR10_POLICY), 2)
    pos = torch.zeros(len(CIFAR10_POLICY), 2, dtype=torch.long)
    neg = torch.zeros(len(CIFAR10_POLICY), 2, dtype=torch.long)
    for k, sub_policy in enumerate(CIFAR10_POLICY):
        for s, (op, p, bin_) in enumerate(sub_policy):
            mags = magnitudes(op, 10, height, width)
            m = 0.0 if mags is None or bin_ is None else float(mags[bin_])
            prob[k, s] = p
            pos[k, s] = _index(table, (op, m))
            neg[k, s] = _index(table, (op, -m)) if op in _SIGNED else pos[k, s]
    return table, prob, pos, neg


def sample_autoaugment_cifar10(batch: int, height: int, width: int, device: torch.device | str = "cpu"):
    """Draw the per-sample actions of AutoAugment(CIFAR10): ``(table, sub_policy [B], actions [2, B])``.

    Per image, as torchvision: a sub-policy uniformly; each of its two ops applied iff
    ``U <= probability``; a signed magnitude negated iff ``U <= 0.5``.
    """
    table, prob, pos, neg = _on_device(autoaugment_cifar10_tables, (height, width), torch.device(device))
    sub = torch.randint(0, len(CIFAR10_POLICY), (batch,), device=device)
    applied = torch.rand(2, batch, device=device) <= prob[sub].T
    negate = torch.rand(2, batch, device=device) <= 0.5
    action = torch.where(negate, neg[sub].T, pos[sub].T)
    return table, sub, torch.where(applied, action, 0)


def autoaugment_cifar10(images: torch.Tensor, fill: Fill = None) -> torch.Tensor:
    """torchvision ``AutoAugment(AutoAugmentPolicy.CIFAR10, fill=fill)`` per image of uint8 ``[B, H, W, C]``.

    Geometric ops sample nearest and fill with ``fill`` (None: 0, as torchvision's default; the
    DeepVoltaire ``CIFAR10Policy`` used by MDCS/BALMS fills with 128). On a GPU the actions are drawn
    there and applied with ``apply_all_actions`` (CUDA-graph safe); elsewhere they come from the CPU
    generator and each runs on its own subset.
    """
    b, h, w, _ = images.shape
    graph_safe = graph_safe_device(images.device)
    table, _, actions = sample_autoaugment_cifar10(b, h, w, images.device if graph_safe else "cpu")
    apply = apply_all_actions if graph_safe else apply_actions
    x = images.permute(0, 3, 1, 2)
    for slot in range(2):
        x = apply(x, actions[slot], table, fill)
    return x.permute(0, 2, 3, 1).contiguous()


def randaugment_table(
    magnitude: int, num_bins: int, height: int, width: int
) -> tuple[list[Action], torch.Tensor]:
    """Action table and ``[len(RANDAUGMENT_OPS), 2]`` lookup (op, negated) -> action index."""
    table: list[Action] = [IDENTITY]
    lut = torch.zeros(len(RANDAUGMENT_OPS), 2, dtype=torch.long)
    for i, op in enumerate(RANDAUGMENT_OPS):
        mags = magnitudes(op, num_bins, height, width)
        m = 0.0 if mags is None else float(mags[magnitude])
        lut[i, 0] = _index(table, (op, m))
        lut[i, 1] = _index(table, (op, -m)) if op in _SIGNED else lut[i, 0]
    return table, lut


def sample_randaugment(
    batch: int,
    num_ops: int,
    magnitude: int,
    num_bins: int,
    height: int,
    width: int,
    device: torch.device | str = "cpu",
):
    """Per-sample RandAugment actions: ``(table, op [num_ops, B], actions [num_ops, B])``.

    Per image and slot, as torchvision: an op uniformly out of 14; a signed magnitude negated iff
    ``U <= 0.5``.
    """
    table, lut = _on_device(randaugment_table, (magnitude, num_bins, height, width), torch.device(device))
    op = torch.randint(0, len(RANDAUGMENT_OPS), (num_ops, batch), device=device)
    negate = (torch.rand(num_ops, batch, device=device) <= 0.5).long()
    return table, op, lut[op, negate]


def randaugment(
    images: torch.Tensor,
    num_ops: int = 2,
    magnitude: int = 10,
    num_magnitude_bins: int = 31,
    fill: Fill = None,
) -> torch.Tensor:
    """torchvision ``RandAugment(num_ops, magnitude, num_magnitude_bins, fill=fill)`` per image.

    Takes and returns uint8 ``[B, H, W, C]``.

    Actions and their application as ``autoaugment_cifar10``'s (graph-safe on a GPU).
    """
    b, h, w, _ = images.shape
    graph_safe = graph_safe_device(images.device)
    device = images.device if graph_safe else "cpu"
    table, _, actions = sample_randaugment(b, num_ops, magnitude, num_magnitude_bins, h, w, device)
    apply = apply_all_actions if graph_safe else apply_actions
    x = images.permute(0, 3, 1, 2)
    for slot in range(num_ops):
        x = apply(x, actions[slot], table, fill)
    return x.permute(0, 2, 3, 1).contiguous()


def cutout(images: torch.Tensor, size: int = 16, fill: Fill = None) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): one ``size x size`` hole per image of uint8 ``[B, H, W, C]``.

    As the reference code: centre ``(y, x)`` uniform over the pixels, hole rows
    ``[y - size // 2, y + size // 2)`` and the same for columns, clipped at the border (so an odd
    ``size`` cuts ``size - 1``). The hole is set to ``fill`` (None: 0). The reference applies it to
    the ToTensor'd image before Normalize (MDCS, BALMS), where 0 is black as here.
    """
    b, h, w, c = images.shape
    half = size // 2
    cy = torch.randint(0, h, (b, 1, 1), device=images.device)
    cx = torch.randint(0, w, (b, 1, 1), device=images.device)
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    hole = (rows >= cy - half) & (rows < cy + half) & (cols >= cx - half) & (cols < cx + half)
    if fill is None or not isinstance(fill, Sequence):  # a fill kernel, no host-to-device copy
        value = torch.full((c,), round(float(fill or 0)), dtype=images.dtype, device=images.device)
    else:
        value = graph_ops.device_constant(list(fill), torch.float32, images.device).round().to(images.dtype)
    return torch.where(hole.unsqueeze(-1), value, images)


# --- SimCLR views --------------------------------------------------------------------------------


def random_resized_crop_params(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-sample ``(top, left, h, w)`` ``[B, 4]`` with torchvision ``RandomResizedCrop``'s distribution.

    Ten proposals per sample (area fraction uniform in ``scale``, log aspect uniform in
    ``log(ratio)``), the first that fits is taken with a uniform position; if none fits, the
    centred crop of the whole image clamped to ``ratio``.
    """
    area = height * width
    target = area * torch.empty(batch, 10, device=device).uniform_(*scale)
    aspect = torch.exp(torch.empty(batch, 10, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(1)
    # fallback: whole image clamped to the ratio range, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, fw)
    h = torch.where(found, h, fh)
    top = (torch.rand(batch, device=device) * (height - h + 1)).long().clamp(max=height - h)
    left = (torch.rand(batch, device=device) * (width - w + 1)).long().clamp(max=width - w)
    top = torch.where(found, top, (height - fh) // 2)
    left = torch.where(found, left, (width - fw) // 2)
    return torch.stack([top, left, h, w], 1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop ``boxes`` ``[B, 4]`` (top, left, h, w) of uint8 ``[B, C, H, W]``; resize each to ``size``.

    PyTorch's ``interpolate(mode="bilinear", align_corners=False)`` per crop, rounded to uint8. No
    antialiasing: equal to torchvision's ``resized_crop`` (within 1 level) wherever the crop is not
    larger than ``size``, as with 32x32 CIFAR crops resized to 32.
    """
    b, c, height, width = images.shape
    oh, ow = size
    dev = images.device
    top, left, h, w = (boxes[:, k].view(b, 1) for k in range(4))

    def axis(n_out: int, start: torch.Tensor, extent: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scale = extent.float() / n_out
        src = ((torch.arange(n_out, device=dev).float() + 0.5) * scale - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=extent - 1)
        lam = src - i0
        i1 = torch.minimum(i0 + 1, extent - 1)
        return start + i0, start + i1, lam

    y0, y1, ly = axis(oh, top, h)  # [B, oh]
    x0, x1, lx = axis(ow, left, w)  # [B, ow]
    flat = images.reshape(b, c, height * width).float()

    def gather(ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        idx = (ys.unsqueeze(2) * width + xs.unsqueeze(1)).view(b, 1, oh * ow).expand(b, c, oh * ow)
        return flat.gather(2, idx).view(b, c, oh, ow)

    ly, lx = ly.view(b, 1, oh, 1), lx.view(b, 1, 1, ow)
    top_row = gather(y0, x0) * (1 - lx) + gather(y0, x1) * lx
    bottom_row = gather(y1, x0) * (1 - lx) + gather(y1, x1) * lx
    out = top_row * (1 - ly) + bottom_row * ly
    return out.round_().clamp_(0, 255).to(images.dtype)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (images * ratio + other * (1.0 - ratio)).clamp_(0, 255).to(images.dtype)


def _gray(images: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale`` of ``[B, 3, H, W]`` as float (floored); a one-channel image is
    its own gray."""
    if images.shape[1] == 1:
        return images.float()
    r, g, b = images.unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).floor_().unsqueeze(1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision ``adjust_brightness`` of uint8 ``[B, C, H, W]`` with per-sample ``factor`` ``[B]``."""
    return (images * factor.view(-1, 1, 1, 1)).clamp_(0, 255).to(images.dtype)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision ``adjust_contrast`` (RGB or one channel) with per-sample ``factor`` ``[B]``."""
    mean = _gray(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor.view(-1, 1, 1, 1))


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision ``adjust_saturation`` (RGB) with per-sample ``factor`` ``[B]``; a one-channel image
    is returned unchanged, as torchvision does."""
    if images.shape[1] == 1:
        return images
    return _blend(images, _gray(images), factor.view(-1, 1, 1, 1))


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision ``adjust_hue`` (RGB) with per-sample ``factor`` ``[B]`` in ``[-0.5, 0.5]``; a
    one-channel image is returned unchanged, as torchvision does."""
    if images.shape[1] == 1:
        return images
    hsv = _rgb_to_hsv(images.float() / 255.0)
    h, s, v = hsv.unbind(1)
    h = (h + factor.view(-1, 1, 1)).remainder_(1.0)
    rgb = graph_ops.hsv_to_rgb(torch.stack((h, s, v), 1))
    return rgb.mul_(255.0 + 1.0 - 1e-3).to(images.dtype)


def color_jitter(
    images: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float
) -> torch.Tensor:
    """torchvision ``ColorJitter`` per image of uint8 ``[B, C, H, W]`` (RGB, or one channel: saturation
    and hue then change nothing): factors and order per sample.

    At each of the four positions every sample gets the adjustment its permutation puts there. On
    CPU each adjustment runs on the samples that chose it (index lists; syncs cost nothing there);
    on a GPU (``graph_safe_device``) it runs on the whole batch and is selected per sample (16 passes
    instead of 4, but no host sync). Both give the same result.
    """
    b, dev = images.shape[0], images.device

    def factor(amount: float, centre: float) -> torch.Tensor:
        lo, hi = (max(0.0, centre - amount), centre + amount) if centre else (-amount, amount)
        return torch.empty(b, device=dev).uniform_(lo, hi)

    order = torch.rand(b, 4, device=dev).argsort(1)  # a uniform random permutation per sample
    factors = (factor(brightness, 1.0), factor(contrast, 1.0), factor(saturation, 1.0), factor(hue, 0.0))
    fns = [
        (k, fn, f)
        for k, (amount, fn, f) in enumerate(
            zip(
                (brightness, contrast, saturation, hue),
                (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue),
                factors,
                strict=True,
            )
        )
        if amount
    ]
    x = images
    for position in range(4):
        chosen = order[:, position]
        out = x.clone()
        for k, fn, f in fns:
            if not graph_safe_device(dev):
                idx = (chosen == k).nonzero().squeeze(1)
                if idx.numel():
                    out[idx] = fn(x[idx], f[idx])
            else:
                out = torch.where((chosen == k).view(b, 1, 1, 1), fn(x, f), out)
        x = out
    return x


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """torchvision ``gaussian_blur`` of uint8 ``[B, C, H, W]``, per-sample ``sigma`` ``[B]``, reflect padding.

    Separable (two 1-D passes) where torchvision convolves once with the 2-D kernel: within 1 level.
    """
    b, c, h, w = images.shape
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, kernel_size, device=images.device)
    kernel = torch.softmax(-(x.view(1, -1) / sigma.view(-1, 1)).pow(2), dim=1)  # [B, k]
    kernel = kernel.repeat_interleave(c, 0)  # [B*C, k]
    pad = kernel_size // 2
    out = F.pad(images.reshape(1, b * c, h, w).float(), (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    out = F.conv2d(out, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    return out.view(b, c, h, w).round_().clamp_(0, 255).to(images.dtype)


def simclr_view(
    images: torch.Tensor,
    size: int | tuple[int, int] | None = None,
    scale: tuple[float, float] = (0.2, 1.0),
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur_p: float = 0.0,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    blur_kernel: int | None = None,
    padding: int | None = None,
) -> torch.Tensor:
    """One SimCLR / MoCo-v2 view per image of uint8 ``[B, H, W, C]`` (RGB, or one channel as torchvision
    treats it), output ``[B, size, size, C]``.

    RandomResizedCrop(size, scale) (with ``padding``: RandomCrop(H, padding) instead, the input size
    kept, as SADE's test-time views), horizontal flip, ColorJitter(*jitter) with probability
    ``jitter_p``, grayscale with probability ``grayscale_p``, then Gaussian blur with sigma uniform in
    ``blur_sigma`` with probability ``blur_p`` (kernel ``blur_kernel``, default the odd number near
    10% of the side, as SimCLR). ``size`` defaults to the input size. No host sync.
    """
    b, height, width, _ = images.shape
    out_hw = (height, width) if size is None else (size, size) if isinstance(size, int) else tuple(size)
    dev = images.device
    if padding is None:
        crops = random_resized_crop_params(b, height, width, scale, device=dev)
        x = resized_crop(images.permute(0, 3, 1, 2), crops, out_hw).permute(0, 2, 3, 1)
    else:
        x = random_crop(images, padding)
    x = random_hflip(x).permute(0, 3, 1, 2)
    if jitter_p > 0:
        jittered = color_jitter(x, *jitter)
        x = torch.where((torch.rand(b, device=dev) < jitter_p).view(b, 1, 1, 1), jittered, x)
    if grayscale_p > 0:
        gray = TF.rgb_to_grayscale(x, num_output_channels=x.shape[1])
        x = torch.where((torch.rand(b, device=dev) < grayscale_p).view(b, 1, 1, 1), gray, x)
    if blur_p > 0:
        k = blur_kernel or (int(0.1 * min(out_hw)) // 2 * 2 + 1)
        sigma = torch.empty(b, device=dev).uniform_(*blur_sigma)
        x = torch.where((torch.rand(b, device=dev) < blur_p).view(b, 1, 1, 1), gaussian_blur(x, k, sigma), x)
    return x.permute(0, 2, 3, 1).contiguous()
