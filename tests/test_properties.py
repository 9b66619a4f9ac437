"""Property-based tests (hypothesis) of the config loader and the list-file parser (issue 8).

Config (``lt_bench.config.compose``): numeric overrides round-trip exactly and change nothing else,
unknown keys and non-positive sizes fail with a one-line ``ConfigError`` naming the fix, arbitrary
``key=value`` text never leaks another exception, and the order of overrides does not matter.

List files (``lt_bench.data.lists.parse_list_file``): written ``path label`` lines parse back exactly
(whatever the line endings and trailing whitespace), one malformed line is reported with its 1-based
number, and arbitrary bytes raise nothing but ``DataError``.

Inputs that once broke a property are kept as explicit ``@example``s (the bugs are fixed); the other
tests ``assume`` those inputs away, so that they
keep guarding everything else.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import re
import string
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from lt_bench.config import GROUPS, compose, load_yaml, validate
from lt_bench.data.lists import parse_list_file
from lt_bench.errors import ConfigError, DataError

CE = "experiment=cifar10_lt/ce"


def fast(max_examples: int):
    """Hypothesis settings for the 2-core budget: few examples, no deadline, no example database.

    ``LT_BENCH_HYPOTHESIS_SCALE=20`` multiplies the examples for a deeper (slower) search.
    """
    return settings(
        max_examples=max_examples * int(os.environ.get("LT_BENCH_HYPOTHESIS_SCALE", "1")),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def one_line(message: str) -> bool:
    return bool(message) and len(message.splitlines()) == 1


# --- the config under test ------------------------------------------------------------------------


@cache
def base() -> dict[str, Any]:
    """``compose([CE])`` as plain containers (composed once)."""
    return OmegaConf.to_container(compose([CE]))


def select(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def with_value(key: str, value: Any) -> dict[str, Any]:
    """The base config with ``key`` set to ``value`` and nothing else changed."""
    out = copy.deepcopy(base())
    *parents, leaf = key.split(".")
    node = out
    for part in parents:
        node = node[part]
    node[leaf] = value
    return out


def leaf_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            keys.extend(leaf_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def compose_error(overrides: list[str]) -> str:
    """The message of the ConfigError that ``compose(overrides)`` raises."""
    with pytest.raises(ConfigError) as info:
        compose(overrides)
    return str(info.value)


@cache
def trainer_arguments() -> frozenset[str]:
    from lightning import Trainer

    return frozenset(inspect.signature(Trainer.__init__).parameters) - {"self", "logger", "callbacks"}


def yaml_constructor_crashes(text: str) -> bool:
    """Whether ``load_yaml(text)`` fails with something other than a YAMLError.

    That is the bug kept by ``test_compose_raises_only_config_error``.
    """
    try:
        load_yaml(text)
    except yaml.YAMLError:
        return False
    except Exception:
        return True
    return False


# --- config strategies ----------------------------------------------------------------------------

FLOAT_KEYS = ("optim.lr", "optim.weight_decay", "optim.momentum", "schedule.gamma", "schedule.min_lr")
POSITIVE_INT_KEYS = ("trainer.max_epochs", "data.batch_size", "data.eval_batch_size")
INT_KEYS = ("seed", "schedule.warmup_epochs", "data.crop_padding", *POSITIVE_INT_KEYS)
SEED_MAX = 2**32 - 1  # numpy / lightning.seed_everything accept seeds in [0, 2**32 - 1]
SECTIONS = ("data", "optim", "schedule", "evaluation", "logger", "dataset", "method", "backbone")

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
#: learning rates, momenta, weight decays and schedule values are never negative (SGD's own rule)
nonnegative_floats = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)


@st.composite
def float_texts(draw: st.DrawFn) -> str:
    """How a researcher writes a non-negative float: 0.1, 1e-3, 2.5E-4, 1e+20, 5., 3.0e-05 ..."""
    style = draw(st.sampled_from(["repr", "e", "E", "g", "fixed", "mantissa"]))
    if style == "mantissa":
        mantissa = draw(st.sampled_from(["1", "2.5", "5.", "0.3", "12", "1.25"]))
        sign = draw(st.sampled_from(["", "-", "+"]))
        return f"{mantissa}{draw(st.sampled_from('eE'))}{sign}{draw(st.integers(0, 30))}"
    x = draw(nonnegative_floats)
    digits = draw(st.integers(1, 17))
    return {
        "repr": repr(x),
        "e": f"{x:.{digits}e}",
        "E": f"{x:.{digits}E}",
        "g": f"{x:.{digits}g}",
        "fixed": f"{x:.{min(digits, 8)}f}",
    }[style]


def int_text(n: int, plus: bool) -> str:
    return f"+{n}" if plus and n >= 0 else str(n)


identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)

# printable text on one line (no control characters or line/paragraph separators)
one_line_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)
# fmt: off
YAML_SNIPPETS = [
    "", "null", "~", "true", "no", "[]", "{}", "[1, 2]", "{a: 1}", "${seed}", "${nope}", "${",
    "2020-01-01", "!!binary x", "!!set {a}", "'quoted'", "&a [*a]", "inf", ".inf", ".nan", "0", "-1",
    "1e400", "010", "0x10", "1:30",
]
# fmt: on
yaml_like_values = st.one_of(
    one_line_text,
    st.text(alphabet="0123456789._-+eExob:[]{},'\"!$ ", max_size=8),
    st.sampled_from(YAML_SNIPPETS),
    finite_floats.map(repr),
    st.integers().map(str),
)


@cache
def known_keys() -> list[str]:
    """Real dotted keys of the composed config, their sections, and keys just below a leaf."""
    leaves = leaf_keys(base())
    extra = {"experiment", "trainer", "optim.lr.x", "schedule.milestones.0", "trainer.foo", "nope.x"}
    return sorted({*leaves, *SECTIONS, *extra})


known_key = st.deferred(lambda: st.sampled_from(known_keys()))


# --- config properties ----------------------------------------------------------------------------


@fast(30)
@given(key=st.sampled_from(FLOAT_KEYS), text=float_texts())
@example(key="optim.lr", text="1e-3")
@example(key="optim.weight_decay", text="2.5E-4")
@example(key="optim.lr", text="1e+20")
def test_float_override_round_trips_and_changes_nothing_else(key: str, text: str) -> None:
    """``key=<float text>`` sets exactly float(text) (as a number) and leaves every other key alone."""
    cfg = compose([CE, f"{key}={text}"])
    value = OmegaConf.select(cfg, key)
    assert isinstance(value, int | float) and not isinstance(value, bool)
    assert value == float(text)
    assert OmegaConf.to_container(cfg) == with_value(key, value)


@fast(25)
@given(key=st.sampled_from(INT_KEYS), n=st.integers(0, SEED_MAX), plus=st.booleans())
@example(key="seed", n=0, plus=False)
@example(key="seed", n=SEED_MAX, plus=True)
def test_int_override_round_trips(key: str, n: int, plus: bool) -> None:
    """``key=<int text>`` (``+`` allowed) sets exactly that int and leaves every other key alone."""
    assume(n > 0 or key not in POSITIVE_INT_KEYS)
    cfg = compose([CE, f"{key}={int_text(n, plus)}"])
    value = OmegaConf.select(cfg, key)
    assert type(value) is int and value == n
    assert OmegaConf.to_container(cfg) == with_value(key, n)


@fast(10)
@given(key=st.sampled_from(INT_KEYS), n=st.integers(1, 10**6), width=st.integers(2, 8))
@example(key="seed", n=10, width=3)
@example(key="trainer.max_epochs", n=8, width=2)
def test_zero_padded_int_keeps_its_decimal_value(key: str, n: int, width: int) -> None:
    """``seed=010`` (e.g. from ``printf %03d`` in a sweep script) is seed 10, never 8."""
    text = f"{n:0{width}d}"
    assume(text.startswith("0"))
    assert OmegaConf.select(compose([CE, f"{key}={text}"]), key) == int(text, 10)


@fast(15)
@given(key=st.sampled_from(FLOAT_KEYS), first=nonnegative_floats, last=nonnegative_floats)
def test_last_override_of_a_key_wins(key: str, first: float, last: float) -> None:
    """Appending ``key=b`` after ``key=a`` (as sweep scripts do) is the same as ``key=b`` alone."""
    assert compose([CE, f"{key}={first!r}", f"{key}={last!r}"]) == compose([CE, f"{key}={last!r}"])


@fast(25)
@given(section=st.sampled_from(("", *SECTIONS)), name=identifiers)
@example(section="optim", name="lrr")
@example(section="", name="sead")
def test_unknown_key_names_itself_and_the_valid_keys(section: str, name: str) -> None:
    """An unknown ``section.name`` fails with one line naming it and listing the section's keys."""
    siblings = select(base(), section) if section else base()
    assume(name not in siblings)
    assume(section or (name not in GROUPS and name != "experiment"))
    key = f"{section}.{name}" if section else name
    message = compose_error([CE, f"{key}=1"])
    assert one_line(message), message
    assert f"'{key}'" in message and "valid" in message
    prefix = f"{section}." if section else ""
    assert all(f"{prefix}{sibling}" in message for sibling in siblings)


