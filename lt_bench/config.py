"""Compose, override and validate run configs (omegaconf).

A run config is ``configs/run.yaml`` with three groups filled in from their folders
(``dataset``, ``method``, ``backbone``), then an experiment file, then command-line overrides::

    lt-bench run experiment=cifar10_lt/ce seed=1 trainer.max_epochs=5

``group=<name>`` picks a group file; ``a.b=value`` overrides a key. An experiment file may
``extends:`` other experiments, picks groups under ``defaults:`` and overrides only what differs.
Unknown keys and names fail at once with the list of valid ones; ``trainer.*`` keys are checked
against Lightning's ``Trainer`` arguments.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from lt_bench.data.profiles import check_imbalance_factor
from lt_bench.errors import ConfigError
from lt_bench.registry import BACKBONES, DATASETS, METHODS, Registry

GROUPS: dict[str, Registry] = {"dataset": DATASETS, "method": METHODS, "backbone": BACKBONES}
EXPERIMENT_KEYS = ("extends", "defaults", "runs")


def config_dir() -> Path:
    """``$LT_BENCH_CONFIG_DIR``, else the ``configs/`` folder of this checkout."""
    env = os.environ.get("LT_BENCH_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "configs"


class _YamlLoader(yaml.SafeLoader):
    """YAML with decimal-only numbers: ``1e-3`` is a float (as in omegaconf), ``010`` is 10 (not
    octal 8), and ``1:30`` is a string (not sexagesimal 90)."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9][0-9_]*$"), list("-+0123456789"))
_YamlLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_YamlLoader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node).replace("_", "")))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML ({exc.problem}); fix it") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values")
    return data


def _is_file(path: Path) -> bool:
    """``path.is_file()``, false for names the file system cannot hold (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def list_experiments() -> list[str]:
    root = config_dir() / "experiment"
    names = (p.relative_to(root).with_suffix("") for p in root.rglob("*.yaml"))
    return sorted(str(n) for n in names if not any(part.startswith("_") for part in n.parts))


def list_group(group: str) -> list[str]:
    """Names that ``group=<name>`` accepts: group files plus registered plugins (methods)."""
    files = {p.stem for p in (config_dir() / group).glob("*.yaml")}
    return sorted(files | ({*GROUPS[group].names()} if group == "method" else set()))


def load_group(group: str, name: str) -> dict[str, Any]:
    """The group file ``configs/<group>/<name>.yaml``, or a plugin method's ``default_config``."""
    path = config_dir() / group / f"{name}.yaml"
    if _is_file(path):
        data = _read_yaml(path)
    elif group == "method" and name in METHODS:
        data = dict(getattr(METHODS.get(name), "default_config", {}))
    else:
        raise ConfigError(f"unknown {group} '{name}'; valid names: {', '.join(list_group(group))}")
    data.setdefault("name", name)
    return data


