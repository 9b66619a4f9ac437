"""BatchFormer (Hou, Yu, Tao, CVPR 2022) on a single-head or a multi-expert host method (methods.md §6).

A one-layer Transformer encoder whose sequence is the mini-batch lets every sample's feature attend
to the other samples' features during training; at evaluation BT is removed, so a prediction depends
on its own sample only.

* Single-head host (``balanced_softmax`` by default, the official recipe; also ``ce``, ``ldam_drw``),
  §6.1-6.2: with features ``F = backbone(x)`` (``[N, D]``), ``F' = BT(F)``, logits ``z = g([F'; F])``
  with the host's classifier ``g`` shared by both streams and ``L = host_loss(z, [y; y])`` over all
  ``2N`` rows. Evaluation: ``g(F)``.
* Multi-expert host (``sade``, ``mdcs``, ``tlc``: a ``MultiExpertMethod``), §6.3, the RIDE port with
  ``add_bt = 33``: one BT shared by the experts is applied to each expert's pooled feature,
  ``F'_k = BT(F_k)`` (each expert's batch is its own sequence), and expert ``k``'s head ``g_k`` scores
  both streams. The host's forward turns each stream's expert logits into its outputs and the host
  loss is applied to each stream on its own::

      L = w * L_host(BT stream: g_k(F'_k), y) + L_host(plain stream: g_k(F_k), y)

  with ``w = method.bt_weight`` (1: the official plain sum, ``add_bt = 33``). Evaluation: the host's
  own outputs from ``g_k(F_k)``.

BatchFormer for host ``H`` is a subclass of ``H`` (``with_batchformer(H)``), so the host's model, loss,
views, schedule variants, prediction and test-time stages are reused unchanged.
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
from lt_bench.methods.sade import MultiExpertMethod
from lt_bench.registry import METHODS, register_method

#: BatchFormer's own options (``configs/method/batchformer.yaml``); every other key is the host's
BT_OPTIONS = (
    "name",
    "host",
    "heads",
    "expert_heads",
    "dropout",
    "ffn_ratio",
    "lr_scale",
    "bt_weight",
    "loss_scale",
)
#: prefix of the BT stream's outputs in a multi-expert host's training outputs
BT_PREFIX = "bt_"


class BatchTransformer(nn.Module):
    """``F' = EncoderLayer(F)`` with the batch as the sequence.

    One ``nn.TransformerEncoderLayer(D, heads, ffn_dim, dropout)``: post-LayerNorm, ReLU FFN, no
    positional encoding, no mask, sequence-first layout (``batch_first=False``), so that sample ``i``
    attends to all ``N`` samples. (``[1, N, D]`` in this layout, or ``[N, 1, D]`` with
    ``batch_first=True``, would make a sequence of length 1 per sample: a per-sample MLP,
    BatchFormer issue #21.)

    ``forward`` takes ``[N, D]`` (fed as ``[N, 1, D]``) or ``[E, N, D]``: ``E`` sets (the experts) fed
    as ``[N, E, D]``, so the same layer runs on each set's ``N`` samples separately, as the RIDE port
    calls it once per expert.
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
        sets = features if features.dim() == 3 else features.unsqueeze(0)
        return self.encoder(sets.transpose(0, 1)).transpose(0, 1).reshape(features.shape)


def ride_heads(dim: int) -> int:
    """Heads of the RIDE port's BT (``obtain_global_models``): 4 when ``D > 128``, else 1."""
    return 4 if dim > 128 else 1


class BatchFormer(BaseMethod):
    """BT mixed in before a host method by ``with_batchformer``; methods.md §6.

    Options (``method.*``): ``heads`` (single-head hosts, 4), ``expert_heads`` (multi-expert hosts;
    null: ``ride_heads(D)``), ``dropout`` (0.5), ``ffn_ratio`` (``dim_feedforward = ffn_ratio * D``, 1),
    ``lr_scale`` (BT learning rate = ``lr_scale * optim.lr``, 0.1), ``bt_weight`` (multi-expert hosts:
    the BT stream's loss weight, 1), ``loss_scale`` (single-head hosts: factor on the two-stream mean,
    1; the official BalancedSoftmax code's 3); the other keys are the host's.

    * ``parameter_groups``: the BT parameters form their own SGD group with ``lr_scale * optim.lr``
      (same momentum and weight decay); the schedule's factor multiplies every group.
    * The BT context is the per-device batch (features are not gathered across devices under DDP),
      so results depend on ``data.batch_size`` per device (methods.md §6.6).
    """

    def add_batch_former(self, dim: int, heads: int) -> None:
        self.batch_former = BatchTransformer(
            dim,
            heads=heads,
            ffn_dim=round(self.method_cfg.ffn_ratio * dim),
            dropout=self.method_cfg.dropout,
        )

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


class SingleHeadBatchFormer(BatchFormer):
    """BT on a single-head host; methods.md §6.1, §6.2.

    * ``forward`` in training mode adds ``bt_logits = g(F')`` and ``bt_features = F'`` to the host's
      ``logits = g(F)`` and ``features = F``, so every row of ``logits`` stays one input sample.
    * ``compute_loss`` applies the host's loss to ``[bt_logits; logits]`` (and ``[F'; F]``) with
      targets ``[y; y]``: ``L = s * (1 / 2N) * sum_{i<2N} l_host(z_i, y_i)`` for a mean-reduced host
      loss, ``s = method.loss_scale``. The official BalancedSoftmax code (``run_networks.py``
      ``batch_loss``) adds the mean loss of each half to the mean loss of all ``2N`` rows:
      ``L_1 + L_2 + L_{1,2} = 3 * L_{1,2}`` (methods.md §6.2 says 2x; the code gives 3x). With SGD, 3x the
      loss is 3x the learning rate with a third of the weight decay, so the official recipe
      (``cifar*_lt/batchformer``) sets ``loss_scale: 3``; 1 is the plain mean, the scale of the host's
      own loss (``batchformer_ldam``). ``bt_weight`` must stay 1.
    * Heads: the official BalancedSoftmax port uses ``heads`` = 4 whatever D (ResNet-32: D = 64, 16
      per head); ``heads=1`` gives the RIDE port's rule for D <= 128.
    """

    def build_model(self) -> None:
        super().build_model()
        if not isinstance(getattr(self, "classifier", None), nn.Module):
            raise ConfigError(
                f"batchformer needs a single-head or multi-expert host; '{self.method_cfg.host}' has no "
                "classifier"
            )
        if self.method_cfg.bt_weight != 1.0:
            raise ConfigError(
                "method.bt_weight weighs the BT stream of multi-expert hosts; single-head hosts take the "
                f"mean over both streams (bt_weight 1), got {self.method_cfg.bt_weight}"
            )
        if not self.method_cfg.loss_scale > 0:
            raise ConfigError(f"method.loss_scale must be > 0, got {self.method_cfg.loss_scale}")
        self.add_batch_former(self.backbone.feature_dim, self.method_cfg.heads)

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
        return self.method_cfg.loss_scale * super().compute_loss(two_streams, torch.cat([targets, targets]))


class MultiExpertBatchFormer(BatchFormer):
    """One BT shared by the experts of a ``MultiExpertMethod`` host; methods.md §6.3 (RIDE port).

    * ``forward`` in training mode runs the trunk once (``F_k``, ``g_k(F_k)``: the host's outputs),
      then ``F'_k = BT(F_k)`` for every expert and the host's forward once more on the BT stream's
      trunk outputs ``(F'_k, g_k(F'_k))``; those outputs are added under ``bt_<key>`` (e.g.
      ``bt_expert_logits``, ``bt_logits``; TLC's ``bt_engagement``). ``logits`` stays the plain stream.
    * ``compute_loss``: ``L = bt_weight * L_host(bt outputs, y) + L_host(plain outputs, y)``, each a
      separate call of the host's loss (a host's batch-level terms, e.g. TLC's engagement mask or
      MDCS's weak/strong pairing, stay within one stream). The official trainer (``add_bt`` 32/33)
      sums the RIDE loss of both streams.
    * ``training_loss`` logs both streams' host losses (``loss_bt``, ``loss_plain``) instead of the
      host's own terms (e.g. MDCS's ``dl``/``cs``); the loss is the host's ``compute_loss`` per stream.
    * Heads: ``expert_heads`` (null: ``ride_heads(D)``, 1 head for D <= 128 as the RIDE port's
      48-d experts; SADE/MDCS CIFAR-100: D = 48, CIFAR-10: D = 64; ResNeXt-50 experts: D = 1536, 4).

    Both streams' outputs come from the host's ``expert_outputs`` (e.g. TLC's engagement and
    aggregation), given the plain or the BT stream's trunk outputs.
    """

    def build_model(self) -> None:
        super().build_model()
        if self.method_cfg.loss_scale != 1.0:
            raise ConfigError(
                "method.loss_scale scales the two-stream loss of single-head hosts; multi-expert hosts weigh "
                f"their BT stream with method.bt_weight (loss_scale 1), got {self.method_cfg.loss_scale}"
            )
        dim = self.trunk.feature_dim
        heads = self.method_cfg.expert_heads
        self.add_batch_former(dim, ride_heads(dim) if heads is None else heads)

    def forward(self, images: Tensor) -> Outputs:
        trunk_outputs = self.trunk(images)
        outputs = self.expert_outputs(trunk_outputs, images.shape[0])
        if not self.training:
            return outputs
        bt_features = self.batch_former(trunk_outputs["expert_features"])  # [E, N, D]
        heads = self.trunk.heads
        bt_logits = torch.stack([head(f) for head, f in zip(heads, bt_features, strict=True)])
        bt_trunk = {"expert_features": bt_features, "expert_logits": bt_logits}
        bt_outputs = self.expert_outputs(bt_trunk, images.shape[0])
        return {**outputs, **{BT_PREFIX + key: value for key, value in bt_outputs.items()}}

    def stream_losses(self, outputs: Outputs, targets: Tensor) -> dict[str, Tensor]:
        """The host loss of each stream: ``loss_plain`` and, for training outputs, ``loss_bt``."""
        plain = {k: v for k, v in outputs.items() if not k.startswith(BT_PREFIX)}
        bt = {k.removeprefix(BT_PREFIX): v for k, v in outputs.items() if k.startswith(BT_PREFIX)}
        losses = {"loss_plain": super().compute_loss(plain, targets)}
        if bt:
            losses["loss_bt"] = super().compute_loss(bt, targets)
        return losses

    def weighted_sum(self, losses: Mapping[str, Tensor]) -> Tensor:
        """``bt_weight * loss_bt + loss_plain`` (``loss_plain`` alone for evaluation outputs)."""
        if "loss_bt" not in losses:
            return losses["loss_plain"]
        return self.method_cfg.bt_weight * losses["loss_bt"] + losses["loss_plain"]

    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        return self.weighted_sum(self.stream_losses(outputs, targets))

    def training_loss(self, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        losses = self.stream_losses(self(images), targets)
        return self.weighted_sum(losses), {name: value.detach() for name, value in losses.items()}


@functools.cache
def with_batchformer(host: str) -> type[BaseMethod]:
    """The class ``BatchFormer<Host>``: the BT mixin for the registered ``host`` class mixed in before it."""
    host_cls = METHODS.get(host)
    if not (isinstance(host_cls, type) and issubclass(host_cls, BaseMethod)):  # e.g. "batchformer" itself
        raise ConfigError(
            f"method.host='{host}' must name a single-head or multi-expert BaseMethod, e.g. balanced_softmax "
            "or sade"
        )
    mixin = MultiExpertBatchFormer if issubclass(host_cls, MultiExpertMethod) else SingleHeadBatchFormer
    name = f"BatchFormer{host_cls.__name__}"
    return type(name, (mixin, host_cls), {"__module__": __name__, "__qualname__": name})


def overlay(base: Mapping[str, Any], node: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``node``'s non-null values on top; mappings merge key by key, and one that is
    left empty (only nulls, none in ``base``) is dropped."""
    merged = dict(base)
    for key, value in node.items():
        if isinstance(value, Mapping):
            below = base.get(key)
            nested = overlay(below if isinstance(below, Mapping) else {}, value)
            if nested or key in base:
                merged[key] = nested
        elif value is not None:
            merged[key] = value
    return merged


def resolve_host_options(method: Mapping[str, Any]) -> dict[str, Any]:
    """The method node for the host: ``configs/method/<host>.yaml`` with the node's non-null values on
    top, plus BatchFormer's own options; a null key the host does not define is dropped."""
    host = {k: v for k, v in load_group("method", method["host"]).items() if k != "name"}
    return {**overlay(host, method), **{k: method[k] for k in BT_OPTIONS if k in method}}


@register_method("batchformer", paper="Hou, Yu, Tao, BatchFormer, CVPR 2022")
def build_batchformer(cfg: dict[str, Any], train_counts: Sequence[int], **kwargs: Any) -> BaseMethod:
    """``with_batchformer(method.host)`` built on ``cfg`` whose method node has the host's options."""
    method = resolve_host_options(cfg["method"])
    return with_batchformer(method["host"])(
        cfg={**cfg, "method": method}, train_counts=train_counts, **kwargs
    )
