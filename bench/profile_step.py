"""Where a training step's GPU time goes: the kernels of eager fast-engine steps, by total time.

Builds ``cifar10_lt/<method>`` as ``bench/epoch_times.py`` does, runs ``--warmup`` eager steps, then
profiles ``--steps`` more with ``torch.profiler`` and prints the kernel count and summed kernel time
per step, its sum by kernel family (``KERNEL_FAMILIES``: convolution, batch norm, other compiled, other)
and the top kernels; ``--json`` also writes every kernel. Kernel time per step against the graph step's
wall time (s/epoch of ``epoch_times.py`` divided by the steps per epoch) says whether a step is bound by
the GPU's work or by the gaps between kernels.

    python bench/profile_step.py --root DATA_OR_PACK [--method ce] [--steps 10] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import torch
from epoch_times import fast_engine
from torch.profiler import ProfilerActivity, profile

from lt_bench.methods.base import limited_batches


def kernel_rows(prof: profile) -> list[tuple[str, int, float]]:
    """(kernel name, calls, total µs) of every GPU kernel the profiler saw, longest first."""
    rows = []
    for event in prof.key_averages():
        if str(event.device_type).endswith("CUDA") and event.count:
            total = event.self_device_time_total
            if total > 0:
                rows.append((event.key, event.count, float(total)))
    return sorted(rows, key=lambda row: -row[2])


#: kernel families, tested in order: inductor's fused pointwise and reduction kernels (``train.compile``),
#: batch norm among them when their name says so; convolutions (cuDNN's forward, data- and weight-gradient
#: kernels, CUTLASS's implicit GEMM and its split-K reduction, inductor's Triton templates); batch norm
#: (ATen's and cuDNN's); the rest (elementwise, copies, layout conversions, GEMMs, the optimizer)
KERNEL_FAMILIES = (
    ("batch norm", re.compile(r"^triton_(poi|red|per)_.*batch_norm", re.IGNORECASE)),
    ("other compiled", re.compile(r"^triton_(poi|red|per)_", re.IGNORECASE)),
    (
        "convolution",
        re.compile(
            r"fprop|dgrad|wgrad|ImplicitGemmConvolution|ReduceSplitK|convolve|winograd|^triton_tem_.*convolution",
            re.IGNORECASE,
        ),
    ),
    ("batch norm", re.compile(r"batch_?norm", re.IGNORECASE)),
)
FAMILY_NAMES = ("convolution", "batch norm", "other compiled", "other")


def family_ms(rows: list[tuple[str, int, float]], steps: int) -> dict[str, float]:
    """Milliseconds of kernel time per step of each family (``KERNEL_FAMILIES``, then ``other``)."""
    totals = dict.fromkeys(FAMILY_NAMES, 0.0)
    for name, _, total in rows:
        family = next((f for f, pattern in KERNEL_FAMILIES if pattern.search(name)), "other")
        totals[family] += total / steps / 1000
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="CIFAR-10 folder or .npz pack (dataset.root)")
    parser.add_argument("--method", default="ce")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:  # nothing is written: no fit, no checkpoint
        engine = fast_engine(
            args.method, [f"dataset.root={args.root}", *args.overrides], Path(run_dir), False
        )
    device = engine.device
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as FastEngine.fit trains
    _, batch = engine.begin_epoch(0)
    order = torch.randperm(len(engine.targets), device=device)
    for step in range(args.warmup):
        engine._eager_step(order[step * batch : (step + 1) * batch])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for step in range(args.warmup, args.warmup + args.steps):
            engine._eager_step(order[step * batch : (step + 1) * batch])
        sync()
    rows = kernel_rows(prof)
    kernels = sum(calls for _, calls, _ in rows) / args.steps
    busy_ms = sum(total for _, _, total in rows) / args.steps / 1000
    limit = engine.cfg.trainer.get("limit_train_batches")
    steps_per_epoch = limited_batches(limit, -(-len(engine.targets) // batch))
    print(
        f"{args.method}: batch {batch}, {kernels:.0f} kernels and {busy_ms:.3f} ms of kernel time per "
        f"step; {busy_ms * steps_per_epoch / 1000:.3f} s of kernel time per epoch ({steps_per_epoch} steps)"
    )
    families = family_ms(rows, args.steps)
    print("kernel time per step by family (ms): " + ", ".join(f"{f} {ms:.3f}" for f, ms in families.items()))
    print("| kernel | calls/step | µs/step | share |\n|---|---:|---:|---:|")
    for name, calls, total in rows[: args.top]:
        share = total / args.steps / 1000 / busy_ms
        print(f"| {name[:90]} | {calls / args.steps:.0f} | {total / args.steps:.1f} | {share:.1%} |")
    if args.json:
        summary = {
            "method": args.method,
            "batch": batch,
            "overrides": args.overrides,
            "kernels_per_step": kernels,
            "kernel_ms": busy_ms,
            "family_ms": {family: round(ms, 4) for family, ms in families.items()},
        }
        args.json.write_text(json.dumps({**summary, "kernels": rows}, indent=1))


if __name__ == "__main__":
    main()
