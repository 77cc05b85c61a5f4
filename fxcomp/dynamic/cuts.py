"""Where a graph can be cut into stages: points after which one tensor carries all live state.

A node is a *cut point* when nothing computed before it (model inputs included) is
used after it except the node's own output, which is a tensor with the batch along
its first axis. The rest of the network is then a function of that one tensor, so an
exit head can read it and the later stages can run on a subset of the batch. Inside
a residual block the block's input is still needed by the addition, so no node
there is a cut point. Parameters and constants (``get_attr``) are not state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.fx as fx

from fxcomp.errors import ExitError
from fxcomp.tracing import TensorSpec, node_info, qualname


def _batch_size(graph: fx.Graph) -> int | None:
    for node in graph.nodes:
        if node.op == "placeholder":
            spec = node_info(node).output
            return spec.shape[0] if isinstance(spec, TensorSpec) and spec.shape else None
    return None


def cut_problems(gm: fx.GraphModule) -> dict[fx.Node, str | None]:
    """For every computing node of the annotated ``gm``: why it is not a cut point, or None if it is."""
    order = list(gm.graph.nodes)
    position = {node: index for index, node in enumerate(order)}
    last_use = {node: max((position[user] for user in node.users), default=position[node]) for node in order}
    outputs = {arg for node in order if node.op == "output" for arg in node.all_input_nodes}
    batch = _batch_size(gm.graph)
    problems: dict[fx.Node, str | None] = {}
    holder: fx.Node | None = None  # the earlier node needed furthest ahead
    for node in order:
        if node.op in ("call_module", "call_function", "call_method"):
            problems[node] = _problem(node, holder, last_use, position, outputs, batch, order)
        if node.op != "get_attr" and (holder is None or last_use[node] > last_use[holder]):
            holder = node
    return problems


def _problem(
    node: fx.Node,
    holder: fx.Node | None,
    last_use: dict[fx.Node, int],
    position: dict[fx.Node, int],
    outputs: set[fx.Node],
    batch: int | None,
    order: Sequence[fx.Node],
) -> str | None:
    if node in outputs:
        return "it is the model's output"
    if holder is not None and last_use[holder] > position[node]:
        needed_by = qualname(order[last_use[holder]])
        what = f"the model input '{holder.name}'" if holder.op == "placeholder" else f"'{qualname(holder)}'"
        return f"{what} is still needed after it (by '{needed_by}'), e.g. by a residual connection"
    spec = node_info(node).output
    if not isinstance(spec, TensorSpec):
        return "its output is not a single tensor"
    if len(spec.shape) < 2 or batch is None or spec.shape[0] != batch:
        return f"its output {tuple(spec.shape)} does not have the batch ({batch}) along its first axis"
    if not node.users:
        return "nothing uses its output"
    return None


def find_node(gm: fx.GraphModule, name: str) -> fx.Node:
    """The node ``name`` names: a qualified or fx node name, or a module path (the last node inside it)."""
    inside = None
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if qualname(node) == name or node.name == name:
            return node
        if qualname(node).startswith(name + "."):
            inside = node
    if inside is None:
        raise ExitError(f"no node or module named '{name}' in the graph; give a qualified name from fxcomp inspect")
    return inside


def resolve_cuts(
    gm: fx.GraphModule, names: Sequence[str], problems: Mapping[fx.Node, str | None] | None = None
) -> list[fx.Node]:
    """The cut points ``names`` give, in graph order; raises :class:`ExitError` for one that is not a cut point.

    ``problems`` defaults to :func:`cut_problems`; a caller may pass it with reasons of its own added.
    """
    problems = cut_problems(gm) if problems is None else problems
    nodes = []
    for name in names:
        node = find_node(gm, name)
        reason = problems.get(node, "it is not a computation")
        if reason is not None:
            raise ExitError(f"cannot place an exit at '{name}' ('{qualname(node)}'): {reason}; choose another point")
        nodes.append(node)
    order = {node: index for index, node in enumerate(gm.graph.nodes)}
    ordered = sorted(set(nodes), key=order.__getitem__)
    if len(ordered) != len(nodes):
        raise ExitError(f"exits {list(names)} name the same point twice; give each exit its own point")
    return ordered
