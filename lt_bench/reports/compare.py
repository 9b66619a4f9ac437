"""Runs side by side: head/tail metrics with deltas against a baseline, seed spread, class changes.

Each path given is a group: a run folder (or ``record.json``), or a folder of records of one method
over seeds. A folder holding several (dataset, imbalance factor, profile, method) keys splits into one group
per key, in the order its records are found. Within a group a re-run of a seed keeps the newest
record, as ``lt-bench table`` does. The first group is the baseline (``--baseline`` picks another).

Seed spread: a difference is marked ``*`` when ``|mean_b - mean_a| > std_a + std_b`` (sample
standard deviations over seeds, ddof = 1). Both sides need at least two seeds, so single runs are
never marked. Built only from run records, never from logs.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lt_bench.errors import LTBenchError
from lt_bench.reports.record import find_records, read_record
from lt_bench.reports.table import place_name, record_key

#: rows of the main table: (metric key in the record, row label); fractions shown x100
MAIN_METRICS = (
    ("top1", "top-1"),
    ("many", "many"),
    ("medium", "medium"),
    ("few", "few"),
    ("worst_class", "worst-class"),
    ("harmonic_mean", "harmonic mean"),
    ("zero_recall_classes", "zero-recall classes"),
    ("ece", "ECE"),
)
#: metrics that are counts, shown as they are
COUNTS = frozenset({"zero_recall_classes"})
#: rows per expert / test-time variant (``test_expert0``, ``test_sade_tta``, ...)
VARIANT_METRICS = (("top1", "top-1"), ("many", "many"), ("medium", "medium"), ("few", "few"))
SPREAD_RULE = (
    "* marks |Δ mean| > std_a + std_b (sample std over seeds); it needs two or more seeds on both sides"
)
#: ``test``, ``test_<distribution>``, ``test_<variant>`` or ``test_<distribution>_<variant>``
SET_NAME = re.compile(r"^test(?:_(?P<dist>(?:forward|backward)_[0-9.]+|uniform))?(?:_(?P<variant>.+))?$")


def parse_set(name: str) -> tuple[str | None, str | None] | None:
    """``(distribution, variant)`` of an evaluation-set name; None for names that are not test sets."""
    match = SET_NAME.match(name)
    return (match["dist"], match["variant"]) if match else None


def distribution_order(dist: str) -> float:
    """Sort key along the test-agnostic axis: forward 50 ... forward 2, uniform, backward 2 ... 50."""
    if dist == "uniform":
        return 0.0
    side, imbalance = dist.split("_")
    return -float(imbalance) if side == "forward" else float(imbalance)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (NaN with fewer than two values) over the finite values of a group."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray) -> Stat:
        v = values[np.isfinite(values)]
        mean = float(v.mean()) if v.size else math.nan
        return cls(mean, float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size))


def exceeds_spread(a: Stat, b: Stat) -> bool:
    """``|mean_b - mean_a| > std_a + std_b``; False unless both sides have two or more values."""
    if a.n < 2 or b.n < 2:
        return False
    return abs(b.mean - a.mean) > a.std + b.std


@dataclass
class Group:
    """The runs (one record per seed) of one method on one dataset, imbalance factor and profile."""

    label: str
    records: list[dict[str, Any]]
    source: Path

    @property
    def first(self) -> dict[str, Any]:
        return self.records[0]

    @property
    def key(self) -> tuple[Any, ...]:
        return record_key(self.first)

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.records]

    def set_names(self) -> list[str]:
        """Evaluation sets of any of the group's records, in the order they appear."""
        return list(dict.fromkeys(name for r in self.records for name in r["metrics"]))

    def values(self, set_name: str, metric: str) -> np.ndarray:
        """One value per seed; NaN where a record lacks the set or the value."""
        return np.array([_number(r["metrics"].get(set_name, {}).get(metric)) for r in self.records])

    def stat(self, set_name: str, metric: str) -> Stat:
        return Stat.of(self.values(set_name, metric))

    def per_class(self, set_name: str = "test") -> np.ndarray:
        """``[seeds, classes]`` test recall (NaN for classes without test images)."""
        return np.array(
            [[_number(v) for v in r["metrics"][set_name]["per_class"]] for r in self.records], dtype=float
        )


