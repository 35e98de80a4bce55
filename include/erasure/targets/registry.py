"""The registry of target kinds: ``kind`` -> adapter. Built-in kinds register on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from erasure.targets.base import Spec, TargetAdapter
from erasure.vocab import Runner, TargetKind

if TYPE_CHECKING:
    from erasure.catalog import Target

BUILTIN_MODULES: tuple[str, ...] = tuple(f"erasure.targets.{k.value}" for k in TargetKind)
"""One module per built-in kind; importing it registers its adapter."""

_ADAPTERS: dict[str, TargetAdapter] = {}
_loaded = False


def register(adapter_cls: type[TargetAdapter]) -> type[TargetAdapter]:
    """Class decorator: register a kind's adapter (a second adapter for the same kind is an error)."""
    kind = str(adapter_cls.kind)
    existing = _ADAPTERS.get(kind)
    if existing is not None and type(existing) is not adapter_cls:
        raise ValueError(f"target kind '{kind}' is registered twice ({type(existing).__name__})")
    _ADAPTERS[kind] = adapter_cls()
    return adapter_cls


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for mod in BUILTIN_MODULES:
            importlib.import_module(mod)
        _loaded = True


def kinds() -> list[str]:
    """Every registered kind, sorted."""
    _load_builtins()
    return sorted(_ADAPTERS)


def adapter(kind: str) -> TargetAdapter:
    """The adapter of ``kind``; a ``KeyError`` naming the known kinds otherwise."""
    _load_builtins()
    try:
        return _ADAPTERS[kind]
    except KeyError:
        raise KeyError(f"unknown target kind '{kind}' (known: {sorted(_ADAPTERS)})") from None


def adapter_for(target: Target) -> TargetAdapter:
    return adapter(target.kind)


def spec_model(kind: str) -> type[Spec]:
    return adapter(kind).spec_model


def kind_of_spec(model: type[Spec]) -> str:
    """The kind whose catalog section ``model`` is (``model.__name__`` if none is registered)."""
    _load_builtins()
    return next((k for k, a in _ADAPTERS.items() if a.spec_model is model), model.__name__)


def kinds_run_by(runner: Runner) -> list[str]:
    """The kinds a stage of the pipeline erases (e.g. the dispatch DAG: ``Runner.DISPATCH``)."""
    _load_builtins()
    return sorted(k for k, a in _ADAPTERS.items() if a.runner == runner)
