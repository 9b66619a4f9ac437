"""One training run: build data and method from a resolved config, fit, evaluate, write the record."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lt_bench.data.augment import BatchAugment
from lt_bench.data.base import ArraySplit, LTDataset, Split
from lt_bench.data.module import LTDataModule
from lt_bench.data.splits import test_agnostic_sets
from lt_bench.engine.choice import choose_engine, fast_engine_device
from lt_bench.engine.fast import FastEngine
from lt_bench.engine.stop import StopRequests
from lt_bench.errors import ConfigError, NonFiniteLossError, RunInterrupted
from lt_bench.methods.base import BaseMethod
from lt_bench.registry import DATASETS, METHODS
from lt_bench.reports import provenance
from lt_bench.reports.curve import best_epoch
from lt_bench.reports.record import RECORD_FILE, SCHEMA_VERSION, write_arrays, write_per_class, write_record

#: dataset config keys that are not arguments of the dataset factory
DATASET_RESERVED = ("name", "mean", "std")


def build_dataset(dataset_cfg: DictConfig) -> LTDataset:
    """Call the registered dataset factory with the config's keys (minus normalisation)."""
    factory = DATASETS.get(dataset_cfg.name)
    kwargs = {k: v for k, v in OmegaConf.to_container(dataset_cfg).items() if k not in DATASET_RESERVED}
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join('dataset.' + k for k in unknown)} for dataset "
            f"'{dataset_cfg.name}'; valid keys: {', '.join('dataset.' + k for k in accepted)}"
        )
    return factory(**kwargs)


#: keys added after run ids were in use, with the values that behave as before the key existed (null: a
#: BatchFormer host's key left to the host): at those values a key is left out of the hash, so adding it
#: keeps the ids of earlier runs (a sweep then skips or resumes them); a new key of that kind belongs here
HASH_NEUTRAL = {
    "evaluation.test_curve": (False,),
    "method.engagement_loss": ("masked", None),
    "train.compile": (None,),
}


def config_hash(cfg: DictConfig) -> str:
    """Short hash of the config without output location, run id, trainer plumbing and the
    ``HASH_NEUTRAL`` keys at their neutral value."""
    data = OmegaConf.to_container(cfg)
    for key in ("output_dir", "run_id", "logger", "resume"):
        data.pop(key, None)
    for dotted, neutral in HASH_NEUTRAL.items():
        *parents, leaf = dotted.split(".")
        node = data
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] in neutral:
            del node[leaf]
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def method_label(cfg: DictConfig) -> str:
    return cfg.get("label") or cfg.method.name


def default_run_id(cfg: DictConfig) -> str:
    imbalance = cfg.dataset.get("imbalance_factor")
    if_part = f"-if{imbalance:g}" if isinstance(imbalance, int | float) else ""
    return f"{cfg.dataset.name}{if_part}-{method_label(cfg)}-seed{cfg.seed}-{config_hash(cfg)}"


def in_channels(split: Split) -> int:
    return split.images.shape[-1] if isinstance(split, ArraySplit) else 3


def evaluation_sets(dataset: LTDataset, cfg: DictConfig) -> dict[str, Split]:
    sets: dict[str, Split] = {"test": dataset.test}
    if cfg.evaluation.test_agnostic:
        sets.update(
            {f"test_{k}": v for k, v in test_agnostic_sets(dataset.test, dataset.train_counts).items()}
        )
    return sets


def test_curve_summary(top1_by_epoch: dict[int, float]) -> dict[str, object]:
    """``evaluation.test_curve``: test top-1 after every epoch (those before a resume read back from
    train_log.csv), and where it peaked.
    A diagnostic for comparing with papers whose code reports the best test epoch; the record's
    metrics stay those of the last epoch."""
    epochs = sorted(top1_by_epoch)
    best = best_epoch(top1_by_epoch) if epochs else None
    return {
        "note": "diagnostic only: selecting the best test epoch would tune on the test set",
        "test_top1_by_epoch": {str(e): top1_by_epoch[e] for e in epochs},
        "best_epoch": best,
        "best_minus_last": top1_by_epoch[best] - top1_by_epoch[epochs[-1]] if epochs else None,
    }


class TrainingSegments(L.Callback):
    """Lightning engine: who trained which epochs (``provenance.training_segment``), written into every
    checkpoint and read back when ``fit`` resumes one (not when evaluation loads ``best.ckpt``)."""

    def __init__(self) -> None:
        self.segments: list[dict[str, Any]] = []

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":
            self.segments = provenance.checkpoint_segments(checkpoint, int(checkpoint.get("epoch", -1)) + 1)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.segments.append(provenance.training_segment(pl_module.device.type, trainer.current_epoch))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.segments[-1]["epochs"][1] = trainer.current_epoch + 1

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["training_segments"] = [{**s, "epochs": list(s["epochs"])} for s in self.segments]


