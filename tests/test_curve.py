"""Test-curve table (``lt-bench curve``) from hand-made records: last vs best epoch, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lt_bench.cli import main
from lt_bench.errors import LTBenchError
from lt_bench.reports.curve import curve_frame, curve_table

# seed -> test top-1 after epochs 0, 1, 2, 3 (seed 1 peaks twice: the later epoch counts)
CURVES = {0: [0.50, 0.62, 0.61, 0.60], 1: [0.40, 0.66, 0.58, 0.66], 2: [0.55, 0.57, 0.70, 0.64]}


def write(folder: Path, method: str, seed: int, curve: list[float] | None, profile: str = "exp") -> None:
    record = {
        "dataset": "cifar10_lt",
        "imbalance_factor": 100.0,
        "profile": profile,
        "method": method,
        "seed": seed,
        "provenance": {"finished": "2026-01-01T10:00:00+00:00"},
        "metrics": {"test": {"top1": curve[-1] if curve else 0.5}},
        "diagnostics": None,
    }
    if curve is not None:
        record["diagnostics"] = {"test_top1_by_epoch": {str(e): v for e, v in enumerate(curve)}}
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for seed, curve in CURVES.items():
        write(tmp_path / f"sade-{seed}", "sade", seed, curve)
    write(tmp_path / "ce-0", "ce", 0, None)  # no curve: left out
    write(tmp_path / "tlc-0", "tlc", 0, [0.3, 0.5, 0.4], profile="tlc")
    return tmp_path


def test_best_and_last_per_run(runs: Path) -> None:
    frame = curve_frame([runs])
    sade = frame[frame.method == "sade"].set_index("seed")
    assert list(sade.best_epoch) == [1, 3, 2]
    assert list(sade["last"]) == [0.60, 0.66, 0.64]
    assert list(sade.best) == [0.62, 0.66, 0.70]
    assert sade.best_minus_last.tolist() == pytest.approx([0.02, 0.0, 0.06])
    assert set(frame.method) == {"sade", "tlc"}


def test_markdown_by_hand(runs: Path) -> None:
    rows = {line.split(" | ")[2]: line for line in curve_table([runs]).splitlines()[2:]}
    # best - last: mean of (2, 0, 6) = 2.67, sample std = sqrt(((0.67)^2 + (2.67)^2 + (3.33)^2) / 2) = 3.06
    assert rows["sade"] == "| cifar10_lt | 100 | sade | 3 | 63.33 ± 3.06 | 66.00 ± 4.00 | 2.67 ± 3.06 | 1–3 |"
    assert rows["tlc"] == "| cifar10_lt | tlc | tlc | 1 | 40.00 | 50.00 | 10.00 | 1–1 |"


def test_no_curve_is_an_error_that_names_the_option(tmp_path: Path) -> None:
    write(tmp_path / "ce-0", "ce", 0, None)
    with pytest.raises(LTBenchError, match="evaluation.test_curve=true"):
        curve_frame([tmp_path])


def test_cli_curve(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["curve", str(runs)]) == 0
    assert capsys.readouterr().out == curve_table([runs])
