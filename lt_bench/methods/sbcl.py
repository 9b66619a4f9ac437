"""SBCL: Subclass-balancing Contrastive Learning (Hou, Zhang, Wang, Zhou; ICCV 2023).

methods.md §5, official code ``JackHck/SBCL`` (``SimCLR/main.py``, ``loss.py``, ``linear_classify.py``).
Two stages in one run: ``trainer.max_epochs = stage1_epochs + stage2_epochs`` (a run given fewer
epochs, e.g. a smoke run, shortens both stages proportionally, keeping at least one stage-2 epoch).

**Stage 1** (epochs ``0 .. stage1_epochs - 1``): ResNet encoder -> MLP head ``Linear(d, d)``-ReLU-
``Linear(d, 128)`` -> L2-normalise, on two SimCLR views per image (one forward of the ``2B`` views).

* Warm-up (the first ``warmup_epochs``): plain SupCon on the class labels, τ = 0.1.
* Then, every ``step`` epochs, each class c is split by cosine k-means (on the eval-mode projections of
  one SimCLR view of each of its training images, as the official ``input[0]``) into
  ``K_c = max(1, floor(n_c / max(n_min, M)))`` subclasses, and the class temperatures are recomputed::

      d_c = mean_{i in c} ‖v_i − μ_c‖₂ / log(n_c + 10),   d ← clip(d, P20(d), P80(d))
      τ_c = τ · d_c / mean(d)    (τ_c = τ for a class with one subclass)

* Loss over the 2B anchors a (class y_a, subclass s_a, v = projections, A(a) = all k ≠ a)::

      L_sub(a) = −mean_{p≠a, s_p=s_a} log( e^{v_a·v_p/τ} / Σ_{k∈A(a)} e^{v_a·v_k/τ} )
      L_cls(a) = −mean_{p∈P(a)} log( e^{v_a·v_p/τ_{y_a}} / Σ_{k∈N(a)} e^{v_a·v_k/τ_{y_a}} )
          P(a) = {p : y_p = y_a, s_p ≠ s_a} ∪ {a's other view},  N(a) = {k : s_k ≠ s_a} ∪ {a's other view}
      L = mean_a [ (τ / τ_base) · L_sub(a) + γ · L_cls(a) ]        (τ_base = 0.07, γ = 0.25)

**Stage 2** (the last ``stage2_epochs``): the encoder is frozen (BN in eval mode, no gradient, lr 0);
a NormedLinear on the encoder features learns with LDAM (max_m 0.5, s 30) and class-balanced weights
(β = 0.9999) from its first epoch, on crop + flip views. Prediction: that classifier on the encoder
features.

Subclass labels and class temperatures live in buffers (updated in place, outside the training step)
and are read with ``batch_indices``, so the step can run inside a CUDA graph.

Deviations from the official code (also in configs/method/sbcl.yaml):

* each class's samples are selected by label, not by assuming per-class blocks in dataset order; the
  k-means result does not depend on the dataset order (samples are sorted along a seeded direction
  before the seeded initialisation);
* ``kmeans_init: kmeans++`` (cosine D² sampling) is offered besides the official uniform choice of
  initial points (``random``, the default, as ``kmeans_gpu.initialize``), which can leave clusters merged;
  ``cluster_views: clean`` clusters the un-augmented images instead of one SimCLR view each;
* the first clustering runs at epoch ``warmup_epochs`` and then every ``step`` epochs (official:
  epochs ``e ≥ warm_epochs`` with ``e % step == 0``, the same for the official 10 / 10);
* stage 2 keeps the last epoch's classifier (official: best test accuracy). Its batch size is
  ``stage2_batch_size`` (official 128; stage 1 uses ``data.batch_size``, 1024).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from lt_bench.data.augment import random_crop, random_hflip, to_normalized_nchw
from lt_bench.data.base import ArraySplit
from lt_bench.data.policies import simclr_view
from lt_bench.errors import ConfigError
from lt_bench.methods.base import BaseMethod, Outputs, epoch_seed
from lt_bench.methods.baselines import class_balanced_weights, ldam_margins
from lt_bench.methods.tensor_ops import one_hot
from lt_bench.models import NormedLinear
from lt_bench.registry import register_method
from lt_bench.schedules import lr_factor, warmup_step

#: base temperature of the warm-up SupCon (official ``SupConLoss`` default: the loss factor τ / 0.1 is 1)
WARMUP_BASE_TEMPERATURE = 0.1
KMEANS_INITS = ("kmeans++", "random")
CLUSTER_VIEWS = ("augmented", "clean")


# --- subclasses ------------------------------------------------------------------------------------
def stage_epochs(stage1: int, stage2: int, total: int) -> tuple[int, int]:
    """Epochs of (stage 1, stage 2) in a run of ``total`` epochs: as configured when they add up,
    else scaled to ``total`` with ``stage2 = max(1, round(total * stage2 / (stage1 + stage2)))``."""
    if stage1 + stage2 == total:
        return stage1, stage2
    second = min(total, max(1, round(total * stage2 / (stage1 + stage2))))
    return total - second, second


def subclass_counts(class_counts: Sequence[int], min_size: int) -> list[int]:
    """``K_c = max(1, floor(n_c / max(n_min, M)))`` with ``M = min_size`` (official ``--cluster``)."""
    size = max(min(class_counts), min_size)
    return [max(1, int(n) // size) for n in class_counts]


def cosine_distance(x: Tensor, centres: Tensor) -> Tensor:
    """``d(x_i, c_j) = 1 − x_i·c_j / (‖x_i‖ ‖c_j‖)`` for ``x`` ``[n, d]`` and ``centres`` ``[k, d]``."""
    return 1.0 - F.normalize(x, dim=1) @ F.normalize(centres, dim=1).T


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding with the cosine distance: the first centre uniformly, each next one with
    probability ``∝ D(x)²`` (``D`` = distance to the closest centre chosen so far)."""
    first = torch.randint(x.shape[0], (1,), generator=generator, device=x.device)
    centres = [x[first]]
    closest = cosine_distance(x, centres[0])[:, 0]
    for _ in range(1, k):
        weights = closest.clamp(min=0).square() + 1e-12  # all-duplicate points: uniform
        pick = x[torch.multinomial(weights, 1, generator=generator)]
        centres.append(pick)
        closest = torch.minimum(closest, cosine_distance(x, pick)[:, 0])
    return torch.cat(centres)