def _callbacks(cfg: DictConfig, run_dir: Path) -> list[L.Callback]:
    callbacks: list[L.Callback] = [TrainingSegments()]
    if cfg.logger.progress_bar and sys.stdout.isatty():
        callbacks.append(RichProgressBar())
    checkpoints = run_dir / "checkpoints"
    if cfg.evaluation.checkpoint == "best_val":  # first: ckpt_path="best" reads the first ModelCheckpoint
        callbacks.append(
            ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/balanced_acc", mode="max")
        )
    # last.ckpt at the end of every training epoch, what an interrupted run resumes from (save_last
    # alone follows the validation schedule: with validation only after fit it wrote at the end)
    callbacks.append(
        ModelCheckpoint(
            dirpath=checkpoints,
            filename="last",
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
    )
    return callbacks


def _loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    loggers: list[Any] = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(run_dir, name="logs", version=""))
    if cfg.logger.tensorboard:
        if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise ConfigError("logger.tensorboard needs TensorBoard: pip install 'lt-bench[tensorboard]'")
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    return loggers


def check_finite(results: dict[str, dict[str, Any]]) -> None:
    """Refuse to record NaN accuracy: a tested split must give finite top-1 and NLL."""
    for name, result in results.items():
        if result["num_samples"] and not (np.isfinite(result["top1"]) and np.isfinite(result["nll"])):
            raise NonFiniteLossError(
                f"evaluation on '{name}' gave non-finite scores (top1={result['top1']}, "
                f"nll={result['nll']}): the model outputs NaN or inf; the run is not recorded"
            )


def _trainer(cfg: DictConfig, run_dir: Path, validate_during_fit: bool, reload_loaders: bool) -> L.Trainer:
    """Lightning Trainer from ``cfg.trainer``; validation every ``evaluation.val_every_n_epochs``;
    ``reload_loaders``: a new training loader every epoch (methods whose batch size changes)."""
    kwargs = OmegaConf.to_container(cfg.trainer)
    if reload_loaders:
        kwargs.setdefault("reload_dataloaders_every_n_epochs", 1)
    every = cfg.evaluation.val_every_n_epochs
    if not (validate_during_fit and every > 0):
        every = cfg.trainer.max_epochs + 1  # never during fit; trainer.validate runs after it
    kwargs.setdefault("check_val_every_n_epoch", every)
    kwargs["use_distributed_sampler"] = False  # LTDataModule picks seeded, unpadded samplers
    kwargs.setdefault("enable_progress_bar", bool(cfg.logger.progress_bar and sys.stdout.isatty()))
    return L.Trainer(
        **kwargs,
        logger=_loggers(cfg, run_dir) or False,
        callbacks=_callbacks(cfg, run_dir),
        default_root_dir=run_dir,
    )


@contextmanager
def _lightning_stop_as_interrupt() -> Iterator[None]:
    """Lightning ends a run on SIGTERM with ``SIGTERMException`` (a ``SystemExit`` with code 0):
    report it as the stop it is, resumable from the last epoch checkpoint."""
    try:
        yield
    except SIGTERMException as exc:
        raise RunInterrupted(
            "stopped by SIGTERM; the last epoch checkpoint resumes the run: run the same command again"
        ) from exc