def _split(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Records per ``record_key`` (dataset, IF, profile, method), newest per seed, keys in order of
    appearance."""
    by_key: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for record in records:
        by_key.setdefault(record_key(record), {})
    for record in sorted(records, key=lambda r: r.get("provenance", {}).get("finished") or ""):
        by_key[record_key(record)][record["seed"]] = record
    return [sorted(seeds.values(), key=lambda r: r["seed"]) for seeds in by_key.values()]


def _label(record: dict[str, Any], spans_places: bool) -> str:
    *place, method = record_key(record)
    return f"{method} ({place_name(*place)})" if spans_places else method


def unique_labels(groups: list[Group]) -> list[Group]:
    """Label groups by method (plus dataset, IF and profile when these differ), then by source path if
    needed."""
    spans = len({g.key[:3] for g in groups}) > 1
    for group in groups:
        group.label = _label(group.first, spans)
    for label in {g.label for g in groups}:
        same = [g for g in groups if g.label == label]
        names = [g.source.name for g in same]
        if len(same) > 1:
            for i, group in enumerate(same, 1):
                suffix = group.source.name if len(set(names)) == len(names) else f"#{i}"
                group.label = f"{label} @ {suffix}"
    return groups


def load_groups(paths: list[Path]) -> list[Group]:
    """One group per path, split by (dataset, IF, profile, method) when a folder holds several."""
    groups = []
    for path in paths:
        records = [read_record(p) for p in find_records([path])]
        if not records:
            raise LTBenchError(f"no run records (record.json) under '{path}'")
        groups.extend(Group("", split, path) for split in _split(records))
    return unique_labels(groups)


def baseline_group(groups: list[Group], label: str) -> Group | None:
    """The group labelled ``label``; else the first whose table name (``record_key``'s method: no place
    or folder, with its precision, compile and balanced-set tags) is ``label``; else the only group whose
    runs' method is ``label``; None when none of these names one."""
    for group in groups:
        if group.label == label:
            return group
    for group in groups:
        if group.key[3] == label:
            return group
    of_method = [g for g in groups if g.first["method"] == label]
    return of_method[0] if len(of_method) == 1 else None


def with_baseline(groups: list[Group], label: str | None) -> list[Group]:
    """``groups`` with the baseline (``baseline_group``) first; unchanged for None."""
    if label is None:
        return groups
    base = baseline_group(groups, label)
    if base is not None:
        return [base, *(g for g in groups if g is not base)]
    raise LTBenchError(
        f"--baseline '{label}' names no group, or the method of several; give one of the group labels: "
        f"{', '.join(g.label for g in groups)}"
    )


# --- tables ---------------------------------------------------------------------------------------
@dataclass
class Section:
    """A titled table of display strings, with an optional note under it."""

    title: str
    frame: pd.DataFrame
    note: str = ""


def _value(stat: Stat, count: bool) -> str:
    if math.isnan(stat.mean):
        return "–"
    scale, digits = (1, 1) if count else (100, 2)
    text = f"{scale * stat.mean:.{digits}f}"
    return text if math.isnan(stat.std) else f"{text} ± {scale * stat.std:.{digits}f}"


def _delta(base: Stat, other: Stat, count: bool) -> str:
    if math.isnan(base.mean) or math.isnan(other.mean):
        return ""
    scale, digits = (1, 1) if count else (100, 2)
    mark = " *" if exceeds_spread(base, other) else ""
    delta = round(scale * (other.mean - base.mean), digits) + 0.0  # + 0.0: no -0.00 for equal means
    return f" ({delta:+.{digits}f}{mark})"


def _header(group: Group) -> str:
    return f"{group.label} (n={len(group.records)})"


def metric_table(groups: list[Group], rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Rows ``(set, metric, label)``; one column per group: mean ± std and (Δ) against the first."""
    base = groups[0]
    data = []
    for set_name, metric, label in rows:
        count = metric in COUNTS
        base_stat = base.stat(set_name, metric)
        cells = [_value(base_stat, count)]
        for group in groups[1:]:
            stat = group.stat(set_name, metric)
            cells.append(_value(stat, count) + _delta(base_stat, stat, count))
        data.append([label, *cells])
    return pd.DataFrame(data, columns=["metric", *(_header(g) for g in groups)])


def _sets(groups: list[Group]) -> list[tuple[str | None, str | None, str]]:
    """``(distribution, variant, name)`` of every test set of the groups, sorted by name."""
    names = sorted({n for g in groups for n in g.set_names()})
    return [(*parsed, n) for n in names if (parsed := parse_set(n)) is not None]


def variant_rows(groups: list[Group]) -> list[tuple[str, str, str]]:
    """Per-expert and test-time-variant rows of the plain test set (``test_expert0``, ...)."""
    return [
        (name, metric, f"{variant} {label}")
        for dist, variant, name in _sets(groups)
        if dist is None and variant is not None
        for metric, label in VARIANT_METRICS
    ]


def agnostic_rows(groups: list[Group]) -> list[tuple[str, str, str]]:
    """Top-1 on the test-agnostic sets (forward ... uniform ... backward), experts left out."""
    sets = [(d, v, n) for d, v, n in _sets(groups) if d is not None and not (v or "").startswith("expert")]
    sets.sort(key=lambda s: (s[1] or "", distribution_order(s[0])))
    return [(name, "top1", f"{dist.replace('_', ' ')}{f' {v}' if v else ''}") for dist, v, name in sets]


def class_changes(base: Group, other: Group, top: int) -> pd.DataFrame | None:
    """The ``top`` classes with the largest gain and loss of mean test recall; None if classes differ."""
    if base.first["class_names"] != other.first["class_names"]:
        return None
    a, b = base.per_class(), other.per_class()
    stats = [(Stat.of(a[:, c]), Stat.of(b[:, c])) for c in range(a.shape[1])]
    delta = np.array([sb.mean - sa.mean for sa, sb in stats])
    finite = np.flatnonzero(np.isfinite(delta))
    ranked = finite[np.argsort(-delta[finite], kind="stable")]
    gained = [c for c in ranked if delta[c] > 0][:top]
    lost = [c for c in ranked[::-1] if delta[c] < 0][:top]
    rows = []
    for change, classes in (("gained", gained), ("lost", lost)):
        for c in classes:
            sa, sb = stats[c]
            mark = " *" if exceeds_spread(sa, sb) else ""
            rows.append(
                [
                    change,
                    c,
                    base.first["class_names"][c],
                    base.first["train_counts"][c],
                    _value(sa, False),
                    _value(sb, False),
                    f"{100 * delta[c]:+.2f}{mark}",
                ]
            )
    columns = ["change", "class", "name", "train count", _header(base), _header(other), "Δ"]
    return pd.DataFrame(rows, columns=columns)


def _title(groups: list[Group]) -> str:
    where = ", ".join(place_name(*place) for place in dict.fromkeys(g.key[:3] for g in groups))
    return f"{where}: test set, baseline {groups[0].label}"


def compare_sections(groups: list[Group], top: int = 5) -> list[Section]:
    """The comparison as tables: main metrics, experts/variants, test-agnostic top-1, class changes."""
    seeds = "; ".join(f"{g.label}: seeds {', '.join(map(str, g.seeds))}" for g in groups)
    sections = [
        Section(
            _title(groups),
            metric_table(groups, [("test", m, label) for m, label in MAIN_METRICS]),
            f"Accuracies and ECE in %, mean ± std over seeds, (Δ) against {groups[0].label}. "
            f"{SPREAD_RULE}. {seeds}.",
        )
    ]
    if rows := variant_rows(groups):
        sections.append(Section("Experts and test-time variants (test set)", metric_table(groups, rows)))
    if rows := agnostic_rows(groups):
        sections.append(
            Section("Test-agnostic top-1 (forward … uniform … backward)", metric_table(groups, rows))
        )
    for other in groups[1:]:
        changes = class_changes(groups[0], other, top)
        title = f"Classes that gained and lost most: {other.label} vs {groups[0].label}"
        if changes is None:
            sections.append(Section(title, pd.DataFrame(), "not comparable: the class lists differ"))
        else:
            sections.append(Section(title, changes, "Test recall in %, mean ± std over seeds."))
    return sections


def markdown(frame: pd.DataFrame) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|---|" + "---:|" * (len(frame.columns) - 1)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def render_text(sections: list[Section]) -> str:
    parts = []
    for section in sections:
        parts.append(f"## {section.title}\n")
        if not section.frame.empty:
            parts.append(markdown(section.frame) + "\n")
        if section.note:
            parts.append(section.note + "\n")
    return "\n".join(parts)


# --- command --------------------------------------------------------------------------------------
def _cmd_compare(args: argparse.Namespace) -> int:
    groups = with_baseline(load_groups([Path(p) for p in args.paths]), args.baseline)
    print(render_text(compare_sections(groups, args.top)), end="")
    if args.plots:
        from lt_bench.reports.plots import write_plots

        written, notes = write_plots(groups, Path(args.plots))
        print(f"\nplots: {', '.join(str(p) for p in written)}")
        for note in notes:
            print(f"note: {note}")
    return 0


def add_compare_parser(sub: Any) -> None:
    """Register ``lt-bench compare`` on the subparsers object of the ``lt-bench`` parser."""
    p = sub.add_parser(
        "compare",
        help="runs or seed groups side by side: head/tail metrics, deltas, class changes, plots",
        description="Each path is a run folder, a record.json, or a folder of records (a folder with "
        "several methods splits into one group per method). Deltas are against the first group. "
        + SPREAD_RULE
        + ".",
    )
    p.add_argument("paths", nargs="+", help="run folders, record.json files or folders holding them")
    p.add_argument("--baseline", help="label or method of the group to compare against (default: first)")
    p.add_argument("--top", type=int, default=5, help="classes listed per gain / loss (default 5)")
    p.add_argument("--plots", metavar="DIR", help="also write the figures (PNG and SVG) to DIR")
    p.set_defaults(func=_cmd_compare)
