"""Stable qualified names for graph nodes.

A node's qualified name maps it back to the original model: a module call is
named by the module's path (``layer1.0.conv1``), a function or method call by
the path of the module whose ``forward`` made it plus the operation
(``layer1.0.add``). A second call of the same module or operation in the same
scope gets a suffix (``layer1.0.relu_1``). Names are assigned once, right after
tracing, and survive rewrites, so a name in a plan or a report always refers to
the same place in the user's model.
"""

from __future__ import annotations

import re

import torch.fx as fx
import torch.nn as nn

QUALNAME = "fxcomp_qualname"
"""``node.meta`` key holding the node's qualified name."""

_COUNTER_SUFFIX = re.compile(r"_\d+$")


def modules_by_path(gm: nn.Module) -> dict[str, nn.Module]:
    """Every submodule of ``gm`` (itself under '') by its path, as ``call_module`` and ``get_attr``
    targets name them; a module reachable by several paths is listed under each."""
    return dict(gm.named_modules(remove_duplicate=False))


def scope_of(node: fx.Node) -> str:
    """Path of the module whose ``forward`` created ``node`` ('' for the root)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path, _module_type = next(reversed(stack.values()))
    if node.op == "call_module":
        # The innermost entry is the called module itself; its scope is the parent.
        return path.rpartition(".")[0]
    return path


def _base_name(node: fx.Node) -> str:
    if node.op in ("call_module", "get_attr"):
        return str(node.target)
    if node.op in ("placeholder", "output"):
        return node.name
    operation = _COUNTER_SUFFIX.sub("", node.name)
    scope = scope_of(node)
    return f"{scope}.{operation}" if scope else operation


def assign_qualnames(graph: fx.Graph) -> None:
    """Give every node without a qualified name one, keeping the names already given."""
    taken = {node.meta[QUALNAME] for node in graph.nodes if QUALNAME in node.meta}
    for node in graph.nodes:
        if QUALNAME in node.meta:
            continue
        base = _base_name(node)
        name, counter = base, 0
        while name in taken:
            counter += 1
            name = f"{base}_{counter}"
        taken.add(name)
        node.meta[QUALNAME] = name


def qualname(node: fx.Node) -> str:
    """The node's qualified name (its fx name if it was created after tracing and never named)."""
    return node.meta.get(QUALNAME, node.name)