def checkpoint_to_resume(cfg: DictConfig, run_dir: Path, method: BaseMethod, engine: str) -> Path | None:
    """``<run>/checkpoints/last.ckpt`` when the run should continue from it (``resume``: auto/true/false).

    The checkpoint must come from the same method, class count and engine; ``resume=false`` starts over.
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.resume is False:
        if last.exists():
            last.unlink()
        return None
    if not last.exists():
        if cfg.resume is True:
            raise ConfigError(f"resume=true but '{last}' does not exist; run without resume=true")
        return None
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=False)
        saved = checkpoint["hyper_parameters"]
    except Exception as exc:
        raise ConfigError(
            f"checkpoint '{last}' is unreadable ({type(exc).__name__}); delete it or add resume=false"
        ) from exc
    saved_method, saved_classes = saved["cfg"]["method"]["name"], len(saved["train_counts"])
    if saved_method != cfg.method.name or saved_classes != method.num_classes:
        raise ConfigError(
            f"checkpoint '{last}' is from method '{saved_method}' with {saved_classes} classes, not "
            f"'{cfg.method.name}' with {method.num_classes}; use another output_dir or add resume=false"
        )
    saved_engine = checkpoint.get("engine", "lightning")
    if saved_engine != engine:
        raise ConfigError(
            f"checkpoint '{last}' was written by the {saved_engine} engine; resume it with "
            f"train.engine={saved_engine}, or add resume=false to start over"
        )
    print(f"{run_dir.name}: resuming from {last}", flush=True)
    return last


def run(cfg: DictConfig) -> Path:
    """Train and evaluate the run described by ``cfg``; return the path of its record."""
    run_id = cfg.run_id or default_run_id(cfg)
    run_dir = Path(cfg.output_dir) / run_id
    record_path = run_dir / RECORD_FILE
    if record_path.exists():
        print(f"{run_id}: already complete ({record_path}); delete the folder to run it again")
        return record_path

    started = datetime.now(timezone.utc)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dataset = build_dataset(cfg.dataset)
    if cfg.evaluation.checkpoint == "best_val" and dataset.val is None:
        raise ConfigError("evaluation.checkpoint=best_val needs a validation split; this dataset has none")
    test_sets = evaluation_sets(dataset, cfg)
    datamodule = LTDataModule(
        dataset.train,
        dataset.val,
        test_sets,
        mean=cfg.dataset.mean,
        std=cfg.dataset.std,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        augment=BatchAugment.from_config(cfg),
        image_size=cfg.data.image_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
    )
    method_cls = METHODS.get(cfg.method.name)
    method: BaseMethod = method_cls(
        cfg=OmegaConf.to_container(cfg),
        train_counts=dataset.train_counts.tolist(),
        in_channels=in_channels(dataset.train),
        eval_names=list(test_sets),
    )
    method.train_split = dataset.train
    engine = choose_engine(cfg, dataset.train)
    trainer = _trainer(
        cfg,
        run_dir,
        validate_during_fit=dataset.val is not None and engine == "lightning",
        reload_loaders=method.varies_batch_size(),
    )

    # on the fast engine a stop signal waits for the epoch's end (lt_bench.engine.stop); Lightning's
    # own SIGTERM handling raises SIGTERMException at its next batch
    with StopRequests() if engine == "fast" else nullcontext(), _lightning_stop_as_interrupt():
        resume_from = checkpoint_to_resume(cfg, run_dir, method, engine)
        t0 = time.perf_counter()
        step_mode = "lightning"
        if engine == "fast":
            fast = FastEngine(
                method,
                dataset.train,
                datamodule.augment,
                cfg,
                fast_engine_device(cfg),
                run_dir,
                use_graphs=None if cfg.train.cuda_graphs else False,
                test_curve=dataset.test if cfg.evaluation.test_curve else None,
            )
            summary = fast.fit(resume_from)
            step_mode, epochs_done = summary.step_mode, summary.epochs
        else:
            trainer.fit(method, datamodule=datamodule, ckpt_path=resume_from)
            epochs_done = trainer.current_epoch
        train_seconds = time.perf_counter() - t0
        if engine == "fast":
            segments = fast.training_segments
        else:
            segments = next(c for c in trainer.callbacks if isinstance(c, TrainingSegments)).segments

        ckpt = "best" if cfg.evaluation.checkpoint == "best_val" else None
        t1 = time.perf_counter()
        if dataset.val is not None:
            trainer.validate(method, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        trainer.test(method, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        eval_seconds = time.perf_counter() - t1
        eval_images = sum(
            method.results[k]["num_samples"] for k in [*test_sets, "val"] if k in method.results
        )
        t2 = time.perf_counter()
        method.test_time_stage(trainer, datamodule)
        test_time_seconds = time.perf_counter() - t2
    check_finite(method.results)

    process = provenance.process_seconds()
    record = {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "method": method_label(cfg),
        "method_name": cfg.method.name,
        "dataset": cfg.dataset.name,
        "imbalance_factor": dataset.info.get("imbalance_factor"),
        "profile": dataset.info.get("profile"),
        "seed": cfg.seed,
        "subset_seed": dataset.info.get("subset_seed"),
        "experiment": cfg.experiment,
        "checkpoint": cfg.evaluation.checkpoint,
        "uses_test_data_for_training": method.uses_test_data,
        "metrics": method.results,
        "method_extras": method.record_extras(),
        "variants": {f"{method_label(cfg)}+{k}": v for k, v in method.result_variants.items()},
        "class_names": dataset.class_names,
        "train_counts": dataset.train_counts.tolist(),
        "shot_groups": dataset.shot_groups(),
        "num_train": len(dataset.train),
        "num_val": len(dataset.val) if dataset.val is not None else 0,
        "val_missing_classes": dataset.info.get("val_missing_classes", []),
        "data_source": dataset.info.get("source"),
        "config": OmegaConf.to_container(cfg),
        "provenance": {
            **{f"git_{k}": v for k, v in provenance.git_state().items()},
            "versions": provenance.package_versions(),
            "device": provenance.device_name(cfg.trainer.accelerator),
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            # one entry per process that trained (several when the run was resumed): commit, device, epochs
            "training_segments": segments,
        },
        "diagnostics": test_curve_summary(fast.test_curve()) if cfg.evaluation.test_curve else None,
        "timing": {
            "engine": engine,
            "step_mode": step_mode,
            "epochs": epochs_done,
            "resumed_from": str(resume_from) if resume_from else None,
            "skipped_nonfinite_steps": method.skipped_steps,
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "train_images_per_second": round(method.train_images_seen / train_seconds, 1),
            "eval_images_per_second": round(eval_images / eval_seconds, 1),
            "test_time_seconds": round(test_time_seconds, 3),
            # the process's whole wall time until here (start-up, imports, data, training, evaluation)
            "process_seconds": None if process is None else round(process, 2),
        },
    }
    if not trainer.is_global_zero:
        return record_path
    arrays = {f"confusion_{k}": v for k, v in method.confusions.items() if v.shape[0] <= 1000}
    if dataset.train_indices is not None:
        arrays["train_indices"] = dataset.train_indices
    write_arrays(run_dir, arrays)
    write_per_class(run_dir, dataset.class_names, dataset.train_counts, method.results)
    return write_record(run_dir, record)
