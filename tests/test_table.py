"""Benchmark tables from hand-made run records: mean, sample std (ddof = 1), seed count, formats."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lt_bench.cli import main
from lt_bench.errors import LTBenchError
from lt_bench.reports.table import records_frame, summarize, table

COLUMNS = ("top1", "many", "medium", "few", "worst_class", "harmonic_mean", "ece")

# method -> seed -> metrics; "few" is missing (null) everywhere, as on CIFAR-10-LT
METRICS = {
    "ce": {
        0: {
            "top1": 0.701,
            "many": 0.902,
            "medium": 0.553,
            "worst_class": 0.312,
            "harmonic_mean": 0.61,
            "ece": 0.11,
        },
        1: {
            "top1": 0.713,
            "many": 0.897,
            "medium": 0.581,
            "worst_class": 0.35,
            "harmonic_mean": 0.64,
            "ece": 0.09,
        },
        2: {
            "top1": 0.689,
            "many": 0.911,
            "medium": 0.522,
            "worst_class": 0.29,
            "harmonic_mean": 0.58,
            "ece": 0.12,
        },
    },
    "balanced_softmax": {
        0: {
            "top1": 0.781,
            "many": 0.85,
            "medium": 0.712,
            "worst_class": 0.601,
            "harmonic_mean": 0.77,
            "ece": 0.05,
        },
        1: {
            "top1": 0.776,
            "many": 0.861,
            "medium": 0.7,
            "worst_class": 0.58,
            "harmonic_mean": 0.76,
            "ece": 0.06,
        },
        2: {
            "top1": 0.792,
            "many": 0.843,
            "medium": 0.735,
            "worst_class": 0.62,
            "harmonic_mean": 0.79,
            "ece": 0.04,
        },
    },
}


def write_record(
    folder: Path,
    method: str,
    seed: int,
    metrics: dict[str, float | None],
    finished: str = "2026-01-01T10:00:00+00:00",
    dataset: str = "cifar10_lt",
    imbalance_factor: float | None = 100.0,
) -> Path:
    test = {col: metrics.get(col) for col in COLUMNS}
    record = {
        "dataset": dataset,
        "imbalance_factor": imbalance_factor,
        "method": method,
        "seed": seed,
        "provenance": {"finished": finished},
        "metrics": {"test": test},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "record.json"
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for method, seeds in METRICS.items():
        for seed, metrics in seeds.items():
            write_record(root / f"{method}-seed{seed}", method, seed, metrics)
    return root


def expected(method: str, col: str) -> tuple[float, float]:
    values = np.array([METRICS[method][seed][col] for seed in (0, 1, 2)])
    return float(values.mean()), float(values.std(ddof=1))


def parse_md(text: str) -> dict[str, dict[str, str]]:
    """Markdown table rows keyed by method name."""
    lines = [line for line in text.strip().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").replace("-", "").replace(":", "")) <= {""}
    rows = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]
    return {row["method"]: row for row in rows}


def parse_cell(cell: str, pm: str = "±") -> tuple[float, float]:
    mean, std = cell.split(pm)
    return float(mean), float(std)


def test_markdown_mean_std_n(runs: Path) -> None:
    rows = parse_md(table([runs], "md"))
    assert set(rows) == {"ce", "balanced_softmax"}
    for method, row in rows.items():
        assert (row["dataset"], row["IF"], row["n"]) == ("cifar10_lt", "100", "3")
        for col in ("top1", "many", "medium", "worst_class", "harmonic_mean", "ece"):
            mean, std = expected(method, col)
            got_mean, got_std = parse_cell(row[col])
            assert got_mean == pytest.approx(100 * mean, abs=0.0051), (method, col)
            assert got_std == pytest.approx(100 * std, abs=0.0051), (method, col)
            assert row[col] == f"{100 * mean:.2f} ± {100 * std:.2f}"
        assert row["few"] == "–"  # NaN group


def test_markdown_hand_numbers(runs: Path) -> None:
    row = parse_md(table([runs], "md"))["ce"]
    # top1 ce: 0.701, 0.713, 0.689 -> mean 0.701; deviations 0, 0.012, -0.012 -> s = sqrt(0.000288/2) = 0.012
    assert row["top1"] == "70.10 ± 1.20"
    # ece ce: 0.11, 0.09, 0.12 -> mean 0.106667; s = sqrt((0.0033^2+0.0167^2+0.0133^2)/2) = 0.015275
    assert row["ece"] == "10.67 ± 1.53"


def test_csv_raw_fractions(runs: Path) -> None:
    frame = pd.read_csv(io.StringIO(table([runs], "csv")))
    assert len(frame) == 2
    for _, row in frame.iterrows():
        method = row["method"]
        assert row["dataset"] == "cifar10_lt" and row["imbalance_factor"] == 100
        assert row["n"] == 3
        for col in ("top1", "many", "medium", "worst_class", "harmonic_mean", "ece"):
            mean, std = expected(method, col)
            assert row[f"{col}_mean"] == pytest.approx(mean, rel=1e-9)
            assert row[f"{col}_std"] == pytest.approx(std, rel=1e-9)
        assert np.isnan(row["few_mean"]) and np.isnan(row["few_std"])


def test_latex(runs: Path) -> None:
    text = table([runs], "latex")
    assert r"\begin{tabular}" in text and r"\end{tabular}" in text
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.rstrip().removesuffix(r"\\").split("&")]
        if len(cells) == 4 + len(COLUMNS) and cells[2] in METRICS:
            rows[cells[2]] = cells
    assert set(rows) == set(METRICS)
    for method, cells in rows.items():
        assert cells[3] == "3"
        mean, std = expected(method, "top1")
        assert cells[4] == f"{100 * mean:.2f} $\\pm$ {100 * std:.2f}"
        assert cells[4 + COLUMNS.index("few")] == "–"


def test_single_seed_shows_no_std(tmp_path: Path) -> None:
    write_record(tmp_path / "a", "ce", 0, METRICS["ce"][0])
    row = parse_md(table([tmp_path], "md"))["ce"]
    assert row["n"] == "1"
    assert row["top1"] == "70.10"


def test_duplicate_seed_keeps_the_newest(runs: Path) -> None:
    # a re-run of ce seed 1, finished later, in a folder that sorts before the original
    newer = {**METRICS["ce"][1], "top1": 0.75}
    write_record(runs / "aaa-rerun", "ce", 1, newer, finished="2026-01-02T09:00:00+00:00")
    # an older duplicate of seed 2 in a folder sorting after everything: it must lose
    older = {**METRICS["ce"][2], "top1": 0.10}
    write_record(runs / "zzz-old", "ce", 2, older, finished="2025-12-31T09:00:00+00:00")
    row = parse_md(table([runs], "md"))["ce"]
    assert row["n"] == "3"
    values = np.array([0.701, 0.75, 0.689])
    assert row["top1"] == f"{100 * values.mean():.2f} ± {100 * values.std(ddof=1):.2f}"


def test_a_run_in_another_precision_is_its_own_row_and_replaces_no_seed(runs: Path) -> None:
    """A bf16 run of ce seed 1, finished after the float32 one: a row ``ce (bf16-mixed)`` of its own;
    the float32 row keeps all three of its seeds. Records that name no precision are float32."""
    path = write_record(
        runs / "bf16-rerun", "ce", 1, {**METRICS["ce"][1], "top1": 0.5}, "2026-01-02T09:00:00+00:00"
    )
    record = json.loads(path.read_text())
    record["config"] = {"trainer": {"precision": "bf16-mixed"}}
    path.write_text(json.dumps(record))
    rows = parse_md(table([runs], "md"))
    assert rows["ce"]["n"] == "3" and parse_cell(rows["ce"]["top1"])[0] == pytest.approx(70.1)
    assert (rows["ce (bf16-mixed)"]["n"], rows["ce (bf16-mixed)"]["top1"]) == ("1", "50.00")
    frame = records_frame([runs])
    assert set(frame.query("base_method == 'ce'").precision) == {"32-true", "bf16-mixed"}


def test_a_compiled_run_is_its_own_row_and_replaces_no_seed(runs: Path) -> None:
    """Runs with ``train.compile`` set, finished after the uncompiled ones: rows tagged with the compile
    mode (and the precision first when not float32); the uncompiled row keeps its three seeds.
    ``train.compile: null`` is an uncompiled run."""
    settings = {
        "compiled": ({"compile": "default"}, {}),
        "bf16": ({"compile": "default"}, {"precision": "bf16-mixed"}),
        "autotune": ({"compile": "max-autotune-no-cudagraphs"}, {}),
        "null": ({"compile": None}, {}),
    }
    for name, (train, trainer) in settings.items():
        path = write_record(
            runs / name, "ce", 1, {**METRICS["ce"][1], "top1": 0.5}, "2026-01-02T09:00:00+00:00"
        )
        record = json.loads(path.read_text())
        record["config"] = {"train": train, "trainer": trainer}
        path.write_text(json.dumps(record))
    rows = parse_md(table([runs], "md"))
    assert {"ce (compiled)", "ce (bf16-mixed, compiled)", "ce (compiled max-autotune-no-cudagraphs)"} <= set(
        rows
    )
    assert (rows["ce (compiled)"]["n"], rows["ce (compiled)"]["top1"]) == ("1", "50.00")
    # the null-compile run is seed 1 of the uncompiled row, newer than the original: it replaces it
    values = np.array([METRICS["ce"][0]["top1"], 0.5, METRICS["ce"][2]["top1"]])
    assert (
        rows["ce"]["n"] == "3"
        and rows["ce"]["top1"] == f"{100 * values.mean():.2f} ± {100 * values.std(ddof=1):.2f}"
    )
    frame = records_frame([runs]).query("base_method == 'ce'")
    assert set(frame.setting) == {
        "32-true",
        "32-true, compiled",
        "bf16-mixed, compiled",
        "32-true, compiled max-autotune-no-cudagraphs",
    }
    stats = [f"{col}_{stat}" for col in COLUMNS for stat in ("mean", "std")]
    header = ["dataset", "imbalance_factor", "profile", "method", "n", *stats, "relative"]
    assert list(pd.read_csv(io.StringIO(table([runs], "csv"))).columns) == header


def test_groups_by_dataset_and_imbalance_factor(tmp_path: Path) -> None:
    write_record(tmp_path / "a", "ce", 0, METRICS["ce"][0], imbalance_factor=100.0)
    write_record(tmp_path / "b", "ce", 0, METRICS["ce"][1], imbalance_factor=50.0)
    write_record(tmp_path / "c", "ce", 0, METRICS["ce"][2], dataset="cifar100_lt")
    frame = pd.read_csv(io.StringIO(table([tmp_path], "csv")))
    assert len(frame) == 3 and (frame["n"] == 1).all()
    text = table([tmp_path], "md")
    assert "| cifar10_lt | 50 | ce | 1 |" in text and "| cifar100_lt | 100 | ce | 1 |" in text


def test_record_files_given_directly(runs: Path) -> None:
    files = sorted(runs.rglob("record.json"))
    assert table(files, "csv") == table([runs], "csv")


def test_not_a_record_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "record.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(LTBenchError, match="not an lt-bench run record"):
        table([tmp_path])
    with pytest.raises(LTBenchError, match="does not exist"):
        table([tmp_path / "missing"])


def test_cli_table(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(runs), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert out == table([runs], "md")
    rows = parse_md(out)
    mean, std = expected("balanced_softmax", "top1")
    assert rows["balanced_softmax"]["top1"] == f"{100 * mean:.2f} ± {100 * std:.2f}"
    assert main(["table", str(runs), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("dataset,imbalance_factor,profile,method,n,")


def test_cli_table_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_dataset_without_imbalance_factor(tmp_path: Path) -> None:
    for seed, top1 in enumerate((0.40, 0.41)):
        metrics = {"top1": top1, "many": 0.6, "medium": 0.3, "few": 0.1}
        write_record(tmp_path / f"s{seed}", "ce", seed, metrics, dataset="imagenet_lt", imbalance_factor=None)
    row = parse_md(table([tmp_path], "md"))["ce"]
    assert (row["dataset"], row["IF"], row["n"]) == ("imagenet_lt", "–", "2")
    assert row["top1"] == f"40.50 ± {100 * np.std([0.40, 0.41], ddof=1):.2f}"  # 0.71
    assert row["few"] == "10.00 ± 0.00"
    assert row["ece"] == "–"


def test_record_variants_become_their_own_rows(tmp_path: Path) -> None:
    """A record's ``variants`` (e.g. SADE's test-time aggregation) add rows under their own name."""
    for seed, (plain, tta) in enumerate([(0.70, 0.74), (0.72, 0.78)]):
        record = {
            "dataset": "cifar10_lt",
            "imbalance_factor": 100,
            "method": "sade",
            "seed": seed,
            "provenance": {"finished": f"2026-11-27T00:00:0{seed}+00:00"},
            "metrics": {"test": {"top1": plain}, "test_sade_tta": {"top1": tta}},
            "variants": {"sade+tta": "test_sade_tta"},
        }
        (tmp_path / f"r{seed}").mkdir()
        (tmp_path / f"r{seed}" / "record.json").write_text(json.dumps(record))
    summary = summarize(records_frame([tmp_path])).set_index("method")
    assert summary.loc["sade", "top1_mean"] == pytest.approx(0.71)
    assert summary.loc["sade+tta", "top1_mean"] == pytest.approx(0.76)
    assert summary.loc["sade+tta", "n"] == 2


def _record(
    path: Path,
    method: str,
    seed: int,
    top1: float,
    profile: str | None = "exp",
    precision: str | None = None,
    compile_mode: str | None = None,
) -> None:
    record = {
        "dataset": "cifar10_lt",
        "imbalance_factor": 100,
        "method": method,
        "profile": profile,
        "seed": seed,
        "provenance": {"finished": f"2026-11-27T00:00:0{seed}+00:00"},
        "metrics": {"test": {"top1": top1}},
    }
    if precision is not None:
        record["config"] = {"trainer": {"precision": precision}}
    if compile_mode is not None:
        record.setdefault("config", {})["train"] = {"compile": compile_mode}
    path.mkdir(parents=True)
    (path / "record.json").write_text(json.dumps(record))


def test_relative_accuracy_from_balanced_set_runs(tmp_path: Path) -> None:
    """A_r = A_t / max(A_v, A_b): survey §4.1, with A_v from CE and A_b from the method itself."""
    _record(tmp_path / "ce", "ce", 0, 0.60)
    _record(tmp_path / "ce_bal", "ce", 0, 0.80, profile="balanced")
    _record(tmp_path / "bs", "balanced_softmax", 0, 0.70)
    _record(tmp_path / "bs_bal", "balanced_softmax", 0, 0.84, profile="balanced")
    _record(tmp_path / "ldam", "ldam_drw", 0, 0.72)  # no balanced run of its own: A_u = A_v
    summary = summarize(records_frame([tmp_path])).set_index("method")
    assert summary.loc["ce", "relative"] == pytest.approx(0.60 / 0.80)
    assert summary.loc["balanced_softmax", "relative"] == pytest.approx(0.70 / 0.84)
    assert summary.loc["ldam_drw", "relative"] == pytest.approx(0.72 / 0.80)
    assert np.isnan(summary.loc["ce (balanced set)", "relative"])
    text = table([tmp_path])
    assert text.splitlines()[0].endswith("| relative |")
    assert "| cifar10_lt | 100 | ce (balanced set) | 1 | 80.00 |" in text


def test_relative_accuracy_of_compiled_rows(tmp_path: Path) -> None:
    """A compiled row takes A_v from compiled CE on the balanced set when that run exists, else from the
    uncompiled one of its precision; its own compiled balanced-set run is its A_b."""

    def relative(folder: Path, method: str) -> float:
        return summarize(records_frame([folder])).set_index("method").loc[method, "relative"]

    _record(tmp_path / "a" / "ce_bal", "ce", 0, 0.80, profile="balanced")
    _record(tmp_path / "a" / "bs_c", "balanced_softmax", 0, 0.70, compile_mode="default")
    assert relative(tmp_path / "a", "balanced_softmax (compiled)") == pytest.approx(0.70 / 0.80)
    _record(tmp_path / "b" / "ce_bal_c", "ce", 0, 0.90, profile="balanced", compile_mode="default")
    _record(tmp_path / "b" / "bs_c", "balanced_softmax", 0, 0.70, compile_mode="default")
    _record(tmp_path / "b" / "ce_c", "ce", 0, 0.60, compile_mode="default")
    assert relative(tmp_path / "b", "balanced_softmax (compiled)") == pytest.approx(0.70 / 0.90)
    assert relative(tmp_path / "b", "ce (compiled)") == pytest.approx(0.60 / 0.90)
    _record(tmp_path / "b" / "ce_bal", "ce", 0, 0.80, profile="balanced")  # the compiled A_v still wins
    assert relative(tmp_path / "b", "balanced_softmax (compiled)") == pytest.approx(0.70 / 0.90)
    _record(
        tmp_path / "b" / "bs_bal_c", "balanced_softmax", 0, 0.95, profile="balanced", compile_mode="default"
    )
    assert relative(tmp_path / "b", "balanced_softmax (compiled)") == pytest.approx(0.70 / 0.95)


def test_relative_accuracy_takes_ce_on_the_balanced_set_in_the_rows_precision(tmp_path: Path) -> None:
    """A bf16 row's A_v is bf16 CE on the balanced set, never the float32 one; Lightning's short
    precision names (``bf16``, ``32``) are the same rows as their full names."""
    _record(tmp_path / "ce_bal", "ce", 0, 0.90, profile="balanced")
    _record(tmp_path / "ce", "ce", 0, 0.60, precision="32")
    _record(tmp_path / "ce16_bal", "ce", 0, 0.80, profile="balanced", precision="bf16-mixed")
    _record(tmp_path / "ce16", "ce", 0, 0.56, precision="bf16")
    _record(tmp_path / "bs16", "balanced_softmax", 1, 0.64, precision="bf16-mixed")
    summary = summarize(records_frame([tmp_path])).set_index("method")
    assert sorted(summary.index) == [
        "balanced_softmax (bf16-mixed)",
        "ce",
        "ce (balanced set)",
        "ce (bf16-mixed)",
        "ce (bf16-mixed) (balanced set)",
    ]
    assert summary.loc["ce", "relative"] == pytest.approx(0.60 / 0.90)
    assert summary.loc["ce (bf16-mixed)", "relative"] == pytest.approx(0.56 / 0.80)
    assert summary.loc["balanced_softmax (bf16-mixed)", "relative"] == pytest.approx(0.64 / 0.80)


def test_no_relative_column_without_balanced_runs(tmp_path: Path) -> None:
    _record(tmp_path / "ce", "ce", 0, 0.60)
    assert "relative" not in table([tmp_path])


def test_imbalance_profiles_are_separate_rows(tmp_path: Path) -> None:
    """A run on TLC's own split (profile tlc, whose generator ignores the IF) or on a step profile is
    not averaged with the exponential-profile runs of the same IF."""
    _record(tmp_path / "exp0", "ldam_drw", 0, 0.70)
    _record(tmp_path / "exp1", "ldam_drw", 1, 0.72)
    _record(tmp_path / "tlc0", "ldam_drw", 0, 0.76, profile="tlc")
    _record(tmp_path / "step0", "ldam_drw", 0, 0.60, profile="step")
    summary = summarize(records_frame([tmp_path])).set_index("profile")
    assert summary.loc["exp", "n"] == 2 and summary.loc["exp", "top1_mean"] == pytest.approx(0.71)
    assert summary.loc["tlc", "n"] == 1 and summary.loc["tlc", "top1_mean"] == pytest.approx(0.76)
    text = table([tmp_path])
    assert "| cifar10_lt | 100 | ldam_drw | 2 | 71.00 ± 1.41 |" in text
    assert "| cifar10_lt | tlc | ldam_drw | 1 | 76.00 |" in text
    assert "| cifar10_lt | 100 step | ldam_drw | 1 | 60.00 |" in text


def test_unrecorded_profile_is_exponential_and_tlc_ignores_the_imbalance_factor(tmp_path: Path) -> None:
    """Image-list datasets record ``profile: null`` (and no IF); TLC-split runs configured with
    different IFs train on the same data and form one row."""
    _record(tmp_path / "inat", "ce", 0, 0.60, profile=None)
    record = json.loads((tmp_path / "inat" / "record.json").read_text())
    record.update(dataset="inaturalist2018", imbalance_factor=None)
    (tmp_path / "inat" / "record.json").write_text(json.dumps(record))
    _record(tmp_path / "tlc0", "tlc", 0, 0.76, profile="tlc")
    _record(tmp_path / "tlc1", "tlc", 1, 0.78, profile="tlc")
    record = json.loads((tmp_path / "tlc1" / "record.json").read_text())
    record["imbalance_factor"] = 50
    (tmp_path / "tlc1" / "record.json").write_text(json.dumps(record))
    text = table([tmp_path])
    assert "| inaturalist2018 | – | ce | 1 | 60.00 |" in text
    assert "| cifar10_lt | tlc | tlc | 2 | 77.00 ± 1.41 |" in text


def test_tables_and_reports_load_without_torch() -> None:
    """``lt-bench table`` / ``curve`` / ``compare`` / ``diff`` need no torch: importing it took most of
    their time (a table in 10.5 s, 0.5 s without it, on this project's CPU machine)."""
    code = (
        "import sys, lt_bench.cli, lt_bench.reports.table, lt_bench.reports.curve, lt_bench.reports.compare,"
        " lt_bench.reports.diff;"
        "print(sorted({'torch', 'lightning', 'torchmetrics'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
