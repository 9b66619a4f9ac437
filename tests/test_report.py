"""Figures (valid PNG and SVG) and the self-contained HTML report, rendered in headless Chromium.

Chromium is Debian's ``chromium`` package; without it these tests fail under CI (``CI=true``) and
skip elsewhere.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_compare import REAL, lt_metrics, write_run

from lt_bench.reports.compare import load_groups
from lt_bench.reports.html import add_report_parser, markdown_frame
from lt_bench.reports.plots import figures, pooled_bins, write_plots

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IMG_SRC = re.compile(r'<img [^>]*src="([^"]*)"')
N_BINS = 15


def calibration_bins(shift: float) -> dict[str, list]:
    """Bins ``(b/15, (b+1)/15]`` with 100 samples from bin 5 up; accuracy = confidence - ``shift``."""
    conf = (np.arange(N_BINS) + 0.5) / N_BINS
    count = np.where(np.arange(N_BINS) >= 5, 100, 0)
    return {
        "count": count.tolist(),
        "conf": [float(c) if n else None for c, n in zip(conf, count, strict=True)],
        "acc": [float(c - shift) if n else None for c, n in zip(conf, count, strict=True)],
    }


def write_sade_like(root: Path) -> Path:
    """Two seeds of a multi-expert run with calibration bins and test-agnostic sets (toy data)."""
    for seed in (0, 1):
        r = [0.8 - 0.02 * seed, 0.7, 0.6, 0.5]
        extra = {f"test_expert{k}": lt_metrics(r) for k in range(3)}
        for i, dist in enumerate(["forward_50", "forward_5", "uniform", "backward_5", "backward_50"]):
            extra[f"test_{dist}"] = {**lt_metrics(r), "top1": 0.75 - 0.05 * i + 0.01 * seed}
            extra[f"test_{dist}_sade_tta"] = {**lt_metrics(r), "top1": 0.77 - 0.04 * i}
        write_run(root, "sade", seed, r, extra=extra, calibration_bins=calibration_bins(0.1))
        write_run(root, "ce", seed, [0.9, 0.8, 0.3, 0.1 * seed], calibration_bins=calibration_bins(0.3))
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sade_like(tmp_path_factory.mktemp("toy"))


def test_pooled_bins_weight_by_count(tmp_path: Path) -> None:
    bins = [
        {"count": [2, 0, 1], "conf": [0.2, None, 0.9], "acc": [0.5, None, 1.0]},
        {"count": [2, 1, 0], "conf": [0.3, 0.5, None], "acc": [0.0, 1.0, None]},
    ]
    for seed, b in enumerate(bins):
        write_run(tmp_path, "ce", seed, [0.5] * 4, calibration_bins=b)
    count, conf, acc = pooled_bins(load_groups([tmp_path])[0])
    assert count.tolist() == [4, 1, 1]
    np.testing.assert_allclose(conf, [0.25, 0.5, 0.9])
    np.testing.assert_allclose(acc, [0.25, 1.0, 1.0])


def test_plots_are_valid_png_and_svg(synthetic: Path, tmp_path: Path) -> None:
    written, notes = write_plots(load_groups([synthetic]), tmp_path / "plots")
    names = ("per_class", "shots", "reliability", "test_agnostic")
    assert sorted(p.name for p in written) == sorted(f"{n}.{ext}" for n in names for ext in ("png", "svg"))
    assert notes == []
    for path in written:
        if path.suffix == ".png":
            with Image.open(path) as image:
                assert image.format == "PNG" and image.width > 300 and image.height > 200
        else:
            assert ET.parse(path).getroot().tag == "{http://www.w3.org/2000/svg}svg"


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 9 CIFAR-10-LT baseline records (ce, balanced_softmax, ldam_drw; written before records
    carried calibration bins), copied apart from the later runs in the same results folder."""
    out = tmp_path_factory.mktemp("baselines")
    for run in REAL.iterdir():
        if any(f"-{m}-seed" in run.name for m in ("ce", "balanced_softmax", "ldam_drw")):
            shutil.copytree(run, out / run.name)
    return out


def test_optional_plots_are_skipped_with_a_note(baselines: Path) -> None:
    made, notes = figures(load_groups([baselines]))
    assert sorted(made) == ["per_class", "shots"]
    assert any("calibration_bins" in n for n in notes) and any("test_agnostic" in n for n in notes)


def test_markdown_frame_reads_table_render() -> None:
    frame = markdown_frame("| a | b |\n|---|---:|\n| x | 1 ± 2 |\n| y | – |\n")
    assert list(frame.columns) == ["a", "b"] and frame.values.tolist() == [["x", "1 ± 2"], ["y", "–"]]


@pytest.fixture(scope="module")
def report(synthetic: Path, baselines: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the real CIFAR-10-LT records and the toy multi-expert runs, via the command."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    parser = argparse.ArgumentParser(prog="lt-bench")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(baselines), str(synthetic), "-o", str(out), "--baseline", "ce"])
    assert args.func(args) == 0
    return out


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=\"(?!data:)", text) and "<script" not in text and "<link" not in text
    sources = IMG_SRC.findall(text)
    assert len(sources) == 2 + 4  # CIFAR-10-LT: per-class and shots; toy: all four figures
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.verify()
            assert image.format == "PNG"
    assert "reliability diagram skipped" in text  # the CIFAR-10-LT records have no bins
    assert text.count("<h2>Comparison:") == 2


def test_report_compares_within_each_dataset_with_the_baseline_first(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert "cifar10_lt IF 100: test set, baseline ce" in text
    assert "toy_lt IF 62.5: test set, baseline ce" in text
    assert "expert0 top-1" in text and "backward 50 sade_tta" in text


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        message = "chromium not found (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: CI must install it")
        pytest.skip(message)
    return path


def run_chromium(chromium: str, profile: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_report_renders_in_chromium(chromium: str, report: Path, tmp_path: Path) -> None:
    # A copy with a check on load: how many images decoded (complete, with a width).
    check = (
        "<script>window.addEventListener('load', () => { const i = [...document.images]; "
        "document.body.dataset.decoded = i.filter(x => x.complete && x.naturalWidth > 0).length "
        "+ '/' + i.length; });</script></body>"
    )
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", check), encoding="utf-8")
    dom = run_chromium(chromium, tmp_path / "profile", probe, "--dump-dom").stdout
    assert 'data-decoded="6/6"' in dom
    for method in ("balanced_softmax", "ldam_drw", "sade"):
        assert f"<td>{method}</td>" in dom  # benchmark-table rows
    assert "<td>truck</td>" in dom  # class-change rows

    shot = tmp_path / "shot.png"
    run_chromium(chromium, tmp_path / "profile", report, f"--screenshot={shot}", "--window-size=1000,2400")
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    assert pixels.shape[:2] == (2400, 1000)
    # The page's own style is grey; coloured pixels come from the plotted figures.
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 100
    assert coloured.sum() > 5000
