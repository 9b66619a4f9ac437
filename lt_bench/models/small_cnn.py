"""A small, fast CNN for 28x28 grayscale images (Fashion-MNIST-LT) and other small images.

Layout (``widths = (16, 32, 64, 128)``): conv(16)-BN-ReLU-maxpool, conv(32)-BN-ReLU-maxpool,
conv(64)-BN-ReLU, conv(128)-BN-ReLU, global average pool -> 128-d features; all convs 3x3. Only the
first conv runs at full resolution, which keeps a training step cheap on a CPU. Weights are kept in
channels-last layout, which is faster for these small convolutions on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lt_bench.errors import ConfigError
from lt_bench.models.resnet_cifar import kaiming_init_
from lt_bench.registry import register_backbone


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU layers, 2x2 max-pooling after the first two, global average pool."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        w = tuple(int(v) for v in widths)
        if len(w) != 4:
            raise ConfigError(f"small_cnn: widths must have 4 entries, got {w}")
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, w[0]),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w[0], w[1]),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w[1], w[2]),
            *_conv_bn_relu(w[2], w[3]),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = w[3]
        kaiming_init_(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


@register_backbone("small_cnn")
def small_cnn(in_channels: int = 3, widths: Sequence[int] = (16, 32, 64, 128)) -> SmallCNN:
    """Small CNN for Fashion-MNIST-LT (pass ``in_channels=1``); about 98K parameters."""
    return SmallCNN(in_channels, widths)
