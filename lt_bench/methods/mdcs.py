"""MDCS: More Diverse Experts with Consistency Self-distillation (Zhao et al., ICCV 2023).

methods.md §4, official code ``fistyee/MDCS`` (``model/loss.py::MDCSLoss``, ``trainer/trainer.py``,
``data_loader/cifar_data_loaders.py``). Three experts on the SADE trunk (``lt_bench.models.multi_expert``:
shared stem + layer1, per-expert layer2/3, cosine heads × 30). Every training image gives a weak view
``x^w`` and a strong view ``x^s``; one forward pass sees ``cat([x^w, x^s])`` with the labels duplicated.
With ``n_c`` the raw training counts and λ = (−0.5, 1, 2.5) (head, balanced, tail expert)::

    ẑ_k = z_k + log(n^λ_k + 1e-9)                                    (per class, as coded)
    L_DL = Σ_k CE(ẑ_k, y)                     mean over both views (2B samples)
    p_k^w = softmax(ẑ_k(x^w)) (detached),  S_k = {i : argmax p_k^w(i) = y_i}     (CIS, per expert)
    L_CS = Σ_{k : S_k ≠ ∅} (1 / |S_k|) Σ_{i ∈ S_k} KL(p_k^w(i) ‖ softmax(ẑ_k(x^s_i)))
    L = L_DL + 0.6 · min(e / 20, 1) · L_CS                            (e = 1-indexed epoch)

Temperature 1. Prediction is the mean of the three *unadjusted* expert logits (``test.py``).

Views (built here, on the device, from the raw uint8 batch: ``raw_train_batches = True`` makes
``LTDataModule`` hand it over untouched):

* weak: crop 32 (pad 4) + flip + RandomRotation(15) (``data.crop_padding``, ``data.rotate_degrees``);
* strong (``method.strong_augment``): ``autoaugment_cutout`` = crop + flip + AutoAugment CIFAR-10 policy
  + Cutout(16) (CIFAR); ``randaugment`` = crop + flip + RandAugment(2, 10) (the ImageNet recipe's op).

Deviations from the official code (also in configs/method/mdcs.yaml):

* AutoAugment is ``lt_bench.data.policies.autoaugment_cifar10`` (torchvision's CIFAR-10 policy tables)
  with fill 128 (``method.autoaugment_fill``) as the DeepVoltaire ``CIFAR10Policy`` MDCS uses; the two
  implementations differ in a few op details (e.g. Posterize/Solarize magnitude bins);
* the inactive parts of ``MDCSLoss`` (DRW weights, ``additional_diversity_factor``, DINO centre buffers)
  and the unused model heads (``linear_head``, ``linear_few``, ``mlp``) are omitted;
* on image-file datasets (ImageNet-LT, iNat, Places-LT) both views come from ``TwoViews`` in the
  loader workers; its RandAugment is torchvision's, not timm's ``rand-n2-m10-mstd0.5``;
* the evaluated model is the last epoch's (the official trainer keeps the best test accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lt_bench.data import policies
from lt_bench.data.augment import random_crop, random_hflip, random_rotation, to_normalized_nchw
from lt_bench.errors import ConfigError
from lt_bench.methods.base import Outputs
from lt_bench.methods.sade import MultiExpertMethod
from lt_bench.registry import register_method

#: ε added to ``n^λ`` inside the log (official ``MDCSLoss``)
PRIOR_EPS = 1e-9
STRONG_AUGMENTS = ("autoaugment_cutout", "randaugment")


# --- losses ----------------------------------------------------------------------------------------
def adjusted_logits(expert_logits: Tensor, class_counts: Tensor, lambdas: Sequence[float]) -> Tensor:
    """``ẑ_k = z_k + log(n^λ_k + 1e-9)`` for expert logits ``[E, B, C]`` and raw counts ``n`` ``[C]``."""
    shift = torch.stack([torch.log(class_counts**lam + PRIOR_EPS) for lam in lambdas])  # [E, C], no host copy
    return expert_logits + shift.unsqueeze(1).to(expert_logits.dtype)


def diversity_loss(adjusted: Tensor, targets: Tensor) -> Tensor:
    """``[CE(ẑ_k, y)]_k`` over all samples (both views) for adjusted logits ``[E, N, C]``."""
    return torch.stack([F.cross_entropy(logits, targets) for logits in adjusted])


def confident_mask(teacher_logits: Tensor, targets: Tensor) -> Tensor:
    """Confident instance sampling: ``[E, B]`` mask of ``argmax softmax(ẑ_k(x^w)) = y`` per expert."""
    return teacher_logits.argmax(dim=-1) == targets.unsqueeze(0)


def consistency_loss(adjusted: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """``[L_CS,k]_k``: KL(teacher ‖ student) over each expert's confident samples (``batchmean``).

    ``adjusted`` is ``[E, 2B, C]`` (weak views first, then the strong views of the same images),
    ``targets`` the labels of the B images. An expert with no confident sample contributes 0.
    """
    num = adjusted.shape[1] // 2
    teacher, student = adjusted[:, :num], adjusted[:, num:]
    mask = confident_mask(teacher.detach(), targets)
    p_teacher = F.softmax(teacher.detach() / temperature, dim=-1)
    log_student = F.log_softmax(student / temperature, dim=-1)
    # F.kl_div(log q, p) elementwise = p (log p - log q), with 0 where p = 0
    kl = F.kl_div(log_student, p_teacher, reduction="none").sum(dim=-1)  # [E, B]
    selected = mask.to(kl.dtype)
    count = selected.sum(dim=1)
    per_expert = (kl * selected).sum(dim=1) / count.clamp(min=1)
    return per_expert * temperature**2


def cs_weight(epoch: int, weight: float = 0.6, warmup: int = 20) -> float:
    """``weight · min(epoch / warmup, 1)`` with ``epoch`` counted from 1 (official trainer)."""
    return weight * min(epoch / warmup, 1.0)


def mdcs_loss(
    expert_logits: Tensor,
    targets: Tensor,
    class_counts: Tensor,
    lambdas: Sequence[float],
    cs_coef: float | Tensor,
    *,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """``L = Σ_k L_DL,k + w_cs Σ_k L_CS,k`` (``w_cs = cs_weight(epoch)``) for expert logits
    ``[E, 2B, C]`` (weak views first) and the duplicated labels ``[2B]``. Returns ``loss``, ``dl``
    ``[E]`` and ``cs`` ``[E]``."""
    adjusted = adjusted_logits(expert_logits, class_counts, lambdas)
    dl = diversity_loss(adjusted, targets)
    cs = consistency_loss(adjusted, targets[: targets.shape[0] // 2], temperature)
    loss = dl.sum() + cs_coef * cs.sum()
    return {"loss": loss, "dl": dl, "cs": cs}


# --- the method ------------------------------------------------------------------------------------
class TwoViews:
    """MDCS's ImageNet-LT views of one PIL image, stacked ``[2, 3, size, size]`` (methods.md §4.2).

    Weak: RandomResizedCrop + flip + ColorJitter(0.4, 0.4, 0.4, 0). Strong: RandomResizedCrop
    (scale 0.08-1) + flip + ColorJitter(0.4, 0.4, 0.4, 0) + RandAugment(n, m). The official strong view
    uses timm's ``rand-n2-m10-mstd0.5``; this is torchvision's RandAugment (no magnitude noise).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], ops: int, magnitude: int):
        from torchvision import transforms as T

        tail = [T.ToTensor(), T.Normalize(mean, std)]
        jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.0)
        self.weak = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), jitter, *tail])
        self.strong = T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.08, 1.0)),
                T.RandomHorizontalFlip(),
                jitter,
                T.RandAugment(ops, magnitude),
                *tail,
            ]
        )

    def __call__(self, image: Any) -> Tensor:
        return torch.stack([self.weak(image), self.strong(image)])