@fast(10)
@given(name=identifiers)
@example(name="limit_train_batchez")
def test_unknown_trainer_argument_lists_lightnings_arguments(name: str) -> None:
    """``trainer.<name>`` that Lightning's Trainer does not take fails with one line listing those it takes.

    (The message lists Lightning Trainer's arguments as the valid keys.)
    """
    assume(name not in trainer_arguments() and name not in base()["trainer"])
    message = compose_error([CE, f"trainer.{name}=1"])
    assert one_line(message), message
    assert f"'trainer.{name}'" in message and "valid" in message and "max_epochs" in message


@fast(20)
@given(key=st.sampled_from(POSITIVE_INT_KEYS), n=st.integers(max_value=0), plus=st.booleans())
@example(key="trainer.max_epochs", n=0, plus=False)
@example(key="data.batch_size", n=-1, plus=False)
def test_non_positive_epochs_and_batch_sizes_fail(key: str, n: int, plus: bool) -> None:
    """max_epochs / batch_size / eval_batch_size <= 0 is a one-line ConfigError naming the key."""
    message = compose_error([CE, f"{key}={int_text(n, plus)}"])
    assert one_line(message) and key in message and "positive" in message, message


@fast(15)
@given(key=st.sampled_from(POSITIVE_INT_KEYS + ("seed",)), x=finite_floats)
@example(key="trainer.max_epochs", x=200.0)
def test_integer_keys_reject_floats(key: str, x: float) -> None:
    """An integer key given a float (even 200.0 or 1e2) fails instead of truncating silently."""
    message = compose_error([CE, f"{key}={x!r}"])
    assert one_line(message) and key in message, message


