"""Two benchmark tables side by side (``lt-bench diff A B``): for each method in both, one metric's
mean ± std over seeds in each (sample std, ddof = 1), the difference of the means ``B − A``, and ``*``
where it exceeds the seed spread (``|Δ| > std_A + std_B``, the rule of ``lt-bench compare``).

For the same recipes under two settings: float32 against bf16, compiled against not, two commits, two
engines, two machines. Rows are keyed as ``lt-bench table`` keys them (dataset, IF, profile, method;
variants such as ``sade+tta`` included; a re-run of a seed keeps the newest record), except that methods
pair across precisions and compile modes: each table must hold each method in one setting (precision and
compile mode), which the header names. Keys found in one table only are listed below the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from lt_bench.errors import LTBenchError
from lt_bench.reports.compare import SPREAD_RULE, Stat, exceeds_spread
from lt_bench.reports.table import COLUMNS, KEYS, imbalance_cell, mean_std_cell, records_frame, summarize

#: differences shown and counted in points, to this many decimals
DECIMALS = 2


def _side(paths: list[Path], metric: str) -> tuple[pd.DataFrame, list[str]]:
    """The summary of one table with methods named without their setting tag (precision, compile
    mode), and its settings."""
    frame = records_frame(paths)
    where = ", ".join(map(str, paths))
    if frame.empty:
        raise LTBenchError(f"no record.json under {where}")
    base_keys = [*KEYS[:-1], "base_method"]
    settings = frame.groupby(base_keys, dropna=False)["setting"].unique()
    for key, values in settings.items():
        if len(values) > 1:
            raise LTBenchError(
                f"{where} holds {key[-1]} in several settings ({'; '.join(sorted(values))}); "
                "give lt-bench diff folders that hold each method in one precision and compile mode"
            )
    summary = summarize(frame.assign(method=frame["base_method"]))
    summary = summary[[*KEYS, "n", f"{metric}_mean", f"{metric}_std"]]
    return summary.rename(columns={f"{metric}_mean": "mean", f"{metric}_std": "std"}), sorted(
        frame["setting"].unique()
    )


def _merge(a: list[Path], b: list[Path], metric: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """``diff_frame``'s rows and the settings of table A and of table B."""
    if metric not in COLUMNS:
        raise LTBenchError(f"unknown metric '{metric}'; choose one of {', '.join(COLUMNS)}")
    (side_a, settings_a), (side_b, settings_b) = _side(a, metric), _side(b, metric)
    frame = side_a.merge(side_b, on=list(KEYS), how="outer", suffixes=("_a", "_b"), sort=True)
    frame["delta"] = frame["mean_b"] - frame["mean_a"]
    frame["points"] = (100 * frame["delta"]).round(DECIMALS) + 0.0  # + 0.0: no -0.00
    frame["beyond_spread"] = [
        pd.notna(r.n_a)
        and pd.notna(r.n_b)
        and exceeds_spread(Stat(r.mean_a, r.std_a, int(r.n_a)), Stat(r.mean_b, r.std_b, int(r.n_b)))
        for r in frame.itertuples()
    ]
    return frame, settings_a, settings_b


def diff_frame(a: list[Path], b: list[Path], metric: str = "top1") -> pd.DataFrame:
    """One row per key of either table: ``n_a``, ``mean_a``, ``std_a``, the same for B (NaN where a
    table lacks the key or the metric), ``delta`` = mean_b − mean_a (fractions), ``points`` (the
    difference in points, rounded to ``DECIMALS``, as shown and counted) and ``beyond_spread``."""
    return _merge(a, b, metric)[0]


def diff_table(a: list[Path], b: list[Path], metric: str = "top1") -> str:
    """Markdown: the keys in both tables, then a summary line over the rows with a difference (its mean,
    how many lower, higher and equal to ``DECIMALS`` places, how many marked, how many could not be
    marked for a single seed on a side) and the keys of one table only."""
    frame, settings_a, settings_b = _merge(a, b, metric)
    both = frame[frame.n_a.notna() & frame.n_b.notna()]
    lines = [
        f"A: {' '.join(map(str, a))} ({'; '.join(settings_a)})",
        f"B: {' '.join(map(str, b))} ({'; '.join(settings_b)})",
        "",
        f"| dataset | IF | method | n A | {metric} A | n B | {metric} B | B − A |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in both.itertuples():
        delta = "–" if pd.isna(r.points) else f"{r.points:+.{DECIMALS}f}"
        cells = [
            r.dataset,
            imbalance_cell(r.imbalance_factor, r.profile),
            r.method,
            str(int(r.n_a)),
            mean_std_cell(r.mean_a, r.std_a, "±"),
            str(int(r.n_b)),
            mean_std_cell(r.mean_b, r.std_b, "±"),
            delta + (" *" if r.beyond_spread else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    measured = both[both["delta"].notna()]
    if len(measured):
        points = measured["points"]
        lower, higher, equal = (int(n) for n in ((points < 0).sum(), (points > 0).sum(), (points == 0).sum()))
        mean = 100 * measured["delta"].mean()
        marked = int(measured["beyond_spread"].sum())
        single = int(((measured.n_a < 2) | (measured.n_b < 2)).sum())
        lines.append(
            f"B − A over the {len(measured)} rows with a difference: mean {mean:+.2f}; lower in {lower}, "
            f"higher in {higher}, equal in {equal} (to {DECIMALS} decimals); {marked} marked *, "
            f"{single} with a single seed on a side (never marked). {SPREAD_RULE}."
        )
    else:
        lines.append(f"No row has {metric} in both tables.")
    for side, column in (("A", "n_b"), ("B", "n_a")):
        for r in frame[frame[column].isna()].itertuples():
            place = imbalance_cell(r.imbalance_factor, r.profile)
            lines.append(f"- only in {side}: {r.dataset} | {place} | {r.method}")
    return "\n".join(lines) + "\n"


def add_diff_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff",
        help="two benchmark tables side by side (float32 vs bf16, compiled vs not, two commits): B − A "
        "and the seed spread",
    )
    p.add_argument("a", help="table A: a folder of run records (or one record.json)")
    p.add_argument("b", help="table B: a folder of run records (or one record.json)")
    p.add_argument("--metric", choices=COLUMNS, default="top1")
    p.set_defaults(func=_cmd_diff)


def _cmd_diff(args: argparse.Namespace) -> int:
    sys.stdout.write(diff_table([Path(args.a)], [Path(args.b)], args.metric))
    return 0
