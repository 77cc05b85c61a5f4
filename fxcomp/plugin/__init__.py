"""Plugins: the hooks they implement, the registry they fill, and the host that loads them."""

from fxcomp.plugin.hookspecs import hookimpl, hookspec
from fxcomp.plugin.host import DISABLE_ENV, PluginInfo, Plugins, load_plugins
from fxcomp.plugin.registry import Entry, Registry

__all__ = ["DISABLE_ENV", "Entry", "PluginInfo", "Plugins", "Registry", "hookimpl", "hookspec", "load_plugins"]
