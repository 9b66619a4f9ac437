"""The fast engine: GPU-resident training of in-memory datasets (CIFAR-LT, Fashion-MNIST-LT).

The uint8 training set sits on the device. Each step gathers its batch by index, augments it with
the batched tensor ops of ``lt_bench.data.augment``, runs ``method.training_loss``, back-propagates
and applies ``GraphSGD`` — with no host synchronisation, so on a GPU the whole step is captured once
in a CUDA graph and replayed (one graph per ``method.step_variant()`` value and batch size). Steps
the method marks as not capturable (``graph_capturable``, ``views_capturable``) run eagerly, and on
a CPU everything runs eagerly: the same code, so the CPU tests cover it.

Semantics equal the Lightning engine's: the data order of each epoch is torch's
``DistributedSampler`` permutation (seed + epoch), torch/NumPy/``random`` are reseeded at each epoch
start (``method.on_train_epoch_start``), the learning rates come from the method's own
``configure_optimizers`` schedule, the last batch is kept (``drop_last=False``). A checkpoint is
written after every epoch and an interrupted run resumes from it; SIGTERM or Ctrl-C stops the run at
the end of the current epoch (``lt_bench.engine.stop``).
"""

from __future__ import annotations

import csv
import time
import warnings
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from lt_bench.data.augment import AUGMENTATIONS, BatchAugment, to_normalized_nchw
from lt_bench.data.base import ArraySplit
from lt_bench.engine.sgd import GraphSGD
from lt_bench.engine.stop import StopRequests
from lt_bench.errors import ConfigError, RunInterrupted
from lt_bench.methods.base import BaseMethod, limited_batches
from lt_bench.reports.provenance import checkpoint_segments, training_segment

#: batch augmentations made only of graph-safe tensor ops (no host sync, fixed shapes), as the host-sync
#: test checks them; ``simclr`` as a run's batch augmentation has no such check yet and stays eager
CAPTURABLE_AUGMENTS = tuple(name for name in AUGMENTATIONS if name != "simclr")
#: eager steps before the first capture (cuDNN/cuBLAS initialisation; they are real training steps)
WARMUP_STEPS = 3
ENGINE_NAME = "fast"


