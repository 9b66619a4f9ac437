"""Classifier heads placed on top of a backbone's pooled features (methods.md §0.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lt_bench.errors import ConfigError

CLASSIFIER_KINDS = ("linear", "cosine")


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM-DRW: ``scale * normalize(x, dim=1) @ normalize(W, dim=0)``.

    ``W`` has shape ``[in_features, out_features]`` and is initialised with
    ``uniform(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)``. With ``scale = 1`` the logits are cosines in
    ``[-1, 1]``; RIDE, SADE, MDCS and TLC use ``scale = 30`` in the model, LDAM inside its loss.
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: Tensor) -> Tensor:
        logits = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)
        return logits * self.scale if self.scale != 1.0 else logits

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"


def make_classifier(kind: str, in_features: int, num_classes: int, scale: float = 1.0) -> nn.Module:
    """Build a head: ``"linear"`` (nn.Linear, Kaiming-normal ``fan_in`` weight, as LDAM-DRW's
    resnet_cifar) or ``"cosine"`` (``NormedLinear`` times ``scale``).

    ``scale`` applies to cosine heads only; a linear head with ``scale != 1`` is a config error.
    """
    if kind == "linear":
        if scale != 1.0:
            raise ConfigError(f"classifier scale={scale} only applies to kind 'cosine'; drop it for 'linear'")
        head = nn.Linear(in_features, num_classes)
        nn.init.kaiming_normal_(head.weight)
        return head
    if kind == "cosine":
        return NormedLinear(in_features, num_classes, scale)
    raise ConfigError(f"unknown classifier kind '{kind}'; valid kinds: {', '.join(CLASSIFIER_KINDS)}")
