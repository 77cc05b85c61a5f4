"""Channels-last memory format for a lowered graph: NHWC weights, inputs and intermediate values.

On CPUs the oneDNN convolutions run faster on channels-last (NHWC) tensors, and inductor
generates its fused code for the layout it is given. The graph keeps its semantics: the
4-D inputs are converted on entry and the 4-D outputs converted back on exit, so callers
see ordinary contiguous tensors; a ``view`` of a 4-D value (which needs its strides) gets
it contiguous again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from fxcomp.tracing import TensorSpec, node_info
from fxcomp.tracing.shapes import propagate


def _is_4d(node: fx.Node) -> bool:
    spec = node_info(node).output
    return isinstance(spec, TensorSpec) and len(spec.shape) == 4


def _as_layout(gm: fx.GraphModule, value: fx.Node, layout: torch.memory_format) -> fx.Node:
    return gm.graph.call_method("contiguous", (value,), {"memory_format": layout})


def to_channels_last(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    """Store ``gm``'s 4-D parameters and buffers channels-last and run it on channels-last values, in place."""
    propagate(gm, inputs)
    gm.to(memory_format=torch.channels_last)
    for placeholder in list(gm.graph.find_nodes(op="placeholder")):
        if _is_4d(placeholder) and placeholder.users:
            with gm.graph.inserting_after(placeholder):
                converted = _as_layout(gm, placeholder, torch.channels_last)
            placeholder.replace_all_uses_with(converted, delete_user_cb=lambda user: user is not converted)
    for view in list(gm.graph.find_nodes(op="call_method", target="view")):
        source = view.args[0]
        if isinstance(source, fx.Node) and _is_4d(source):
            with gm.graph.inserting_before(view):
                view.replace_input_with(source, _as_layout(gm, source, torch.contiguous_format))
    output = next(iter(gm.graph.find_nodes(op="output")))

    def back(value: object) -> object:
        if not isinstance(value, fx.Node) or not _is_4d(value):
            return value
        with gm.graph.inserting_before(output):
            return _as_layout(gm, value, torch.contiguous_format)

    output.args = pytree.tree_map(back, output.args)
    gm.graph.lint()
    gm.recompile()
    propagate(gm, inputs)
