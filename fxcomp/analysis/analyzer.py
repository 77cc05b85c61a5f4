"""The coupled-channel dependency analyzer: which channels of which tensors must be pruned together.

The analyzer walks an annotated graph once, carrying for every tensor value its
channel labels (:mod:`fxcomp.analysis.labels`):

* a prunable layer (conv, conv-transpose, linear) gives its output channels
  fresh labels and records its weight and bias as members;
* a layer that consumes channels (the next conv's input channels, a
  BatchNorm's statistics, a linear layer after ``flatten``) records which of
  its entries carry which labels;
* an elementwise operation (residual add, gating multiply) merges the labels
  that meet position by position; a parameter it reads (a bias, a layer scale)
  becomes a member;
* a data-movement operation (cat, split, view, permute, channel shuffle,
  slicing) is run on the labels themselves, so channels land where the real
  operation puts them;
* an operation it does not know pins every channel it touches, and the model's
  outputs pin theirs: such channels are reported, never guessed.

Labels merged into one set form one channel; channels of the same producer form
one group.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import _pytree as pytree

from fxcomp.analysis.groups import ChannelGroup, LabelSets, Member
from fxcomp.analysis.labels import NO_LABEL, along, compact, expand, fresh, labelled_axes, unlabelled
from fxcomp.errors import TraceError
from fxcomp.passes.base import matches
from fxcomp.tracing import TensorSpec, node_info, qualname


@dataclass(frozen=True)
class _Param:
    """A parameter or buffer read by a ``get_attr`` node."""

    name: str
    tensor: torch.Tensor


_UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
    nn.Softmax, nn.LogSoftmax,
)  # fmt: skip
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, operator.neg, torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.relu_,
    torch.sigmoid, torch.tanh, torch.neg, torch.where, torch.maximum, torch.minimum, F.relu, F.relu6, F.gelu,
    F.silu, F.sigmoid, F.hardswish, F.hardsigmoid, F.hardtanh, F.leaky_relu, F.elu, F.mish, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d,
}  # fmt: skip
_ELEMENTWISE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "relu", "relu_", "sigmoid", "sigmoid_", "tanh",
    "neg", "contiguous", "clone", "float", "half", "to", "type_as", "detach",
}  # fmt: skip
_SPATIAL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.interpolate,
}  # fmt: skip
_MOVEMENT_FUNCTIONS = {
    torch.cat, torch.concat, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
    torch.unsqueeze, torch.split, torch.chunk, torch.narrow, torch.channel_shuffle, F.pixel_shuffle,
    F.pixel_unshuffle, operator.getitem,
}  # fmt: skip
_MOVEMENT_METHODS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "squeeze", "unsqueeze", "split", "chunk",
    "narrow", "expand", "expand_as", "view_as", "reshape_as", "__getitem__",
}  # fmt: skip
_SHAPE_METHODS = {"size", "dim", "numel"}


@dataclass
class _Walk:
    """State of one analysis: the label sets and what each label is tied to."""

    gm: fx.GraphModule
    labels: LabelSets = field(default_factory=LabelSets)
    env: dict[fx.Node, Any] = field(default_factory=dict)
    producers: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    members: list[tuple[str, int, torch.Tensor, str]] = field(default_factory=list)
    pins: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    segments: list[tuple[torch.Tensor, int]] = field(default_factory=list)

    # --- values ------------------------------------------------------------------------------

    def spec(self, node: Any) -> Any:
        return node_info(node).output if isinstance(node, fx.Node) else None

    def value(self, arg: Any) -> Any:
        """Labels for tensor-valued nodes, _Param for parameters, the traced value for everything else."""
        return pytree.tree_map(lambda a: self.env[a] if isinstance(a, fx.Node) else a, arg)

    def new_labels(self, producer: str, count: int, axis: int, ndim: int) -> torch.Tensor:
        labels = fresh(self.labels.new(count), count, axis, ndim)
        self.producers.append((producer, labels.reshape(-1)))
        return labels

    def member(self, name: str, axis: int, labels: torch.Tensor | None, kind: str = "parameter") -> None:
        if labels is not None and bool((labels >= 0).any()):
            self.members.append((name, axis, labels.reshape(-1), kind))

    def pin(self, labels: Any, reason: str) -> None:
        for leaf in pytree.tree_leaves(labels):
            if isinstance(leaf, torch.Tensor) and bool((leaf >= 0).any()):
                self.pins.append((leaf.reshape(-1), reason))

    # --- layers --------------------------------------------------------------------------------

    def layer(self, node: fx.Node, module: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
        """Conv, conv-transpose and linear modules: consume input channels, produce fresh ones."""
        out_spec = self.spec(node)
        ndim = len(out_spec.shape)
        bias = f"{name}.bias" if getattr(module, "bias", None) is not None else None
        if isinstance(module, nn.Linear):
            line = along(x, -1, module.in_features)
            if line is None:
                self.pin(x, f"'{qualname(node)}' reads channels spread over several axes")
            self.member(f"{name}.weight", 1, line)
            out = self.new_labels(qualname(node), module.out_features, ndim - 1, ndim)
            self.member(f"{name}.weight", 0, out)
            if bias:
                self.member(bias, 0, out)
            return out
        channel_axis = 1 if ndim == module.weight.dim() else 0  # batched or unbatched input
        line = along(x, channel_axis, module.in_channels)
        if line is None:
            self.pin(x, f"'{qualname(node)}' reads channels spread over several axes")
            line = torch.full((module.in_channels,), NO_LABEL)
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        in_axis, out_axis = (0, 1) if transposed else (1, 0)
        groups = module.groups
        if groups == 1:
            self.member(f"{name}.weight", in_axis, line)
            out = self.new_labels(qualname(node), module.out_channels, channel_axis, ndim)
        elif not transposed and groups == module.in_channels and bool((line >= 0).all()):
            # Depthwise: output channel o reads only input channel o // multiplier.
            multiplier = module.out_channels // groups
            shape = [1] * ndim
            shape[channel_axis] = module.out_channels
            out = line.repeat_interleave(multiplier).reshape(shape)
        else:
            reason = f"'{qualname(node)}' is a grouped convolution (groups={groups}) whose input channels are not pruned yet"
            self.pin(line, reason)
            out = self.new_labels(qualname(node), module.out_channels, channel_axis, ndim)
            self.segments.append((out.reshape(-1), groups))
        self.member(f"{name}.weight", out_axis, out)
        if bias:
            self.member(bias, 0, out)
        return out

    def norm(self, node: fx.Node, module: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
        """BatchNorm / InstanceNorm / GroupNorm (channel axis 1) and LayerNorm (last axis)."""
        if isinstance(module, nn.LayerNorm):
            if len(module.normalized_shape) != 1:
                self.pin(x, f"'{qualname(node)}' normalizes over several axes")
                return x
            size, axis = module.normalized_shape[0], -1
        else:
            size, axis = module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features, 1
        line = along(x, axis, size)
        if line is None:
            self.pin(x, f"'{qualname(node)}' normalizes channels spread over several axes")
            return x
        for param in ("weight", "bias", "running_mean", "running_var"):
            if getattr(module, param, None) is not None:
                self.member(f"{name}.{param}", 0, line)
        if isinstance(module, nn.GroupNorm):
            self.segments.append((line, module.num_groups))
        return x

    # --- generic operations ----------------------------------------------------------------------

    def elementwise(self, node: fx.Node, args: Sequence[Any]) -> torch.Tensor:
        """Broadcasting ops: labels meeting at one position are merged; parameters become members."""
        out_spec = self.spec(node)
        if not isinstance(out_spec, TensorSpec):
            return out_spec  # arithmetic on sizes
        shape = out_spec.shape
        operands = []
        for arg, value in zip(args, self.value(tuple(args))):
            if isinstance(value, _Param):
                operands.append((value, tuple(value.tensor.shape)))
            elif isinstance(value, torch.Tensor):
                operands.append((value, tuple(self.spec(arg).shape)))
        labelled = [(v, s) for v, s in operands if isinstance(v, torch.Tensor) and bool((v >= 0).any())]
        if not labelled:
            return unlabelled(len(shape))
        broadcast = [torch.broadcast_to(v, _pad(v.shape, len(shape))) for v, _ in labelled]
        result = broadcast[0]
        for other in broadcast[1:]:
            left, right = torch.broadcast_tensors(result, other)
            self.labels.union(left.reshape(-1), right.reshape(-1))
            result = torch.where(left >= 0, left, right)
        result = compact(result.contiguous())
        full = expand(result, shape)
        for value, operand_shape in operands:
            offset = len(shape) - len(operand_shape)
            for axis, size in enumerate(operand_shape):
                if size == 1 or result.shape[axis + offset] == 1:
                    continue
                line = along(result, axis + offset, shape[axis + offset])
                if isinstance(value, _Param):
                    if line is None:
                        self.pin(full, f"'{qualname(node)}' reads parameter '{value.name}' across labelled axes")
                    else:
                        self.member(value.name, axis, line)
                elif bool((value == NO_LABEL).all()):
                    self.pin(full, f"'{qualname(node)}' combines the channels with a tensor that cannot be pruned")
        return result

    def movement(self, node: fx.Node, function: Callable[..., Any], args: Sequence[Any], kwargs: dict) -> Any:
        """Run a data-movement operation on the labels expanded to their real shapes."""

        def real(arg: Any) -> Any:
            if not isinstance(arg, fx.Node):
                return arg
            value = self.env[arg]
            if isinstance(value, _Param):
                return torch.full(value.tensor.shape, NO_LABEL)
            return _expand_value(value, self.spec(arg))

        indices = pytree.tree_leaves((tuple(args[1:]), dict(kwargs)))
        if any(isinstance(i, fx.Node) and isinstance(self.env[i], (torch.Tensor, _Param)) for i in indices):
            return self.unknown(node, args, kwargs, "indexing with a tensor")
        result = function(*pytree.tree_map(real, tuple(args)), **pytree.tree_map(real, dict(kwargs)))
        result = pytree.tree_map(lambda t: compact(t) if isinstance(t, torch.Tensor) else t, result)
        for labels in pytree.tree_leaves(result):
            if isinstance(labels, torch.Tensor) and len(labelled_axes(labels)) > 1:
                # Channels split over several axes (channel shuffle, heads, pixel shuffle): pruning them
                # consistently needs the same indices removed in every part; not done yet, so pin.
                self.pin(labels, f"'{qualname(node)}' spreads channels over several axes")
        return result

    def unknown(self, node: fx.Node, args: Sequence[Any], kwargs: dict, what: str) -> Any:
        """Pin every channel reaching an operation the analyzer does not know."""
        self.pin(self.value((tuple(args), dict(kwargs))), f"'{qualname(node)}' is {what}, which the analyzer does not know")
        return _unlabelled_like(self.spec(node))


def _expand_value(value: Any, spec: Any) -> Any:
    """Compact labels expanded to the real shapes given by ``spec``, inside tuples and lists too."""
    if isinstance(value, torch.Tensor) and isinstance(spec, TensorSpec):
        return expand(value, spec.shape)
    if isinstance(value, (tuple, list)) and isinstance(spec, (tuple, list)):
        return type(value)(_expand_value(v, s) for v, s in zip(value, spec))
    return value


def _pad(shape: Sequence[int], ndim: int) -> tuple[int, ...]:
    return (1,) * (ndim - len(shape)) + tuple(shape)


def _unlabelled_like(spec: Any) -> Any:
    return pytree.tree_map(lambda s: unlabelled(len(s.shape)) if isinstance(s, TensorSpec) else s, spec)


def _first_tensor(walk: _Walk, args: Sequence[Any]) -> tuple[fx.Node, torch.Tensor] | None:
    for arg in args:
        if isinstance(arg, fx.Node) and isinstance(walk.env.get(arg), torch.Tensor):
            return arg, walk.env[arg]
    return None


def _channels_only(walk: _Walk, node: fx.Node, args: Sequence[Any]) -> Any:
    """Ops that change only spatial extent (pooling, interpolation): channel labels pass through."""
    found = _first_tensor(walk, args)
    if found is None:
        return _unlabelled_like(walk.spec(node))
    _, labels = found
    if any(axis >= 2 for axis in labelled_axes(labels)):
        walk.pin(labels, f"'{qualname(node)}' pools over labelled axes")
        return _unlabelled_like(walk.spec(node))
    return labels


def _split_sizes(walk: _Walk, node: fx.Node) -> None:
    """Record split sizes written into the graph (they must follow pruning) and chunk counts (equal parts)."""
    is_split = node.target in (torch.split, "split")
    if not (is_split or node.target in (torch.chunk, "chunk")) or len(node.args) < 2:
        return
    source, parts = node.args[0], node.args[1]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    labels, spec = walk.env.get(source), walk.spec(source)
    if not isinstance(labels, torch.Tensor) or not isinstance(spec, TensorSpec) or not isinstance(dim, int):
        return
    line = along(labels, dim, spec.shape[dim])
    if line is None:
        return
    if is_split and isinstance(parts, (list, tuple)) and all(isinstance(p, int) for p in parts):
        walk.member(qualname(node), dim % len(spec.shape), line, kind="split")
    elif is_split and isinstance(parts, (list, tuple)):
        walk.pin(line, f"'{qualname(node)}' splits at sizes computed in the graph, which pruning cannot rewrite yet")
    elif is_split:
        walk.pin(line, f"'{qualname(node)}' splits into pieces of a fixed size")
    else:
        walk.pin(line, f"'{qualname(node)}' cuts channels into equal chunks, which pruning does not balance yet")


def _step(walk: _Walk, node: fx.Node) -> Any:
    gm = walk.gm
    if node.op == "placeholder":
        return _unlabelled_like(walk.spec(node))
    if node.op == "get_attr":
        owner, _, name = node.target.rpartition(".")
        value = getattr(gm.get_submodule(owner), name)
        return _Param(node.target, value) if isinstance(value, torch.Tensor) else value
    if node.op == "output":
        walk.pin(walk.value(node.args), "the model returns these channels")
        return None
    args, kwargs = node.args, node.kwargs
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        found = _first_tensor(walk, args)
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and found is not None and len(args) == 1:
            return walk.layer(node, module, found[1], node.target)
        if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) and found is not None:
            return walk.norm(node, module, found[1], node.target)
        if type(module) in _UNARY_MODULES:
            return walk.elementwise(node, args)
        if type(module) in _SPATIAL_MODULES:
            return _channels_only(walk, node, args)
        if type(module) is nn.Flatten:
            return walk.movement(node, module, args, kwargs)
        return walk.unknown(node, args, kwargs, f"a {type(module).__name__} module")
    target = node.target
    if node.op == "call_function":
        if target in _ELEMENTWISE_FUNCTIONS:
            return walk.elementwise(node, args)
        if target in _SPATIAL_FUNCTIONS:
            return _channels_only(walk, node, args)
        if target in _MOVEMENT_FUNCTIONS:
            _split_sizes(walk, node)
            return walk.movement(node, target, args, kwargs)
        if target is getattr or not any(isinstance(a, fx.Node) for a in pytree.tree_leaves((args, kwargs))):
            return walk.spec(node)
        return walk.unknown(node, args, kwargs, f"a call to {getattr(target, '__name__', target)}")
    if node.op == "call_method":
        if target in _ELEMENTWISE_METHODS:
            return walk.elementwise(node, args[:1] if target in ("to", "float", "half", "type_as") else args)
        if target in _MOVEMENT_METHODS:
            _split_sizes(walk, node)
            return walk.movement(node, lambda self, *a, **k: getattr(self, target)(*a, **k), args, kwargs)
        if target in _SHAPE_METHODS:
            return walk.spec(node)
        return walk.unknown(node, args, kwargs, f"the tensor method .{target}()")
    raise TraceError(f"node '{node.name}' has an unknown kind {node.op!r}")


def _build_groups(walk: _Walk, ignore: Sequence[str]) -> list[ChannelGroup]:
    """Turn label sets into groups: merged labels are one channel, connected producers one group."""
    total = len(walk.labels)
    if not walk.producers:
        return []
    roots = walk.labels.roots()
    producer_of = torch.empty(total, dtype=torch.int64)
    for index, (_, labels) in enumerate(walk.producers):
        producer_of[labels] = index
    # Producers whose channels were merged belong to one group (a second, tiny union-find).
    merged = LabelSets()
    merged.new(len(walk.producers))
    merged.union(producer_of, producer_of[roots])
    producer_root = merged.roots()
    group_of_producer = torch.searchsorted(producer_root.unique(), producer_root)  # groups in producer order
    group_of_root = group_of_producer[producer_of]
    # A group's channels are its distinct roots, in label order (the first producer's channel order first).
    distinct = roots.unique()
    distinct_group = group_of_root[distinct]
    order = torch.argsort(distinct_group, stable=True)
    counts = torch.bincount(distinct_group, minlength=int(group_of_producer.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    channel_of_root = torch.full((total,), -1, dtype=torch.int64)
    channel_of_root[distinct[order]] = torch.arange(len(distinct)) - starts[distinct_group[order]]
    group_of_label, channel_of_label = group_of_root[roots], channel_of_root[roots]

    groups = [ChannelGroup(channels=int(count), producers=[]) for count in counts]
    for index, (producer, _) in enumerate(walk.producers):
        groups[int(group_of_producer[index])].producers.append(producer)

    def located(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = labels >= 0
        safe = labels.clamp(min=0)
        return torch.where(valid, group_of_label[safe], -1), torch.where(valid, channel_of_label[safe], -1)

    for name, axis, labels, kind in walk.members:
        owner, channel = located(labels)
        for index in owner[owner >= 0].unique().tolist():
            channels = torch.where(owner == index, channel, -1)
            groups[index].members.append(Member(name, axis, tuple(channels.tolist()), kind))
    for labels, reason in walk.pins:
        owner, _ = located(labels)
        for index in owner[owner >= 0].unique().tolist():
            if reason not in groups[index].pinned:
                groups[index].pinned.append(reason)
    for labels, count in walk.segments:
        owner, channel = located(labels)
        owners = owner[owner >= 0].unique().tolist()
        # Equal segments are enforced in group-channel order: only when these channels are one whole group, in order.
        if len(owners) == 1 and torch.equal(channel, torch.arange(len(channel))) and groups[owners[0]].channels == len(channel):
            groups[owners[0]].segments = max(groups[owners[0]].segments, count)
            continue
        for index in owners:
            groups[index].pinned.append(f"{count} equal segments span channels of several groups")
    for group in groups:
        if ignore and any(matches(p, ignore) for p in group.producers):
            group.pinned.append("ignored by the user")
    return groups


def analyze(gm: fx.GraphModule, *, ignore: Sequence[str] = ()) -> list[ChannelGroup]:
    """Partition the prunable channels of an annotated graph into coupled groups.

    Args:
        gm: a graph from :func:`fxcomp.trace` (its nodes carry shapes).
        ignore: qualified-name globs of producer layers whose groups must stay whole.

    Returns the groups in graph order. A group's ``pinned`` lists why it must not
    be pruned (model output, an unknown op, user-ignored …).
    """
    walk = _Walk(gm)
    for node in gm.graph.nodes:
        try:
            walk.env[node] = _step(walk, node)
        except Exception as error:  # noqa: BLE001 - name the node, keep the cause
            if isinstance(error, TraceError):
                raise
            raise TraceError(f"cannot analyze node '{qualname(node)}': {error}") from error
    return _build_groups(walk, ignore)
