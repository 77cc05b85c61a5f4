"""Cutting an annotated graph into stages, and building a single-exit graph.

Stage 0 takes the model's inputs and returns the first cut point's tensor; stage
*i* takes cut point *i − 1*'s tensor and returns cut point *i*'s; the last stage
returns the model's output. The stages are ``GraphModule`` s over the same modules
as the whole graph (no parameter is copied), and they run the same operations in
the same order, so running them in turn gives bitwise the model's output.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch.fx as fx


def _copier(graph: fx.Graph, env: dict[fx.Node, fx.Node]) -> Callable[[fx.Node], fx.Node]:
    """Maps an old node to its copy; parameters and constants (``get_attr``) are read again where needed."""

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:
            if node.op != "get_attr":
                raise ValueError(f"'{node.name}' is used across a cut point")
            env[node] = graph.node_copy(node)
        return env[node]

    return lookup


def _copy_span(graph: fx.Graph, nodes: Sequence[fx.Node], env: dict[fx.Node, fx.Node]) -> None:
    lookup = _copier(graph, env)
    for node in nodes:
        if node.op not in ("get_attr", "output"):
            env[node] = graph.node_copy(node, lookup)


def _codegen(gm: fx.GraphModule, first: bool, last: bool, cut_name: str | None) -> fx.graph.CodeGen:
    """Stage 0 keeps the model's input structure; the last stage keeps its output structure."""
    codegen = gm.graph._codegen
    if not isinstance(codegen, fx.graph._PyTreeCodeGen):
        return fx.graph.CodeGen()
    info = codegen.pytree_info
    orig_args = list(info.orig_args) if first else [cut_name or "x"]
    return fx.graph._PyTreeCodeGen(
        fx.graph._PyTreeInfo(orig_args, info.in_spec if first else None, info.out_spec if last else None)
    )


def split_stages(gm: fx.GraphModule, cuts: Sequence[fx.Node]) -> list[fx.GraphModule]:
    """``len(cuts) + 1`` stage graphs of ``gm``, cut after each of ``cuts`` (cut points, in graph order)."""
    order = list(gm.graph.nodes)
    position = {node: index for index, node in enumerate(order)}
    ends = [position[cut] for cut in cuts] + [len(order) - 1]
    stages, start, previous = [], 0, None
    for index, end in enumerate(ends):
        graph, env = fx.Graph(), {}
        if previous is not None:
            env[previous] = graph.placeholder(previous.name)
            env[previous].meta = dict(previous.meta)
        _copy_span(graph, order[start : end + 1], env)
        last = index == len(ends) - 1
        if last:
            graph.node_copy(order[-1], _copier(graph, env))
        else:
            graph.output(env[cuts[index]])
        graph._codegen = _codegen(gm, index == 0, last, previous.name if previous is not None else None)
        stages.append(fx.GraphModule(gm, graph, f"Stage{index}"))
        start, previous = end + 1, cuts[index] if not last else None
    return stages


def single_exit_graph(gm: fx.GraphModule, cut: fx.Node | None, head_path: str | None) -> fx.GraphModule:
    """A graph that runs ``gm`` up to ``cut`` and returns the head at ``head_path`` applied to it.

    With ``cut`` None it is a copy of ``gm``'s graph (the final output).
    """
    order = list(gm.graph.nodes)
    graph, env = fx.Graph(), {}
    codegen = gm.graph._codegen
    if cut is None:
        _copy_span(graph, order, env)
        graph.node_copy(order[-1], _copier(graph, env))
        graph._codegen = copy.deepcopy(codegen)
        return fx.GraphModule(gm, graph, "SingleExit")
    _copy_span(graph, order[: order.index(cut) + 1], env)
    graph.output(graph.call_module(head_path, (env[cut],)))
    if isinstance(codegen, fx.graph._PyTreeCodeGen):
        info = codegen.pytree_info
        graph._codegen = fx.graph._PyTreeCodeGen(fx.graph._PyTreeInfo(list(info.orig_args), info.in_spec, None))
    return fx.GraphModule(gm, graph, "SingleExit")
