"""ResNet-32 for CIFAR as used by LDAM-DRW and its descendants (methods.md §0.4).

He et al. (2016), §4.2: a 3x3 stem, then three stages of ``n`` BasicBlocks (16/32/64 channels,
strides 1/2/2), global average pooling; depth ``6n + 2`` (``n = 5`` gives ResNet-32). The shortcut is
option A: the input is subsampled spatially (``x[:, :, ::s, ::s]``) and zero channels are added on
both sides, so the shortcut has no parameters. Conv weights get Kaiming-normal init in ``fan_in``
mode (``std = sqrt(2 / (C_in * k * k))``), as LDAM-DRW's ``_weights_init`` does.

Multi-expert methods (RIDE, SADE, MDCS) share the stem and ``layer1`` and give each expert its own
``layer2``/``layer3``, often at reduced widths (24/48); they can build those with ``make_stage``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lt_bench.errors import ConfigError
from lt_bench.registry import register_backbone


def shortcut_a(x: Tensor, out_channels: int, stride: int) -> Tensor:
    """Option-A shortcut: ``x[:, :, ::stride, ::stride]`` with zero channels padded up to ``out_channels``.

    The ``out_channels - C_in`` zero channels are split between front and back (front gets the
    floor), which for ``out = 2 * in`` is LDAM-DRW's ``F.pad(..., (planes // 4, planes // 4))``.
    """
    extra = out_channels - x.shape[1]
    return F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, extra // 2, extra - extra // 2))


class ShortcutA(nn.Module):
    """Parameter-free option-A shortcut (see ``shortcut_a``)."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return shortcut_a(x, self.out_channels, self.stride)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ShortcutA(out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stage(in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    """``num_blocks`` BasicBlocks; the first one changes width and applies ``stride``."""
    blocks = [BasicBlock(in_channels, out_channels, stride)]
    blocks += [BasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def kaiming_init_(module: nn.Module) -> None:
    """Kaiming-normal (``fan_in``, ReLU gain) init of every Conv2d/Linear weight, as LDAM-DRW."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


class ResNetCifar(nn.Module):
    """CIFAR ResNet backbone: images ``[B, C_in, H, W]`` -> pooled features ``[B, widths[-1]]``."""

    def __init__(
        self, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64), num_blocks: int = 5
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3:
            raise ConfigError(f"resnet32: widths must have 3 entries (one per stage), got {widths}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.layer1 = make_stage(widths[0], widths[0], num_blocks, stride=1)
        self.layer2 = make_stage(widths[0], widths[1], num_blocks, stride=2)
        self.layer3 = make_stage(widths[1], widths[2], num_blocks, stride=2)
        self.feature_dim = widths[2]
        kaiming_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


@register_backbone("resnet32", source="LDAM-DRW models/resnet_cifar.py")
def resnet32(in_channels: int = 3, widths: Sequence[int] = (16, 32, 64)) -> ResNetCifar:
    """ResNet-32 (5 BasicBlocks per stage); about 0.46M parameters with a 10-way linear head."""
    return ResNetCifar(in_channels, widths, num_blocks=5)
