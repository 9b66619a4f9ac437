"""Two tables side by side (``lt-bench diff``) from hand-made records: means, stds, B − A and the
spread mark, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lt_bench.cli import main
from lt_bench.errors import LTBenchError
from lt_bench.reports.diff import diff_frame, diff_table


def write(
    folder: Path,
    method: str,
    seed: int,
    top1: float,
    precision: str = "32-true",
    finished: str = "2026-01-01T10:00:00+00:00",
    compile_mode: str | None = None,
    **variants: float,
) -> None:
    """A record with test top-1 ``top1``, many-shot top1 - 0.1 and no few-shot value; ``variants``:
    name -> its top-1."""
    metrics = {"test": {"top1": top1, "many": top1 - 0.1}}
    metrics |= {f"test_{k}": {"top1": v, "many": v - 0.1} for k, v in variants.items()}
    record = {
        "dataset": "cifar10_lt",
        "imbalance_factor": 100.0,
        "profile": "exp",
        "method": method,
        "seed": seed,
        "provenance": {"finished": finished},
        "config": {"trainer": {"precision": precision}, "train": {"compile": compile_mode}},
        "metrics": metrics,
        "variants": {f"{method}+{k}": f"test_{k}" for k in variants},
    }
    path = folder / f"{method}-{seed}-{precision}-{compile_mode}-{finished[:10]}"
    path.mkdir(parents=True)
    (path / "record.json").write_text(json.dumps(record))


@pytest.fixture
def tables(tmp_path: Path) -> tuple[Path, Path]:
    """A: float32 runs; B: the same methods in bf16 (pairing across precisions), plus one of each only."""
    a, b = tmp_path / "fp32", tmp_path / "bf16"
    for seed, (x, y) in enumerate([(0.60, 0.70), (0.62, 0.71), (0.64, 0.72)]):
        write(a, "ce", seed, x)
        write(b, "ce", seed, y, "bf16-mixed")
    for seed, (x, y) in enumerate([(0.50, 0.52), (0.60, 0.58)]):
        write(a, "sade", seed, x, tta=x + 0.01)
        write(b, "sade", seed, y, "bf16-mixed", tta=y)
    for seed, (x, y) in enumerate([(0.70, 0.60), (0.71, 0.61)]):
        write(a, "ldam_drw", seed, x)
        write(b, "ldam_drw", seed, y, "bf16-mixed")
    write(a, "mdcs", 0, 0.80)
    write(a, "mdcs", 1, 0.82)
    write(b, "mdcs", 0, 0.50, "bf16-mixed")  # one seed: never marked, however large the drop
    write(a, "tlc", 0, 0.7)
    write(b, "sbcl", 0, 0.7, "bf16-mixed")
    return a, b


def test_means_stds_and_differences_by_hand(tables: tuple[Path, Path]) -> None:
    frame = diff_frame([tables[0]], [tables[1]]).set_index("method")
    # ce: A 60, 62, 64 -> 62 ± 2; B 70, 71, 72 -> 71 ± 1; Δ = 9 > 2 + 1: beyond the spread
    assert frame.loc["ce", ["n_a", "mean_a", "std_a"]].tolist() == pytest.approx([3, 0.62, 0.02])
    assert frame.loc["ce", ["n_b", "mean_b", "std_b"]].tolist() == pytest.approx([3, 0.71, 0.01])
    assert frame.loc["ce", "delta"] == pytest.approx(0.09) and frame.loc["ce", "beyond_spread"]
    # ldam_drw: 70.5 ± 0.71 -> 60.5 ± 0.71: Δ = -10, beyond the spread (a drop is marked too)
    assert frame.loc["ldam_drw", "delta"] == pytest.approx(-0.10) and frame.loc["ldam_drw", "beyond_spread"]
    # sade: A 50, 60 -> 55 ± 7.07; B 52, 58 -> 55 ± 4.24: Δ 0; its +tta variant: A 56, B 55
    assert frame.loc["sade", "delta"] == pytest.approx(0.0) and not frame.loc["sade", "beyond_spread"]
    assert frame.loc["sade", "std_a"] == pytest.approx(0.0707107, rel=1e-5)
    assert frame.loc["sade+tta", "delta"] == pytest.approx(-0.01)
    # mdcs: 81 ± 1.41 against a single seed of 50: Δ -31, not marked (no spread on B's side)
    assert frame.loc["mdcs", "delta"] == pytest.approx(-0.31) and not frame.loc["mdcs", "beyond_spread"]
    assert frame.loc[["tlc", "sbcl"], ["n_a", "n_b"]].isna().values.tolist() == [[False, True], [True, False]]


def test_markdown_by_hand(tables: tuple[Path, Path]) -> None:
    text = diff_table([tables[0]], [tables[1]])
    assert text.startswith(f"A: {tables[0]} (32-true)\nB: {tables[1]} (bf16-mixed)\n")
    assert "| cifar10_lt | 100 | ce | 3 | 62.00 ± 2.00 | 3 | 71.00 ± 1.00 | +9.00 * |" in text
    assert "| cifar10_lt | 100 | ldam_drw | 2 | 70.50 ± 0.71 | 2 | 60.50 ± 0.71 | -10.00 * |" in text
    assert "| cifar10_lt | 100 | mdcs | 2 | 81.00 ± 1.41 | 1 | 50.00 | -31.00 |" in text
    assert "| cifar10_lt | 100 | sade | 2 | 55.00 ± 7.07 | 2 | 55.00 ± 4.24 | +0.00 |" in text
    assert "| cifar10_lt | 100 | sade+tta | 2 | 56.00 ± 7.07 | 2 | 55.00 ± 4.24 | -1.00 |" in text
    # mean Δ over ce (+9), ldam_drw (-10), mdcs (-31), sade (0), sade+tta (-1): -6.60
    assert (
        "B − A over the 5 rows with a difference: mean -6.60; lower in 3, higher in 1, equal in 1 "
        "(to 2 decimals); 2 marked *, 1 with a single seed on a side (never marked)." in text
    )
    assert "- only in A: cifar10_lt | 100 | tlc" in text and "- only in B: cifar10_lt | 100 | sbcl" in text


def test_equal_means_count_as_equal_whatever_their_last_bits(tmp_path: Path) -> None:
    """The same three seeds summed in another order give means that differ in the last bit: shown
    +0.00 and counted equal, not higher or lower."""
    values = (0.6447, 0.7033, 0.6285)
    for seed, value in enumerate(values):
        write(tmp_path / "a", "ce", seed, value)
        write(tmp_path / "b", "ce", seed, values[::-1][seed])
    text = diff_table([tmp_path / "a"], [tmp_path / "b"])
    assert "| +0.00 |" in text and "lower in 0, higher in 0, equal in 1" in text


def test_a_metric_without_values_shows_no_difference(tables: tuple[Path, Path]) -> None:
    text = diff_table([tables[0]], [tables[1]], metric="few")  # these records have no few-shot class
    assert "| cifar10_lt | 100 | ce | 3 | – | 3 | – | – |" in text
    assert "No row has few in both tables." in text and "nan" not in text


def test_another_metric_and_a_rerun_seed(tables: tuple[Path, Path]) -> None:
    many = diff_frame([tables[0]], [tables[1]], metric="many").set_index("method")
    assert many.loc["ce", "mean_a"] == pytest.approx(0.52)  # many = top1 - 0.1 in these records
    write(tables[1], "ce", 2, 0.90, "bf16-mixed", finished="2026-02-01T10:00:00+00:00")  # the newest counts
    frame = diff_frame([tables[0]], [tables[1]]).set_index("method")
    assert frame.loc["ce", "n_b"] == 3 and frame.loc["ce", "mean_b"] == pytest.approx(
        (0.70 + 0.71 + 0.90) / 3
    )


def test_errors_name_the_problem(tables: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(LTBenchError, match="unknown metric 'acc'; choose one of top1"):
        diff_frame([tables[0]], [tables[1]], metric="acc")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LTBenchError, match="no record.json under .*empty"):
        diff_frame([tables[0]], [tmp_path / "empty"])
    write(tables[0], "ce", 0, 0.5, "bf16-mixed")  # table A now holds ce in two precisions
    with pytest.raises(LTBenchError, match="holds ce in several settings \\(32-true; bf16-mixed\\)"):
        diff_frame([tables[0]], [tables[1]])


def test_compiled_runs_pair_with_uncompiled_ones(tmp_path: Path) -> None:
    """A compiled table against an uncompiled one pairs by method; the header names the compile mode; a
    table with a method both compiled and not is refused."""
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    for seed, (a, b) in enumerate([(0.60, 0.61), (0.62, 0.63)]):
        write(plain, "ce", seed, a)
        write(compiled, "ce", seed, b, compile_mode="default")
    frame = diff_frame([plain], [compiled]).set_index("method")
    assert frame.loc["ce", "points"] == pytest.approx(1.0)
    assert f"B: {compiled} (32-true, compiled)" in diff_table([plain], [compiled])
    write(plain, "ce", 2, 0.5, compile_mode="default")
    with pytest.raises(LTBenchError, match="holds ce in several settings \\(32-true; 32-true, compiled\\)"):
        diff_frame([plain], [compiled])


def test_cli_diff(tables: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(tables[0]), str(tables[1])]) == 0
    assert capsys.readouterr().out == diff_table([tables[0]], [tables[1]])
    with pytest.raises(SystemExit):  # argparse names the valid metrics
        main(["diff", str(tables[0]), str(tables[1]), "--metric", "worst"])
    assert "invalid choice: 'worst'" in capsys.readouterr().err
