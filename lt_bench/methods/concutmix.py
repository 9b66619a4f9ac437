"""ConCutMix: Contrastive CutMix on top of BCL (Pan et al., TIP 2024; methods.md §1.6), and ConCutMix + CAR.

Official code ``PanHaulin/ConCutMix``; the files read are those of its co-author's copy
``YuMJie/ConCutMix`` (``main.py``, ``loss/{logitadjust,contrastive}.py``, ``models/resnet32.py``,
``dataset/cifar.py``, ``run_files/*.sh``), built on BCL (``FlamieZhu/Balanced-Contrastive-Learning``,
``loss/contrastive.py``, ``models/resnext.py``). The model is a backbone with three heads on its pooled
feature ``h``: the classifier ``z = W h``, a projection MLP ``f̃ = g(h)`` (Linear-BN-ReLU-Linear to
``feat_dim``, hidden width ``head_hidden``: 512 on CIFAR as ``BCLModel_32``) and a second MLP that maps
the classifier weights to class centres ``c̃_k = g_c(w_k)``; ``f = f̃/‖f̃‖`` and ``c_k = c̃_k/‖c̃_k‖``.

Every image gives three views: a classification view ``x⁰`` and two contrastive views ``x¹, x²``. With
probability ``cutmix_prob`` the batch is CutMixed: one box of area ratio ``1 − λ`` (``λ ~ Beta(1, 1)``, then
corrected to the clipped box's area) from a partner image ``x_b`` (drawn class-balanced, as the official
``Foreground_sampler balance``) is pasted into every ``x⁰_a``; the contrastive views stay unmixed. Loss::

    L = α · CE_LA(z(x⁰), ŷ) + β · BalSCL(f(x¹), f(x²), c; y_a)
    CE_LA(z, ŷ) = −(1/B) Σ_i Σ_k ŷ_ik log softmax(z_i + τ log π)_k                  (π_k = n_k / N)
    ỹ = λ e_{y_a} + (1 − λ) e_{y_b}                       (area label; e_{y_a} for an unmixed batch)
    ŷ = ω a(ỹ) norm₁(topK_k 1/‖f̃ − c̃_k‖₂) + (1 − ω a(ỹ)) ỹ   mixed batches, epoch > l_d_warm (0-indexed)
    ŷ = ỹ                                                   otherwise
    a(ỹ) = log(Σ_k n_k ỹ_k) / Σ_k log n_k,   ω = scaling_factor[0] / scaling_factor[1]

``f̃`` (of the mixed classification view) and ``c̃`` are un-normalised and detached in ``ŷ``. BalSCL: the
``2B`` contrastive features are anchors, the keys are those features plus the ``C`` centres (labelled
``0..C−1``); with ``K(y)`` the number of keys of class ``y`` (``2·#y in batch + 1``)::

    D_i = Σ_{j ≠ i} exp(f_i·k_j / t) / (K(y_j) − [y_j = y_i])
    BalSCL = −(1/2B) Σ_i (1/|P_i|) Σ_{p ∈ P_i} log( exp(f_i·k_p / t) / D_i )

with ``P_i`` the keys ``≠ i`` of class ``y_i`` (class-averaged denominator). Prediction uses the raw logits.

``concutmix_car`` adds CAR (``lt_bench.methods.car``): ``L += λ_car · σ_max(C̄_t diag(w))`` on the
classification logits, with a hard label per sample chosen by ``method.car_label`` (``target_a``: the label of
the image pasted onto; ``argmax_semantic``: ``argmax ŷ``; ``skip_mixed``: no CAR term and no EMA update on
mixed batches).

Deviations from the official code (also in ``configs/method/concutmix.yaml``):

* AutoAugment is lt-bench's batched torchvision CIFAR-10 policy with fill 128 (the official
  ``CIFAR10Policy`` is DeepVoltaire's, which differs in a few op details); the contrastive views' blur is a
  9-tap Gaussian (PIL ``GaussianBlur(radius=σ)`` officially); on image files RandAugment is torchvision's,
  not timm's ``rand-n2-m10-mstd0.5``;
* the class-balanced partner is drawn from the training split for in-memory datasets (as official); on
  image-file datasets it is drawn from the batch with probability ∝ ``1/n_y`` (a within-batch approximation);
* the official CIFAR loader subsamples CIFAR-LT with ``rand_number=10``; lt-bench uses the standard seed-0
  subset (methods.md §0.1); the evaluated model is the last epoch's (official: best test accuracy);
* a distance ``‖f̃ − c̃_k‖`` of 0 is clamped to 1e-12 (the official code would divide by zero);
* class centres are per class, ``g_c(w_k)`` from each classifier row (the paper, BCL, and the official
  ``--use_norm`` branch). The official CIFAR branch maps ``fc.weight.T`` (``[64, C]``: one row per feature
  dimension) and keeps the first ``C`` rows, which is not per class (and fails for C > 64 on one GPU);
* CIFAR-100 is normalised with its own mean/std (the official code uses CIFAR-10's for both);
* BatchNorm sees the whole batch of ``3B`` views (classification view, two contrastive views) in one
  pass. The official code runs ``DataParallel`` over 4 GPUs by default: each BatchNorm normalises one
  quarter of that batch (the first quarter holds classification views only, the last two contrastive
  views only) and keeps the first quarter's running statistics. ``method.data_parallel_replicas=4``
  reproduces that on one device (``lt_bench.models.data_parallel``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lt_bench.data import policies
from lt_bench.data.augment import random_crop, random_hflip, to_normalized_nchw
from lt_bench.data.base import ArraySplit
from lt_bench.errors import ConfigError
from lt_bench.methods.base import BaseMethod
from lt_bench.methods.car import CARRegularizer
from lt_bench.methods.tensor_ops import one_hot
from lt_bench.models import NormedLinear
from lt_bench.models.data_parallel import replica_forward
from lt_bench.registry import register_method

CAR_LABELS = ("target_a", "argmax_semantic", "skip_mixed")
PARTNERS = ("balanced", "batch")
CLS_AUGMENTS = ("autoaugment", "randaugment")
#: smallest distance in ``1 / ‖f̃ − c̃_k‖`` (ours: the official code has no guard)
MIN_DISTANCE = 1e-12


# --- losses and labels ------------------------------------------------------------------------------
def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is in a lower precision (bf16 autocast), else unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def logit_adjusted_soft_ce(logits: Tensor, soft_targets: Tensor, class_counts: Tensor, tau: float) -> Tensor:
    """``−(1/B) Σ_i Σ_k ŷ_ik log softmax(z_i + τ log π)_k`` with ``π = n / N`` (``cutmix_cross_entropy``).

    With ``ŷ = λ e_a + (1 − λ) e_b`` this is ``λ CE_LA(z, a) + (1 − λ) CE_LA(z, b)`` (official pre-warm-up).
    """
    prior = (class_counts / class_counts.sum()).log()
    log_probs = F.log_softmax(at_least_fp32(logits) + tau * prior, dim=1)
    return -(soft_targets * log_probs).sum(dim=1).mean()


def balanced_scl(features: Tensor, targets: Tensor, centers: Tensor, temperature: float) -> Tensor:
    """BalSCL of BCL with class centres as extra keys (module docstring).

    ``features`` ``[2B, D]``: the L2-normalised projections of view 1 of the ``B`` images, then of view 2;
    ``targets`` ``[B]``; ``centers`` ``[C, D]`` L2-normalised; returns the mean over the ``2B`` anchors.
    """
    features, centers = at_least_fp32(features), at_least_fp32(centers)  # exp(·/t) magnifies rounding
    num_anchors, num_classes = features.shape[0], centers.shape[0]
    labels = torch.cat([targets, targets, torch.arange(num_classes, device=targets.device)])
    keys = torch.cat([features, centers])
    logits = features @ keys.T / temperature
    not_self = 1.0 - torch.eye(num_anchors, num_anchors + num_classes, device=features.device)
    positives = (labels[:num_anchors, None] == labels[None, :]).to(features.dtype) * not_self
    keys_per_class = one_hot(labels, num_classes, features.dtype).sum(dim=0)
    class_sizes = keys_per_class[labels][None, :] - positives  # K(y_j) - [y_j = y_i]
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    denominator = (logits.exp() * not_self / class_sizes).sum(dim=1, keepdim=True)
    log_prob = logits - denominator.log()
    return -((positives * log_prob).sum(dim=1) / positives.sum(dim=1)).mean()


def area_label(targets_a: Tensor, targets_b: Tensor, lam: Tensor, num_classes: int) -> Tensor:
    """``ỹ = λ e_{y_a} + (1 − λ) e_{y_b}`` (``[B, C]``)."""
    return lam * one_hot(targets_a, num_classes) + (1.0 - lam) * one_hot(targets_b, num_classes)


def semantic_label(
    features: Tensor, centers: Tensor, area: Tensor, class_counts: Tensor, topk: int, omega: float
) -> Tensor:
    """``ŷ = ω a(ỹ) norm₁(topK 1/‖f̃ − c̃_k‖₂) + (1 − ω a(ỹ)) ỹ``, ``a(ỹ) = log(Σ_k n_k ỹ_k) / Σ_k log n_k``.

    ``features`` ``[B, D]`` and ``centers`` ``[C, D]`` are the un-normalised projections (detached here);
    the top-K keeps every similarity not below the K-th largest (ties kept, as the official mask).
    """
    counts = class_counts.to(area.dtype)
    weight = ((area * counts).sum(dim=1, keepdim=True).log() / counts.log().sum()) * omega
    distance = torch.cdist(  # the direct difference, as the official code (no matmul expansion)
        features.detach().float(), centers.detach().float(), compute_mode="donot_use_mm_for_euclid_dist"
    )
    similarity = 1.0 / distance.clamp(min=MIN_DISTANCE)
    kth = similarity.topk(topk, dim=1).values[:, -1:]
    similarity = torch.where(similarity < kth, torch.zeros_like(similarity), similarity)
    return weight * F.normalize(similarity, p=1, dim=1) + (1.0 - weight) * area


def car_labels(mode: str, targets_a: Tensor, soft_label: Tensor) -> Tensor:
    """CAR's hard label per sample: ``y_a`` (``target_a``, ``skip_mixed``) or ``argmax_k ŷ_k``."""
    if mode == "argmax_semantic":
        return soft_label.argmax(dim=1)
    return targets_a


