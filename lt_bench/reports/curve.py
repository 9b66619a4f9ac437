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
from lt_bench.reports.table import KEYS, imbalance_cell, record_key

VALUES = ("last", "best", "best_minus_last")


def curve_frame(paths: list[Path]) -> pd.DataFrame:
    """One row per record with a test curve: table keys, seed, ``last`` / ``best`` test top-1 (fractions),
    ``best_minus_last`` and ``best_epoch`` (0-indexed). A record without a curve is left out."""
    rows = []
    for path in find_records(paths):
        record = read_record(path)
        curve = (record.get("diagnostics") or {}).get("test_top1_by_epoch")
        if not curve:
            continue
        by_epoch = {int(epoch): float(top1) for epoch, top1 in curve.items()}
        last = by_epoch[max(by_epoch)]
        best_epoch = max(by_epoch, key=lambda e: (by_epoch[e], e))
        rows.append(
            {
                **dict(zip(KEYS, record_key(record), strict=True)),
                "seed": record["seed"],
                "last": last,
                "best": by_epoch[best_epoch],
                "best_minus_last": by_epoch[best_epoch] - last,
                "best_epoch": best_epoch,
            }
        )
    if not rows:
        raise LTBenchError(
            f"no record under {', '.join(map(str, paths))} has a test curve; "
            "train with evaluation.test_curve=true"
        )
    return pd.DataFrame(rows).sort_values([*KEYS, "seed"], ignore_index=True)


def curve_table(paths: list[Path]) -> str:
    """Markdown: ``n``, last, best and best − last (percent, mean ± std) and the best epochs' range."""
    frame = curve_frame(paths)
    lines = [
        "| dataset | IF | method | n | last top1 | best-epoch top1 | best − last | best epochs |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (dataset, imbalance, profile, method), group in frame.groupby(list(KEYS), sort=True, dropna=False):
        cells = [_mean_std(group[col]) for col in VALUES]
        epochs = f"{group['best_epoch'].min()}–{group['best_epoch'].max()}"
        lines.append(
            f"| {dataset} | {imbalance_cell(imbalance, profile)} | {method} | {len(group)} | "
            + " | ".join(cells)
            + f" | {epochs} |"
        )
    return "\n".join(lines) + "\n"


def _mean_std(values: pd.Series) -> str:
    if len(values) == 1:
        return f"{100 * values.iloc[0]:.2f}"
    return f"{100 * values.mean():.2f} ± {100 * values.std(ddof=1):.2f}"


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
