"""SADE: Self-Supervised Aggregation of Diverse Experts (Zhang, Hooi, Hong, Feng; NeurIPS 2022).

methods.md §3, official code ``Vanint/SADE-AgnosticLT@cba11b8``. Three experts on a shared trunk
(``lt_bench.models.multi_expert``), each with a cosine head times 30, trained with one loss each
(π = training class frequencies, π̃ = π "inverted": the classes' prior values mirrored in rank,
ε = 1e-9)::

    forward expert   L_1 = CE(z_1, y)
    uniform expert   L_2 = CE(z_2 + log(π + ε), y)
    backward expert  L_3 = CE(z_3 + log(π + ε) - τ log(π̃ + ε), y)
    L = L_1 + L_2 + L_3

Plain evaluation predicts with the mean of the three expert logits. Test-time self-supervised
aggregation (``test_training_cifar.py``) learns weights ω = softmax(v) over the experts from two
augmented views of the unlabeled test images, maximising the prediction stability
``mean_i cos(softmax(Σ_k ω_k z_k(x_i')), softmax(Σ_k ω_k z_k(x_i'')))`` with the trunk frozen, and
predicts with ``Σ_k ω_k z_k``. It is transductive, so a run that uses it is marked as using test data.

Deviations from the official code (also listed in configs/method/sade.yaml):

* the two test-time views (``method.tta.views: strong``) are the official ``train_trsfm`` of
  ``test_training_cifar.py`` (RandomCrop(32, 4), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale
  p 0.2, Gaussian blur σ ∈ [0.1, 2] with p 0.2, flip) as batched tensor ops, the blur a 9-tap Gaussian
  (PIL ``GaussianBlur(radius=σ)`` officially); ``train_augment`` uses the run's training augmentation
  instead (what lt-bench did before 2026-11-28);
* the official CIFAR script learns the weights on *training* images resampled to each test
  distribution (``IMBALANCECIFAR100(train=True, imb_factor=test_imb_factor)``); we learn them on the
  evaluation split itself, as the paper and methods.md §3.3 describe;
* the stopping check compares the exact weights with 0.05 (the official code compares the weights
  rounded to two decimals); test-time aggregation on image-file datasets is not implemented yet;
* the evaluated model is the last epoch's (the official trainer keeps the checkpoint with the best
  test accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lt_bench.data import policies
from lt_bench.data.augment import to_normalized_nchw
from lt_bench.data.base import ArraySplit, Split
from lt_bench.errors import ConfigError
from lt_bench.methods.base import BaseMethod, Outputs, limited_batches
from lt_bench.metrics import LTMetrics
from lt_bench.models.multi_expert import build_multi_expert
from lt_bench.registry import register_method

#: ε inside the logs of the priors (official ``DiverseExpertLoss``)
PRIOR_EPS = 1e-9
#: the ``eps`` of the official ``torch.nn.CosineSimilarity`` in the test-time objective
COSINE_EPS = 1e-6
#: test-time views: what ``method.tta.views`` may be
TTA_VIEWS = ("strong", "train_augment")
#: taps of the strong views' Gaussian blur (covers ±2σ at the largest σ, 2)
TTA_BLUR_KERNEL = 9


class MultiExpertMethod(BaseMethod):
    """A method on a ``MultiExpertNet`` trunk: plain prediction = mean of the expert logits.

    Options (``method.*``): ``num_experts``, ``shared_until``, ``expert_widths``, ``scale`` (see
    ``build_multi_expert``). ``forward`` returns ``logits`` ``[B, C]`` (mean over experts),
    ``expert_logits`` ``[E, B, C]``, ``expert_features`` ``[E, B, D]`` and ``features`` (the expert
    features concatenated, ``[B, E * D]``). The test loop also evaluates every expert alone: results
    ``<set>_expert<k>`` (k = 0, 1, ...). With ``method.backbone_lr`` set, the cosine heads train at
    ``optim.lr`` and every other parameter at ``backbone_lr`` (SADE's Places-LT ``share_lr``).
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        train_counts: Sequence[int],
        in_channels: int = 3,
        eval_names: Sequence[str] = ("test",),
    ) -> None:
        super().__init__(cfg, train_counts, in_channels, eval_names)
        self.expert_metrics = nn.ModuleDict(
            {
                name: nn.ModuleList(LTMetrics(train_counts) for _ in range(self.trunk.num_experts))
                for name in eval_names
            }
        )

    def classifier_scale(self) -> float:
        return self.method_cfg.get("scale", 30.0)

    def compiled_network(self) -> nn.Module:
        return self.trunk

    def build_model(self) -> None:
        m = self.method_cfg
        self.trunk = build_multi_expert(
            self.cfg.backbone,
            self.in_channels,
            self.num_classes,
            num_experts=m.num_experts,
            shared_until=m.shared_until,
            expert_widths=m.expert_widths,
            scale=self.classifier_scale(),
        )

    def forward(self, images: Tensor) -> Outputs:
        return self.expert_outputs(self.trunk(images), images.shape[0])

    @contextmanager
    def _on_trainer_device(self, trainer: L.Trainer) -> Iterator[torch.device]:
        """The model in evaluation mode on the trainer's device for a test-time stage (yields the
        device); moved back where it was afterwards."""
        device, previous = trainer.strategy.root_device, self.device
        self.to(device).eval()
        try:
            yield device
        finally:
            self.to(previous)

    def _expert_logits(self, images: Tensor, trainer: L.Trainer) -> Tensor:
        """Expert logits ``[E, B, C]`` (float) of normalised images, without gradients, under the
        trainer's precision (test-time stages)."""
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            return self.trunk(images)["expert_logits"].float()

    def expert_outputs(self, out: Outputs, batch: int) -> Outputs:
        """The method's outputs from the trunk's ``expert_features`` / ``expert_logits`` of ``batch``
        images: mean logits here; hosts with their own aggregation (TLC) override this."""
        features = out["expert_features"]
        return {
            "logits": out["expert_logits"].mean(dim=0),
            "expert_logits": out["expert_logits"],
            "expert_features": features,
            "features": features.transpose(0, 1).flatten(1),
        }

    def parameter_groups(self) -> list[dict[str, Any]]:
        backbone_lr = self.method_cfg.get("backbone_lr")
        if backbone_lr is None:
            return super().parameter_groups()
        heads = {id(p) for p in self.trunk.heads.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in heads]
        return [{"params": list(self.trunk.heads.parameters())}, {"params": rest, "lr": backbone_lr}]

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        for metrics in self.expert_metrics.values():
            for metric in metrics:
                metric.reset()

    def update_test_metrics(self, outputs: Outputs, targets: Tensor, dataloader_idx: int) -> None:
        super().update_test_metrics(outputs, targets, dataloader_idx)
        for metric, logits in zip(
            list(self.expert_metrics.values())[dataloader_idx], outputs["expert_logits"], strict=True
        ):
            metric.update(logits.float(), targets)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        for name, metrics in self.expert_metrics.items():
            for k, metric in enumerate(metrics):
                self._finish(f"{name}_expert{k}", metric)


