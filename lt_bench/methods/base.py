"""The base method: a LightningModule that owns everything methods share.

A method subclasses ``BaseMethod``, registers itself with ``@register_method("<name>")`` and
overrides only ``compute_loss`` (and, where it has them, ``build_model``, ``predict_logits`` or an
extra stage). ``forward`` returns one output structure for every method: ``logits`` always;
``features``, ``expert_logits`` and ``uncertainty`` where the method has them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from lt_bench.data.base import Split
from lt_bench.errors import ConfigError, NonFiniteLossError
from lt_bench.metrics import LTMetrics
from lt_bench.models import make_classifier
from lt_bench.registry import BACKBONES
from lt_bench.schedules import lr_factor

Outputs = dict[str, Tensor]


def limited_batches(limit: int | float | None, total: int) -> int:
    """Batches of a pass under Lightning's ``limit_*_batches``: an int caps the count, a float in
    [0, 1] is a fraction, ``None`` is no limit."""
    if limit is None:
        return total
    if isinstance(limit, float):
        return min(total, int(limit * total)) if limit < 1.0 else total
    return min(total, int(limit))


def reseed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of torch, NumPy and ``random`` for one epoch of one process."""
    return (seed * 1_000_003 + epoch * 7_919 + rank) % 2**32


class BaseMethod(L.LightningModule):
    """Backbone + classifier, SGD with a per-epoch schedule, evaluation through ``LTMetrics``.

    ``cfg`` is the resolved run config; ``train_counts`` the training images per class (``n_c``).
    """

    #: method options used when no ``configs/method/<name>.yaml`` exists (plugins)
    default_config: dict[str, Any] = {}
    #: set by a test-time procedure that learns from (unlabeled) test images, e.g. SADE's
    uses_test_data: bool = False
    #: in-memory datasets hand training batches over as raw uint8 ``[B, H, W, C]`` and the method
    #: builds its own views in ``train_views`` (e.g. MDCS's weak/strong pair)
    raw_train_batches: bool = False
    #: ``train_views`` may run inside a CUDA graph (no host sync, no data-dependent shapes)
    views_capturable: bool = False
    #: ``training_loss`` (forward + loss) may run inside a CUDA graph; else the fast engine runs it eagerly
    graph_capturable: bool = True

    def __init__(
        self,
        cfg: dict[str, Any],
        train_counts: Sequence[int],
        in_channels: int = 3,
        eval_names: Sequence[str] = ("test",),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg: DictConfig = OmegaConf.create(cfg)
        self.num_classes = len(train_counts)
        self.register_buffer("class_counts", torch.as_tensor(np.asarray(train_counts), dtype=torch.float))
        self.in_channels = in_channels
        self.build_model()
        self.val_metrics = LTMetrics(train_counts)
        self.test_metrics = nn.ModuleDict({name: LTMetrics(train_counts) for name in eval_names})
        self.skipped_steps = 0
        self.register_buffer("first_nonfinite_step", torch.tensor(-1), persistent=False)
        self.results: dict[str, dict[str, Any]] = {}
        self.confusions: dict[str, np.ndarray] = {}
        #: extra table rows of this run: name suffix -> results key (e.g. {"tta": "test_sade_tta"})
        self.result_variants: dict[str, str] = {}
        self.train_images_seen = 0
        #: the training epoch when the fast engine (lt_bench/engine) drives training, else None
        self.engine_epoch: int | None = None
        #: training-set indices of the current training batch (per-sample state, e.g. SBCL)
        self.batch_indices: Tensor | None = None
        #: the training split, set by the runner before fitting (e.g. for SBCL's clustering)
        self.train_split: Split | None = None

    # --- model -------------------------------------------------------------------------------
    @property
    def method_cfg(self) -> DictConfig:
        return self.cfg.method

    @property
    def class_prior(self) -> Tensor:
        """``pi_c = n_c / N``."""
        return self.class_counts / self.class_counts.sum()

    def build_backbone(self) -> nn.Module:
        options = {k: v for k, v in self.cfg.backbone.items() if k != "name"}
        return BACKBONES.get(self.cfg.backbone.name)(in_channels=self.in_channels, **options)

    def build_model(self) -> None:
        """Default model: ``backbone`` features -> ``classifier`` (``method.classifier`` kind)."""
        self.backbone = self.build_backbone()
        self.classifier = make_classifier(
            self.method_cfg.get("classifier", "linear"),
            self.backbone.feature_dim,
            self.num_classes,
            scale=self.classifier_scale(),
        )

    def compiled_network(self) -> nn.Module:
        """What ``train.compile`` compiles: the backbone (a multi-expert method: its trunk)."""
        return self.backbone

    def classifier_scale(self) -> float:
        """Scale of a cosine classifier (``method.scale``, 1 when absent)."""
        return self.method_cfg.get("scale", 1.0)

    def forward(self, images: Tensor) -> Outputs:
        features = self.backbone(images)
        return {"logits": self.classifier(features), "features": features}

    # --- training ----------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The training epoch (0-indexed) under either engine; methods read this, not ``current_epoch``."""
        return self.engine_epoch if self.engine_epoch is not None else self.current_epoch

    def compute_loss(self, outputs: Outputs, targets: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss")

    def train_views(self, images: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
        """Inputs of ``training_loss`` built from a raw batch (only with ``raw_train_batches``)."""
        raise NotImplementedError(f"{type(self).__name__} sets raw_train_batches but has no train_views")

    def training_loss(self, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one training batch and extra terms to log (epoch means): ``compute_loss(forward)``.

        Both engines call this; under the fast engine on a GPU it runs inside a CUDA graph when
        ``graph_capturable``, so it must not read tensors back to the host.
        """
        return self.compute_loss(self(images), targets), {}

    def train_batch_size(self, default: int) -> int:
        """Training batch size of the current epoch (``self.epoch``); ``default`` is ``data.batch_size``.

        A method whose stages use different batch sizes (SBCL) overrides this; both engines honour it.
        """
        return default

    @classmethod
    def varies_batch_size(cls) -> bool:
        return cls.train_batch_size is not BaseMethod.train_batch_size

    def step_variant(self) -> Hashable:
        """Host-side state that changes what ``training_loss`` computes (e.g. DRW on or off).

        The fast engine captures one CUDA graph per distinct value and re-captures when it changes;
        a loss that changes every epoch returns the epoch.
        """
        return None

    def on_train_epoch_start(self) -> None:
        """Reseed torch, NumPy and ``random`` from (seed, epoch, rank): augmentation and dropout of
        an epoch then do not depend on what ran before it, so a run resumed at an epoch boundary
        repeats the uninterrupted run (data order is seeded by the sampler the same way)."""
        reseed(epoch_seed(int(self.cfg.seed), self.epoch, self.global_rank))

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor | None:
        images, targets, *indices = batch
        self.batch_indices = indices[0] if indices else None
        inputs = self.train_views(images, targets) if self.raw_train_batches else (images, targets)
        loss, terms = self.training_loss(*inputs)
        self.train_images_seen += targets.shape[0]
        if not self._loss_is_usable(loss, batch_idx):
            return None  # Lightning skips the optimizer step
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True)
        return loss

    def _loss_is_usable(self, loss: Tensor, batch_idx: int) -> bool:
        """Non-finite loss guard (``train.nonfinite_loss``: ``error`` or ``skip``).

        ``error`` remembers the first bad step on the device (no host sync) and raises at the next
        logging interval or epoch end; ``skip`` checks every step (one sync a step) and skips it.
        """
        policy = self.cfg.train.nonfinite_loss
        if policy == "skip":
            if bool(torch.isfinite(loss)):
                return True
            self.skipped_steps += 1
            return False
        bad = ~torch.isfinite(loss.detach())
        self.first_nonfinite_step = torch.where(
            bad & (self.first_nonfinite_step < 0),
            torch.as_tensor(self.global_step, device=loss.device),
            self.first_nonfinite_step,
        )
        last_batch = batch_idx + 1 >= self.trainer.num_training_batches
        if batch_idx % self.trainer.log_every_n_steps == 0 or last_batch:
            self.raise_if_nonfinite()
        return True

    def raise_if_nonfinite(self) -> None:
        step = int(self.first_nonfinite_step)
        if step >= 0:
            raise NonFiniteLossError(
                f"method '{self.cfg.method.name}' produced a non-finite loss at training step {step} "
                f"(epoch {self.epoch}); lower optim.lr, check the data, or set "
                "train.nonfinite_loss=skip to skip such steps"
            )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups; methods with per-group learning rates override this."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def lr_factors(self) -> Callable[[int], float] | list[Callable[[int], float]]:
        """Learning-rate multiplier per epoch (``schedule.*``), or one per parameter group."""
        return lr_factor(
            OmegaConf.to_container(self.cfg.schedule), self.cfg.optim.lr, self.cfg.trainer.max_epochs
        )

    def configure_optimizers(self) -> Any:
        optim = self.cfg.optim
        if optim.name != "sgd":
            raise ConfigError(f"unknown optim.name '{optim.name}'; valid: sgd")
        optimizer = torch.optim.SGD(
            self.parameter_groups(),
            lr=optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            nesterov=optim.nesterov,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factors())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # --- evaluation --------------------------------------------------------------------------
    def predict_logits(self, outputs: Outputs) -> Tensor:
        """Scores used for prediction and calibration (post-hoc adjustments override this)."""
        return outputs["logits"]

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, targets = batch
        self.val_metrics.update(self.predict_logits(self(images)).float(), targets)

    def _finish(self, name: str, metric: LTMetrics) -> dict[str, Any]:
        """Compute ``metric`` into ``results[name]`` (with per-class test counts) and keep its confusion."""
        confusion = metric.confusion_matrix().cpu().numpy()
        bins = metric.calibration_bins()
        result = metric.compute()
        result["class_counts"] = confusion.sum(axis=1).tolist()
        result["calibration_bins"] = bins
        self.results[name], self.confusions[name] = result, confusion
        return result

    def on_validation_epoch_end(self) -> None:
        result = self._finish("val", self.val_metrics)
        for key in ("top1", "balanced_acc", "many", "medium", "few", "worst_class"):
            if not np.isnan(result[key]):
                self.log(f"val/{key}", result[key], sync_dist=False)

    def on_test_epoch_start(self) -> None:
        for metric in self.test_metrics.values():
            metric.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        images, targets = batch
        self.update_test_metrics(self(images), targets, dataloader_idx)

    def update_test_metrics(self, outputs: Outputs, targets: Tensor, dataloader_idx: int) -> None:
        """Score one test batch; methods with more to score (experts, uncertainty) extend this."""
        list(self.test_metrics.values())[dataloader_idx].update(self.predict_logits(outputs).float(), targets)

    def on_test_epoch_end(self) -> None:
        for name, metric in self.test_metrics.items():
            self._finish(name, metric)

    # --- hooks for the run record and test-time procedures -------------------------------------
    def test_time_stage(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """Runs after the plain test evaluation; a method with a test-time procedure (SADE's
        self-supervised aggregation) adds its results to ``self.results`` under new names and sets
        ``self.uses_test_data`` when it learns from test images. The default does nothing."""

    def file_train_transform(self, size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
        """Per-image training transform for image-file datasets; ``None``: the standard
        RandomResizedCrop + flip. Methods that train on several views (MDCS) return their own."""
        return None

    def record_extras(self) -> dict[str, Any]:
        """Method-specific values for the run record (e.g. CAR's final spectral norm)."""
        return {}
