"""ImageNet-scale backbones from timm, built without a classifier (``num_classes=0``).

Registered names: ``resnet50`` and ``resnext50_32x4d`` (ImageNet-LT, iNaturalist 2018) and
``resnet152`` (Places-LT), plus ``timm`` for any other timm architecture (option ``model_name``).
Weights are never downloaded: ``pretrained_path`` loads a local state dict (e.g. a torchvision or
OLTR ResNet checkpoint, whose key names timm's ResNet shares); the classifier keys ``fc.*`` are
dropped and every other key must match the backbone exactly.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from lt_bench.errors import ConfigError
from lt_bench.registry import register_backbone

NAMED_BACKBONES = ("resnet50", "resnext50_32x4d", "resnet152")


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load the state dict in ``path`` into ``model``, ignoring ``fc.*``; other keys must match."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"pretrained_path '{path}' does not exist; lt-bench never downloads weights: copy the "
            "checkpoint (a state dict) to this machine and point pretrained_path at it, or set "
            "pretrained_path: null to train from scratch"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches, e.g. another in_channels or width
        raise ConfigError(f"pretrained_path '{path}' does not fit the backbone: {err}") from err
    if missing or unexpected:
        raise ConfigError(
            f"pretrained_path '{path}' does not match the backbone: missing keys "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected keys "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}; pass a plain state dict of "
            "the same architecture"
        )


def timm_backbone(
    in_channels: int = 3,
    *,
    model_name: str,
    pretrained_path: str | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """``timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_channels)``.

    The model returns pooled features ``[B, num_features]``; ``feature_dim`` is set to
    ``num_features``. Extra options (e.g. ``drop_path_rate``) go to ``timm.create_model``.
    """
    if not timm.is_model(model_name):
        raise ConfigError(f"unknown timm model '{model_name}'; see timm.list_models() for names")
    model = timm.create_model(
        model_name, pretrained=False, num_classes=0, in_chans=in_channels, **timm_kwargs
    )
    model.feature_dim = int(model.num_features)
    if pretrained_path is not None:
        load_backbone_weights(model, pretrained_path)
    return model


register_backbone("timm", source="timm")(timm_backbone)
for _name in NAMED_BACKBONES:
    register_backbone(_name, source="timm")(partial(timm_backbone, model_name=_name))
