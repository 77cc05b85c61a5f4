"""The memory layout a lowered graph runs in: channels-last (NHWC) storage, direct NHWC convolutions.

On CPUs the oneDNN convolutions run faster on channels-last (NHWC) tensors, and inductor
generates its fused code for the layout it is given. The graph keeps its values: the
4-D inputs are converted on entry and the 4-D outputs converted back on exit, and every
``view`` / ``view_as`` becomes ``reshape`` / ``reshape_as`` (the same values; it copies
where the strides of a channels-last value do not allow a view). Direct convolutions
(:mod:`fxcomp.lowering.direct`) return NHWC-strided values, so they take the same care.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from fxcomp.lowering.direct import to_direct_convs
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


def _stride_free_views(gm: fx.GraphModule) -> None:
    """Turn every ``view`` / ``view_as`` of ``gm`` into ``reshape`` / ``reshape_as``, which accept any strides."""
    for node in gm.graph.find_nodes(op="call_method"):
        if node.target in _STRIDE_FREE:
            node.target = _STRIDE_FREE[node.target]


def _inputs_channels_last(gm: fx.GraphModule, four_d: set[fx.Node]) -> None:
    """Convert the used 4-D inputs of ``gm`` to channels-last on entry."""
    for placeholder in list(gm.graph.find_nodes(op="placeholder")):
        if placeholder in four_d and placeholder.users:
            with gm.graph.inserting_after(placeholder):
                converted = _as_layout(gm, placeholder, torch.channels_last)
            placeholder.replace_all_uses_with(converted, delete_user_cb=lambda user: user is not converted)
            four_d.add(converted)


def _outputs_contiguous(gm: fx.GraphModule, four_d: set[fx.Node]) -> None:
    """Make the 4-D outputs of ``gm`` contiguous (NCHW) again before they are returned."""
    output = next(iter(gm.graph.find_nodes(op="output")))

    def back(value: object) -> object:
        if not isinstance(value, fx.Node) or value not in four_d:
            return value
        with gm.graph.inserting_before(output):
            return _as_layout(gm, value, torch.contiguous_format)

    output.args = pytree.tree_map(back, output.args)


def to_layout(
    gm: fx.GraphModule, inputs: Sequence[torch.Tensor], *, channels_last: bool, direct_convs: bool
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Run ``gm`` channels-last and/or with direct convolutions, in place; callers still get contiguous outputs.

    ``channels_last`` stores the 4-D parameters and buffers channels-last and converts the
    4-D inputs on entry; ``direct_convs`` replaces the convolutions :func:`to_direct_convs`
    can write directly. Returns its record of converted and kept convolutions (empty
    without ``direct_convs``).
    """
    converted: list[dict[str, str]] = []
    kept: list[dict[str, str]] = []
    if not (channels_last or direct_convs):
        return converted, kept
    propagate(gm, inputs)
    four_d = {node for node in gm.graph.nodes if node.op != "output" and _is_4d(node)}
    if direct_convs:
        converted, kept = to_direct_convs(gm)
    if channels_last:
        _store_channels_last(gm)
        _inputs_channels_last(gm, four_d)
    _stride_free_views(gm)
    _outputs_contiguous(gm, four_d)
    gm.graph.lint()
    gm.recompile()
    propagate(gm, inputs)
    return converted, kept
