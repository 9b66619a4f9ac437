"""Two benchmark tables side by side (``lt-bench diff A B``): for each method in both, one metric's
mean ± std over seeds in each (sample std, ddof = 1), the difference of the means ``B − A``, and ``*``
where it exceeds the seed spread (``|Δ| > std_A + std_B``, the rule of ``lt-bench compare``).

For the same recipes under two settings: float32 against bf16, two commits, two engines, two machines.
Rows are keyed as ``lt-bench table`` keys them (dataset, IF, profile, method; variants such as
``sade+tta`` included), a re-run of a seed keeps the newest record; keys found in one table only are
listed below it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from lt_bench.errors import LTBenchError
from lt_bench.reports.compare import SPREAD_RULE, Stat, exceeds_spread
from lt_bench.reports.record import find_records
from lt_bench.reports.table import COLUMNS, KEYS, imbalance_cell, mean_std_cell, records_frame, summarize


def _summary(paths: list[Path], metric: str) -> pd.DataFrame:
    if not find_records(paths):
        raise LTBenchError(f"no record.json under {', '.join(map(str, paths))}")
    summary = summarize(records_frame(paths))
    return summary[[*KEYS, "n", f"{metric}_mean", f"{metric}_std"]]


def diff_frame(a: list[Path], b: list[Path], metric: str = "top1") -> pd.DataFrame:
    """One row per key of either table: ``n_a``, ``mean_a``, ``std_a``, the same for B (NaN where a
    table lacks the key), ``delta`` = mean_b − mean_a (fractions) and ``beyond_spread``."""
    if metric not in COLUMNS:
        raise LTBenchError(f"unknown metric '{metric}'; choose one of {', '.join(COLUMNS)}")
    names = {f"{metric}_mean": "mean", f"{metric}_std": "std", "n": "n"}
    sides = [_summary(paths, metric).rename(columns=names) for paths in (a, b)]
    frame = sides[0].merge(sides[1], on=list(KEYS), how="outer", suffixes=("_a", "_b"), sort=True)
    frame["delta"] = frame["mean_b"] - frame["mean_a"]
    frame["beyond_spread"] = [
        exceeds_spread(Stat(r.mean_a, r.std_a, int(r.n_a)), Stat(r.mean_b, r.std_b, int(r.n_b)))
        if r.n_a == r.n_a and r.n_b == r.n_b
        else False
        for r in frame.itertuples()
    ]
    return frame.reset_index(drop=True)


def diff_table(a: list[Path], b: list[Path], metric: str = "top1") -> str:
    """Markdown: the keys in both tables, then a summary line (mean Δ over them, how many lower and
    higher, how many beyond the spread) and the keys of one table only."""
    frame = diff_frame(a, b, metric)
    both = frame[frame.n_a.notna() & frame.n_b.notna()]
    name_a, name_b = (" ".join(str(p) for p in paths) for paths in (a, b))
    lines = [
        f"A: {name_a}",
        f"B: {name_b}",
        "",
        f"| dataset | IF | method | n A | {metric} A | n B | {metric} B | B − A |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in both.itertuples():
        cells = [
            r.dataset,
            imbalance_cell(r.imbalance_factor, r.profile),
            r.method,
            str(int(r.n_a)),
            mean_std_cell(r.mean_a, r.std_a, "±"),
            str(int(r.n_b)),
            mean_std_cell(r.mean_b, r.std_b, "±"),
            f"{100 * r.delta:+.2f}" + (" *" if r.beyond_spread else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if len(both):
        deltas = both["delta"]
        lower, higher, equal = (int(n) for n in ((deltas < 0).sum(), (deltas > 0).sum(), (deltas == 0).sum()))
        marked = int(both["beyond_spread"].sum())
        lines.append(
            f"B − A over the {len(both)} rows in both: mean {100 * deltas.mean():+.2f}; lower in {lower}, "
            f"higher in {higher}, equal in {equal}; {marked} marked *. {SPREAD_RULE}."
        )
    else:
        lines.append("No row is in both tables.")
    for side, column in (("A", "n_b"), ("B", "n_a")):
        for r in frame[frame[column].isna()].itertuples():
            place = imbalance_cell(r.imbalance_factor, r.profile)
            lines.append(f"- only in {side}: {r.dataset} | {place} | {r.method}")
    return "\n".join(lines) + "\n"


def add_diff_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff",
        help="two benchmark tables side by side (float32 vs bf16, two commits): B − A and the seed spread",
    )
    p.add_argument("a", help="table A: a folder of run records (or one record.json)")
    p.add_argument("b", help="table B: a folder of run records (or one record.json)")
    p.add_argument("--metric", choices=COLUMNS, default="top1")
    p.set_defaults(func=_cmd_diff)


def _cmd_diff(args: argparse.Namespace) -> int:
    sys.stdout.write(diff_table([Path(args.a)], [Path(args.b)], args.metric))
    return 0
