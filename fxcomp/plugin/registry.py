"""The tables the registration hooks fill, with type checks and conflict rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from fxcomp.analysis.rules import check_rule
from fxcomp.errors import PluginError
from fxcomp.passes.base import Pass
from fxcomp.plugin.hookspecs import HOOK_KINDS


RESERVED_PASS_NAMES = ("lower",)
"""Recipe step names that are not passes (``lower`` ends a recipe by lowering its result)."""

BUILT_IN_BACKENDS = ("eager", "inductor")
"""Lowering backends fxcomp provides itself (no registered lowerings)."""

INDUCTOR_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""The ``torch.compile`` modes the ``inductor`` backend accepts."""


@dataclass(frozen=True)
class Entry:
    """One registered thing and the plugin that registered it."""

    key: Any
    value: Any
    plugin: str


def describe_key(key: Any) -> str:
    """A readable name for a registry key (a string, a class, a function or a tuple of those)."""
    if isinstance(key, tuple):
        return "/".join(describe_key(part) for part in key)
    if isinstance(key, str):
        return key
    module = getattr(key, "__module__", None)
    name = getattr(key, "__qualname__", None) or getattr(key, "__name__", repr(key))
    return f"{module}.{name}" if module else name


@dataclass
class Registry:
    """Everything the loaded plugins registered, one table per hook."""

    passes: dict[str, Entry] = field(default_factory=dict)
    importance: dict[str, Entry] = field(default_factory=dict)
    channel_rules: dict[Any, Entry] = field(default_factory=dict)
    lowerings: dict[tuple[str, str], Entry] = field(default_factory=dict)
    checks: dict[str, Entry] = field(default_factory=dict)
    serializables: dict[Any, Entry] = field(default_factory=dict)

    def _add(self, kind: str, key: Any, value: Any, plugin: str) -> None:
        table: dict[Any, Entry] = getattr(self, kind)
        if key in table:
            first = table[key].plugin
            raise PluginError(
                f"plugins '{first}' and '{plugin}' both register {kind} '{describe_key(key)}'; "
                f"disable one of them with FXCOMP_DISABLE_PLUGINS={plugin}"
            )
        table[key] = Entry(key, value, plugin)

    def registrar(self, kind: str, plugin: str) -> Callable[..., None]:
        """The ``register`` callable handed to ``plugin``'s implementation of the hook filling ``kind``."""

        def bad(what: str) -> PluginError:
            return PluginError(f"plugin '{plugin}' registered {kind} with {what}")

        def register_pass(pass_class: Any) -> None:
            if not (isinstance(pass_class, type) and issubclass(pass_class, Pass)):
                raise bad(f"{pass_class!r}, which is not a subclass of fxcomp.Pass")
            name = getattr(pass_class, "name", None)
            if not isinstance(name, str) or not name.isidentifier():
                raise bad(f"class {pass_class.__name__} whose `name` is not an identifier: {name!r}")
            if name in RESERVED_PASS_NAMES:
                raise bad(f"class {pass_class.__name__} named {name!r}, which recipes reserve for their last step")
            self._add(kind, name, pass_class, plugin)

        def register_named(name: Any, value: Any) -> None:
            if not isinstance(name, str) or not name:
                raise bad(f"a name that is not a non-empty string: {name!r}")
            if not callable(value):
                raise bad(f"'{name}' bound to {value!r}, which is not callable")
            self._add(kind, name, value, plugin)

        def register_channel_rule(target: Any, rule: Any) -> None:
            if not (isinstance(target, str) or callable(target)):
                raise bad(f"target {target!r}: give a module class, a function or a method name")
            problem = check_rule(rule)
            if problem is not None:
                raise bad(f"'{describe_key(target)}' bound to {problem}")
            self._add(kind, target, rule, plugin)

        def register_lowering(backend: Any, name: Any, lowering: Any) -> None:
            if not isinstance(backend, str) or not isinstance(name, str) or not backend or not name:
                raise bad(f"backend {backend!r} and pattern {name!r}: both must be non-empty strings")
            if backend in BUILT_IN_BACKENDS:
                raise bad(f"backend {backend!r}, which is built in; register kernels under a backend of their own")
            from fxcomp.lowering.base import Lowering  # here: fxcomp.lowering imports the plugin host

            if not isinstance(lowering, Lowering):
                raise bad(f"'{backend}/{name}' bound to {lowering!r}, which is not an fxcomp.Lowering instance")
            self._add(kind, (backend, name), lowering, plugin)

        def register_serializable(obj: Any) -> None:
            is_module_class = isinstance(obj, type) and issubclass(obj, nn.Module)
            if not is_module_class and not callable(obj):
                raise bad(f"{obj!r}: give an nn.Module subclass or a function")
            # Saved files name it by module and qualified name, and load finds it again by that name.
            module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
            if not isinstance(module, str) or not isinstance(name, str):
                raise bad(f"{obj!r}, which has no module-level name: give the function or class itself, not an instance or a partial")
            if "<" in name:
                raise bad(f"{module}.{name}: give a function or class defined at module level; a lambda or a local one has no name to load it by")
            self._add(kind, obj, obj, plugin)

        registrars: dict[str, Callable[..., None]] = {
            "passes": register_pass,
            "importance": register_named,
            "channel_rules": register_channel_rule,
            "lowerings": register_lowering,
            "checks": register_named,
            "serializables": register_serializable,
        }
        return registrars[kind]

    def backends(self) -> list[str]:
        """The lowering backends: the built-in ones, then those plugins registered lowerings for."""
        return [*BUILT_IN_BACKENDS, *sorted({backend for backend, _ in self.lowerings})]

    def registered_by(self, plugin: str) -> dict[str, list[str]]:
        """What ``plugin`` registered: kind → readable keys."""
        found: dict[str, list[str]] = {}
        for kind in HOOK_KINDS.values():
            keys = [describe_key(e.key) for e in getattr(self, kind).values() if e.plugin == plugin]
            if keys:
                found[kind] = keys
        return found
