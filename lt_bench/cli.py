"""The ``lt-bench`` command: run | sweep | table | diff | compare | curve | report | list | data summary |
data pack."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lt_bench.errors import LTBenchError, RunInterrupted

OVERRIDES_HELP = (
    "key=value overrides: group choices (experiment=, dataset=, method=, backbone=) or dotted keys"
)


def _cmd_run(args: argparse.Namespace) -> int:
    from lt_bench.config import compose, experiment_runs, parse_overrides
    from lt_bench.reports.table import table
    from lt_bench.runner import run

    choices, _ = parse_overrides(args.overrides)
    suite = experiment_runs(choices["experiment"]) if "experiment" in choices else []
    if not suite:
        path = run(compose(args.overrides))
        print(f"record: {path}")
        print(table([path]))
        return 0
    paths = []
    for i, extra in enumerate(suite, 1):
        cfg = compose([*args.overrides, *extra])
        print(f"[{i}/{len(suite)}] {' '.join(extra)}", flush=True)
        paths.append(run(cfg))
    print(table(paths))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from lt_bench.reports.table import table
    from lt_bench.sweep import sweep

    experiments = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    if not experiments:
        raise LTBenchError("name at least one experiment, e.g. lt-bench sweep cifar10_lt/ce seeds=0,1,2")
    print(table(sweep(experiments, overrides, args.parallel, mps=args.mps)))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from lt_bench.reports.table import table

    sys.stdout.write(table([Path(p) for p in args.paths], args.format))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from lt_bench.config import list_experiments
    from lt_bench.registry import BACKBONES, DATASETS, METHODS

    registries = {"methods": METHODS, "datasets": DATASETS, "backbones": BACKBONES}
    if args.what == "experiments":
        print("\n".join(list_experiments()))
        return 0
    registry = registries[args.what]
    for name in registry.names():
        meta = registry.meta(name)
        note = meta.get("paper") or (f"plugin {meta['plugin']}" if "plugin" in meta else "")
        print(f"{name:20s} {note}".rstrip())
    return 0


def _load_dataset(overrides: list[str]):
    from lt_bench.config import compose
    from lt_bench.runner import build_dataset

    return build_dataset(compose(overrides).dataset)


def _cmd_summary(args: argparse.Namespace) -> int:
    dataset = _load_dataset(args.overrides)
    groups = dataset.shot_groups()
    summary = {
        "dataset": dataset.name,
        "num_classes": dataset.num_classes,
        "train": len(dataset.train),
        "val": len(dataset.val) if dataset.val is not None else 0,
        "test": len(dataset.test),
        "train_counts": dataset.train_counts.tolist(),
        "many_classes": groups["many"],
        "medium_classes": groups["medium"],
        "few_classes": groups["few"],
        "imbalance_factor": dataset.imbalance_factor,
        "val_missing_classes": dataset.info.get("val_missing_classes", []),
        "source": dataset.info.get("source"),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{dataset.name}: {dataset.num_classes} classes, source {summary['source']}")
    print(f"  train {summary['train']:,}  val {summary['val']:,}  test {summary['test']:,}")
    print(f"  training class counts: {summary['train_counts']}")
    print(f"  realised imbalance factor: {summary['imbalance_factor']:.2f}")
    for group in ("many", "medium", "few"):
        print(f"  {group:6s} ({len(groups[group])}): {groups[group]}")
    if summary["val_missing_classes"]:
        print(f"  classes without validation images: {summary['val_missing_classes']}")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from lt_bench.data.pack import write_pack

    dataset = _load_dataset(args.overrides)
    path = write_pack(dataset, Path(args.output), compress=args.compress, encoded=args.encoded)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def one_line(exc: LTBenchError) -> str:
    """The error's own message; a DataLoader worker wraps it in a traceback, whose last line it is."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(exc):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from lt_bench.reports.compare import add_compare_parser
    from lt_bench.reports.curve import add_curve_parser
    from lt_bench.reports.diff import add_diff_parser
    from lt_bench.reports.html import add_report_parser

    parser = argparse.ArgumentParser(
        prog="lt-bench", description="Benchmark suite for long-tailed image recognition."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train and evaluate one method (or a suite experiment)")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="a grid of runs (experiments x seeds x values) as parallel processes")
    p.add_argument("items", nargs="+", help="experiments, then seeds=0,1,2 and key=v1,v2 axes or overrides")
    p.add_argument("--parallel", type=int, default=1, help="processes at once (they share the GPUs)")
    p.add_argument(
        "--mps",
        action="store_true",
        help="one CUDA MPS daemon per GPU for the sweep, so the processes' kernels run side by side",
    )
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("table", help="benchmark table (mean ± std over seeds) from run records")
    p.add_argument("paths", nargs="+", help="record.json files or folders holding them")
    p.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    p.set_defaults(func=_cmd_table)

    add_compare_parser(sub)
    add_curve_parser(sub)
    add_diff_parser(sub)
    add_report_parser(sub)

    p = sub.add_parser("list", help="registered methods, datasets, backbones, or experiment files")
    p.add_argument("what", choices=("methods", "datasets", "backbones", "experiments"))
    p.set_defaults(func=_cmd_list)

    data = sub.add_parser("data", help="inspect or pack datasets").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser(
        "summary",
        help="class counts, splits and shot groups of a dataset",
        description="Example: lt-bench data summary dataset=cifar10_lt dataset.root=DIR "
        "dataset.imbalance_factor=100",
    )
    p.add_argument("overrides", nargs="*", help="dataset=<name> and dataset.<key>=<value>")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_summary)
    p = data.add_parser("pack", help="write a dataset's decoded splits to one .npz file")
    p.add_argument("overrides", nargs="*", help="dataset=<name> and dataset.<key>=<value>")
    p.add_argument("-o", "--output", required=True, help="output .npz path")
    p.add_argument(
        "--compress", action="store_true", help="zip-compress the arrays (smaller, slower to load)"
    )
    p.add_argument(
        "--encoded",
        action="store_true",
        help="keep the source image files' bytes, decoded when read (CIFAR-LT read from a JPEG/PNG "
        "folder copy only; the CIFAR-10 JPEG copy: about a third of the size)",
    )
    p.set_defaults(func=_cmd_pack)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no device/tip banners
    try:
        return args.func(args)
    except RunInterrupted as exc:
        print(f"lt-bench: {one_line(exc)}", file=sys.stderr)
        return 130
    except LTBenchError as exc:
        print(f"lt-bench: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lt-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