@fast(30)
@given(arg=one_line_text.filter(lambda s: "=" not in s) | one_line_text.map(lambda s: f"={s}"))
@example(arg="seed")
@example(arg="")
def test_argument_without_key_and_equals_sign_fails(arg: str) -> None:
    """An argument that is not ``key=value`` (no ``=``, or nothing before it) is a one-line ConfigError."""
    message = compose_error([CE, arg])
    assert one_line(message) and "key=value" in message, message


@fast(10)
@given(key=known_key, value=yaml_like_values)
@example(key="optim.lr", value="0b_")
@example(key="seed", value="0x_")
@example(key="optim.lr", value="._")
@example(key="run_id", value="[-._]")
@example(key="run_id", value="!!int x")
@example(key="run_id", value="!!timestamp x")
def test_compose_raises_only_config_error(key: str, value: str) -> None:
    """No KeyError / ValueError / omegaconf exception leaks out of compose for ``<known key>=<any text>``."""
    with contextlib.suppress(ConfigError):
        compose([CE, f"{key}={value}"])


@fast(50)
@given(key=known_key, value=yaml_like_values)
@example(key="schedule.milestones.0", value="5")
@example(key="optim.lr.x", value="1")
@example(key="run_id", value="${nope}")
@example(key="run_id", value="2020-01-01")
@example(key="optim", value="{lr: 0.5}")
@example(key="dataset.imbalance_factor", value="1e400")
@example(key="method.name", value="null")
def test_compose_either_fails_cleanly_or_validates(key: str, value: str) -> None:
    """``<known key>=<any one-line text>``: a one-line ConfigError, or a config that validates.

    Inputs that hit the PyYAML constructor bug (``test_compose_raises_only_config_error``) are skipped.
    """
    assume(not yaml_constructor_crashes(value))
    try:
        cfg = compose([CE, f"{key}={value}"])
    except ConfigError as exc:
        assert one_line(str(exc)), str(exc)
        return
    assert isinstance(cfg, DictConfig)
    validate(cfg)
    for positive in POSITIVE_INT_KEYS:
        assert type(OmegaConf.select(cfg, positive)) is int and OmegaConf.select(cfg, positive) > 0
    assert OmegaConf.to_container(cfg, resolve=False) == OmegaConf.to_container(cfg, resolve=True)


