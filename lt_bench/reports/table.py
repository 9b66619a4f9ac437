"""Benchmark tables from run records: mean ± std over seeds (sample std, ddof = 1) and the seed count."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lt_bench.metrics.relative import relative_accuracy
from lt_bench.reports.record import find_records, read_record

COLUMNS = ("top1", "many", "medium", "few", "worst_class", "harmonic_mean", "ece")
KEYS = ("dataset", "imbalance_factor", "profile", "method")
FORMATS = ("md", "csv", "latex")


def record_profile(record: dict) -> str:
    """A run record's imbalance profile; ``exp`` where none is recorded (image-list datasets, whose
    split is fixed, and records written before the profile was recorded)."""
    return record.get("profile") or "exp"


def place_key(record: dict) -> tuple[str, float | None, str]:
    """(dataset, IF, profile) of the table block a run belongs to. TLC's generator has no imbalance
    factor (IF None, whatever was configured); a balanced-set run is the ``(balanced set)`` twin of the
    exponential-profile runs of its IF, so it sits with them (profile ``exp``, see ``record_key``)."""
    profile = record_profile(record)
    imbalance = None if profile == "tlc" else record["imbalance_factor"]
    return record["dataset"], imbalance, "exp" if profile == "balanced" else profile


#: Lightning's short ``trainer.precision`` values and the names they stand for
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}


def record_precision(record: dict) -> str:
    """A run record's ``trainer.precision`` by its full name (``32`` is ``32-true``, ``bf16`` is
    ``bf16-mixed``); ``32-true`` where its config records none."""
    trainer = (record.get("config") or {}).get("trainer") or {}
    precision = str(trainer.get("precision", "32-true"))
    return PRECISION_ALIASES.get(precision, precision)


def record_compile(record: dict) -> str | None:
    """A run record's ``train.compile`` mode (``default``, ...); ``None`` for an uncompiled run."""
    train = (record.get("config") or {}).get("train") or {}
    mode = train.get("compile")
    return None if mode is None else str(mode)


def compile_tag(compile_mode: str | None) -> str | None:
    """``compiled`` for ``train.compile=default``, ``compiled <mode>`` for another mode, None uncompiled."""
    if compile_mode is None:
        return None
    return "compiled" if compile_mode == "default" else f"compiled {compile_mode}"


def setting_label(method: str, precision: str, compile_mode: str | None = None) -> str:
    """``method`` tagged with its precision when not float32 and with ``train.compile`` when set:
    ``ce (bf16-mixed)``, ``ce (compiled)``, ``ce (bf16-mixed, compiled)``."""
    tags = [tag for tag in (None if precision == "32-true" else precision, compile_tag(compile_mode)) if tag]
    return f"{method} ({', '.join(tags)})" if tags else method


def setting_name(precision: str, compile_mode: str | None) -> str:
    """A precision and compile mode as one name: ``32-true``, ``bf16-mixed, compiled``."""
    tag = compile_tag(compile_mode)
    return precision if tag is None else f"{precision}, {tag}"


def table_label(method: str, record: dict) -> str:
    """Table name of ``method`` (the run's label or one of its variants) in ``record``: tagged with the
    precision when it is not float32 and with the compile mode when compiled (``setting_label``), then
    ``balanced_label`` for a balanced-set run, so that none of these runs merges into, or replaces a seed
    of, the float32 row of its method."""
    method = setting_label(method, record_precision(record), record_compile(record))
    return balanced_label(method) if record_profile(record) == "balanced" else method


def record_key(record: dict) -> tuple[str, float | None, str, str]:
    """(dataset, IF, profile, method) as ``place_key``, the method as ``table_label`` names it."""
    return (*place_key(record), table_label(record["method"], record))


def place_name(dataset: str, imbalance_factor: float | None, profile: str) -> str:
    """``cifar10_lt IF 100``, ``cifar10_lt IF 100 step``, ``cifar10_lt (TLC split)``, ``imagenet_lt``."""
    if profile == "tlc":
        return f"{dataset} (TLC split)"
    cell = imbalance_cell(imbalance_factor, profile)
    return dataset if cell == "–" else f"{dataset} IF {cell}"


def records_frame(paths: list[Path]) -> pd.DataFrame:
    """One row per run (test-set metrics) and per variant it records (e.g. ``sade+tta`` from
    ``metrics.test_sade_tta``), keyed as ``record_key`` (a balanced-set run's rows carry profile
    ``exp`` and the ``(balanced set)`` method name, a run in another precision than float32 or compiled
    its setting tag); ``base_method`` is the method name without that tag, ``precision``, ``compile``
    (the mode or None) and ``setting`` (``setting_name``) the run's. A re-run of the same seed keeps
    the newest record."""
    rows = []
    for path in find_records(paths):
        record = read_record(path)
        dataset, imbalance, profile = place_key(record)
        balanced = record_profile(record) == "balanced"
        precision, compile_mode = record_precision(record), record_compile(record)
        variants = {record["method"]: "test", **record.get("variants", {})}
        for method, key in variants.items():
            result = record["metrics"][key]
            rows.append(
                {
                    "dataset": dataset,
                    "imbalance_factor": imbalance,
                    "profile": profile,
                    "method": table_label(method, record),
                    "seed": record["seed"],
                    "finished": record["provenance"]["finished"],
                    "base_method": balanced_label(method) if balanced else method,
                    "precision": precision,
                    "setting": setting_name(precision, compile_mode),
                    "compile": compile_mode,
                    **{col: result.get(col) for col in COLUMNS},
                }
            )
    frame = pd.DataFrame(
        rows, columns=[*KEYS, "seed", "finished", "base_method", "precision", "setting", "compile", *COLUMNS]
    )
    frame[list(COLUMNS)] = frame[list(COLUMNS)].astype(float)
    return newest_per_seed(frame)