# --- CutMix -------------------------------------------------------------------------------------------
def cutmix_box(height: int, width: int, lam: Tensor, cy: Tensor, cx: Tensor) -> tuple[Tensor, Tensor]:
    """The official ``rand_bbox`` as tensor ops: the box mask ``[H, W]`` and the area-corrected λ.

    Sides ``int(H sqrt(1 − λ))`` and ``int(W sqrt(1 − λ))`` around the centre ``(cy, cx)`` (drawn
    uniformly over the pixels), ends ``centre ± side // 2`` clipped to the image;
    ``λ ← 1 − box area / (H W)``.
    No host sync, so a CUDA graph can hold it.
    """
    ratio = (1.0 - lam.double()).sqrt()
    cut_h, cut_w = (height * ratio).floor().long(), (width * ratio).floor().long()
    top, bottom = (cy - cut_h // 2).clamp(min=0), (cy + cut_h // 2).clamp(max=height)
    left, right = (cx - cut_w // 2).clamp(min=0), (cx + cut_w // 2).clamp(max=width)
    rows = torch.arange(height, device=cy.device).view(-1, 1)
    cols = torch.arange(width, device=cy.device).view(1, -1)
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return inside, 1.0 - ((bottom - top) * (right - left)).double() / (height * width)


# --- image-file views ---------------------------------------------------------------------------------
class ThreeViews:
    """BCL/ConCutMix ``sim-sim`` views of one PIL image, stacked ``[3, 3, size, size]`` (ImageNet-LT recipe).

    Classification: RandomResizedCrop(0.08-1) + flip + ColorJitter(0.4, 0.4, 0.4, 0) + RandAugment(n, m).
    Contrastive (twice): RandomResizedCrop + flip + ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 + grayscale
    with p 0.2. RandAugment is torchvision's (official: timm's ``rand-n2-m10-mstd0.5``).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], ops: int, magnitude: int):
        from torchvision import transforms as T

        tail = [T.ToTensor(), T.Normalize(mean, std)]
        self.classification = T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.08, 1.0)),
                T.RandomHorizontalFlip(),
                T.ColorJitter(0.4, 0.4, 0.4, 0.0),
                T.RandAugment(ops, magnitude),
                *tail,
            ]
        )
        self.contrastive = T.Compose(
            [
                T.RandomResizedCrop(size),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                *tail,
            ]
        )

    def __call__(self, image: Any) -> Tensor:
        return torch.stack([self.classification(image), self.contrastive(image), self.contrastive(image)])


def projection_head(dim_in: int, feat_dim: int, hidden: int | None = None) -> nn.Sequential:
    """BCL's MLP: Linear(d, h) - BatchNorm1d - ReLU - Linear(h, feat_dim), ``h = hidden or d``."""
    hidden = hidden or dim_in
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, feat_dim)
    )


