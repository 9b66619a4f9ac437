"""Multi-expert trunks: one shared early network, then per-expert later stages and cosine heads.

RIDE-style ensembles (Wang et al., ICLR 2021) as used by SADE, MDCS and TLC (methods.md §2.1, §3.1,
§4.1). A backbone is cut into named stages (ResNet-32: ``stem, layer1, layer2, layer3``; timm
ResNets: ``stem, layer1, ..., layer4``). The stages up to and including ``shared_until`` are
built once and shared; every expert ``k`` gets its own copy of the remaining stages and its own
cosine classifier (``NormedLinear`` times ``scale``)::

    h = S(x)                                   (shared part, run once per batch)
    f_k = GAP(E_k(h))                          (expert k's later stages, global average pool)
    z_k = scale * normalize(f_k) @ normalize(W_k, dim=0)

The splits used by the papers:

* SADE / MDCS on CIFAR: shared stem + layer1, per-expert layer2/layer3 at widths 24/48
  (``reduce_dimension``; 32/64 without it, as SADE's CIFAR-10 setting);
* TLC on CIFAR: only the stem shared, per-expert layer1-3 at full width;
* SADE / MDCS on ResNet-50 / ResNeXt-50: shared through layer2, per-expert layer3/layer4 at planes
  192/384 (a 1536-d feature); Places-LT ResNet-152: per-expert layer3/layer4 at full width;
* TLC on ResNet-50: shared through layer3, per-expert layer4.

Each expert branch comes from its own backbone instance built through the backbone registry, so
the experts are initialised independently (and each loads ``pretrained_path`` when one is given,
as SADE loads the ImageNet checkpoint into every Places-LT expert); only the first instance's
shared stages are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lt_bench.errors import ConfigError
from lt_bench.models.classifiers import NormedLinear
from lt_bench.registry import BACKBONES


@dataclass(frozen=True)
class StageLayout:
    """The stages of a backbone family and the option that sets the widths of ``layer1..``."""

    stages: tuple[str, ...]
    width_option: str
    default_widths: tuple[int, ...]


CIFAR_RESNET = StageLayout(("stem", "layer1", "layer2", "layer3"), "widths", (16, 32, 64))
# timm ResNet's default ``channels`` (planes of layer1-4; bottleneck outputs are 4x these)
TIMM_RESNET = StageLayout(("stem", "layer1", "layer2", "layer3", "layer4"), "channels", (64, 128, 256, 512))
LAYOUTS: dict[str, StageLayout] = {
    "resnet32": CIFAR_RESNET,
    "resnet50": TIMM_RESNET,
    "resnext50_32x4d": TIMM_RESNET,
    "resnet152": TIMM_RESNET,
}


def backbone_stage(net: nn.Module, name: str) -> nn.Module:
    """Stage ``name`` of a built backbone; a timm ResNet's stem is ``conv1, bn1, act1, maxpool``."""
    if name == "stem" and not hasattr(net, "stem"):
        return nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
    return getattr(net, name)


class MultiExpertNet(nn.Module):
    """``shared`` then, per expert, ``experts[k]`` -> global average pool -> ``heads[k]``.

    ``forward`` returns ``expert_features`` ``[E, B, D]`` and ``expert_logits`` ``[E, B, C]``.
    """

    def __init__(
        self,
        shared: nn.Module,
        experts: Sequence[nn.Module],
        feature_dim: int,
        num_classes: int,
        scale: float = 30.0,
    ) -> None:
        super().__init__()
        self.shared = shared
        self.experts = nn.ModuleList(experts)
        self.heads = nn.ModuleList(NormedLinear(feature_dim, num_classes, scale) for _ in experts)
        self.feature_dim = feature_dim
        self.num_experts = len(experts)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.shared(x)
        features = [torch.flatten(F.adaptive_avg_pool2d(expert(h), 1), 1) for expert in self.experts]
        logits = [head(f) for head, f in zip(self.heads, features, strict=True)]
        return {"expert_features": torch.stack(features), "expert_logits": torch.stack(logits)}


def build_multi_expert(
    backbone: Mapping[str, Any],
    in_channels: int,
    num_classes: int,
    *,
    num_experts: int = 3,
    shared_until: str = "layer1",
    expert_widths: Sequence[int] | None = None,
    scale: float = 30.0,
) -> MultiExpertNet:
    """A ``MultiExpertNet`` from a backbone config (``name`` plus the factory's options).

    ``shared_until`` names the last shared stage. ``expert_widths`` sets the widths of the
    per-expert stages (ResNet-32: channels; timm ResNets: bottleneck planes); ``None`` or empty
    keeps the backbone's own widths.
    """
    options = {k: v for k, v in backbone.items() if k != "name"}
    name = backbone["name"]
    if name not in LAYOUTS:
        raise ConfigError(f"multi-expert trunks support backbones {', '.join(LAYOUTS)}; got '{name}'")
    layout = LAYOUTS[name]
    if shared_until not in layout.stages[:-1]:
        raise ConfigError(
            f"shared_until='{shared_until}' for {name}; valid: {', '.join(layout.stages[:-1])} "
            "(at least one stage must belong to the experts)"
        )
    if num_experts < 1:
        raise ConfigError(f"num_experts={num_experts} must be at least 1")
    cut = layout.stages.index(shared_until) + 1
    expert_stages = layout.stages[cut:]
    if expert_widths:
        expert_widths = tuple(int(w) for w in expert_widths)
        if len(expert_widths) != len(expert_stages):
            raise ConfigError(
                f"expert_widths={list(expert_widths)} needs one width per expert stage "
                f"({', '.join(expert_stages)})"
            )
        widths = tuple(options.get(layout.width_option, layout.default_widths))
        options[layout.width_option] = widths[: len(widths) - len(expert_widths)] + expert_widths
    factory = BACKBONES.get(name)
    nets = [factory(in_channels=in_channels, **options) for _ in range(num_experts)]
    shared = nn.Sequential(*(backbone_stage(nets[0], s) for s in layout.stages[:cut]))
    experts = [nn.Sequential(*(backbone_stage(net, s) for s in expert_stages)) for net in nets]
    return MultiExpertNet(shared, experts, int(nets[0].feature_dim), num_classes, scale)