def newest_per_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per key and seed, the one with the latest ``finished`` (a re-run replaces the run it
    repeats), without the ``finished`` column, sorted by key and seed."""
    frame = frame.sort_values("finished", kind="stable").drop_duplicates([*KEYS, "seed"], keep="last")
    return frame.drop(columns="finished").sort_values([*KEYS, "seed"], ignore_index=True)


def balanced_label(method: str) -> str:
    """Table name of a run trained on the balanced variant of the training set (``profile=balanced``)."""
    return f"{method} (balanced set)"


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, IF, profile, method): ``n`` seeds, the ``precision`` and ``compile`` mode (None when
    uncompiled), ``<col>_mean`` and ``<col>_std`` (NaN for one seed), and ``relative`` accuracy where
    balanced-set runs exist (``add_relative_accuracy``)."""
    grouped = frame.groupby(list(KEYS), sort=True, dropna=False)
    out = grouped.size().rename("n").to_frame()
    out["precision"] = grouped["precision"].first()
    out["compile"] = grouped["compile"].first()
    for col in COLUMNS:
        out[f"{col}_mean"] = grouped[col].mean()
        out[f"{col}_std"] = grouped[col].std(ddof=1)
    return add_relative_accuracy(out.reset_index())


def add_relative_accuracy(summary: pd.DataFrame) -> pd.DataFrame:
    """``relative = A_t / max(A_v, A_b)`` (survey §4.1, metrics.md §2.2) from mean top-1 accuracies.

    A_v is CE trained on the balanced set of the same dataset, IF and precision (``ce (balanced set)``),
    compiled as the row is when such a run exists, else uncompiled (compiling does not change what is
    computed); A_b the method itself on that set when it was run (else A_u = A_v, valid when
    A_b <= A_v). NaN without A_v.
    """
    top1 = {(r.dataset, r.imbalance_factor, r.profile, r.method): r.top1_mean for r in summary.itertuples()}
    relative = []
    for r in summary.itertuples():
        place = (r.dataset, r.imbalance_factor, r.profile)
        compile_mode = r.compile if isinstance(r.compile, str) else None
        vanilla = top1.get((*place, balanced_label(setting_label("ce", r.precision, compile_mode))))
        if vanilla is None:
            vanilla = top1.get((*place, balanced_label(setting_label("ce", r.precision))))
        own = top1.get((*place, balanced_label(r.method)))
        lt_run = not r.method.endswith("(balanced set)")
        ok = lt_run and vanilla is not None and vanilla > 0
        relative.append(relative_accuracy(r.top1_mean, vanilla, own) if ok else math.nan)
    return summary.assign(relative=relative)


def imbalance_cell(imbalance_factor: float | None, profile: str) -> str:
    """The IF column: ``100`` (exponential profile), ``100 step``, ``tlc`` (TLC's generator, which
    has no imbalance factor), ``–`` (no IF: image-list datasets); profiles are different rows."""
    if profile == "tlc":
        return "tlc"
    value = "–" if pd.isna(imbalance_factor) else f"{imbalance_factor:g}"
    return value if profile == "exp" else f"{value} {profile}"


def mean_std_cell(mean: float, std: float, pm: str) -> str:
    """``72.58 ± 0.24`` in percent from fractions; the mean alone without a std (one seed), ``–``
    without a mean."""
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} {pm} {100 * std:.2f}"


def render(summary: pd.DataFrame, fmt: str = "md") -> str:
    """The table in Markdown, CSV (raw fractions) or LaTeX; accuracies shown in percent."""
    if fmt == "csv":
        return summary.drop(columns=["precision", "compile"]).to_csv(index=False)
    pm = r"$\pm$" if fmt == "latex" else "±"
    shown = pd.DataFrame(
        {
            "dataset": summary["dataset"],
            "IF": [
                imbalance_cell(v, p)
                for v, p in zip(summary["imbalance_factor"], summary["profile"], strict=True)
            ],
            "method": summary["method"],
            "n": summary["n"],
            **{
                col: [
                    mean_std_cell(m, s, pm)
                    for m, s in zip(summary[f"{col}_mean"], summary[f"{col}_std"], strict=True)
                ]
                for col in COLUMNS
            },
        }
    )
    if summary["relative"].notna().any():
        shown["relative"] = [mean_std_cell(v, math.nan, pm) for v in summary["relative"]]
    if fmt == "latex":
        return shown.to_latex(index=False, escape=False)
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" if c in ("dataset", "method") else "---:" for c in shown.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def table(paths: list[Path], fmt: str = "md") -> str:
    return render(summarize(records_frame(paths)), fmt)
