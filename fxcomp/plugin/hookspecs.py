"""The hooks a plugin can implement.

Every hook is a registration hook: it receives one ``register`` callable and
calls it once per thing it contributes. The host owns the tables, so it can
check types, attribute each entry to its plugin and refuse conflicts. Hooks are
called with keyword arguments only, so a hook can grow arguments without
breaking existing plugins.

A plugin is a module (or any object) with functions marked by
:data:`fxcomp.hookimpl`, exposed through the ``fxcomp`` entry-point group::

    [project.entry-points.fxcomp]
    my_plugin = "my_package.fxcomp_plugin"

The entry-point name is the plugin's name: ``FXCOMP_DISABLE_PLUGINS=my_plugin``
blocks it, and error messages name it.
"""

from __future__ import annotations

from collections.abc import Callable
import pluggy

PROJECT = "fxcomp"
"""Names the hook markers and the entry-point group plugins are found through."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def fxcomp_register_passes(register: Register) -> None:
    """Contribute compression passes.

    Call ``register(pass_class)`` once per pass, where ``pass_class`` is a
    subclass of :class:`fxcomp.Pass` with a unique ``name``. Recipes refer to
    the pass by that name. Two plugins registering the same name is an error
    (:class:`fxcomp.PluginError` naming both).
    """


@hookspec
def fxcomp_register_importance(register: Register) -> None:
    """Contribute channel-importance criteria for structured pruning.

    Call ``register(name, criterion)``. Pruning passes look criteria up by the
    name given in their ``importance`` option and call
    ``criterion(groups, gm, context)`` with the prunable
    :class:`fxcomp.ChannelGroup` s of ``gm`` and the pass's
    :class:`fxcomp.PassContext` (its ``calib_data`` feeds data-driven criteria).
    It returns one 1-D tensor per group with a score per channel; the lowest
    scored channels are removed first. Seeing all groups at once lets a
    criterion run the calibration data once.
    """


@hookspec
def fxcomp_register_channel_rules(register: Register) -> None:
    """Teach the dependency analyzer how channels flow through a module type or function.

    Call ``register(target, kind)`` where ``target`` is an ``nn.Module``
    subclass (matched by exact type), a function, or a tensor method name, and
    ``kind`` is one of ``fxcomp.analysis.RULE_KINDS``:

    * ``"elementwise"``: tensor and parameter arguments broadcast together and
      channels meeting at one position merge (activations, gating, dropout);
    * ``"spatial"``: the first tensor argument's channels (axis 1) pass through
      while other axes change size (pooling, resizing);
    * ``"movement"``: the op only moves or selects elements (permutes, views);
      the analyzer runs the op itself on integer channel labels. The op must move
      or select channels the same way whatever their count: ``torch.roll`` over
      channels is no movement op here (its wrap-around shifts when channels go).

    :func:`fxcomp.analyze` consults these rules before its own; an op with no
    rule is treated conservatively: the channel groups it touches are pinned
    and reported, never guessed.
    """


@hookspec
def fxcomp_register_lowerings(register: Register) -> None:
    """Contribute lowerings of graph patterns to kernels.

    Call ``register(backend, name, lowering)``: ``backend`` names the backend the kernel
    belongs to (e.g. ``"triton"``; ``"eager"`` and ``"inductor"`` are built in), ``name``
    the pattern, and ``lowering`` is an :class:`fxcomp.Lowering` instance that matches the
    pattern's occurrences and builds the kernel module replacing each.
    ``fxcomp.lower(gm, backend=...)`` applies the backend's lowerings, checks every
    replacement against the values it replaces, and reports the layers no lowering
    matched (they stay as they are).
    """


@hookspec
def fxcomp_register_checks(register: Register) -> None:
    """Contribute verification checks run after every pass.

    Call ``register(name, check)``. After each pass has rewritten the graph
    and the built-in checks (lint, shapes, a forward run, output structure,
    exactness) have passed, ``check(gm, context)`` is called with the rewritten
    ``GraphModule`` and a :class:`fxcomp.CheckContext`. It returns ``None`` or
    an empty list when the graph is fine, otherwise a list of problem
    descriptions; compression then stops with :class:`fxcomp.PassError` naming
    the pass, the check and the first problem. Each check also runs once on the
    model before the first pass (``context.pass_name`` is then ``None``); ``context.state`` is its own dict for the
    whole ``compress`` call, so it can compare values of its own (an early
    exit's logits) with the pass's ``context.tolerance``.
    """


@hookspec
def fxcomp_register_serializables(register: Register) -> None:
    """Allow module classes and functions in files written by :func:`fxcomp.save`.

    Call ``register(obj)`` with an ``nn.Module`` subclass or a function that
    the graphs your passes produce contain, defined at module level (files name it
    by module and qualified name). :func:`fxcomp.load` instantiates
    or calls only allow-listed objects, so a file can never run anything else.
    """


HOOK_KINDS: dict[str, str] = {
    "fxcomp_register_passes": "passes",
    "fxcomp_register_importance": "importance",
    "fxcomp_register_channel_rules": "channel_rules",
    "fxcomp_register_lowerings": "lowerings",
    "fxcomp_register_checks": "checks",
    "fxcomp_register_serializables": "serializables",
}
"""Each registration hook and the name of the registry table it fills."""
