"""Intermediate features read from fx graphs by node name, for feature-based distillation.

Names are fxcomp's qualified node names (``layer2.1.relu``, see :func:`fxcomp.qualname`),
which survive rewrites; a pass that removes a node records where its value went in its
plan's ``renamed`` table (``fold_bn`` maps a folded BatchNorm to its conv), and
:func:`rename_through` follows those tables.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp.errors import UsageError
from fxcomp.tracing import qualname, trace


def rename_through(names: Sequence[str], plan: Iterable[dict[str, Any]]) -> list[str]:
    """Where the values of the nodes ``names`` live after the passes of ``plan`` (``result.plan``)."""
    mapped = list(names)
    for record in plan:
        renamed = record.get("plan", {}).get("renamed", {})
        mapped = [renamed.get(name, name) for name in mapped]
    return mapped


def as_graph(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> fx.GraphModule:
    """``model`` itself when it is a GraphModule, else its fxcomp trace (which shares its parameters)."""
    if isinstance(model, fx.GraphModule):
        return model
    return trace(model, example_inputs)


def with_features(gm: fx.GraphModule, names: Sequence[str]) -> fx.GraphModule:
    """A module sharing ``gm``'s parameters whose forward returns ``(output, [feature for each name])``."""
    graph = fx.Graph()
    values: dict[fx.Node, fx.Node] = {}
    output = graph.graph_copy(gm.graph, values)
    by_name = {qualname(node): node for node in gm.graph.nodes if node.op not in ("output",)}
    taps = []
    for name in names:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"no node named '{name}' to read a feature from{hint}")
        taps.append(values[by_name[name]])
    graph.output((output, taps))
    return fx.GraphModule(gm, graph)