@dataclass
class FitSummary:
    epochs: int
    train_seconds: float
    train_images: int
    step_mode: str  # "graph", "graph (eager views)", "eager (graph views)" or "eager"
    captures: int = 0
    notes: list[str] = field(default_factory=list)
    #: wall seconds of each epoch this process ran (its end is synchronised by reading the loss)
    epoch_seconds: list[float] = field(default_factory=list)


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> Tensor:
    """The order of ``epoch``: what ``DistributedSampler(shuffle=True, seed=seed)`` yields to one process."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(num_samples, generator=generator)


class FastEngine:
    """Trains ``method`` on ``train`` for ``cfg.trainer.max_epochs`` epochs on ``device``."""

    def __init__(
        self,
        method: BaseMethod,
        train: ArraySplit,
        augment: BatchAugment,
        cfg: Any,
        device: torch.device,
        run_dir: Path,
        use_graphs: bool | None = None,
        test_curve: ArraySplit | None = None,
    ) -> None:
        self.method, self.augment, self.cfg, self.device = method, augment, cfg, device
        self.run_dir = Path(run_dir)
        method.train_split = train  # methods with per-sample state or a partner pool read it
        self.images = torch.from_numpy(train.images).to(device)
        self.targets = torch.from_numpy(train.targets).long().to(device)
        self.batch_size = int(cfg.data.batch_size)
        self.max_epochs = int(cfg.trainer.max_epochs)
        self.seed = int(cfg.seed)
        self.skip_nonfinite = cfg.train.nonfinite_loss == "skip"
        graphs_allowed = device.type == "cuda" if use_graphs is None else use_graphs
        self.use_graphs = graphs_allowed and method.graph_capturable and not self.skip_nonfinite
        self.views_in_graph = (
            method.views_capturable if method.raw_train_batches else augment.name in CAPTURABLE_AUGMENTS
        )
        # a step that cannot be captured (CAR's exact SVD) still replays its views as a graph
        self.view_graphs_only = graphs_allowed and not self.use_graphs and self.views_in_graph
        self.view_graphs: dict[tuple[Hashable, int], tuple[Any, Tensor, tuple[Tensor, ...]]] = {}
        self.autocast = str(cfg.trainer.get("precision", "32-true")) == "bf16-mixed"
        self.channels_last = bool(cfg.train.channels_last)
        method.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        #: ``train.compile``: the network compiled by the first (eager) steps, then captured with the step
        self.compiled = method.compiled_network() if cfg.train.get("compile") else None
        if self.compiled is not None:
            self.compiled.compile(mode=cfg.train.compile, dynamic=False)
        configured = method.configure_optimizers()
        self.torch_optimizer = configured["optimizer"]
        self.scheduler = configured["lr_scheduler"]["scheduler"]
        self.optimizer = GraphSGD(self.torch_optimizer.param_groups, device)
        self.loss_sum = torch.zeros((), device=device)
        self.term_sums: dict[str, Tensor] = {}
        self.step_count = torch.zeros((), dtype=torch.long, device=device)
        self.graphs: dict[tuple[Hashable, int], Any] = {}
        self.variant: Hashable = object()  # step_variant() of the epoch running
        self.active_terms: set[str] = set()  # loss terms the current variant returns
        self.log_rows: list[dict[str, Any]] = []
        self.warmups: dict[tuple[Hashable, int], int] = {}
        self.static: dict[tuple[Hashable, int], dict[str, Any]] = {}
        self.start_epoch = 0
        #: who trained which epochs (``provenance.training_segment``): earlier runs of a resumed one first
        self.training_segments: list[dict] = []
        self.captures = 0
        self.notes: list[str] = []
        #: ``evaluation.test_curve``: the test split on the device, scored after every epoch (diagnostic)
        self.curve = None
        if test_curve is not None:
            arrays = (test_curve.images, test_curve.targets)
            self.curve = tuple(torch.from_numpy(a).to(device) for a in arrays)
        self.curve_top1: dict[int, float] = {}

    # --- one step ------------------------------------------------------------------------------
    def _inputs(self, index: Tensor) -> tuple[Tensor, ...]:
        images, targets = self.images[index], self.targets[index]
        self.method.batch_indices = index
        if self.method.raw_train_batches:
            inputs = self.method.train_views(images, targets)
        else:
            inputs = (self.augment(images), targets)
        if self.channels_last:
            inputs = tuple(
                t.contiguous(memory_format=torch.channels_last)
                if t.dim() == 4 and t.is_floating_point()
                else t
                for t in inputs
            )
        return inputs

    def forward_loss(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, Tensor]]:
        """The method's training loss (as float32) and its terms, under bf16 autocast when
        ``trainer.precision=bf16-mixed``."""
        # autocast's weight cache must stay off under CUDA-graph capture
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast, cache_enabled=False):
            loss, terms = self.method.training_loss(*inputs)
        return loss.float(), terms

    def _loss_and_update(self, inputs: tuple[Tensor, ...]) -> None:
        """Forward, loss, backward, SGD and the running sums: the captured region.

        ``train.nonfinite_loss=skip`` checks the loss on the host (eager steps only) and skips the update.
        """
        loss, terms = self.forward_loss(inputs)
        if self.skip_nonfinite and not bool(torch.isfinite(loss.detach())):
            self.method.skipped_steps += 1
            self.step_count += 1
            return
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        self.step_count += 1
        first_bad = self.method.first_nonfinite_step  # raise_if_nonfinite reads it at the epoch's end
        first_bad.copy_(torch.where(~torch.isfinite(loss) & (first_bad < 0), self.step_count - 1, first_bad))
        self.loss_sum += loss
        self.active_terms.update(terms)
        for name, value in terms.items():
            if name not in self.term_sums:  # first (eager) step: made outside any capture
                self.term_sums[name] = torch.zeros((), device=self.device)
            self.term_sums[name] += value.detach().float()

    def step(self, index: Tensor, key: tuple[Hashable, int]) -> None:
        """One training step on the images ``index``: replayed from the graph of ``key`` (step variant,
        batch size) where the step is captured, eager with replayed views where only the views are (CAR with
        its exact SVD), else eager."""
        if self.use_graphs:
            self._graph_step(index, key)
        elif self.view_graphs_only:
            self._view_graph_step(index, key)
        else:
            self._eager_step(index)

    def _eager_step(self, index: Tensor) -> None:
        self._zero_grad()
        self._loss_and_update(self._inputs(index))

    def _zero_grad(self) -> None:
        for p in self.method.parameters():
            p.grad = None

    def _capture(self, key: tuple[Hashable, int], index: Tensor) -> Any:
        """Capture the step for ``key`` (nothing runs yet); ``None`` when it cannot be captured.

        With eager views, the static inputs already hold this batch's views when this returns.
        """
        static: dict[str, Any] = {"index": index.clone()}
        if not self.views_in_graph:
            static["inputs"] = tuple(t.clone() for t in self._inputs(index))
        graph = torch.cuda.CUDAGraph()
        self._zero_grad()
        try:
            with torch.cuda.graph(graph):
                if self.views_in_graph:
                    inputs = self._inputs(static["index"])
                else:
                    self.method.batch_indices = static["index"]
                    inputs = static["inputs"]
                self._loss_and_update(inputs)
        except RuntimeError as err:  # views first fall back to eager, then the whole step
            self._note_uncapturable("views" if self.views_in_graph else "step", err)
            if self.views_in_graph:
                self.views_in_graph = False
            else:
                self.use_graphs = False
            self._zero_grad()
            torch.cuda.synchronize()
            return None
        self.captures += 1
        self.static[key] = static
        return graph

    def _note_uncapturable(self, what: str, err: RuntimeError) -> None:
        """Record and print that ``what`` (views or step) runs eagerly from this epoch on, and why."""
        reason = " ".join(str(err).split())[:200]
        self.notes.append(f"{what} not capturable ({reason}); eager from epoch {self.method.epoch}")
        print(f"lt-bench: note: {self.notes[-1]}", flush=True)

    def _graph_step(self, index: Tensor, key: tuple[Hashable, int]) -> None:
        graph, fresh = self.graphs.get(key), False
        if graph is None:
            needed = WARMUP_STEPS if self.captures == 0 else 1
            if (
                self.warmups.get(key, 0) < needed
            ):  # real steps, eager, on a side stream (new shapes, new code)
                self.warmups[key] = self.warmups.get(key, 0) + 1
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    self._eager_step(index)
                torch.cuda.current_stream().wait_stream(stream)
                return
            for old in [k for k in self.graphs if k[0] != key[0]]:  # a new variant: drop the old graphs
                del self.graphs[old], self.static[old]
            graph = self._capture(key, index)
            if graph is None:
                self._eager_step(index)
                return
            self.graphs[key], fresh = graph, True
        static = self.static[key]
        static["index"].copy_(index)
        if not self.views_in_graph and not fresh:
            for target, source in zip(static["inputs"], self._inputs(index), strict=True):
                target.copy_(source)
        graph.replay()

    def _view_graph_step(self, index: Tensor, key: tuple[Hashable, int]) -> None:
        """An eager step on views replayed from a captured graph (one per variant and batch size;
        the first step of each eager, as a warm-up); views that cannot be captured run eagerly from
        then on."""
        entry = self.view_graphs.get(key)
        if entry is None:
            if key not in self.warmups:
                self.warmups[key] = 1
                self._eager_step(index)
                return
            for old in [k for k in self.view_graphs if k[0] != key[0]]:
                del self.view_graphs[old]
            static_index = index.clone()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    static_inputs = self._inputs(static_index)
            except RuntimeError as err:
                self._note_uncapturable("views", err)
                self.view_graphs_only = False
                torch.cuda.synchronize()
                self._eager_step(index)
                return
            self.captures += 1
            entry = self.view_graphs[key] = (graph, static_index, static_inputs)
        graph, static_index, static_inputs = entry
        static_index.copy_(index)
        graph.replay()
        self.method.batch_indices = static_index
        self._zero_grad()
        self._loss_and_update(static_inputs)

    # --- epochs --------------------------------------------------------------------------------
    def fit(self, resume_from: Path | None = None) -> FitSummary:
        self.training_segments = self.load_checkpoint(resume_from) if resume_from is not None else []
        if self.start_epoch < self.max_epochs:  # a process that only evaluates trains no segment
            self.training_segments.append(training_segment(self.device.type, self.start_epoch))
        num_samples = len(self.targets)
        seen_before = self.method.train_images_seen
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        started = time.perf_counter()
        epoch_seconds = []
        with StopRequests() as stop:
            self._stop_if_requested(stop, self.start_epoch)
            for epoch in range(self.start_epoch, self.max_epochs):
                epoch_seconds.append(self._epoch(epoch, num_samples))
                self._stop_if_requested(stop, epoch + 1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        # the evaluation after training runs uncompiled: one pass would not repay a recompilation for eval
        # mode, no gradients and its batch sizes (the per-epoch test curve, during training, runs compiled)
        if self.compiled is not None:
            self.compiled._compiled_call_impl = None
        self.method.engine_epoch = self.max_epochs - 1 if self.max_epochs > 0 else 0
        mode = "eager (graph views)" if self.view_graphs_only else "eager"
        if self.use_graphs:
            mode = "graph" if self.views_in_graph else "graph (eager views)"
        return FitSummary(
            epochs=self.max_epochs,
            train_seconds=time.perf_counter() - started,
            train_images=self.method.train_images_seen - seen_before,
            step_mode=mode,
            captures=self.captures,
            notes=self.notes,
            epoch_seconds=epoch_seconds,
        )

    def _stop_if_requested(self, stop: StopRequests, epochs_done: int) -> None:
        """Raise ``RunInterrupted`` once a stop was requested (checked before training and after each
        epoch, the last included: a resumed run then goes straight to evaluation)."""
        if stop.received is None:
            return
        if epochs_done == self.start_epoch:
            raise RunInterrupted(
                f"stopped by {stop.received} before training epoch {epochs_done + 1}; run the same "
                "command again to continue"
            )
        raise RunInterrupted(
            f"stopped by {stop.received} after epoch {epochs_done} of {self.max_epochs}; checkpoint "
            f"'{self.checkpoint_path}': run the same command again to resume"
        )

    def _epoch(self, epoch: int, num_samples: int) -> float:
        """Train one epoch (log and checkpoint at its end); returns its seconds."""
        epoch_start = time.perf_counter()
        variant, batch_size = self.begin_epoch(epoch)
        order = epoch_permutation(num_samples, self.seed, epoch).to(self.device)
        batches = limited_batches(self.cfg.trainer.get("limit_train_batches"), -(-num_samples // batch_size))
        self.loss_sum.zero_()
        for value in self.term_sums.values():
            value.zero_()
        skipped_before = self.method.skipped_steps
        for b in range(batches):
            index = order[b * batch_size : (b + 1) * batch_size]
            self.step(index, (variant, len(index)))
            self.method.train_images_seen += len(index)
        with warnings.catch_warnings():  # torch warns because its own optimizer never stepped
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self._end_epoch(epoch, batches - (self.method.skipped_steps - skipped_before))
        return time.perf_counter() - epoch_start

    def begin_epoch(self, epoch: int) -> tuple[Hashable, int]:
        """Set the method up for ``epoch`` (its reseed and epoch state, the epoch's learning rates);
        returns the epoch's step variant and batch size."""
        self.method.engine_epoch = epoch
        self.method.train()
        self.method.on_train_epoch_start()
        self.optimizer.set_lrs([group["lr"] for group in self.torch_optimizer.param_groups])
        variant = self.method.step_variant()
        if variant != self.variant:
            self.variant, self.active_terms = variant, set()
        return variant, self.method.train_batch_size(self.batch_size)

    def _end_epoch(self, epoch: int, applied_steps: int) -> None:
        """Check the loss (one host sync per epoch), log the epoch, write the checkpoint."""
        self.method.raise_if_nonfinite()
        done = max(applied_steps, 1)
        lrs = self.optimizer.lrs()
        row = {"epoch": epoch, "step": int(self.step_count), "lr": lrs[0]}
        row.update({f"lr_group{k}": lr for k, lr in enumerate(lrs[1:], start=1)})
        row["train/loss_epoch"] = float(self.loss_sum) / done
        row.update({f"train/{k}_epoch": float(self.term_sums[k]) / done for k in sorted(self.active_terms)})
        if self.curve is not None:
            row["diag/test_top1"] = self.curve_top1[epoch] = self._test_top1()
        self._log(row)
        self.save_checkpoint(epoch + 1)

    @torch.no_grad()
    def _test_top1(self) -> float:
        """Diagnostic: top-1 of the method's prediction (``predict_logits``, eval mode, as the test
        evaluation scores it, on the batches ``trainer.limit_test_batches`` lets it score) on the test
        split now; draws no random number and restores the training mode."""
        images, targets = self.curve
        size = int(self.cfg.data.eval_batch_size)
        batches = limited_batches(self.cfg.trainer.get("limit_test_batches"), -(-len(targets) // size))
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        was_training = self.method.training
        self.method.eval()
        for low in range(0, min(len(targets), batches * size), size):
            x = to_normalized_nchw(images[low : low + size], self.cfg.dataset.mean, self.cfg.dataset.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.method.predict_logits(self.method(x))
            correct += (logits.argmax(1) == targets[low : low + size]).sum()
        self.method.train(was_training)
        return int(correct) / min(len(targets), batches * size)

    def test_curve(self) -> dict[int, float]:
        """``evaluation.test_curve``: test top-1 per epoch, those of epochs trained before a resume
        read back from ``train_log.csv``."""
        earlier: dict[int, float] = {}
        if self.log_path.exists():
            with self.log_path.open(newline="") as f:
                for row in csv.DictReader(f):
                    if row.get("diag/test_top1"):
                        earlier[int(row["epoch"])] = float(row["diag/test_top1"])
        return {**earlier, **self.curve_top1}

    @property
    def log_path(self) -> Path:
        return self.run_dir / "train_log.csv"

    def _log(self, row: dict[str, Any]) -> None:
        """Append ``row`` to ``train_log.csv``, rewritten whole so that columns may appear later
        (loss terms of a later stage); a resumed run keeps the rows of the epochs it had done."""
        if not self.cfg.logger.csv:
            return
        if not self.log_rows and self.log_path.exists():
            with self.log_path.open(newline="") as f:
                self.log_rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < row["epoch"]]
        self.log_rows.append(row)
        columns = list(dict.fromkeys(key for r in self.log_rows for key in r))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.log_path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.log_rows)
        tmp.replace(self.log_path)

    # --- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    def save_checkpoint(self, next_epoch: int) -> None:
        """Atomically write what a resumed run needs: weights, buffers, momentum, schedule, counters,
        and who trained which epochs."""
        if self.training_segments:
            self.training_segments[-1]["epochs"][1] = next_epoch
        state = {
            "engine": ENGINE_NAME,
            "hyper_parameters": {
                "cfg": OmegaConf.to_container(self.method.cfg),
                "train_counts": self.method.class_counts.long().tolist(),
            },
            "state_dict": {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "next_epoch": next_epoch,
            "step_count": int(self.step_count),
            "skipped_steps": self.method.skipped_steps,
            "training_segments": self.training_segments,
        }
        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load_checkpoint(self, path: Path) -> list[dict]:
        """Restore the state ``save_checkpoint`` wrote; return the checkpoint's training segments."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("engine") != ENGINE_NAME:
            raise ConfigError(
                f"checkpoint '{path}' was written by the Lightning engine; resume it with "
                "train.engine=lightning, or add resume=false to start over"
            )
        self.method.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for group, lr in zip(self.torch_optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
        self.start_epoch = int(state["next_epoch"])
        self.step_count.fill_(int(state["step_count"]))
        self.method.skipped_steps = int(state["skipped_steps"])
        return checkpoint_segments(state, self.start_epoch)
