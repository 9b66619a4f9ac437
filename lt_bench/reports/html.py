"""``lt-bench report``: one self-contained HTML file with the benchmark table, comparisons and figures.

The file has no external assets: inline CSS, and figures as base64 PNG ``data:`` URIs. The benchmark
table is ``lt-bench table``'s (``table.summarize`` / ``table.render``). The groups found under the
paths are compared within each (dataset, imbalance factor), as ``lt-bench compare`` does.
"""

from __future__ import annotations

import argparse
import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from lt_bench.reports.compare import (
    Group,
    Section,
    baseline_group,
    compare_sections,
    load_groups,
    with_baseline,
)
from lt_bench.reports.table import place_name, records_frame, render, summarize

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1, h2, h3 { font-weight: 600; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; }
td:first-child, th:first-child { text-align: left; }
p.note { color: #555; font-size: 0.85em; max-width: 60em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
"""


def markdown_frame(text: str) -> pd.DataFrame:
    """The cells of a Markdown table (header, rule, rows) as strings."""
    lines = [line.strip()[1:-1] for line in text.strip().splitlines()]
    cells = [[cell.strip() for cell in line.split("|")] for line in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, escape=True)


def _section_html(section: Section) -> str:
    parts = [f"<h3>{html.escape(section.title)}</h3>"]
    if not section.frame.empty:
        parts.append(_table(section.frame))
    if section.note:
        parts.append(f'<p class="note">{html.escape(section.note)}</p>')
    return "\n".join(parts)


def _figure_html(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(name.replace("_", " "))
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"></figure>'


def _block_html(groups: list[Group], top: int) -> str:
    from lt_bench.reports.plots import figures, png_bytes  # matplotlib: only when a report is built

    made, notes = figures(groups)
    parts = [_section_html(s) for s in compare_sections(groups, top)]
    parts.extend(_figure_html(name, png_bytes(fig)) for name, fig in made.items())
    parts.extend(f'<p class="note">{html.escape(note)}</p>' for note in notes)
    return "\n".join(parts)


def blocks(groups: list[Group], baseline: str | None) -> list[list[Group]]:
    """Groups per (dataset, IF, profile) in order of appearance, each with ``baseline`` first where
    present."""
    by_place: dict[tuple[Any, ...], list[Group]] = {}
    for group in groups:
        by_place.setdefault(group.key[:3], []).append(group)
    out = []
    for block in by_place.values():
        present = baseline is not None and baseline_group(block, baseline) is not None
        out.append(with_baseline(block, baseline if present else None))
    return out


def build_report(paths: list[Path], baseline: str | None = None, top: int = 5) -> str:
    """The report as one HTML document."""
    summary = summarize(records_frame(paths))
    table_html = _table(markdown_frame(render(summary, "md")))
    body = [
        "<h1>lt-bench report</h1>",
        f'<p class="note">From {html.escape(", ".join(map(str, paths)))}; generated '
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p>",
        "<h2>Benchmark table</h2>",
        table_html,
        '<p class="note">Test set, accuracies and ECE in %, mean ± std over seeds (n).</p>',
    ]
    for block in blocks(load_groups(paths), baseline):
        where = place_name(*block[0].key[:3])
        body += [f"<h2>Comparison: {html.escape(where)}</h2>", _block_html(block, top)]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>lt-bench report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _cmd_report(args: argparse.Namespace) -> int:
    output = Path(args.output)
    text = build_report([Path(p) for p in args.paths], args.baseline, args.top)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 0


def add_report_parser(sub: Any) -> None:
    """Register ``lt-bench report`` on the subparsers object of the ``lt-bench`` parser."""
    p = sub.add_parser(
        "report",
        help="one self-contained HTML file: benchmark table, comparisons and figures",
        description="Example: lt-bench report results/cifar10_lt_if100 -o report.html --baseline ce",
    )
    p.add_argument("paths", nargs="+", help="run folders, record.json files or folders holding them")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--baseline", help="method compared against in each comparison (default: first found)")
    p.add_argument("--top", type=int, default=5, help="classes listed per gain / loss (default 5)")
    p.set_defaults(func=_cmd_report)