# --- training loss ------------------------------------------------------------------------------
def inverted_prior(prior: Tensor) -> Tensor:
    """π̃: the class with the r-th smallest prior gets the r-th largest prior value.

    ``π̃_c = sort(π)[C - 1 - rank(c)]`` with ``rank`` the position of class c in ascending order
    (ties broken by class index), as SADE's ``inverse_prior``.
    """
    values, order = torch.sort(prior, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(prior), device=prior.device)
    return values[len(prior) - 1 - rank]


def sade_expert_losses(expert_logits: Tensor, targets: Tensor, prior: Tensor, tau: float) -> Tensor:
    """``[L_1, L_2, L_3]`` for expert logits ``[3, B, C]`` (forward, uniform, backward expert)."""
    log_prior = torch.log(prior + PRIOR_EPS)
    log_inverted = torch.log(inverted_prior(prior) + PRIOR_EPS)
    forward, uniform, backward = expert_logits
    return torch.stack(
        [
            F.cross_entropy(forward, targets),
            F.cross_entropy(uniform + log_prior, targets),
            F.cross_entropy(backward + log_prior - tau * log_inverted, targets),
        ]
    )


# --- test-time self-supervised aggregation ---------------------------------------------------------
def aggregate(expert_logits: Tensor, weights: Tensor) -> Tensor:
    """``Σ_k ω_k z_k`` for expert logits ``[E, B, C]`` and weights ``[E]``."""
    return torch.einsum("e,ebc->bc", weights, expert_logits)