def load_experiment(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """An experiment file merged over the experiments it ``extends`` (parents first)."""
    path = config_dir() / "experiment" / f"{name}.yaml"
    if not _is_file(path):
        raise ConfigError(f"unknown experiment '{name}'; valid experiments: {', '.join(list_experiments())}")
    if name in _seen:
        raise ConfigError(f"experiment '{name}' extends itself through {' -> '.join(_seen)}")
    body = _read_yaml(path)
    parents = body.pop("extends", []) or []
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = _deep_merge(merged, load_experiment(parent, (*_seen, name)))
    return _deep_merge(merged, body)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(args: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` arguments into group choices (``dataset=x``) and dotted overrides."""
    choices: dict[str, str] = {}
    dotted: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument '{arg}' is not key=value; write e.g. seed=1")
        if key in GROUPS or key == "experiment":
            choices[key] = value
        else:
            dotted.append(arg)
    return choices, dotted


def _valid_keys(node: Any, prefix: str) -> str:
    if isinstance(node, DictConfig | dict):
        return ", ".join(f"{prefix}{k}" for k in node)
    return "(none: not a mapping)"


def _apply(cfg: DictConfig, key: str, value: Any) -> None:
    """Set ``cfg.<key> = value`` if the key exists (trainer.* may be new) and the type fits."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        ancestor_key = parent_key
        while ancestor_key and not isinstance(OmegaConf.select(cfg, ancestor_key), DictConfig):
            ancestor_key = ancestor_key.rpartition(".")[0]
        ancestor = OmegaConf.select(cfg, ancestor_key) if ancestor_key else cfg
        prefix = f"{ancestor_key}." if ancestor_key else ""
        raise ConfigError(
            f"unknown config key '{key}'; '{parent_key}' is not a section; "
            f"valid keys here: {_valid_keys(ancestor, prefix)}"
        )
    if isinstance(value, dict) and isinstance(parent.get(leaf), DictConfig):
        for sub_key, sub_value in value.items():  # a mapping overrides key by key
            _apply(cfg, f"{key}.{sub_key}", sub_value)
        return
    if leaf not in parent:
        if parent_key == "trainer":
            _check_trainer_key(leaf)
        else:
            prefix = f"{parent_key}." if parent_key else ""
            raise ConfigError(f"unknown config key '{key}'; valid keys here: {_valid_keys(parent, prefix)}")
    else:
        _check_type(key, parent[leaf], value)
    with open_dict(parent):
        parent[leaf] = value


def _check_type(key: str, old: Any, new: Any) -> None:
    if isinstance(old, DictConfig | dict) and not isinstance(new, dict):
        raise ConfigError(
            f"{key} is a section, not a value; set one of its keys instead: {_valid_keys(old, key + '.')}"
        )
    if isinstance(old, ListConfig | list) and not isinstance(new, list):
        raise ConfigError(f"{key}={new!r} must be a list, e.g. {key}=[{', '.join(map(str, old))}]")
    if old is None or new is None or isinstance(old, DictConfig | ListConfig | dict | list):
        return
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise ConfigError(f"{key}={new!r} must be true or false")
    elif isinstance(old, int | float) and (isinstance(new, bool) or not isinstance(new, int | float)):
        raise ConfigError(f"{key}={new!r} must be a number")
    if isinstance(old, str) and isinstance(new, dict | list):
        raise ConfigError(f"{key} must be a single value, not {type(new).__name__}")


def _check_trainer_key(leaf: str) -> None:
    from lightning import Trainer

    allowed = set(inspect.signature(Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    if leaf not in allowed:
        raise ConfigError(
            f"unknown config key 'trainer.{leaf}'; valid keys here (Lightning Trainer arguments): "
            f"{', '.join(sorted(allowed))}"
        )


def _parse_value(text: str) -> Any:
    try:
        return load_yaml(text) if text != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read value '{text}' ({getattr(exc, 'problem', exc)}); quote it") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"cannot read value '{text}' ({exc}); quote it or write a plain value") from exc


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """The resolved run config for ``overrides`` (``key=value`` strings). Raises ConfigError."""
    choices, dotted = parse_overrides(overrides)
    base = _read_yaml(config_dir() / "run.yaml")
    experiment = choices.get("experiment") or base.get("experiment")
    body = load_experiment(experiment) if experiment else {}
    picked = {group: base[group] for group in GROUPS}
    picked.update(body.pop("defaults", {}) or {})
    picked.update({g: v for g, v in choices.items() if g in GROUPS})
    body.pop("runs", None)
    unknown = set(picked) - set(GROUPS)
    if unknown:
        raise ConfigError(f"experiment defaults name unknown groups {sorted(unknown)}; use {list(GROUPS)}")
    for group, name in picked.items():
        base[group] = load_group(group, name)
    base["experiment"] = experiment
    cfg = OmegaConf.create(base)
    try:
        for key, value in _flatten(body):
            _apply(cfg, key, value)
        for arg in dotted:
            key, _, text = arg.partition("=")
            _apply(cfg, key, _parse_value(text))
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {str(exc).splitlines()[0]}") from exc
    validate(cfg)
    return cfg


def experiment_runs(experiment: str) -> list[list[str]]:
    """The ``runs:`` list of a suite experiment (each a list of overrides), or ``[]``."""
    runs = load_experiment(experiment).get("runs") or []
    return [[str(item) for item in run] for run in runs]


#: ``train.compile`` modes: those that build no CUDA graphs of their own (the fast engine captures the step)
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def _validate_choices(cfg: DictConfig) -> None:
    """Keys that take one of a few words, checked before any data is loaded."""
    from lt_bench.data.augment import AUGMENTATIONS
    from lt_bench.schedules import SCHEDULES

    choices = {
        "resume": ("auto", True, False),
        "evaluation.checkpoint": ("last", "best_val"),
        "schedule.name": SCHEDULES,
        "optim.name": ("sgd",),
        "data.train_augment": AUGMENTATIONS,
        "train.nonfinite_loss": ("error", "skip"),
        "train.engine": ("auto", "fast", "lightning"),
        "train.cuda_graphs": (True, False),
        "train.channels_last": (True, False),
        "train.compile": (None, *COMPILE_MODES),
    }
    for key, valid in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in valid:
            words = ", ".join(str(v).lower() for v in valid)
            raise ConfigError(f"{key}={value!r} is not one of: {words}")


def _validate_optim(optim: DictConfig) -> None:
    """The rules of ``torch.optim.SGD``, checked before any data is loaded."""
    for key in ("lr", "momentum", "weight_decay"):
        value = optim.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"optim.{key}={value!r} must be a number >= 0")
    if optim.get("nesterov") and optim.momentum <= 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0")


def _validate_schedule(cfg: DictConfig) -> None:
    """Schedule rules that depend on the run length (BALMS's warm-up must end before the last epoch)."""
    from lt_bench.schedules import balms_cosine

    if cfg.schedule.name == "balms_cosine":
        balms_cosine(cfg.schedule.warmup_epochs, cfg.trainer.max_epochs, cfg.schedule.peak_factor)


def validate(cfg: DictConfig) -> None:
    """Reject values that cannot run: non-positive epochs or batch sizes, unknown names."""
    for key in ("trainer.max_epochs", "data.batch_size", "data.eval_batch_size"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed={cfg.seed!r} must be an integer in [0, 2**32)")
    _validate_optim(cfg.optim)
    _validate_choices(cfg)
    _validate_schedule(cfg)
    for group, registry in GROUPS.items():
        registry.get(cfg[group].name)
    imbalance = cfg.dataset.get("imbalance_factor")
    if imbalance is not None:
        if not isinstance(imbalance, int | float) or isinstance(imbalance, bool):
            raise ConfigError(f"dataset.imbalance_factor={imbalance!r} must be a number")
        check_imbalance_factor(imbalance)
