"""lt-bench-focal: focal loss as an lt-bench method, added through an entry point.

The package's ``pyproject.toml`` registers ``FocalLoss`` in the entry-point group
``lt_bench.methods`` under the name ``focal``; lt-bench then runs it with ``lt-bench run method=focal``.
Its options come from ``focal.yaml`` beside this file (the class's ``default_config``), and are
overridden like any other: ``method.gamma=2``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from lt_bench.config import load_yaml
from lt_bench.methods.base import BaseMethod, Outputs

__all__ = ["FocalLoss", "focal_loss"]


def focal_loss(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """``(1/B) Σ_i -(1 - p_i)^gamma log p_i`` with ``p_i = softmax(z_i)[y_i]``, computed in float32."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()


def _default_config() -> dict[str, Any]:
    return load_yaml(files(__name__).joinpath("focal.yaml").read_text())


class FocalLoss(BaseMethod):
    """Focal loss (Lin et al., ICCV 2017) on a linear head.

    With ``z`` the logits of an image of class ``y`` and ``p_y = softmax(z)_y``, the loss is

        FL(z, y) = -(1 - p_y)^gamma * log(p_y),

    averaged over the batch. ``gamma = 0`` is cross-entropy; larger ``gamma`` down-weights
    well-classified (mostly head-class) images. ``gamma`` defaults to 1, the value of the LDAM-DRW
    code's focal baseline (see ``focal.yaml``).
    """

    default_config = _default_config()

    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        return focal_loss(outputs["logits"], targets, self.method_cfg.gamma)
