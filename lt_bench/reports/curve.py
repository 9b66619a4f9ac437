"""Test-curve table (``evaluation.test_curve`` records): per method, the last epoch's test top-1 beside
the best epoch's, mean ± std over seeds (ddof = 1).

A diagnostic for comparing with papers whose code reports its best test epoch: choosing that epoch
tunes on the test set, so benchmark tables keep the last epoch (``lt-bench table``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from lt_bench.errors import LTBenchError
from lt_bench.reports.record import find_records, read_record
from lt_bench.reports.table import KEYS, imbalance_cell, mean_std_cell, newest_per_seed, record_key

VALUES = ("last", "best", "best_minus_last")


def best_epoch(top1_by_epoch: dict[int, float]) -> int:
    """The epoch of the highest test top-1; of equal peaks the later one."""
    return max(top1_by_epoch, key=lambda e: (top1_by_epoch[e], e))


def curve_frame(paths: list[Path]) -> pd.DataFrame:
    """One row per run whose record has a test curve: table keys, seed, ``last`` / ``best`` test top-1
    (fractions), ``best_minus_last``, ``best_epoch`` (counted from 0), ``curve_epochs`` (epochs with a
    test score) and ``epochs`` (epochs trained). A re-run of the same seed keeps the newest record, as
    ``lt-bench table`` does, then the runs whose record has no curve are left out."""
    records = find_records(paths)
    if not records:
        raise LTBenchError(f"no record.json under {', '.join(map(str, paths))}")
    rows = []
    for path in records:
        record = read_record(path)
        row = {
            **dict(zip(KEYS, record_key(record), strict=True)),
            "seed": record["seed"],
            "finished": record["provenance"]["finished"],
            "path": str(path),
        }
        curve = (record.get("diagnostics") or {}).get("test_top1_by_epoch")
        if curve:
            by_epoch = {int(epoch): float(top1) for epoch, top1 in curve.items()}
            best, last = best_epoch(by_epoch), by_epoch[max(by_epoch)]
            row |= {
                "last": last,
                "best": by_epoch[best],
                "best_minus_last": by_epoch[best] - last,
                "best_epoch": best,
                "curve_epochs": len(by_epoch),
                "epochs": (record.get("timing") or {}).get("epochs", len(by_epoch)),
            }
        rows.append(row)
    frame = newest_per_seed(pd.DataFrame(rows))
    frame = frame[frame["best"].notna()] if "best" in frame else frame.iloc[:0]
    if frame.empty:
        raise LTBenchError(
            f"no record under {', '.join(map(str, paths))} has a test curve; "
            "train with evaluation.test_curve=true"
        )
    return frame.astype({"best_epoch": int, "curve_epochs": int, "epochs": int}).reset_index(drop=True)


def curve_table(paths: list[Path]) -> str:
    """Markdown: ``n``, last, best and best − last (percent, mean ± std) and the best epochs' range,
    over the runs whose curve covers every epoch they trained; the others are listed below the table
    (a run resumed with ``evaluation.test_curve`` turned on has no score for its earlier epochs)."""
    frame = curve_frame(paths)
    complete = frame[frame.curve_epochs == frame.epochs]
    lines = [
        "| dataset | IF | method | n | last top1 | best-epoch top1 | best − last | best epochs (from 0) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (dataset, imbalance, profile, method), group in complete.groupby(list(KEYS), sort=True, dropna=False):
        cells = [mean_std_cell(group[col].mean(), group[col].std(ddof=1), "±") for col in VALUES]
        epochs = f"{group['best_epoch'].min()}–{group['best_epoch'].max()}"
        lines.append(
            f"| {dataset} | {imbalance_cell(imbalance, profile)} | {method} | {len(group)} | "
            + " | ".join(cells)
            + f" | {epochs} |"
        )
    partial = frame[frame.curve_epochs != frame.epochs]
    if len(partial):
        lines.append("")
    for row in partial.itertuples():
        lines.append(f"- left out, a test score for {row.curve_epochs} of {row.epochs} epochs: {row.path}")
    return "\n".join(lines) + "\n"


def add_curve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "curve",
        help="last vs best test epoch of runs trained with evaluation.test_curve=true (diagnostic)",
    )
    p.add_argument("paths", nargs="+", help="record.json files or folders holding them")
    p.set_defaults(func=_cmd_curve)


def _cmd_curve(args: argparse.Namespace) -> int:
    sys.stdout.write(curve_table([Path(p) for p in args.paths]))
    return 0
