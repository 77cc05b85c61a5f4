"""The memory layout a lowered graph runs in: channels-last (NHWC) storage, direct NHWC convolutions.

On CPUs the oneDNN convolutions run faster on channels-last (NHWC) tensors, and inductor
generates its fused code for the layout it is given. The graph keeps its values: the
4-D inputs are converted on entry and the 4-D outputs converted back on exit, and every
``view`` / ``view_as`` becomes ``reshape`` / ``reshape_as`` (the same values; it copies
where the strides of a channels-last value do not allow a view) unless the viewed memory
is modified in place: a copy would not see the modification, so such views stay views
(and a layout whose strides they do not fit fails to run). Direct convolutions
(:mod:`fxcomp.lowering.direct`) return NHWC-strided values, so they take the same care.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils import _pytree as pytree

from fxcomp.lowering.direct import to_direct_convs
from fxcomp.tracing import TensorSpec, node_info
from fxcomp.tracing.shapes import propagate

_STRIDE_FREE = {"view": "reshape", "view_as": "reshape_as"}

_IN_PLACE_OPERATORS = frozenset({
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod, operator.ipow,
    operator.imatmul, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift, operator.setitem,
})
"""``x += y``, ``x[i] = y`` and the like: they modify their first argument."""

_ALIASING = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "ravel", "squeeze", "unsqueeze",
    "transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t", "adjoint", "narrow", "select",
    "slice", "diagonal", "unfold", "as_strided", "expand", "expand_as", "broadcast_to", "chunk", "split",
    "split_with_sizes", "tensor_split", "hsplit", "vsplit", "dsplit", "unbind", "real", "imag", "view_as_real",
    "view_as_complex", "detach", "alias", "contiguous", "to", "type", "type_as", "float", "double", "half",
    "bfloat16", "cpu", "cuda", "conj", "resolve_conj", "resolve_neg", "positive", "getitem", "getattr",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
})
"""Operations whose result may share memory with their first argument: views, and those that may return it."""

_ALIASING_MODULES = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
"""Modules whose output may share memory with their input."""


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


def _op_name(node: fx.Node) -> str:
    """The name of the method or function ``node`` calls ('' for other nodes)."""
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", "") if node.op == "call_function" else ""


def _inplace_flag(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is a module or function asked to work in place (``inplace=True``, by keyword or position)."""
    if node.op == "call_module":
        return getattr(gm.get_submodule(str(node.target)), "inplace", False) is True
    if node.op != "call_function":
        return False
    try:
        arguments = inspect.signature(node.target).bind(*node.args, **node.kwargs).arguments
    except (TypeError, ValueError):  # no Python signature, or not these arguments
        return node.kwargs.get("inplace") is True
    return arguments.get("inplace") is True


def _modified(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """The values ``node`` modifies in place: its ``out=`` tensor, and its first argument for an in-place op."""
    name = _op_name(node)
    in_place = (
        (name.endswith("_") and not name.startswith("_"))
        or (node.op == "call_function" and node.target in _IN_PLACE_OPERATORS)
        or _inplace_flag(gm, node)
    )
    candidates = [node.kwargs.get("out"), node.args[0] if in_place and node.args else None]
    return [value for value in candidates if isinstance(value, fx.Node)]


def _aliases_first_argument(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s result may share memory with its first argument."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _ALIASING_MODULES)
    return node.op in ("call_method", "call_function") and _op_name(node) in _ALIASING


def _written_later(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes of ``gm`` whose values may share memory with a value some later node modifies in place."""
    parent: dict[fx.Node, fx.Node] = {}

    def root(node: fx.Node) -> fx.Node:
        while parent.get(node, node) is not node:
            node = parent[node]
        return node

    def join(a: fx.Node, b: fx.Node) -> None:
        parent[root(a)] = root(b)

    writes: list[tuple[int, fx.Node]] = []
    order = {node: index for index, node in enumerate(gm.graph.nodes)}
    for node, index in order.items():
        first = node.args[0] if node.args else None
        if isinstance(first, fx.Node) and _aliases_first_argument(gm, node):
            join(node, first)
        for target in _modified(gm, node):  # an in-place op returns the value it modifies
            join(node, target)
            writes.append((index, target))
    last_write: dict[fx.Node, int] = {}
    for index, target in writes:
        last_write[root(target)] = max(index, last_write.get(root(target), -1))
    return {node for node, index in order.items() if last_write.get(root(node), -1) > index}


def _stride_free_views(gm: fx.GraphModule) -> None:
    """Turn the ``view`` / ``view_as`` of ``gm`` into ``reshape`` / ``reshape_as``, which accept any strides.

    A view of memory that a later node modifies in place stays a view: a reshape may copy,
    and the modification would then not reach (or not come from) the viewed tensor. Writes
    before the view are already in what a reshape copies.
    """
    written = _written_later(gm)
    for node in gm.graph.find_nodes(op="call_method"):
        if node.target in _STRIDE_FREE and node not in written:
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
    can write directly. Either way views become reshapes unless their memory is modified in
    place. Returns its record of converted and kept convolutions (empty without ``direct_convs``).
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
