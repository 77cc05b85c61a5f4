"""Channels-last memory format for a lowered graph: NHWC weights, inputs and intermediate values.

On CPUs the oneDNN convolutions run faster on channels-last (NHWC) tensors, and inductor
generates its fused code for the layout it is given. The graph keeps its values: the
4-D inputs are converted on entry and the 4-D outputs converted back on exit, and every
``view`` / ``view_as`` becomes ``reshape`` / ``reshape_as`` (the same values; it copies
where the strides of a channels-last value do not allow a view).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from fxcomp.tracing import TensorSpec, node_info
from fxcomp.tracing.shapes import propagate

_STRIDE_FREE = {"view": "reshape", "view_as": "reshape_as"}


def _is_4d(node: fx.Node) -> bool:
    spec = node_info(node).output
    return isinstance(spec, TensorSpec) and len(spec.shape) == 4


def _as_layout(gm: fx.GraphModule, value: fx.Node, layout: torch.memory_format) -> fx.Node:
    return gm.graph.call_method("contiguous", (value,), {"memory_format": layout})


def _store_channels_last(gm: fx.GraphModule) -> None:
    """Store every 4-D parameter and buffer of ``gm`` channels-last (other ranks stay as they are)."""
    with torch.no_grad():
        for tensor in (*gm.parameters(), *gm.buffers()):
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)


def to_channels_last(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    """Store ``gm``'s 4-D parameters and buffers channels-last and run it on channels-last values, in place."""
    propagate(gm, inputs)
    four_d = {node for node in gm.graph.nodes if node.op != "output" and _is_4d(node)}
    _store_channels_last(gm)
    for node in gm.graph.find_nodes(op="call_method"):
        if node.target in _STRIDE_FREE:
            node.target = _STRIDE_FREE[node.target]
    for placeholder in list(gm.graph.find_nodes(op="placeholder")):
        if placeholder in four_d and placeholder.users:
            with gm.graph.inserting_after(placeholder):
                converted = _as_layout(gm, placeholder, torch.channels_last)
            placeholder.replace_all_uses_with(converted, delete_user_cb=lambda user: user is not converted)
            four_d.add(converted)
    output = next(iter(gm.graph.find_nodes(op="output")))

    def back(value: object) -> object:
        if not isinstance(value, fx.Node) or value not in four_d:
            return value
        with gm.graph.inserting_before(output):
            return _as_layout(gm, value, torch.contiguous_format)

    output.args = pytree.tree_map(back, output.args)
    gm.graph.lint()
    gm.recompile()
    propagate(gm, inputs)
