"""BatchFormer (Hou, Yu, Tao, CVPR 2022) on a single-head host method (methods.md §6).

A one-layer Transformer encoder whose sequence is the mini-batch lets every sample's feature attend
to the other samples' features during training. With features ``F = backbone(x)`` (``[N, D]``):

* training: ``F' = BT(F)``; logits ``z = g([F'; F])`` with the host's classifier ``g`` shared by
  both streams; loss ``L = host_loss(z, [y; y])`` over all ``2N`` rows;
* evaluation: BT is removed and the prediction is the host's ``g(F)``, strictly per sample.

The host is any registered single-head method (``method.host``: ``balanced_softmax`` by default, the
official recipe; also ``ce`` and ``ldam_drw``). BatchFormer for host ``H`` is a subclass of ``H``
(``with_batchformer(H)``), so the host's model, loss and prediction are reused unchanged. The RIDE /
SADE variant (one shared BT on every expert's feature, §6.3) needs multi-expert hosts and is not
implemented yet.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from lt_bench.config import load_group
from lt_bench.errors import ConfigError
from lt_bench.methods.base import BaseMethod, Outputs
from lt_bench.registry import METHODS, register_method


class BatchTransformer(nn.Module):
    """``F' = EncoderLayer(F)`` with the batch as the sequence (``[N, D]`` fed as ``[N, 1, D]``).

    One ``nn.TransformerEncoderLayer(D, heads, ffn_dim, dropout)``: post-LayerNorm, ReLU FFN, no
    positional encoding, no mask, sequence-first layout (``batch_first=False``), so that sample ``i``
    attends to all ``N`` samples. (``[1, N, D]`` in this layout, or ``[N, 1, D]`` with
    ``batch_first=True``, would make a sequence of length 1 per sample: a per-sample MLP,
    BatchFormer issue #21.)
    """

    def __init__(self, dim: int, heads: int = 4, ffn_dim: int | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ConfigError(
                f"batchformer heads={heads} must be a positive divisor of the feature dim {dim}"
            )
        self.encoder = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=ffn_dim or dim,
            dropout=dropout,
            activation="relu",
            batch_first=False,
            norm_first=False,
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.encoder(features.unsqueeze(1)).squeeze(1)


class BatchFormer(BaseMethod):
    """Adds BT to a host method (mixed in before it by ``with_batchformer``); methods.md §6.1, §6.2.

    Options (``method.*``): ``heads`` (4), ``dropout`` (0.5), ``ffn_ratio`` (``dim_feedforward =
    ffn_ratio * D``, 1), ``lr_scale`` (BT learning rate = ``lr_scale * optim.lr``, 0.1); the other keys
    are the host's.

    * ``forward`` in training mode adds ``bt_logits = g(F')`` and ``bt_features = F'`` to the host's
      ``logits = g(F)`` and ``features = F``, so every row of ``logits`` stays one input sample.
    * ``compute_loss`` applies the host's loss to ``[bt_logits; logits]`` (and ``[F'; F]``) with
      targets ``[y; y]``: ``L = (1 / 2N) * sum_{i<2N} l_host(z_i, y_i)`` for a mean-reduced host loss.
      The official BalancedSoftmax code (``run_networks.py`` ``batch_loss``) adds the mean loss of
      each half to the mean loss of all ``2N`` rows: ``L_1 + L_2 + L_{1,2} = 3 * L_{1,2}`` (methods.md
      §6.2 says 2x; the code gives 3x). That only rescales the loss: with SGD, 3x the loss is 3x the
      learning rate with a third of the weight decay. We keep the plain mean (scale 1), the scale of
      the host's own row under the same recipe.
    * ``parameter_groups``: the BT parameters form their own SGD group with ``lr_scale * optim.lr``
      (same momentum and weight decay); the schedule's factor multiplies both groups.
    * Heads: the official BalancedSoftmax port uses 4 heads whatever D (ResNet-32: D = 64, 16 per
      head), which is what this single-head port follows. The RIDE port's rule (1 head when
      D <= 128, for its 48-d expert features) belongs to the multi-expert variant; set
      ``method.heads=1`` to use it here.
    * The BT context is the per-device batch (features are not gathered across devices under DDP),
      so results depend on ``data.batch_size`` per device (methods.md §6.6).
    """

    def build_model(self) -> None:
        super().build_model()
        if not isinstance(getattr(self, "classifier", None), nn.Module):
            raise ConfigError(
                f"batchformer needs a single-head host; '{self.method_cfg.host}' has no classifier"
            )
        dim = self.backbone.feature_dim
        self.batch_former = BatchTransformer(
            dim,
            heads=self.method_cfg.heads,
            ffn_dim=round(self.method_cfg.ffn_ratio * dim),
            dropout=self.method_cfg.dropout,
        )

    def forward(self, images: Tensor) -> Outputs:
        outputs = super().forward(images)
        if self.training:
            bt_features = self.batch_former(outputs["features"])
            outputs = {**outputs, "bt_logits": self.classifier(bt_features), "bt_features": bt_features}
        return outputs

    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        """Host loss on ``[g(F'); g(F)]`` with ``[y; y]`` (training outputs), else on ``g(F)``."""
        if "bt_logits" not in outputs:
            return super().compute_loss(outputs, targets)
        two_streams = {
            "logits": torch.cat([outputs["bt_logits"], outputs["logits"]]),
            "features": torch.cat([outputs["bt_features"], outputs["features"]]),
        }
        return super().compute_loss(two_streams, torch.cat([targets, targets]))

    def parameter_groups(self) -> list[dict[str, Any]]:
        bt_params = [p for p in self.batch_former.parameters() if p.requires_grad]
        bt_ids = {id(p) for p in bt_params}
        groups = [
            {**group, "params": [p for p in group["params"] if id(p) not in bt_ids]}
            for group in super().parameter_groups()
        ]
        return [*groups, {"params": bt_params, "lr": self.method_cfg.lr_scale * self.cfg.optim.lr}]

    def record_extras(self) -> dict[str, Any]:
        """The method node with the host's options filled in (the run config keeps the nulls)."""
        return {**super().record_extras(), "method_config": OmegaConf.to_container(self.method_cfg)}


@functools.cache
def with_batchformer(host: str) -> type[BaseMethod]:
    """The class ``BatchFormer<Host>``: ``BatchFormer`` mixed in before the registered ``host`` class."""
    host_cls = METHODS.get(host)
    if not (isinstance(host_cls, type) and issubclass(host_cls, BaseMethod)):  # e.g. "batchformer" itself
        raise ConfigError(f"method.host='{host}' must name a single-head BaseMethod, e.g. balanced_softmax")
    name = f"BatchFormer{host_cls.__name__}"
    return type(name, (BatchFormer, host_cls), {"__module__": __name__, "__qualname__": name})


def resolve_host_options(method: Mapping[str, Any]) -> dict[str, Any]:
    """The method node with the host's options (``configs/method/<host>.yaml``) where missing or null."""
    resolved = dict(method)
    for key, value in load_group("method", method["host"]).items():
        if key != "name" and resolved.get(key) is None:
            resolved[key] = value
    return resolved


@register_method("batchformer", paper="Hou, Yu, Tao, BatchFormer, CVPR 2022")
def build_batchformer(cfg: dict[str, Any], train_counts: Sequence[int], **kwargs: Any) -> BaseMethod:
    """``with_batchformer(method.host)`` built on ``cfg`` whose method node has the host's options."""
    method = resolve_host_options(cfg["method"])
    return with_batchformer(method["host"])(
        cfg={**cfg, "method": method}, train_counts=train_counts, **kwargs
    )
