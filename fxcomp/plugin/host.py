"""Finding, loading and checking plugins.

There is no global plugin manager: :func:`load_plugins` builds a fresh
:class:`Plugins` each time, and every API that needs plugins takes one as an
argument (loading them itself when none is given).
"""

from __future__ import annotations

import importlib.metadata
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pluggy

from fxcomp.errors import PluginError, first_line
from fxcomp.plugin import hookspecs
from fxcomp.plugin.hookspecs import HOOK_KINDS, PROJECT
from fxcomp.plugin.registry import Registry

DISABLE_ENV = "FXCOMP_DISABLE_PLUGINS"
"""Environment variable with a comma-separated list of plugin names to block."""


@dataclass(frozen=True)
class PluginInfo:
    """Where a loaded plugin came from and what it registered."""

    name: str
    distribution: str | None
    version: str | None
    registered: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Plugins:
    """The loaded plugins: the pluggy manager, the registry they filled, and their descriptions."""

    manager: pluggy.PluginManager
    registry: Registry
    infos: list[PluginInfo]
    blocked: tuple[str, ...] = ()


def _blocked_names(disable: Iterable[str] | None) -> tuple[str, ...]:
    if disable is None:
        disable = os.environ.get(DISABLE_ENV, "").split(",")
    return tuple(name.strip() for name in disable if name.strip())


def _register(manager: pluggy.PluginManager, plugin: object, name: str, origin: str) -> None:
    unmarked = _unmarked_hooks(plugin)
    if unmarked:
        raise PluginError(
            f"plugin '{name}' ({origin}) defines {unmarked[0]} without @fxcomp.hookimpl, so it would never be "
            "called; mark it"
        )
    if manager.has_plugin(name):
        raise PluginError(
            f"two plugins are named '{name}' (the second from {origin}); uninstall one of them "
            f"or block the name with {DISABLE_ENV}={name}"
        )
    if manager.is_registered(plugin):
        raise PluginError(
            f"plugin '{name}' ({origin}) is the same object as the already loaded plugin "
            f"'{manager.get_name(plugin)}'; register each plugin once"
        )
    try:
        manager.register(plugin, name=name)
    except pluggy.PluginValidationError as error:
        raise PluginError(f"plugin '{name}' ({origin}) is invalid: {first_line(error)}") from error


def _load_entry_points(manager: pluggy.PluginManager) -> dict[str, tuple[str | None, str | None]]:
    origins: dict[str, tuple[str | None, str | None]] = {}
    for entry_point in importlib.metadata.entry_points(group=PROJECT):
        name = entry_point.name
        if manager.is_blocked(name):
            continue
        dist = entry_point.dist
        dist_name, version = (dist.metadata["Name"], dist.version) if dist is not None else (None, None)
        origin = f"distribution {dist_name} {version}" if dist_name else f"entry point {entry_point.value}"
        try:
            plugin = entry_point.load()
        except Exception as error:  # noqa: BLE001 - any import failure is the plugin's
            raise PluginError(
                f"plugin '{name}' ({origin}) failed to import: {first_line(error)}; fix it or block it with {DISABLE_ENV}={name}"
            ) from error
        _register(manager, plugin, name, origin)
        origins[name] = (dist_name, version)
    return origins


def _fill_registry(manager: pluggy.PluginManager) -> Registry:
    registry = Registry()
    for hook_name, kind in HOOK_KINDS.items():
        # Each implementation is called on its own so that every entry is attributed to its plugin.
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            register = registry.registrar(kind, impl.plugin_name)
            try:
                returned = impl.function(**{arg: register for arg in impl.argnames})
            except PluginError:
                raise
            except Exception as error:  # noqa: BLE001 - a crashing hook is the plugin's fault
                raise PluginError(
                    f"plugin '{impl.plugin_name}' failed in {hook_name}: {first_line(error)}; fix it or block it "
                    f"with {DISABLE_ENV}={impl.plugin_name}"
                ) from error
            side_effects = isinstance(returned, (list, tuple)) and all(item is None for item in returned)  # [register(x) ...]
            if returned is not None and not side_effects:
                raise PluginError(
                    f"plugin '{impl.plugin_name}' returned {type(returned).__name__} from {hook_name}, which fxcomp "
                    "ignores; call register(...) for each entry instead"
                )
    return registry


def _unmarked_hooks(plugin: object) -> list[str]:
    """Names of ``plugin``'s functions named like fxcomp's hooks but not marked with ``@fxcomp.hookimpl``."""
    names = [name for name in dir(plugin) if name in HOOK_KINDS or name.startswith("fxcomp_register_")]
    return [name for name in names if not hasattr(getattr(plugin, name, None), f"{PROJECT}_impl")]


def load_plugins(
    *,
    entry_points: bool = True,
    disable: Iterable[str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> Plugins:
    """Load plugins and collect what they register.

    Args:
        entry_points: load the plugins installed under the ``fxcomp`` entry-point group
            (the built-in ones are registered there too).
        disable: plugin names to block; defaults to the comma-separated
            ``FXCOMP_DISABLE_PLUGINS`` environment variable.
        extra: more plugins by name, e.g. a module defined in a notebook or a test.

    Raises :class:`fxcomp.PluginError` when a plugin fails to import, implements a
    misspelled hook, or registers something another plugin already registered.
    """
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    blocked = _blocked_names(disable)
    for name in blocked:
        manager.set_blocked(name)
    origins = _load_entry_points(manager) if entry_points else {}
    for name, plugin in (extra or {}).items():
        if not manager.is_blocked(name):
            origin = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__name__
            _register(manager, plugin, name, f"object {origin}")
            origins[name] = (None, None)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(
            f"plugin '{manager.get_name(error.plugin)}' implements a hook fxcomp does not define: {error}; "
            "check the spelling against fxcomp.plugin.hookspecs"
        ) from error
    registry = _fill_registry(manager)
    infos = [
        PluginInfo(name, dist, version, registry.registered_by(name))
        for name, (dist, version) in origins.items()
    ]
    return Plugins(manager=manager, registry=registry, infos=infos, blocked=blocked)
