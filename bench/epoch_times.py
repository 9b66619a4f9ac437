"""Seconds per training epoch of each method under the fast engine, one process alone on the device.

For each ``cifar10_lt/<method>`` experiment: build the method, train ``--epochs`` epochs with the fast
engine (the first epoch holds the eager warm-up steps and the CUDA-graph captures) and report the
median of the later epochs, training images per second, peak device memory and the step mode.
The ratio column compares with issue 6's references for the official code on one H200 (LDAM-DRW's
``cifar_train.py`` 1.1 s per epoch; SADE's ``train.py`` 3.0 s per epoch on CIFAR-100-LT IF 100).

    python bench/epoch_times.py --root DATA_OR_PACK [--epochs 4] [--methods ce,sade] [--json out.json] \
        [trainer.precision=bf16-mixed train.channels_last=true train.compile=default ...]

SBCL trains ``--epochs`` epochs of each stage and gets a second row for its stage 2 (the classifier at
batch 128), timed as stage 1 is (the stage's first epoch holds its warm-up steps and capture).

With ``train.compile=MODE`` the first epoch's eager warm-up steps compile the backbone (a multi-expert
method's trunk; the first epoch's time includes the compilation) and the engine's graphs capture the
compiled kernels; the last, smaller batch of an epoch compiles once more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lt_bench.config import compose
from lt_bench.data.augment import BatchAugment
from lt_bench.engine.choice import fast_engine_device
from lt_bench.engine.fast import FastEngine
from lt_bench.methods.base import limited_batches
from lt_bench.registry import METHODS
from lt_bench.reports.provenance import device_name, git_state
from lt_bench.runner import build_dataset

METHOD_LIST = (
    "ce,balanced_softmax,ldam_drw,car,batchformer,sade,tlc,mdcs,concutmix,concutmix_car,sbcl,batchformer_sade,"
    "balanced_softmax_balms,concutmix_dp4"
)
#: official implementation, seconds per epoch on one H200 (issue 6)
REFERENCE_SECONDS = {"ce": 1.1, "balanced_softmax": 1.1, "ldam_drw": 1.1, "sade": 3.0}


def fast_engine(name: str, overrides: list[str], run_dir: Path, use_graphs: bool | None = None) -> FastEngine:
    """The fast engine of experiment ``cifar10_lt/<name>`` with ``overrides``, as ``lt-bench run``
    builds it (``engine.cfg``, ``engine.device``; the method on the dataset's training split)."""
    cfg = compose([f"experiment=cifar10_lt/{name}", *overrides])
    dataset = build_dataset(cfg.dataset)
    method = METHODS.get(cfg.method.name)(
        cfg=cfg, train_counts=dataset.train_counts.tolist(), in_channels=dataset.train.images.shape[-1]
    )
    augment = BatchAugment.from_config(cfg)
    return FastEngine(method, dataset.train, augment, cfg, fast_engine_device(cfg), run_dir, use_graphs)


def time_method(name: str, root: str, epochs: int, extra: list[str]) -> dict:
    stages = []
    if name == "sbcl":  # both stages, ``epochs`` each: 1 contrastive (batch 1024), 2 the classifier
        stages = [f"method.stage1_epochs={epochs}", f"method.stage2_epochs={epochs}"]
    total = 2 * epochs if stages else epochs
    overrides = [f"dataset.root={root}", f"trainer.max_epochs={total}", *stages, *extra]
    schedule = compose([f"experiment=cifar10_lt/{name}"]).schedule
    if schedule.name == "balms_cosine":  # a timing run is shorter than BALMS's warm-up (32 epochs)
        overrides.append(f"schedule.warmup_epochs={min(schedule.warmup_epochs, max(total - 1, 2))}")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run_dir:
        engine = fast_engine(name, overrides, Path(run_dir))
        started = time.perf_counter()
        summary = engine.fit()
        wall = time.perf_counter() - started
    cfg, device = engine.cfg, engine.device

    def steady(seconds: list[float]) -> float:
        """Median of a stage's epochs after its first (warm-up steps and capture)."""
        return statistics.median(seconds[1:] or seconds)

    def epoch_images(batch: int) -> int:
        """Images an epoch trains at ``batch`` (BALMS's recipe stops epochs early)."""
        batches = limited_batches(cfg.trainer.get("limit_train_batches"), -(-len(engine.targets) // batch))
        return min(len(engine.targets), batches * batch)

    batch = int(cfg.data.batch_size)
    seconds = steady(summary.epoch_seconds[:epochs])
    second_stage = {}
    if stages:
        later, batch2 = summary.epoch_seconds[epochs:], int(cfg.method.stage2_batch_size)
        seconds2 = round(steady(later), 4)
        second_stage = {
            "stage2_batch_size": batch2,
            "stage2_first_epoch_s": round(later[0], 3),
            "stage2_seconds_per_epoch": seconds2,
            "stage2_images_per_second": round(epoch_images(batch2) / seconds2, 1),
        }
    return {
        "method": name,
        "batch_size": batch,
        "epochs_timed": epochs,
        "first_epoch_s": round(summary.epoch_seconds[0], 3),
        "seconds_per_epoch": round(seconds, 4),
        "images_per_second": round(epoch_images(batch) / seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if device.type == "cuda"
        else None,
        "step_mode": summary.step_mode,
        "precision": str(cfg.trainer.precision),
        "channels_last": bool(cfg.train.channels_last),
        "compile": cfg.train.compile,
        "wall_s": round(wall, 2),
        "reference_s": REFERENCE_SECONDS.get(name),
        "speedup_vs_reference": round(REFERENCE_SECONDS[name] / seconds, 2)
        if name in REFERENCE_SECONDS
        else None,
        **second_stage,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="CIFAR-10 folder or .npz pack (dataset.root)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--methods", default=METHOD_LIST)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. dataset.val_per_class=0")
    args = parser.parse_args()
    rows = []
    header = "| method | batch | s/epoch | images/s | first epoch (s) | peak GiB | steps | vs official |"
    print(header + "\n|---|---:|---:|---:|---:|---:|---|---:|", flush=True)
    for name in args.methods.split(","):
        row = time_method(name, args.root, args.epochs, args.overrides)
        rows.append(row)
        ratio = f"{row['speedup_vs_reference']}x" if row["speedup_vs_reference"] else "–"
        print(
            f"| {name} | {row['batch_size']} | {row['seconds_per_epoch']:.3f} | "
            f"{row['images_per_second']:,.0f} | {row['first_epoch_s']:.2f} | {row['peak_memory_gib']} | "
            f"{row['step_mode']} | {ratio} |",
            flush=True,
        )
        if "stage2_seconds_per_epoch" in row:
            print(
                f"| {name} (stage 2) | {row['stage2_batch_size']} | {row['stage2_seconds_per_epoch']:.3f} | "
                f"{row['stage2_images_per_second']:,.0f} | {row['stage2_first_epoch_s']:.2f} | – | – | – |",
                flush=True,
            )
    meta = {
        "device": device_name("auto"),
        "git": git_state(),
        "torch": torch.__version__,
        "date": time.strftime("%F"),
    }
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