def cosine_kmeans(
    x: Tensor,
    k: int,
    generator: torch.Generator,
    *,
    init: str = "kmeans++",
    tol: float = 1e-3,
    max_iter: int = 35,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with the cosine distance: ``(assignment [n], distance to its centre [n])``.

    As the official ``kmeans_gpu.kmeans``: assign each point to its closest centre, move each centre
    to the mean of its points (an empty cluster takes a random point), stop once
    ``(Σ_j ‖c_j − c_j^prev‖)² < tol`` or after ``max_iter`` assignments; the returned assignment is
    the last one. The points are first sorted along a seeded random direction, so the result does
    not depend on the order of the rows of ``x`` (it is returned in that order).
    """
    n = x.shape[0]
    direction = torch.randn(x.shape[1], generator=generator, device=x.device, dtype=x.dtype)
    order = torch.argsort((x * direction).sum(1), stable=True)
    xs = x[order]
    if init == "kmeans++":
        centres = kmeans_plus_plus(xs, k, generator)
    else:
        centres = xs[torch.randperm(n, generator=generator, device=x.device)[:k]]
    for _ in range(max_iter):
        distance = cosine_distance(xs, centres)
        assign = distance.argmin(1)
        members = F.one_hot(assign, k).to(xs.dtype)  # deterministic sums (no atomics)
        size = members.sum(0)[:, None]
        spare = xs[torch.randint(n, (k,), generator=generator, device=x.device)]
        moved = torch.where(size > 0, members.T @ xs / size.clamp(min=1), spare)
        shift = (moved - centres).norm(dim=1).sum()
        centres = moved
        if float(shift) ** 2 < tol:
            break
    result, dist = torch.empty_like(assign), torch.empty_like(xs[:, 0])
    result[order], dist[order] = assign, distance.gather(1, assign[:, None])[:, 0]
    return result, dist


def cluster_subclasses(
    features: Tensor,
    targets: Tensor,
    counts: Sequence[int],
    generator: torch.Generator,
    **kmeans: Any,
) -> tuple[Tensor, float]:
    """Global subclass ids ``[N]`` and the mean cosine distance to the centre (k-means classes only).

    Class c (its samples selected by label) is split into ``counts[c]`` subclasses by
    ``cosine_kmeans``; ids are offset by ``Σ_{c'<c} K_{c'}`` so they are unique across classes.
    The mean distance is NaN when no class has more than one subclass.
    """
    labels = torch.empty_like(targets)
    offset, total, clustered = 0, 0.0, 0
    for c, k in enumerate(counts):
        idx = (targets == c).nonzero()[:, 0]
        if k > 1:
            assign, distance = cosine_kmeans(features[idx], k, generator, **kmeans)
            labels[idx] = assign + offset
            total += float(distance.sum())
            clustered += idx.numel()
        else:
            labels[idx] = offset
        offset += k
    return labels, total / clustered if clustered else math.nan


def class_temperatures(
    features: Tensor,
    targets: Tensor,
    counts: Sequence[int],
    temperature: float,
    percentiles: Sequence[float] = (20.0, 80.0),
) -> Tensor:
    """``τ_c = τ · d_c / mean(d)`` with ``d_c = mean_{i∈c} ‖v_i − μ_c‖₂ / log(n_c + 10)`` clipped to the
    ``percentiles`` of ``d`` over classes (linear interpolation, as ``np.percentile``); ``τ_c = τ`` for
    classes with one subclass (``counts[c] == 1``)."""
    members = F.one_hot(targets, len(counts)).to(features.dtype)  # [N, C]
    n = members.sum(0)
    centres = members.T @ features / n[:, None]
    spread = members.T @ (features - centres[targets]).norm(dim=1) / n
    density = spread / torch.log(n + 10)
    q = torch.tensor([p / 100 for p in percentiles], dtype=density.dtype, device=density.device)
    low, high = torch.quantile(density, q)
    density = density.clamp(low, high)
    single = torch.tensor([k == 1 for k in counts], device=density.device)
    return torch.where(single, torch.full_like(density, temperature), temperature * density / density.mean())


# --- losses ----------------------------------------------------------------------------------------
def view_masks(batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(not_self, other_view)`` boolean ``[2B, 2B]`` masks for views stacked ``[view 1; view 2]``."""
    idx = torch.arange(2 * batch, device=device)
    return idx[:, None] != idx[None, :], ((idx + batch) % (2 * batch))[:, None] == idx[None, :]


def contrastive_nll(logits: Tensor, positives: Tensor, support: Tensor) -> Tensor:
    """Per anchor a: ``−mean_{p∈P(a)} log( e^{l_ap} / Σ_{k∈S(a)} e^{l_ak} )`` (``P``, ``S``: boolean rows)."""
    lse = logits.masked_fill(~support, float("-inf")).logsumexp(dim=1)
    pos = positives.to(logits.dtype)
    return lse - (logits * pos).sum(1) / pos.sum(1)


def supcon_loss(z: Tensor, labels: Tensor, temperature: float, base_temperature: float) -> Tensor:
    """SupCon (Khosla et al. 2020) over the 2B views ``z`` (unit rows, view 1 then view 2)::

    L = mean_a −(τ / τ_base) mean_{p≠a, y_p=y_a} log( e^{v_a·v_p/τ} / Σ_{k≠a} e^{v_a·v_k/τ} )
    """
    y = labels.repeat(2)
    not_self, _ = view_masks(labels.shape[0], z.device)
    nll = contrastive_nll(z @ z.T / temperature, (y[:, None] == y[None, :]) & not_self, not_self)
    return (temperature / base_temperature) * nll.mean()


def sbcl_loss(
    z: Tensor,
    labels: Tensor,
    subclasses: Tensor,
    anchor_temperature: Tensor,
    temperature: float,
    base_temperature: float,
    gamma: float,
) -> dict[str, Tensor]:
    """Bi-granularity loss ``L = mean_a [(τ/τ_base) L_sub(a) + γ L_cls(a)]`` (module docstring).

    ``z``: unit projections ``[2B, d]`` (view 1 then view 2); ``labels``, ``subclasses`` and the
    anchors' class temperatures ``τ_{y_a}`` are per image ``[B]``. Returns ``loss`` and the mean
    ``subclass`` and ``class`` terms.
    """
    b = labels.shape[0]
    y, s, tau = labels.repeat(2), subclasses.repeat(2), anchor_temperature.repeat(2)
    not_self, other_view = view_masks(b, z.device)
    same_sub = s[:, None] == s[None, :]
    same_cls = y[:, None] == y[None, :]
    sim = z @ z.T
    sub = contrastive_nll(sim / temperature, same_sub & not_self, not_self)
    cls = contrastive_nll(sim / tau[:, None], (same_cls & ~same_sub) | other_view, ~same_sub | other_view)
    loss = ((temperature / base_temperature) * sub + gamma * cls).mean()
    return {"loss": loss, "subclass": sub.mean(), "class": cls.mean()}


def ldam_cross_entropy(
    logits: Tensor, targets: Tensor, margins: Tensor, scale: float, weight: Tensor | None
) -> Tensor:
    """LDAM (Cao et al. 2019) on scaled cosine logits ``z = s·cos``: ``CE_w(z − s·m_y·onehot(y), y)``."""
    shift = one_hot(targets, logits.shape[1]) * (scale * margins[targets]).unsqueeze(1)
    return F.cross_entropy(logits - shift, targets, weight=weight)


# --- the method ------------------------------------------------------------------------------------
@register_method(
    "sbcl",
    paper="Hou et al., SBCL (Subclass-balancing Contrastive Learning for Long-tailed Recognition), ICCV 2023",
)
class SBCL(BaseMethod):
    """Two-stage SBCL (module docstring). Options (``method.*``): see configs/method/sbcl.yaml."""

    raw_train_batches = True
    views_capturable = True  # SimCLR views, then crop + flip: batched tensor ops, graph-safe on a GPU

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        m = self.method_cfg
        if m.stage1_epochs < 0 or m.stage2_epochs < 1:
            raise ConfigError("sbcl: method.stage1_epochs must be >= 0 and method.stage2_epochs >= 1")
        self.stage1_epochs, self.stage2_epochs = stage_epochs(
            m.stage1_epochs, m.stage2_epochs, self.cfg.trainer.max_epochs
        )
        if (self.stage1_epochs, self.stage2_epochs) != (m.stage1_epochs, m.stage2_epochs):
            print(
                f"sbcl: trainer.max_epochs={self.cfg.trainer.max_epochs} is not method.stage1_epochs + "
                f"method.stage2_epochs = {m.stage1_epochs + m.stage2_epochs}; shortened proportionally to "
                f"{self.stage1_epochs} + {self.stage2_epochs} epochs",
                flush=True,
            )
        if m.cluster_views not in CLUSTER_VIEWS:
            raise ConfigError(f"method.cluster_views='{m.cluster_views}'; valid: {', '.join(CLUSTER_VIEWS)}")
        if m.kmeans_init not in KMEANS_INITS:
            raise ConfigError(f"method.kmeans_init='{m.kmeans_init}'; valid: {', '.join(KMEANS_INITS)}")
        if m.kmeans_iters < 1 or m.step < 1:
            raise ConfigError("sbcl: method.kmeans_iters and method.step must be >= 1")

    def build_model(self) -> None:
        """Encoder, projection head (stage 1) and NormedLinear × s (stage 2), plus the SBCL state."""
        m = self.method_cfg
        self.backbone = self.build_backbone()
        dim = self.backbone.feature_dim
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, m.feat_dim))
        self.classifier = NormedLinear(dim, self.num_classes, scale=m.s)
        self.subclasses_per_class = subclass_counts(self.class_counts.long().tolist(), m.cluster)
        num_train = int(self.class_counts.sum())
        self.register_buffer("subclass_labels", torch.zeros(num_train, dtype=torch.long))
        self.register_buffer("temperatures", torch.full((self.num_classes,), float(m.temperature)))
        self.register_buffer("kmeans_distance", torch.tensor(math.nan))
        self.register_buffer("clustered_at", torch.tensor(-1))
        self.register_buffer("margins", ldam_margins(self.class_counts, m.max_m), persistent=False)
        self.register_buffer(
            "cb_weights", class_balanced_weights(self.class_counts, m.beta), persistent=False
        )

    def forward(self, images: Tensor) -> Outputs:
        features = self.backbone(images)
        return {"logits": self.classifier(features), "features": features}

    def project(self, features: Tensor) -> Tensor:
        """``normalize(head(features))``: the 128-d contrastive embedding."""
        return F.normalize(self.projector(features), dim=1)

    # --- stages --------------------------------------------------------------------------------
    def stage(self) -> str:
        """``supcon`` (warm-up), ``sbcl`` (rest of stage 1) or ``classifier`` (stage 2)."""
        m = self.method_cfg
        if self.epoch >= self.stage1_epochs:
            return "classifier"
        return "supcon" if self.epoch < m.warmup_epochs else "sbcl"

    def train_batch_size(self, default: int) -> int:
        """Stage 1 at ``data.batch_size`` (1024), stage 2 at ``method.stage2_batch_size`` (128)."""
        return self.method_cfg.stage2_batch_size if self.stage() == "classifier" else default

    def step_variant(self) -> str:
        return self.stage()

    def clusters_now(self) -> bool:
        """Re-cluster at epoch ``warmup_epochs`` and every ``step`` epochs after it (stage 1 only)."""
        m = self.method_cfg
        return self.stage() == "sbcl" and (self.epoch - m.warmup_epochs) % m.step == 0

    def on_train_epoch_start(self) -> None:
        """Reseed; re-cluster when due; in stage 2 put the frozen encoder's BN layers in eval mode."""
        super().on_train_epoch_start()
        if self.clusters_now():
            self.recluster()
        if self.stage() == "classifier":
            self.backbone.eval()

    def _normalize(self, images: Tensor) -> Tensor:
        return to_normalized_nchw(images, self.cfg.dataset.mean, self.cfg.dataset.std)

    @torch.no_grad()
    def embed_training_set(self) -> tuple[Tensor, Tensor]:
        """Eval-mode projections ``[N, feat_dim]`` of the training images and their labels: of one
        SimCLR view each (``cluster_views: augmented``, as the official cluster loader) or of the
        images themselves (``clean``). The views come from their own seed (the epoch's training
        stream is left as it was)."""
        split = self.train_split
        if not isinstance(split, ArraySplit):
            raise ConfigError(
                "sbcl clustering supports in-memory datasets only (CIFAR-LT, Fashion-MNIST-LT); "
                "image-file datasets (ImageNet-LT, iNaturalist, Places-LT) are not supported"
            )
        was_training = self.training
        self.eval()
        size = self.cfg.data.batch_size
        view = simclr_view if self.method_cfg.cluster_views == "augmented" else (lambda x: x)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(epoch_seed(int(self.cfg.seed) + 1, self.epoch, 0))
            chunks = [
                self.project(
                    self.backbone(
                        self._normalize(view(torch.from_numpy(split.images[i : i + size]).to(self.device)))
                    )
                )
                for i in range(0, len(split), size)
            ]
        self.train(was_training)
        return torch.cat(chunks), torch.from_numpy(split.targets).to(self.device)

    def recluster(self) -> None:
        """Per-class cosine k-means into subclasses and new class temperatures (buffers, in place)."""
        m = self.method_cfg
        features, targets = self.embed_training_set()
        generator = torch.Generator(device=self.device).manual_seed(
            epoch_seed(int(self.cfg.seed) + 2, self.epoch, 0)  # not the epoch's augmentation seed
        )
        labels, distance = cluster_subclasses(
            features,
            targets,
            self.subclasses_per_class,
            generator,
            init=m.kmeans_init,
            tol=m.kmeans_tol,
            max_iter=m.kmeans_iters,
        )
        temperatures = class_temperatures(
            features, targets, self.subclasses_per_class, m.temperature, m.temperature_percentiles
        )
        self.subclass_labels.copy_(labels)
        self.temperatures.copy_(temperatures)
        self.kmeans_distance.fill_(distance)
        self.clustered_at.fill_(self.epoch)

    # --- training ------------------------------------------------------------------------------
    def train_views(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 1: ``cat([simclr(x), simclr(x)])``; stage 2: crop (``data.crop_padding``) + flip."""
        if images.dtype != torch.uint8:
            raise ConfigError("sbcl needs raw uint8 training batches (in-memory datasets such as CIFAR-LT)")
        if self.stage() == "classifier":
            return self._normalize(random_hflip(random_crop(images, self.cfg.data.crop_padding))), targets
        return self._normalize(torch.cat([simclr_view(images), simclr_view(images)])), targets

    def training_loss(self, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Stage 1: SupCon / SBCL on the 2B views; stage 2: LDAM + CB weights on frozen features."""
        m = self.method_cfg
        stage = self.stage()
        if stage == "classifier":
            with torch.no_grad():
                features = self.backbone(images)
            loss = ldam_cross_entropy(self.classifier(features), targets, self.margins, m.s, self.cb_weights)
            return loss, {}
        z = self.project(self.backbone(images))
        if stage == "supcon":
            return supcon_loss(z, targets, m.temperature, WARMUP_BASE_TEMPERATURE), {}
        if self.batch_indices is None:
            raise ConfigError("sbcl needs the training-set indices of each batch (method.batch_indices)")
        terms = sbcl_loss(
            z,
            targets,
            self.subclass_labels[self.batch_indices],
            self.temperatures[targets],
            m.temperature,
            m.base_temperature,
            m.grama,
        )
        return terms["loss"], {"subclass": terms["subclass"].detach(), "class": terms["class"].detach()}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Encoder + head (``optim.lr``, ``optim.weight_decay``) and the stage-2 classifier."""
        m = self.method_cfg
        return [
            {"params": [*self.backbone.parameters(), *self.projector.parameters()]},
            {
                "params": list(self.classifier.parameters()),
                "lr": m.stage2_lr,
                "weight_decay": m.stage2_weight_decay,
            },
        ]

    def lr_factors(self) -> list[Callable[[int], float]]:
        """Per-group multipliers: the ``schedule`` over stage 1 then 0; 0 then the stage-2 warm-up/steps."""
        m, s1 = self.method_cfg, self.stage1_epochs
        first = lr_factor(OmegaConf.to_container(self.cfg.schedule), self.cfg.optim.lr, max(1, s1))
        second = warmup_step(m.stage2_warmup_epochs, m.stage2_milestones, m.stage2_gamma)
        return [lambda e: first(e) if e < s1 else 0.0, lambda e: 0.0 if e < s1 else second(e - s1)]

    # --- record --------------------------------------------------------------------------------
    def record_extras(self) -> dict[str, Any]:
        """Stage lengths, subclass counts, the last clustering's temperatures and k-means distance."""
        clustered = int(self.clustered_at) >= 0
        temperatures = self.temperatures.tolist()
        distance = float(self.kmeans_distance)
        return {
            "sbcl_stage1_epochs": self.stage1_epochs,
            "sbcl_stage2_epochs": self.stage2_epochs,
            "sbcl_num_subclasses": sum(self.subclasses_per_class),
            "sbcl_subclasses_per_class": self.subclasses_per_class,
            "sbcl_last_clustering_epoch": int(self.clustered_at) if clustered else None,
            "sbcl_kmeans_mean_cosine_distance": None if math.isnan(distance) else distance,
            "sbcl_class_temperatures": temperatures if clustered else None,
            "sbcl_class_temperature_range": [min(temperatures), max(temperatures)] if clustered else None,
        }
