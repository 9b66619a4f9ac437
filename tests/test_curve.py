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


def write(
    folder: Path,
    method: str,
    seed: int,
    curve: list[float] | None,
    profile: str = "exp",
    finished: str = "2026-01-01T10:00:00+00:00",
    first_epoch: int = 0,
) -> None:
    """A record whose curve scores epochs ``first_epoch ..`` of ``first_epoch + len(curve)`` trained."""
    record = {
        "dataset": "cifar10_lt",
        "imbalance_factor": 100.0,
        "profile": profile,
        "method": method,
        "seed": seed,
        "provenance": {"finished": finished},
        "metrics": {"test": {"top1": curve[-1] if curve else 0.5}},
        "timing": {"epochs": first_epoch + len(curve or [])},
        "diagnostics": None,
    }
    if curve is not None:
        scores = {str(first_epoch + e): v for e, v in enumerate(curve)}
        record["diagnostics"] = {"test_top1_by_epoch": scores}
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
    rows = {line.split(" | ")[2]: line for line in curve_table([runs]).splitlines()[2:] if line}
    # best - last: mean of (2, 0, 6) = 2.67, sample std = sqrt(((0.67)^2 + (2.67)^2 + (3.33)^2) / 2) = 3.06
    assert rows["sade"] == "| cifar10_lt | 100 | sade | 3 | 63.33 ± 3.06 | 66.00 ± 4.00 | 2.67 ± 3.06 | 1–3 |"
    assert rows["tlc"] == "| cifar10_lt | tlc | tlc | 1 | 40.00 | 50.00 | 10.00 | 1–1 |"


def test_a_rerun_seed_keeps_the_newest_record_as_the_table_does(runs: Path) -> None:
    write(runs / "sade-1-again", "sade", 1, [0.5, 0.8, 0.7], finished="2026-02-01T10:00:00+00:00")
    sade = curve_frame([runs, runs]).query("method == 'sade'")  # the same folder twice: no duplicates
    assert sorted(sade.seed) == [0, 1, 2]
    assert sade.set_index("seed").loc[1, "best"] == 0.8
    write(runs / "sade-2-again", "sade", 2, None, finished="2026-02-01T10:00:00+00:00")
    assert sorted(curve_frame([runs]).query("method == 'sade'").seed) == [0, 1]  # newest seed-2 run: no curve


def test_a_curve_missing_epochs_is_left_out_and_named(runs: Path) -> None:
    """A run resumed with the curve turned on has no score for the epochs before the resume."""
    write(runs / "sade-3", "sade", 3, [0.9, 0.1], first_epoch=5)
    text = curve_table([runs])
    assert "| sade | 3 |" in text  # seeds 0-2 only
    assert f"- left out, a test score for 2 of 7 epochs: {runs / 'sade-3' / 'record.json'}" in text


def test_no_curve_is_an_error_that_names_the_option(tmp_path: Path) -> None:
    write(tmp_path / "ce-0", "ce", 0, None)
    with pytest.raises(LTBenchError, match="evaluation.test_curve=true"):
        curve_frame([tmp_path])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LTBenchError, match="no record.json"):
        curve_frame([tmp_path / "empty"])


def test_cli_curve(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["curve", str(runs)]) == 0
    assert capsys.readouterr().out == curve_table([runs])