@fast(10)
@given(seed=st.integers(max_value=-1) | st.integers(min_value=SEED_MAX + 1))
@example(seed=-1)
@example(seed=2**32)
def test_seed_outside_numpys_range_is_a_config_error(seed: int) -> None:
    """``seed=-1`` or ``seed=2**32`` fails at compose, not when the run seeds numpy."""
    message = compose_error([CE, f"seed={seed}"])
    assert one_line(message) and "seed" in message, message


@fast(20)
@given(key=st.sampled_from(["optim.lr", "optim.momentum", "optim.weight_decay"]), x=finite_floats)
@example(key="optim.lr", x=-0.1)
@example(key="optim.momentum", x=0.0)
def test_composed_optim_values_build_an_sgd_optimizer(key: str, x: float) -> None:
    """Whatever optim values compose accepts (here with nesterov on), torch.optim.SGD accepts too."""
    try:
        optim = compose([CE, "optim.nesterov=true", f"{key}={x!r}"]).optim
    except ConfigError:
        return
    parameter = torch.nn.Parameter(torch.zeros(1))
    torch.optim.SGD(
        [parameter],
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        nesterov=optim.nesterov,
    )


@st.composite
def section_mappings(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A section and new values for some of its keys (same types as the base values)."""
    section = draw(st.sampled_from(["optim", "data", "schedule", "evaluation", "logger", "trainer"]))
    keys = draw(st.lists(st.sampled_from(sorted(base()[section])), min_size=1, unique=True))
    values: dict[str, Any] = {}
    for key in keys:
        old = base()[section][key]
        if isinstance(old, bool):
            values[key] = draw(st.booleans())
        elif isinstance(old, int | float):
            values[key] = draw(st.integers(1, 1000))
        elif isinstance(old, list):
            values[key] = draw(st.lists(st.integers(0, 300), max_size=3))
        else:
            values[key] = old
    return section, values


@fast(10)
@given(section_values=section_mappings())
@example(section_values=("optim", {"lr": 0.5}))
@example(section_values=("logger", {"csv": False}))
def test_mapping_override_equals_its_dotted_overrides(section_values: tuple[str, dict[str, Any]]) -> None:
    """``optim={lr: 0.5}`` resolves like ``optim.lr=0.5`` (the other optim keys stay); unknown keys fail."""
    section, values = section_values
    mapping = compose([CE, f"{section}={json.dumps(values)}"])
    dotted = compose([CE, *(f"{section}.{key}={json.dumps(value)}" for key, value in values.items())])
    assert mapping == dotted
    with pytest.raises(ConfigError, match="valid"):
        compose([CE, f"{section}={{not_a_key_of_{section}: 1}}"])


@fast(10)
@given(
    value=st.integers().map(str)
    | finite_floats.map(repr)
    | st.sampled_from(["true", "abc", "{a: 1}", "'160,180'"])
)
@example(value="5")
@example(value="{a: 1}")
def test_list_valued_key_rejects_non_lists(value: str) -> None:
    """``schedule.milestones`` takes a list (``[160,180]``); a number, word or mapping is a ConfigError."""
    message = compose_error([CE, f"schedule.milestones={value}"])
    assert one_line(message) and "schedule.milestones" in message, message


@fast(5)
@given(group=st.sampled_from(["experiment", "dataset", "method", "backbone"]), length=st.integers(256, 600))
@example(group="dataset", length=300)
def test_overlong_group_name_is_a_config_error(group: str, length: int) -> None:
    """``dataset=<300 characters>`` (e.g. a mangled sweep argument) is an unknown name, not an OSError."""
    message = compose_error([CE, f"{group}={'a' * length}"])
    assert one_line(message) and "valid" in message


@st.composite
def valid_override_lists(draw: st.DrawFn) -> list[str]:
    """A valid override list: an experiment, group choices and dotted overrides of distinct keys."""
    overrides = [f"experiment={draw(st.sampled_from(['cifar10_lt/ce', 'cifar100_lt/ldam_drw']))}"]
    groups = {
        "method": ["ce", "balanced_softmax", "ldam_drw"],
        "backbone": ["resnet32", "small_cnn"],
        "dataset": ["cifar10_lt", "cifar100_lt", "fashion_mnist_lt"],
    }
    for group, names in groups.items():
        if draw(st.booleans()):
            overrides.append(f"{group}={draw(st.sampled_from(names))}")
    dotted = {
        "seed": st.integers(0, SEED_MAX).map(str),
        "optim.lr": float_texts(),
        "optim.nesterov": st.sampled_from(["true", "false"]),
        "trainer.max_epochs": st.integers(1, 1000).map(str),
        "data.batch_size": st.integers(1, 4096).map(str),
        "dataset.imbalance_factor": st.integers(1, 500).map(str),
        "schedule.milestones": st.lists(st.integers(0, 300), max_size=3).map(str),
        "run_id": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
        "trainer.limit_train_batches": st.integers(1, 10).map(str),
    }
    for key in draw(st.lists(st.sampled_from(sorted(dotted)), unique=True, max_size=5)):
        overrides.append(f"{key}={draw(dotted[key])}")
    return overrides


@fast(15)
@given(overrides=valid_override_lists(), data=st.data())
def test_order_of_overrides_does_not_matter(overrides: list[str], data: st.DataObject) -> None:
    """Any permutation of group choices and (distinct) dotted overrides resolves to the same config."""
    shuffled = data.draw(st.permutations(overrides))
    assert compose(shuffled) == compose(overrides)


# --- list files -----------------------------------------------------------------------------------

# non-whitespace printable characters (everything str.isspace() is in these categories)
path_chars = st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"))
list_paths = st.text(path_chars, min_size=1, max_size=25) | st.lists(
    st.text(st.sampled_from(string.ascii_letters + string.digits + "_-.,()'&"), min_size=1),
    min_size=1,
    max_size=4,
).map(lambda parts: "/".join(parts) + ".jpg")
INT64_MAX = int(np.iinfo(np.int64).max)
labels_ge0 = st.integers(0, 10_000) | st.integers(0, INT64_MAX)
entries = st.lists(st.tuples(list_paths, labels_ge0), min_size=1, max_size=20)
newlines = st.sampled_from(["\n", "\r\n"])
trailing_whitespace = st.text(st.sampled_from(" \t"), max_size=3)
HUGE_LABEL = re.compile(r"(?<![0-9])[0-9]{19,}")  # int64 overflow (bug below)


@pytest.fixture(scope="module")
def list_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file path per test module, rewritten by every example."""
    return tmp_path_factory.mktemp("lists") / "list.txt"


@st.composite
def list_texts(draw: st.DrawFn, lines: list[str]) -> str:
    """``lines`` with per-line trailing whitespace and LF / CRLF endings, maybe blank lines at the end."""
    out = ""
    for line in lines:
        out += line + draw(trailing_whitespace) + draw(newlines)
    if not draw(st.booleans()):  # no final line break
        out = out.rstrip("\r\n")
    return out + "".join(draw(trailing_whitespace) + draw(newlines) for _ in range(draw(st.integers(0, 2))))


@fast(40)
@given(pairs=entries, allow_open=st.booleans(), data=st.data())
def test_list_file_round_trips(
    list_file: Path, pairs: list[tuple[str, int]], allow_open: bool, data: st.DataObject
) -> None:
    """Written ``path label`` lines (LF/CRLF, trailing whitespace, blank final lines) parse back exactly."""
    if allow_open:  # open-set lists also hold -1
        pairs = [(p, data.draw(st.sampled_from([label, -1]))) for p, label in pairs]
    text = data.draw(list_texts([f"{p} {label}" for p, label in pairs]))
    list_file.write_bytes(text.encode("utf-8"))
    paths, labels = parse_list_file(list_file, allow_open=allow_open)
    assert paths == [p for p, _ in pairs]
    assert labels.dtype == np.int64 and labels.tolist() == [label for _, label in pairs]


@st.composite
def malformed_lines(draw: st.DrawFn, allow_open: bool) -> tuple[str, bool]:
    """A line that is not ``<path> <label>``, and whether it is blank (only malformed mid-file)."""
    path, label = draw(list_paths), draw(st.integers(0, 10_000))
    not_int = st.sampled_from(["1.0", "1e3", "+1", "x", "0x1", "1_0", "٣", "--1", "1-", "一"]) | st.text(
        path_chars, min_size=1, max_size=5
    ).filter(lambda s: not re.fullmatch(r"-?[0-9]+", s))
    lowest_ok = -1 if allow_open else 0
    kinds = {
        "two spaces": f"{path}  {label}",
        "missing label": f"{path}{draw(st.sampled_from(['', ' ']))}",
        "non-integer label": f"{path} {draw(not_int)}",
        "extra field": f"{path} {label} {draw(st.text(path_chars, min_size=1, max_size=5))}",
        "negative label": f"{path} {draw(st.integers(max_value=lowest_ok - 1))}",
        "leading space": f" {path} {label}",
        "tab separator": f"{path}\t{label}",
        "no path": f" {label}",
        "blank": draw(trailing_whitespace),
    }
    kind = draw(st.sampled_from(sorted(kinds)))
    return kinds[kind], kind == "blank"


@fast(50)
@given(pairs=entries, allow_open=st.booleans(), data=st.data())
def test_malformed_line_is_named_by_its_line_number(
    list_file: Path, pairs: list[tuple[str, int]], allow_open: bool, data: st.DataObject
) -> None:
    """One malformed line at a random position: one-line DataError naming the file and that line."""
    bad, blank = data.draw(malformed_lines(allow_open))
    lines = [f"{p} {label}" for p, label in pairs]
    position = data.draw(st.integers(0, len(lines) - 1 if blank else len(lines)))
    lines.insert(position, bad)
    list_file.write_bytes(data.draw(list_texts(lines)).encode("utf-8"))
    with pytest.raises(DataError) as info:
        parse_list_file(list_file, allow_open=allow_open)
    message = str(info.value)
    assert one_line(message), message
    assert f"{list_file} line {position + 1}:" in message


@fast(5)
@given(label=st.integers(INT64_MAX + 1, 10**40))
@example(label=99_999_999_999_999_999_999)
def test_label_beyond_int64_is_a_data_error(list_file: Path, label: int) -> None:
    """A label too large for int64 (a corrupt list) is a DataError naming its line, not an OverflowError."""
    list_file.write_text(f"train/a/1.jpg 0\ntrain/a/2.jpg {label}\n")
    with pytest.raises(DataError, match="line 2:"):
        parse_list_file(list_file)


@fast(50)
@given(
    content=st.binary(max_size=200)
    | st.text(max_size=200).map(lambda s: s.encode("utf-8"))
    | st.text("ab/. -019\t\r\n", max_size=60).map(str.encode),
    allow_open=st.booleans(),
)
@example(content=b"", allow_open=False)
@example(content=b"\xff\xfe", allow_open=False)
@example(content=b"a 1\n\n\nb 2", allow_open=False)
@example(content=b"a -1\r\n", allow_open=True)
@example(content=b"\r 0", allow_open=False)  # a lone CR ends a line, as universal newlines do
def test_parse_list_file_raises_only_data_error(list_file: Path, content: bytes, allow_open: bool) -> None:
    """Any file content: a one-line DataError, or paths and int64 labels that fit the list format.

    Contents with a 19+ digit label are skipped (``test_label_beyond_int64_is_a_data_error``).
    """
    assume(not HUGE_LABEL.search(content.decode("utf-8", errors="replace")))
    list_file.write_bytes(content)
    try:
        paths, labels = parse_list_file(list_file, allow_open=allow_open)
    except DataError as exc:
        assert one_line(str(exc)), str(exc)
        return
    assert len(paths) == len(labels) > 0 and labels.dtype == np.int64
    assert all(p and " " not in p and "\n" not in p and "\r" not in p for p in paths)
    assert labels.min() >= (-1 if allow_open else 0)
