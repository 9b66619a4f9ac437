"""``lt-bench compare`` on hand-made records (deltas, mean ± std, spread rule, class changes, groups)
and on the committed CIFAR-10-LT IF 100 records."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lt_bench.errors import LTBenchError
from lt_bench.reports import compare, html
from lt_bench.reports.compare import (
    Stat,
    add_compare_parser,
    agnostic_rows,
    class_changes,
    compare_sections,
    exceeds_spread,
    load_groups,
    metric_table,
    parse_set,
    render_text,
    variant_rows,
    with_baseline,
)

REAL = Path(__file__).resolve().parents[1] / "results" / "cifar10_lt_if100"
CLASSES = ["cat", "dog", "owl", "yak"]
TRAIN_COUNTS = [500, 150, 40, 8]  # many, many, medium, few
SHOT_GROUPS = {"many": [0, 1], "medium": [2], "few": [3]}


def lt_metrics(per_class: list[float], ece: float = 0.1) -> dict[str, Any]:
    """The test metrics of a balanced test set (100 images a class) with these recalls."""
    r = np.array(per_class)
    return {
        "top1": float(r.mean()),
        "many": float(r[SHOT_GROUPS["many"]].mean()),
        "medium": float(r[SHOT_GROUPS["medium"]].mean()),
        "few": float(r[SHOT_GROUPS["few"]].mean()),
        "worst_class": float(r.min()),
        "zero_recall_classes": int((r == 0).sum()),
        "harmonic_mean": 0.0 if (r == 0).any() else float(len(r) / (1 / r).sum()),
        "ece": ece,
        "per_class": list(per_class),
        "num_samples": 100 * len(r),
        "class_counts": [100] * len(r),
    }


def write_run(
    root: Path,
    method: str,
    seed: int,
    per_class: list[float],
    *,
    dataset: str = "toy_lt",
    extra: dict[str, dict[str, Any]] | None = None,
    finished: str = "2026-01-01T00:00:00+00:00",
    **test: Any,
) -> Path:
    """A record.json in ``root/<dataset>-<method>-seed<seed>-<finished>/``; ``test`` overrides metrics."""
    run_id = f"{dataset}-{method}-seed{seed}-{finished[:10]}"
    metrics = {"test": {**lt_metrics(per_class), **test}, **(extra or {})}
    record = {
        "run_id": run_id,
        "method": method,
        "dataset": dataset,
        "imbalance_factor": 62.5,
        "seed": seed,
        "metrics": metrics,
        "class_names": CLASSES,
        "train_counts": TRAIN_COUNTS,
        "shot_groups": SHOT_GROUPS,
        "provenance": {"finished": finished},
    }
    path = root / run_id / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    return path.parent


@pytest.fixture
def two_methods(tmp_path: Path) -> Path:
    """ce and la, 3 seeds each: la gains on the tail (owl, yak) and loses a little on cat."""
    root = tmp_path / "runs"
    ce = [[0.90, 0.80, 0.40, 0.10], [0.92, 0.78, 0.42, 0.12], [0.91, 0.79, 0.41, 0.14]]
    la = [[0.85, 0.80, 0.60, 0.50], [0.86, 0.78, 0.58, 0.52], [0.84, 0.79, 0.62, 0.48]]
    for seed, (a, b) in enumerate(zip(ce, la, strict=True)):
        write_run(root / "ce", "ce", seed, a)
        write_run(root / "la", "la", seed, b)
    return root


def cli(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lt-bench")
    add_compare_parser(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(args)
    return parsed.func(parsed)


def test_spread_rule() -> None:
    a, b = Stat(0.50, 0.01, 3), Stat(0.52, 0.005, 3)
    assert exceeds_spread(a, b) and exceeds_spread(b, a)  # 0.02 > 0.015
    assert not exceeds_spread(a, Stat(0.514, 0.005, 3))  # 0.014 < 0.015
    assert not exceeds_spread(Stat(0.5, math.nan, 1), Stat(0.9, math.nan, 1))  # single runs: no spread
    assert not exceeds_spread(a, Stat(0.9, 0.0, 1))


def test_stat_is_mean_and_sample_std_over_finite_values() -> None:
    stat = Stat.of(np.array([0.70, 0.72, math.nan, 0.74]))
    assert stat.n == 3 and stat.mean == pytest.approx(0.72) and stat.std == pytest.approx(0.02)
    empty = Stat.of(np.array([math.nan]))
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.std)


def test_groups_split_by_method_and_keep_the_newest_rerun(two_methods: Path) -> None:
    write_run(two_methods / "ce", "ce", 0, [0.5, 0.5, 0.5, 0.5], finished="2026-02-01T00:00:00+00:00")
    groups = load_groups([two_methods])
    assert [g.label for g in groups] == ["ce", "la"]
    ce = groups[0]
    assert ce.seeds == [0, 1, 2]
    assert ce.values("test", "top1")[0] == 0.5  # the newer record of seed 0
    assert [g.label for g in with_baseline(groups, "la")] == ["la", "ce"]
    with pytest.raises(LTBenchError, match="give one of the group labels: ce, la"):
        with_baseline(groups, "ldam")
    empty = two_methods / "empty"
    empty.mkdir()
    with pytest.raises(LTBenchError, match="no run records"):
        load_groups([empty])


def test_equal_means_show_no_negative_zero() -> None:
    """Means equal up to their last bit (the same seeds in another order) show +0.00, never -0.00."""
    values = np.array([0.6447, 0.7033, 0.6285])
    base, other = Stat.of(values), Stat.of(values[::-1].copy())
    assert base.mean != other.mean
    assert compare._delta(base, other, count=False) == " (+0.00)"
    assert compare._delta(other, base, count=False) == " (+0.00)"


def test_baseline_prefers_the_exact_label_over_a_tagged_group_of_its_method(two_methods: Path) -> None:
    """A bf16 run of ce, listed first, is the group ``ce (bf16-mixed)``: ``--baseline ce`` picks the
    float32 group labelled ``ce``; a method name that fits two groups and labels neither is refused."""
    bf16 = two_methods.parent / "bf16"
    record = json.loads((write_run(bf16, "ce", 0, [0.5] * 4) / "record.json").read_text())
    record["config"] = {"trainer": {"precision": "bf16-mixed"}}
    next(bf16.glob("*/record.json")).write_text(json.dumps(record))
    groups = load_groups([bf16, two_methods])
    assert [g.label for g in groups] == ["ce (bf16-mixed)", "ce", "la"]
    assert [g.label for g in with_baseline(groups, "ce")] == ["ce", "ce (bf16-mixed)", "la"]
    without_plain = [g for g in groups if g.label != "ce"]
    with pytest.raises(LTBenchError, match="names no group, or the method of several"):
        with_baseline([*without_plain, *load_groups([bf16])], "ce")
    assert [g.label for g in with_baseline(without_plain, "ce")] == ["ce (bf16-mixed)", "la"]


def test_baseline_by_method_across_places_skips_the_tagged_group(tmp_path: Path) -> None:
    """Over two datasets every label names its place, so ``--baseline ce`` matches no label: it takes the
    group whose table name is ``ce`` (float32), never ``ce (bf16-mixed)``, in each place."""
    write_run(tmp_path / "bf16", "ce", 0, [0.5] * 4)
    path = next((tmp_path / "bf16").glob("*/record.json"))
    path.write_text(
        json.dumps({**json.loads(path.read_text()), "config": {"trainer": {"precision": "bf16"}}})
    )
    write_run(tmp_path / "fp32", "ce", 0, [0.6] * 4)
    write_run(tmp_path / "fp32", "la", 0, [0.7] * 4)
    write_run(tmp_path / "other", "ce", 0, [0.8] * 4, dataset="other_lt")
    groups = load_groups([tmp_path / "bf16", tmp_path / "fp32", tmp_path / "other"])
    assert groups[0].label == "ce (bf16-mixed) (toy_lt IF 62.5)"
    assert with_baseline(groups, "ce")[0].label == "ce (toy_lt IF 62.5)"
    firsts = [block[0].label for block in html.blocks(groups, "ce")]
    assert firsts == ["ce (toy_lt IF 62.5)", "ce (other_lt IF 62.5)"]


def test_same_method_from_two_paths_gets_distinct_labels(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "ce", 0, [0.9, 0.8, 0.4, 0.1])
    b = write_run(tmp_path / "b", "ce", 0, [0.9, 0.8, 0.5, 0.2])
    assert [g.label for g in load_groups([a, b])] == ["ce @ #1", "ce @ #2"]  # same folder names
    assert [g.label for g in load_groups([a.parent, b.parent])] == ["ce @ a", "ce @ b"]


def test_main_table_deltas_and_spread_marks(two_methods: Path) -> None:
    groups = load_groups([two_methods / "ce", two_methods / "la"])
    frame = metric_table(groups, [("test", "few", "few"), ("test", "many", "many")])
    assert list(frame.columns) == ["metric", "ce (n=3)", "la (n=3)"]
    few, many = frame.to_dict("records")
    # few: ce 12.00 ± 2.00, la 50.00 ± 2.00, Δ +38 > 4 -> marked
    assert few["ce (n=3)"] == "12.00 ± 2.00"
    assert few["la (n=3)"] == "50.00 ± 2.00 (+38.00 *)"
    # many: ce (0.85, 0.85, 0.85) vs la (0.825, 0.82, 0.815): Δ -3 > 0 + 0.5 -> marked
    assert many["la (n=3)"] == "82.00 ± 0.50 (-3.00 *)"


def test_difference_within_seed_spread_is_not_marked(tmp_path: Path) -> None:
    for seed, (a, b) in enumerate([(0.60, 0.62), (0.70, 0.71), (0.65, 0.69)]):
        write_run(tmp_path / "a", "a", seed, [a] * 4)
        write_run(tmp_path / "b", "b", seed, [b] * 4)
    frame = metric_table(load_groups([tmp_path / "a", tmp_path / "b"]), [("test", "top1", "top-1")])
    assert frame.iloc[0, 2] == "67.33 ± 4.73 (+2.33)"  # 2.33 < 5.00 + 4.73


def test_single_runs_show_deltas_without_spread(tmp_path: Path) -> None:
    a = write_run(tmp_path, "ce", 0, [0.9, 0.8, 0.4, 0.0], ece=0.2)
    b = write_run(tmp_path, "la", 0, [0.8, 0.8, 0.6, 0.3], ece=0.05)
    text = render_text(compare_sections(load_groups([a, b])))
    assert "| top-1 | 52.50 | 62.50 (+10.00) |" in text
    assert "| zero-recall classes | 1.0 | 0.0 (-1.0) |" in text
    assert "| harmonic mean | 0.00 |" in text
    assert "| ECE | 20.00 | 5.00 (-15.00) |" in text
    assert " *" not in text.replace("* marks", "")


def test_gained_and_lost_classes(two_methods: Path) -> None:
    ce, la = load_groups([two_methods / "ce", two_methods / "la"])
    changes = class_changes(ce, la, top=5)
    rows = changes.to_dict("records")
    assert [(r["change"], r["name"]) for r in rows] == [
        ("gained", "yak"),
        ("gained", "owl"),
        ("lost", "cat"),
    ]  # dog: no change, listed in neither
    assert [r["train count"] for r in rows] == [8, 40, 500]
    assert rows[0]["Δ"] == "+38.00 *" and rows[0]["ce (n=3)"] == "12.00 ± 2.00"
    assert rows[2]["Δ"] == "-6.00 *"
    assert len(class_changes(ce, la, top=1)) == 2  # top 1 gain + top 1 loss


def test_class_changes_need_the_same_classes(tmp_path: Path) -> None:
    a = write_run(tmp_path, "ce", 0, [0.9, 0.8, 0.4, 0.1])
    b = write_run(tmp_path, "ce", 0, [0.9, 0.8, 0.4, 0.1], dataset="other_lt")
    ce, other = load_groups([a, b])
    other.records[0]["class_names"] = ["w", "x", "y", "z"]
    assert class_changes(ce, other, 5) is None
    assert [g.label for g in (ce, other)] == ["ce (toy_lt IF 62.5)", "ce (other_lt IF 62.5)"]


def test_set_names() -> None:
    assert parse_set("test") == (None, None)
    assert parse_set("test_expert2") == (None, "expert2")
    assert parse_set("test_sade_tta") == (None, "sade_tta")
    assert parse_set("test_forward_50") == ("forward_50", None)
    assert parse_set("test_uniform_sade_tta") == ("uniform", "sade_tta")
    assert parse_set("test_backward_2_expert0") == ("backward_2", "expert0")
    assert parse_set("val") is None


def test_expert_and_test_agnostic_rows(tmp_path: Path) -> None:
    r = [0.8, 0.6, 0.4, 0.2]
    extra = {f"test_expert{k}": lt_metrics(r) for k in range(3)}
    extra |= {"test_sade_tta": lt_metrics(r), "val": lt_metrics(r)}
    for dist in ("backward_50", "forward_2", "uniform", "forward_50", "backward_2"):
        extra[f"test_{dist}"] = lt_metrics(r)
        extra[f"test_{dist}_expert0"] = lt_metrics(r)
    extra["test_forward_50_sade_tta"] = lt_metrics(r)
    groups = load_groups([write_run(tmp_path, "sade", 0, r, extra=extra)])
    labels = [label for _, _, label in variant_rows(groups)]
    assert labels[:4] == ["expert0 top-1", "expert0 many", "expert0 medium", "expert0 few"]
    assert len(labels) == 16 and labels[-4] == "sade_tta top-1"
    rows = agnostic_rows(groups)
    assert [label for _, _, label in rows] == [
        "forward 50",
        "forward 2",
        "uniform",
        "backward 2",
        "backward 50",
        "forward 50 sade_tta",
    ]
    assert all(metric == "top1" for _, metric, _ in rows)
    titles = [s.title for s in compare_sections(groups)]
    assert titles[1:] == [
        "Experts and test-time variants (test set)",
        "Test-agnostic top-1 (forward … uniform … backward)",
    ]


def test_real_records_table() -> None:
    baselines = ("ce", "balanced_softmax", "ldam_drw")
    groups = [g for g in with_baseline(load_groups([REAL]), "ce") if g.label in baselines]
    assert [g.label for g in groups] == list(baselines)
    assert all(g.seeds == [0, 1, 2] for g in groups)
    tops = [
        json.loads(p.read_text())["metrics"]["test"]["top1"] for p in sorted(REAL.glob("*-ce-*/record.json"))
    ]
    stat = groups[0].stat("test", "top1")
    assert stat.mean == pytest.approx(np.mean(tops)) and stat.std == pytest.approx(np.std(tops, ddof=1))
    text = render_text(compare_sections(groups))
    assert "| few | – | – | – |" in text  # CIFAR-10-LT has no few-shot class
    # the two tail classes gain most under balanced softmax
    changes = class_changes(groups[0], groups[1], 2)
    assert list(changes["name"][:2]) == ["truck", "ship"] and list(changes["train count"][:2]) == [50, 83]


def test_cli_on_two_real_run_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = sorted(REAL.glob("*-ce-seed0-*"))[0], sorted(REAL.glob("*-balanced_softmax-seed0-*"))[0]
    assert cli(["compare", str(a), str(b), "--top", "3", "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "## cifar10_lt IF 100: test set, baseline ce" in out
    assert "| top-1 | 65.67 | 72.86 (+7.19) |" in out
    assert "| gained | 9 | truck | 50 |" in out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "per_class.png",
        "per_class.svg",
        "shots.png",
        "shots.svg",
    ]
    assert "note: reliability diagram skipped" in out


def test_profiles_are_separate_groups_with_their_own_labels(tmp_path: Path) -> None:
    """A folder holding exponential, TLC-split and balanced-set runs of one method splits into three
    groups labelled by where they ran; TLC's generator ignores the configured IF."""
    root = tmp_path / "runs"
    write_run(root, "ce", 0, [0.9, 0.8, 0.4, 0.1])
    for profile, day in (("tlc", 2), ("balanced", 3)):
        path = write_run(root, "ce", 0, [0.9, 0.8, 0.6, 0.5], finished=f"2026-01-0{day}T00:00:00+00:00")
        record = json.loads((path / "record.json").read_text())
        record["profile"] = profile
        (path / "record.json").write_text(json.dumps(record))
    labels = sorted(g.label for g in load_groups([root]))
    assert labels == ["ce (balanced set) (toy_lt IF 62.5)", "ce (toy_lt (TLC split))", "ce (toy_lt IF 62.5)"]