# --- the methods --------------------------------------------------------------------------------------
@register_method(
    "concutmix",
    paper="Pan et al., Enhanced Long-Tailed Recognition with Contrastive CutMix Augmentation, TIP 2024",
)
class ConCutMix(BaseMethod):
    """BCL (LA-CE + BalSCL with class centres) with CutMix and semantically consistent labels.

    ``train_views`` builds the three views and draws the CutMix decision, box and partner on the device;
    ``training_loss(views, targets_a, targets_b, lam, mixed)`` is branch-free on data (an unmixed batch
    has ``lam = 1``, ``mixed = 0`` and ``targets_b = targets_a``).
    """

    raw_train_batches = True
    views_capturable = True  # AutoAugment / SimCLR views (graph-safe on a GPU), CutMix drawn on the device

    def build_model(self) -> None:
        super().build_model()
        m = self.method_cfg
        self._check_options()
        if isinstance(self.classifier, nn.Linear):
            self.classifier.reset_parameters()  # BCLModel_32's fc keeps PyTorch's default initialisation
        self.head = projection_head(self.backbone.feature_dim, m.feat_dim, m.head_hidden)
        self.center_head = projection_head(self.backbone.feature_dim, m.feat_dim, m.head_hidden)
        self._partner_pool: tuple[Tensor, ...] | None = None

    def _check_options(self) -> None:
        m = self.method_cfg
        choices = {"partner": PARTNERS, "cls_augment": CLS_AUGMENTS}
        for key, valid in choices.items():
            if m[key] not in valid:
                raise ConfigError(f"method.{key}='{m[key]}'; valid: {', '.join(valid)}")
        if not 1 <= m.topk <= self.num_classes:
            raise ConfigError(
                f"method.topk={m.topk} must be in [1, {self.num_classes}] (the number of classes)"
            )
        if len(m.scaling_factor) != 2 or m.scaling_factor[1] == 0:
            raise ConfigError(f"method.scaling_factor={list(m.scaling_factor)} must be [a, b] with b != 0")
        replicas = m.data_parallel_replicas
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise ConfigError(f"method.data_parallel_replicas={replicas!r} must be an integer >= 1")

    # --- views ---------------------------------------------------------------------------------
    def _normalize(self, images: Tensor) -> Tensor:
        return to_normalized_nchw(images, self.cfg.dataset.mean, self.cfg.dataset.std)

    def classification_view(self, images: Tensor) -> Tensor:
        """Crop (pad ``data.crop_padding``) + flip + AutoAugment CIFAR-10 (or RandAugment), normalised."""
        m = self.method_cfg
        x = random_hflip(random_crop(images, self.cfg.data.crop_padding))
        if m.cls_augment == "autoaugment":
            x = policies.autoaugment_cifar10(x, fill=m.autoaugment_fill)
        else:
            x = policies.randaugment(x, m.randaugment_ops, m.randaugment_magnitude)
        return self._normalize(x)

    def contrastive_view(self, images: Tensor) -> Tensor:
        """SimCLR view: RRC(0.2-1) + flip + jitter(0.4, 0.4, 0.4, 0.1) p 0.8 + gray p 0.2 + blur."""
        m = self.method_cfg
        x = policies.simclr_view(images, scale=(0.2, 1.0), blur_p=m.blur_p, blur_kernel=m.blur_kernel)
        return self._normalize(x)

    def file_train_transform(self, size: int, mean: Sequence[float], std: Sequence[float]) -> ThreeViews:
        """Image-file datasets: the three views per image in the loader workers (``[3, 3, size, size]``)."""
        m = self.method_cfg
        return ThreeViews(size, mean, std, m.randaugment_ops, m.randaugment_magnitude)

    def _partner_indices(self, targets: Tensor) -> Tensor:
        """Partner positions in the batch: a permutation (``batch``) or draws with probability ∝ 1/n_y."""
        if self.method_cfg.partner == "batch":
            return torch.randperm(len(targets), device=targets.device)
        weights = 1.0 / self.class_counts.to(targets.device)[targets]
        return torch.multinomial(weights, len(targets), replacement=True)

    def _balanced_draw(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``batch`` training images (uint8) and labels: a class uniformly, then an image of it uniformly."""
        if self._partner_pool is None or self._partner_pool[0].device != device:
            targets = torch.as_tensor(self.train_split.targets)
            counts = torch.bincount(targets, minlength=self.num_classes)
            order = torch.argsort(targets, stable=True)
            starts = counts.cumsum(0) - counts
            images = torch.from_numpy(self.train_split.images).to(device)
            present = torch.nonzero(counts).squeeze(1)  # classes with training images (once)
            self._partner_pool = (
                images,
                order.to(device),
                starts.to(device),
                counts.to(device),
                present.to(device),
            )
        images, order, starts, counts, present = self._partner_pool
        classes = present[torch.randint(len(present), (batch,), device=device)]
        offsets = (torch.rand(batch, device=device) * counts[classes]).long().clamp(max=counts[classes] - 1)
        picked = order[starts[classes] + offsets]
        return images[picked], classes

    def _raw_partner(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Classification views and labels of the partner images of a raw uint8 batch."""
        if self.method_cfg.partner == "balanced" and isinstance(self.train_split, ArraySplit):
            raw, labels = self._balanced_draw(len(targets), images.device)
            return self.classification_view(raw), labels
        idx = self._partner_indices(targets)
        return self.classification_view(images[idx]), targets[idx]

    def train_views(self, images: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
        """``(cat[x⁰, x¹, x²], y_a, y_b, λ, mixed)``; ``x⁰`` is CutMixed with probability ``cutmix_prob``."""
        if images.dtype == torch.uint8:  # in-memory datasets: views built here, on the device
            cls_view, view1, view2 = (
                self.classification_view(images),
                self.contrastive_view(images),
                self.contrastive_view(images),
            )
        elif images.dim() == 5 and images.shape[1] == 3:  # image-file datasets: ThreeViews
            cls_view, view1, view2 = images.unbind(1)
        else:
            raise ConfigError(
                "concutmix needs raw uint8 batches (in-memory datasets) or three views per image from its "
                "file_train_transform; got normalised single views"
            )
        # the partner views are built for every batch, mixed or not: a fixed amount of work keeps the
        # step one CUDA graph (the host-side decision of the official code would need a branch)
        if images.dtype == torch.uint8:
            partner, partner_targets = self._raw_partner(images, targets)
        else:
            idx = self._partner_indices(targets)
            partner, partner_targets = cls_view[idx], targets[idx]
        # the batch is mixed with probability cutmix_prob; decided on the device (no branch, no sync)
        device, (height, width) = targets.device, cls_view.shape[2:]
        mixed = torch.rand((), device=device) < self.method_cfg.cutmix_prob
        inside, lam = cutmix_box(
            height,
            width,
            torch.rand((), device=device),  # λ ~ Beta(1, 1)
            torch.randint(height, (), device=device),
            torch.randint(width, (), device=device),
        )
        cls_view = torch.where(mixed & inside, partner, cls_view)
        targets_b = torch.where(mixed, partner_targets, targets)
        lam = torch.where(mixed, lam, 1.0).float()
        return torch.cat([cls_view, view1, view2]), targets, targets_b, lam, mixed.float()

    # --- training ------------------------------------------------------------------------------
    def class_weights(self) -> Tensor:
        """Classifier weights as rows ``[C, d]`` (the input of the centre MLP)."""
        weight = self.classifier.weight
        return weight.T if isinstance(self.classifier, NormedLinear) else weight

    def semantic_active(self) -> bool:
        """The semantic label replaces the area label once ``epoch > l_d_warm`` (0-indexed, as official)."""
        return self.epoch > self.method_cfg.l_d_warm

    def step_variant(self) -> Hashable:
        return self.semantic_active()

    def soft_label(self, features: Tensor, centers: Tensor, area: Tensor, mixed: Tensor) -> Tensor:
        """``ŷ`` on mixed batches after ``l_d_warm``, else the area label ``ỹ``."""
        if not self.semantic_active():
            return area
        m = self.method_cfg
        omega = m.scaling_factor[0] / m.scaling_factor[1]
        semantic = semantic_label(features, centers, area, self.class_counts, m.topk, omega)
        return torch.where(mixed > 0, semantic.to(area.dtype), area)

    def loss_terms(
        self, views: Tensor, targets_a: Tensor, targets_b: Tensor, lam: Tensor, mixed: Tensor
    ) -> dict[str, Tensor]:
        """``loss = α CE_LA(z, ŷ) + β BalSCL``; also the logits and ŷ of the classification view."""
        m = self.method_cfg
        batch = targets_a.shape[0]
        replicas = m.data_parallel_replicas
        hidden = replica_forward(self.backbone, views, replicas)
        logits = self.classifier(hidden[:batch])
        projections = replica_forward(self.head, hidden, replicas)
        raw_centers = self.center_head(self.class_weights())
        area = area_label(targets_a, targets_b, lam, self.num_classes)
        soft = self.soft_label(projections[:batch], raw_centers, area, mixed)
        ce = logit_adjusted_soft_ce(logits, soft, self.class_counts, m.tau)
        contrastive = F.normalize(projections[batch:], dim=1)
        scl = balanced_scl(contrastive, targets_a, F.normalize(raw_centers, dim=1), m.temperature)
        return {"loss": m.alpha * ce + m.beta * scl, "ce": ce, "scl": scl, "logits": logits, "soft": soft}

    def training_loss(
        self, views: Tensor, targets_a: Tensor, targets_b: Tensor, lam: Tensor, mixed: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms = self.loss_terms(views, targets_a, targets_b, lam, mixed)
        return terms["loss"], {"ce": terms["ce"].detach(), "scl": terms["scl"].detach(), "mixed": mixed}


@register_method(
    "concutmix_car",
    paper="ConCutMix (Pan et al., TIP 2024) + CAR (Confusion-Aware Spectral Regularizer, CVPR 2026)",
)
class ConCutMixCAR(ConCutMix):
    """``L_ConCutMix + λ σ_max(C̄_t diag(w))`` on the classification logits; options in ``method.car``.

    ``method.car_label`` picks CAR's hard label on CutMixed batches (see ``car_labels``); ``skip_mixed``
    drops the term and keeps the EMA state unchanged on mixed batches (branch-free: the state is restored).
    With ``method.car.spectral: svd`` the step is not CUDA-graph capturable (``torch.linalg.svd`` on CUDA
    copies to the host); ``squaring`` (the default) and ``power`` are.
    """

    def build_model(self) -> None:
        super().build_model()
        if self.method_cfg.car_label not in CAR_LABELS:
            raise ConfigError(
                f"method.car_label='{self.method_cfg.car_label}'; valid: {', '.join(CAR_LABELS)}"
            )
        self.car = CARRegularizer.from_config(self.class_counts, self.method_cfg.car)
        # torch.linalg.svd on CUDA copies to the host (not capturable); squaring and power iteration are
        self.graph_capturable = self.method_cfg.car.spectral != "svd"

    def car_term(
        self, logits: Tensor, targets_a: Tensor, soft: Tensor, mixed: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(λ σ, σ)`` of CAR with the configured hard label."""
        mode = self.method_cfg.car_label
        labels = car_labels(mode, targets_a, soft)
        if mode != "skip_mixed":
            return self.car(logits, labels)
        buffers = (self.car.ema, self.car.num_updates, self.car.left, self.car.right)
        saved = [buffer.clone() for buffer in buffers]
        penalty, sigma = self.car(logits, labels)
        for buffer, old in zip(buffers, saved, strict=True):
            buffer.copy_(torch.where(mixed > 0, old, buffer))
        return penalty * (1.0 - mixed), sigma

    def training_loss(
        self, views: Tensor, targets_a: Tensor, targets_b: Tensor, lam: Tensor, mixed: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms = self.loss_terms(views, targets_a, targets_b, lam, mixed)
        penalty, sigma = self.car_term(terms["logits"], targets_a, terms["soft"].detach(), mixed)
        logged = {"ce": terms["ce"], "scl": terms["scl"], "car_penalty": penalty, "car_sigma": sigma}
        return terms["loss"] + penalty, {**{k: v.detach() for k, v in logged.items()}, "mixed": mixed}

    def record_extras(self) -> dict[str, Any]:
        return {
            "car_spectral_norm_final": self.car.final_spectral_norm(),
            "car_ema_confusion_offdiag_mass": self.car.offdiag_mass(),
        }
