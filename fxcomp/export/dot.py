"""Graphviz DOT rendering of an annotated graph."""

from __future__ import annotations

import os

import torch.fx as fx

from fxcomp.export.paths import check_writable
from fxcomp.tracing import TensorSpec, qualname, require_graph
from fxcomp.tracing.shapes import INFO

_COLORS = {
    "placeholder": "lightblue",
    "output": "lightblue",
    "call_module": "lightyellow",
    "get_attr": "lightgrey",
}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        op = type(gm.get_submodule(node.target)).__name__
    elif node.op in ("call_function", "call_method"):
        op = getattr(node.target, "__name__", str(node.target))
    else:
        op = node.op
    lines = [qualname(node), op]
    info = node.meta.get(INFO)
    if info is not None:
        if isinstance(info.output, TensorSpec):
            lines.append(str(info.output))
        if info.macs:
            lines.append(f"{info.macs:,} MACs")
    return "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines)


def to_dot(gm: fx.GraphModule, path: str | os.PathLike) -> None:
    """Write ``gm`` as a Graphviz DOT file: one box per node (name, op, output shape, MACs), edges for data flow."""
    require_graph(gm, "to_dot")
    check_writable(path)
    lines = ["digraph fxcomp {", '  node [shape=box, style=filled, fontname="Helvetica"];']
    for node in gm.graph.nodes:
        color = _COLORS.get(node.op, "white")
        lines.append(f'  {_quote(node.name)} [label="{_label(gm, node)}", fillcolor={color}];')
    for node in gm.graph.nodes:
        for user in node.users:
            lines.append(f"  {_quote(node.name)} -> {_quote(user.name)};")
    lines.append("}")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
