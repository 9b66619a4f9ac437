"""Figures of a comparison, from run records only (matplotlib ``Figure`` objects, no pyplot state).

* ``per_class``: test recall of every class against its training count (log x), one series a group;
* ``shots``: many / medium / few bars (mean ± std over seeds);
* ``reliability``: reliability diagram per group from ``metrics.test.calibration_bins``
  (``{"count": [...], "conf": [...], "acc": [...]}``: samples, mean top-1 confidence and accuracy of
  each equal-width bin ``(b/n, (b+1)/n]``, 0 or null for empty bins); a group is left out when one
  of its records lacks them, the figure when every group does;
* ``test_agnostic``: top-1 on forward-50 ... uniform ... backward-50 when the records have those sets.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lt_bench.reports.compare import Group, Stat, distribution_order, parse_set

SHOTS = ("many", "medium", "few")
#: shot-group thresholds on the training count (metrics.md §2.1: few < 20 <= medium <= 100 < many)
SHOT_EDGES = (20, 100)
FORMATS = ("png", "svg")


def _scaled(values: np.ndarray) -> np.ndarray:
    return 100 * np.asarray(values, dtype=float)


def per_class_figure(groups: list[Group]) -> Figure:
    """Mean test recall per class (± std over seeds) against the class's training count."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, group in enumerate(groups):
        counts = np.asarray(group.first["train_counts"], dtype=float)
        recall = group.per_class()
        order = np.argsort(counts, kind="stable")
        stats = [Stat.of(recall[:, c]) for c in order]
        mean = _scaled([s.mean for s in stats])
        std = _scaled([0.0 if math.isnan(s.std) else s.std for s in stats])
        ax.errorbar(
            counts[order],
            mean,
            yerr=std,
            marker="o",
            markersize=4,
            capsize=2,
            color=f"C{i}",
            label=group.label,
        )
    for edge in SHOT_EDGES:
        ax.axvline(edge, color="0.6", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale; dotted: few < 20 ≤ medium ≤ 100 < many)")
    ax.set_ylabel("test recall (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class accuracy against class size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def shots_figure(groups: list[Group]) -> Figure:
    """Grouped bars: many / medium / few accuracy per group (empty groups shown as 'no classes')."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(groups)
    x = np.arange(len(SHOTS))
    for i, group in enumerate(groups):
        stats = [group.stat("test", shot) for shot in SHOTS]
        mean = _scaled([s.mean for s in stats])
        std = _scaled([0.0 if math.isnan(s.std) else s.std for s in stats])
        offset = (i - (len(groups) - 1) / 2) * width
        ax.bar(x + offset, mean, width, yerr=std, capsize=3, color=f"C{i}", label=group.label)
    empty = [all(not g.first["shot_groups"][shot] for g in groups) for shot in SHOTS]
    ax.set_xticks(
        x, [f"{shot}\n(no classes)" if none else shot for shot, none in zip(SHOTS, empty, strict=True)]
    )
    ax.set_ylabel("mean per-class test recall (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Many / medium / few-shot accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def pooled_bins(group: Group) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(count, conf, acc)`` per bin pooled over the group's seeds; None if a record lacks the bins."""
    bins = [r["metrics"]["test"].get("calibration_bins") for r in group.records]
    if any(b is None for b in bins):
        return None
    count = np.sum([b["count"] for b in bins], axis=0, dtype=float)

    def pooled(key: str) -> np.ndarray:
        sums = np.sum([np.nan_to_num(np.array(b[key], dtype=float)) * b["count"] for b in bins], axis=0)
        return np.divide(sums, count, out=np.full_like(count, np.nan), where=count > 0)

    return count, pooled("conf"), pooled("acc")


def reliability_figure(groups: list[Group]) -> Figure | None:
    """Accuracy against confidence per bin, one panel per group that has calibration bins."""
    panels = [(g, b) for g in groups if (b := pooled_bins(g)) is not None]
    if not panels:
        return None
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.6 * cols, 3.6 * rows), layout="constrained")
    for i, (group, (count, conf, acc)) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        n = count.size
        centers = (np.arange(n) + 0.5) / n
        full = count > 0
        ax.bar(centers[full], acc[full], 1 / n, edgecolor="black", linewidth=0.5, label="accuracy")
        ax.bar(
            centers[full],
            (conf - acc)[full],
            1 / n,
            bottom=acc[full],
            color="tab:red",
            alpha=0.35,
            edgecolor="tab:red",
            hatch="//",
            linewidth=0.5,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1)
        ece = group.stat("test", "ece")
        ax.set_title(f"{group.label}\nECE {100 * ece.mean:.2f}%", fontsize="medium")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top-1 confidence")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize="x-small", loc="upper left")
    fig.suptitle("Reliability diagram (test set, seeds pooled)")
    return fig


def test_agnostic_figure(groups: list[Group]) -> Figure | None:
    """Top-1 (± std over seeds) from forward-50 through uniform to backward-50; None without such sets."""
    series = []
    for i, group in enumerate(groups):
        sets: dict[str | None, dict[str, str]] = {}
        for name in group.set_names():
            parsed = parse_set(name)
            if parsed and parsed[0] and not (parsed[1] or "").startswith("expert"):
                sets.setdefault(parsed[1], {})[parsed[0]] = name
        series.extend(
            (i, group, variant, names) for variant, names in sorted(sets.items(), key=lambda s: s[0] or "")
        )
    if not series:
        return None
    axis = sorted({d for *_, names in series for d in names}, key=distribution_order)
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, group, variant, names in series:
        stats = [group.stat(names[d], "top1") if d in names else Stat(math.nan, math.nan, 0) for d in axis]
        mean = _scaled([s.mean for s in stats])
        std = _scaled([0.0 if math.isnan(s.std) else s.std for s in stats])
        label = f"{group.label} ({variant})" if variant else group.label
        ax.errorbar(
            range(len(axis)),
            mean,
            yerr=std,
            marker="o",
            capsize=2,
            color=f"C{i}",
            label=label,
            linestyle="--" if variant else "-",
        )
    ax.set_xticks(range(len(axis)), [d.replace("forward_", "F").replace("backward_", "B") for d in axis])
    ax.set_xlabel("test class distribution (F: forward-LT, B: backward-LT, with its imbalance factor)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Test-agnostic evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def figures(groups: list[Group]) -> tuple[dict[str, Figure], list[str]]:
    """The comparison's figures by name, and a note for each one skipped."""
    out = {"per_class": per_class_figure(groups), "shots": shots_figure(groups)}
    notes = []
    optional = {
        "reliability": (
            reliability_figure,
            "reliability diagram skipped: the records have no metrics.test.calibration_bins",
        ),
        "test_agnostic": (
            test_agnostic_figure,
            "test-agnostic curve skipped: no run evaluated forward/uniform/backward sets "
            "(evaluation.test_agnostic=true)",
        ),
    }
    for name, (make, note) in optional.items():
        fig = make(groups)
        if fig is None:
            notes.append(note)
        else:
            out[name] = fig
    return out, notes


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def write_plots(groups: list[Group], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write every figure as ``<name>.png`` and ``<name>.svg`` under ``out_dir``; paths and notes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made, notes = figures(groups)
    written = []
    for name, fig in made.items():
        for fmt in FORMATS:
            path = out_dir / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
            written.append(path)
    return written, notes
