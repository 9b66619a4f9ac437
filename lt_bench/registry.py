"""Name -> factory registries for methods, datasets and backbones, with entry-point plugins.

A factory registers itself with a decorator (as timm's ``register_model`` does)::

    @register_method("ce")
    class CrossEntropy(BaseMethod): ...

Third-party packages add factories without editing lt-bench through the entry-point groups
``lt_bench.methods``, ``lt_bench.datasets`` and ``lt_bench.backbones``: the entry point's name is the
registered name and its object the factory.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from lt_bench.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

# Modules whose import registers the built-in factories of each kind.
_BUILTIN_MODULES = {
    "methods": "lt_bench.methods",
    "datasets": "lt_bench.data.catalog",
    "backbones": "lt_bench.models",
}


class Registry:
    """Records factories under short names; lookup errors list the valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._loaded = False

    def register(self, name: str, **meta: Any) -> Callable[[F], F]:
        """Decorator recording ``factory`` under ``name`` with optional metadata."""

        def decorator(factory: F) -> F:
            self.add(name, factory, **meta)
            return factory

        return decorator

    def add(self, name: str, factory: Callable[..., Any], **meta: Any) -> None:
        if name in self._entries and self._entries[name] is not factory:
            warnings.warn(f"{self.kind} '{name}' registered twice; the later one wins", stacklevel=3)
        self._entries[name] = factory
        self._meta[name] = meta

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(_BUILTIN_MODULES[self.kind])
        for ep in entry_points(group=f"lt_bench.{self.kind}"):
            if ep.name not in self._entries:
                self.add(ep.name, ep.load(), plugin=ep.value)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind[:-1]} '{name}'; valid names: {', '.join(self.names())}")
        return self._entries[name]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


METHODS = Registry("methods")
DATASETS = Registry("datasets")
BACKBONES = Registry("backbones")

register_method = METHODS.register
register_dataset = DATASETS.register
register_backbone = BACKBONES.register