@register_method(
    "mdcs", paper="Zhao et al., MDCS (More Diverse Experts with Consistency Self-distillation), ICCV 2023"
)
class MDCS(MultiExpertMethod):
    """Diversity loss + consistency self-distillation on weak/strong views (module docstring).

    Options (``method.*``) besides the trunk's: ``lambdas`` (one per expert), ``cs_weight``,
    ``cs_warmup``, ``temperature``, ``strong_augment`` (``autoaugment_cutout`` | ``randaugment``),
    ``autoaugment_fill``, ``randaugment_ops``, ``randaugment_magnitude``.
    """

    raw_train_batches = True
    views_capturable = True  # crop/flip/rotation, AutoAugment/RandAugment (graph-safe on a GPU), Cutout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        m = self.method_cfg
        if len(m.lambdas) != self.trunk.num_experts:
            raise ConfigError(
                f"mdcs: method.lambdas has {len(m.lambdas)} values for {self.trunk.num_experts} experts"
            )
        if m.strong_augment not in STRONG_AUGMENTS:
            raise ConfigError(
                f"method.strong_augment='{m.strong_augment}'; valid: {', '.join(STRONG_AUGMENTS)}"
            )
        # the consistency weight lives on the device, set at each epoch start, so that one captured
        # training step serves the whole warm-up ramp
        self.register_buffer(
            "cs_coef", torch.tensor(cs_weight(1, m.cs_weight, m.cs_warmup)), persistent=False
        )

    # --- views ---------------------------------------------------------------------------------
    def _normalize(self, images: Tensor) -> Tensor:
        return to_normalized_nchw(images, self.cfg.dataset.mean, self.cfg.dataset.std)

    def weak_view(self, images: Tensor) -> Tensor:
        """Crop (pad ``data.crop_padding``) + flip + rotation (``data.rotate_degrees``), normalised."""
        data = self.cfg.data
        x = random_hflip(random_crop(images, data.crop_padding))
        return self._normalize(random_rotation(x, data.rotate_degrees))

    def strong_view(self, images: Tensor) -> Tensor:
        """Crop + flip + AutoAugment (CIFAR-10 policy) + Cutout, or crop + flip + RandAugment."""
        m, data = self.method_cfg, self.cfg.data
        x = random_hflip(random_crop(images, data.crop_padding))
        if m.strong_augment == "autoaugment_cutout":
            x = policies.cutout(policies.autoaugment_cifar10(x, fill=m.autoaugment_fill), data.cutout_size)
        else:
            x = policies.randaugment(x, m.randaugment_ops, m.randaugment_magnitude)
        return self._normalize(x)

    # --- training ------------------------------------------------------------------------------
    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        """``outputs`` of ``cat([weak, strong])`` and the duplicated labels ``[2B]``."""
        return self.loss_terms(outputs, targets)["loss"]

    def loss_terms(self, outputs: Outputs, targets: Tensor) -> dict[str, Tensor]:
        m = self.method_cfg
        return mdcs_loss(
            outputs["expert_logits"],
            targets,
            self.class_counts,
            m.lambdas,
            self.cs_coef,
            temperature=m.temperature,
        )

    def file_train_transform(self, size: int, mean: Sequence[float], std: Sequence[float]) -> TwoViews:
        """Image-file datasets: both views per image in the loader workers (``[2, 3, size, size]``)."""
        return TwoViews(
            size, mean, std, self.method_cfg.randaugment_ops, self.method_cfg.randaugment_magnitude
        )

    def train_views(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``cat([weak, strong])`` and the duplicated labels ``[2B]``."""
        if images.dtype == torch.uint8:  # in-memory datasets: views built here, on the device
            views = torch.cat([self.weak_view(images), self.strong_view(images)])
        elif images.dim() == 5:  # image-file datasets: [B, 2, C, H, W] from TwoViews
            views = torch.cat([images[:, 0], images[:, 1]])
        else:
            raise ConfigError(
                "mdcs needs raw uint8 batches (in-memory datasets) or two views per image from its "
                "file_train_transform; got normalised single views"
            )
        return views, torch.cat([targets, targets])

    def training_loss(self, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        terms = self.loss_terms(self(images), targets)
        return terms["loss"], {"dl": terms["dl"].sum().detach(), "cs": terms["cs"].sum().detach()}

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        m = self.method_cfg
        self.cs_coef.fill_(cs_weight(self.epoch + 1, m.cs_weight, m.cs_warmup))  # epochs counted from 1