def prediction_stability(logits1: Tensor, logits2: Tensor) -> Tensor:
    """``mean_i cos(softmax(a_i'), softmax(a_i''))`` of two views' aggregated logits ``[B, C]``."""
    return F.cosine_similarity(logits1.softmax(dim=1), logits2.softmax(dim=1), dim=1, eps=COSINE_EPS).mean()


def learn_aggregation_weights(
    epoch_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    num_experts: int,
    *,
    epochs: int = 5,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = True,
    min_weight: float = 0.05,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, int]:
    """Learn ω = softmax(v) (v starts equal) by SGD on ``-prediction_stability``.

    ``epoch_batches()`` yields one pass of ``(z', z'')``: the frozen experts' logits ``[E, B, C]``
    on two views of the same images. After each full pass, training stops if any ω_k falls below
    ``min_weight`` (the only host synchronisation). Returns ω ``[E]`` and the passes made.
    """
    raw = torch.full((num_experts,), 1.0 / num_experts, device=device, requires_grad=True)
    optimizer = torch.optim.SGD([raw], lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    passes = 0
    while passes < epochs:
        passes += 1
        for logits1, logits2 in epoch_batches():
            weights = raw.softmax(dim=0)
            loss = -prediction_stability(aggregate(logits1, weights), aggregate(logits2, weights))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if bool((raw.detach().softmax(dim=0) < min_weight).any()):
            break
    return raw.detach().softmax(dim=0), passes


@register_method(
    "sade", paper="Zhang et al., SADE (Self-Supervised Aggregation of Diverse Experts), NeurIPS 2022"
)
class SADE(MultiExpertMethod):
    """Forward / uniform / backward experts (``sade_expert_losses``) and test-time aggregation.

    ``method.tau`` is the backward expert's τ. With ``method.test_time_aggregation`` the
    ``test_time_stage`` learns ω on each evaluation set named in ``method.tta.sets`` (null: all, as
    SADE learns ω per test distribution; other options ``method.tta.*``), evaluates
    ``Σ_k ω_k z_k`` on it as ``<set>_sade_tta`` and records ω under ``method_extras.sade_tta``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: per evaluation set: the learned ω and the passes made
        self.tta_weights: dict[str, dict[str, Any]] = {}

    def build_model(self) -> None:
        if self.method_cfg.num_experts != 3:
            raise ConfigError(
                f"sade has exactly 3 experts (forward, uniform, backward); got method.num_experts="
                f"{self.method_cfg.num_experts}"
            )
        super().build_model()

    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        losses = sade_expert_losses(outputs["expert_logits"], targets, self.class_prior, self.method_cfg.tau)
        return losses.sum()

    def setup(self, stage: str) -> None:
        """Fail before training when test-time aggregation cannot run on this dataset."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.method_cfg.test_time_aggregation and datamodule is not None:
            for split in datamodule.test_sets.values():
                self._check_in_memory(split)

    @staticmethod
    def _check_in_memory(split: Split) -> None:
        if not isinstance(split, ArraySplit):
            raise ConfigError(
                "sade: test-time aggregation (method.test_time_aggregation) is implemented for "
                "in-memory datasets (CIFAR-LT, Fashion-MNIST-LT) only, not yet for image-file "
                "datasets; set method.test_time_aggregation=false"
            )

    def test_time_stage(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        if not self.method_cfg.test_time_aggregation:
            return
        views = self.method_cfg.tta.views
        if views not in TTA_VIEWS:
            raise ConfigError(f"method.tta.views='{views}'; valid: {', '.join(TTA_VIEWS)}")
        names = list(self.method_cfg.tta.sets or datamodule.test_sets)
        unknown = sorted(set(names) - set(datamodule.test_sets))
        if unknown:
            raise ConfigError(
                f"method.tta.sets names {unknown}, not evaluation sets of this run; valid: "
                f"{', '.join(datamodule.test_sets)}"
            )
        for name in names:
            self._check_in_memory(datamodule.test_sets[name])
        self.uses_test_data = True
        with (
            self._on_trainer_device(trainer) as device,
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        ):
            torch.manual_seed(self.cfg.seed)
            for name in names:
                self._aggregate_on(name, datamodule.test_sets[name], trainer, datamodule)

    def _aggregate_on(
        self, name: str, split: ArraySplit, trainer: L.Trainer, datamodule: L.LightningDataModule
    ) -> None:
        tta = self.method_cfg.tta
        view = self._tta_view(datamodule)
        images = torch.from_numpy(split.images)
        targets = torch.from_numpy(split.targets)
        generator = torch.Generator().manual_seed(self.cfg.seed)
        train_batches = limited_batches(trainer.limit_test_batches, math.ceil(len(split) / tta.batch_size))

        def epoch_batches() -> Iterator[tuple[Tensor, Tensor]]:
            order = torch.randperm(len(split), generator=generator)
            for b in range(train_batches):
                batch = images[order[b * tta.batch_size : (b + 1) * tta.batch_size]].to(self.device)
                views = torch.cat([view(batch), view(batch)])
                logits = self._expert_logits(views, trainer)
                yield logits[:, : len(batch)], logits[:, len(batch) :]

        weights, passes = learn_aggregation_weights(
            epoch_batches,
            self.trunk.num_experts,
            epochs=tta.epochs,
            lr=tta.lr,
            momentum=tta.momentum,
            weight_decay=tta.weight_decay,
            nesterov=tta.nesterov,
            min_weight=tta.min_weight,
            device=self.device,
        )
        # every process learns the same ω (same seed, whole split); scoring is split between
        # processes by batch and the metric sums over them
        metric = LTMetrics(self.class_counts.long().tolist()).to(self.device)
        size = datamodule.eval_batch_size
        scored = limited_batches(trainer.limit_test_batches, math.ceil(len(split) / size))
        for b in range(trainer.global_rank, scored, trainer.world_size):
            batch = images[b * size : (b + 1) * size].to(self.device)
            logits = self._expert_logits(to_normalized_nchw(batch, datamodule.mean, datamodule.std), trainer)
            metric.update(aggregate(logits, weights), targets[b * size : (b + 1) * size].to(self.device))
        self._finish(f"{name}_sade_tta", metric)
        self.tta_weights[name] = {"weights": weights.cpu().tolist(), "epochs": passes}
        if name == "test":
            self.result_variants["tta"] = "test_sade_tta"

    def _tta_view(self, datamodule: L.LightningDataModule) -> Callable[[Tensor], Tensor]:
        """One test-time view of a uint8 ``[B, H, W, C]`` batch, normalised (``method.tta.views``)."""
        if self.method_cfg.tta.views == "train_augment":
            return datamodule.augment

        def strong(batch: Tensor) -> Tensor:
            view = policies.simclr_view(batch, padding=4, blur_p=0.2, blur_kernel=TTA_BLUR_KERNEL)
            return to_normalized_nchw(view, datamodule.mean, datamodule.std)

        return strong

    def record_extras(self) -> dict[str, Any]:
        return {"sade_tta": self.tta_weights} if self.tta_weights else {}
