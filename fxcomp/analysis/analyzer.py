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

import math
import operator
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.utils import _pytree as pytree

from fxcomp.analysis.groups import ChannelGroup, LabelSets, Member
from fxcomp.analysis.labels import NO_LABEL, along, compact, expand, fresh, labelled_axes, unlabelled
from fxcomp.errors import TraceError
from fxcomp.passes.base import matches
from fxcomp.passes.masks import Mask
from fxcomp.plugin.host import Plugins, load_plugins
from fxcomp.tracing import TensorSpec, modules_by_path, node_info, qualname, require_graph


@dataclass(frozen=True)
class _Param:
    """A parameter or buffer read by a ``get_attr`` node (``expansions``: the expand nodes that broadcast it since)."""

    name: str
    tensor: torch.Tensor
    expansions: tuple[fx.Node, ...] = ()

    def shape(self) -> tuple[int, ...]:
        """Its shape for broadcasting: axes an expand broadcast it along count as size 1 (one entry serves them all)."""
        return tuple(1 if stride == 0 else size for size, stride in zip(self.tensor.shape, self.tensor.stride()))


@dataclass(frozen=True)
class _Sizes:
    """Sizes read from a tensor (``x.shape``, ``x.size(d)``, arithmetic on them).

    ``lines[i]`` are the channel labels along the axis that size ``i`` measures
    (None where no channel lies). ``scale`` says what the sizes count: that
    fraction of the entries of their line (``c // 2`` counts half of ``c``'s
    channels), or None after other arithmetic, when it is no longer known.
    """

    value: Any
    lines: tuple[torch.Tensor | None, ...]
    scale: Fraction | None = Fraction(1)


_UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
)  # fmt: skip
_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
_SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}
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
    F.pixel_unshuffle, operator.getitem, torch.swapaxes, torch.swapdims, torch.movedim, torch.unbind,
}  # fmt: skip
_SELECTIONS = {operator.getitem, torch.narrow, "__getitem__", "narrow"}
"""Movements that may keep some entries of an axis and drop others, by positions written in the graph."""
_MOVEMENT_METHODS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "squeeze", "unsqueeze", "split", "chunk",
    "narrow", "expand", "expand_as", "view_as", "reshape_as", "__getitem__", "swapaxes", "swapdims", "movedim",
    "unbind",
}  # fmt: skip
_SHAPE_METHODS = {"size", "dim", "numel"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}


@dataclass
class _Walk:
    """State of one analysis: the label sets and what each label is tied to."""

    gm: fx.GraphModule
    modules: dict[str, nn.Module]
    rules: dict[Any, str] = field(default_factory=dict)
    labels: LabelSets = field(default_factory=LabelSets)
    env: dict[fx.Node, Any] = field(default_factory=dict)
    producers: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    members: list[tuple[str, int, torch.Tensor, str]] = field(default_factory=list)
    member_lines: dict[tuple[str, int, str], torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    """Every name of a tensor reachable by several (tied weights) → its first name."""
    opaque: dict[str, str] = field(default_factory=dict)
    """Parameters an operation the analyzer does not know uses → that operation."""
    pins: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    segments: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    floors: list[torch.Tensor] = field(default_factory=list)
    """Labels whose groups must keep two channels (an axis ``squeeze`` would drop at one)."""
    size_ties: list[tuple[torch.Tensor, torch.Tensor, Fraction, str, tuple[str, int] | None]] = field(default_factory=list)

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
        """Record that entry ``i`` of ``name`` along ``axis`` belongs to channel ``labels[i]``.

        A tensor used again (a module called twice, a weight tied to another layer, one scale
        multiplying two branches) ties the channels its entries serve in every use: entry ``i``
        can only be removed from all of them at once.
        """
        if labels is None:
            return
        name = self.aliases.get(name, name)
        line, key = labels.reshape(-1), (name, axis, kind)
        seen = self.member_lines.get(key)
        if seen is not None and len(seen) != len(line):
            self.pin([seen, line], f"'{name}' is used along axis {axis} with {len(seen)} and {len(line)} entries")
            return
        if seen is not None:
            self.labels.union(seen, line)
            alone = (seen >= 0) != (line >= 0)  # an entry serving a channel in one use and none in another
            if bool(alone.any()):
                self.pin([seen[alone], line[alone]], f"'{name}' also serves entries that belong to no prunable channel")
            if bool((seen >= 0).any()):
                return  # already a member; its channels now stand for both uses
        self.member_lines[key] = line
        if bool((line >= 0).any()):
            self.members.append((name, axis, line, kind))

    def pin(self, labels: Any, reason: str) -> None:
        leaves = pytree.tree_leaves(labels)
        for sizes in [leaf for leaf in leaves if isinstance(leaf, _Sizes)]:
            leaves.extend(line for line in sizes.lines if line is not None)
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor) and bool((leaf >= 0).any()):
                self.pins.append((leaf.reshape(-1), reason))

    def sizes_of(self, node: fx.Node, source: Any, dim: Any = None) -> Any:
        """``x.shape`` / ``x.size(dim)`` of a labelled tensor: the sizes and the channels they count."""
        labels, spec = self.env.get(source), self.spec(source)
        if not isinstance(labels, torch.Tensor) or not isinstance(spec, TensorSpec):
            return self.spec(node)
        axes = labelled_axes(labels)

        def line(axis: int) -> torch.Tensor | None:
            if axis not in axes:
                return None
            found = along(labels, axis, spec.shape[axis])
            return found if found is not None else labels.reshape(-1)

        if dim is None:
            return _Sizes(self.spec(node), tuple(line(axis) for axis in range(len(spec.shape))))
        return _Sizes(self.spec(node), (line(dim % len(spec.shape)),))

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
        channel_axis = _channel_axis(ndim, module.weight.dim())
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
            if not transposed and bool((line >= 0).all()):
                # Grouped: weight column j serves input channel j of every group, so removing it removes
                # position j from all groups at once; tie those channels together.
                per_group = line.reshape(groups, -1)
                for other in per_group[1:]:
                    self.labels.union(per_group[0], other)
                self.member(f"{name}.weight", in_axis, per_group[0])
            else:
                reason = f"'{qualname(node)}' is a grouped convolution (groups={groups}) reading channels it cannot prune"
                self.pin(line, reason)
            out = self.new_labels(qualname(node), module.out_channels, channel_axis, ndim)
            self.segments.append((out.reshape(-1), groups))
            if groups == module.in_channels and not bool((line >= 0).all()):
                # Pruned, its outputs would read as those of a depthwise layer whose inputs were pruned.
                self.pin(out, f"'{qualname(node)}' is a depthwise convolution on channels it cannot prune")
            if transposed:  # its weight holds out_channels / groups columns, each serving every group
                self.pin(out, f"'{qualname(node)}' is a grouped transposed convolution, whose outputs it cannot prune")
                return out
        self.member(f"{name}.weight", out_axis, out)
        if bias:
            self.member(bias, 0, out)
        return out

    def attention(self, node: fx.Node, module: nn.MultiheadAttention, name: str) -> Any:
        """``nn.MultiheadAttention``: the embedding channels flow through; heads constrain them.

        torch's packed projection ties the width of q, k and v to the embedding width, so
        embedding channel ``i`` is pruned together with row ``i`` of q, k and v and column
        ``i`` of the output projection. Every head must keep the same width: the channels
        form ``num_heads`` equal segments.
        """
        names = ("query", "key", "value")
        bound = {**dict(zip(names, node.args)), **{k: v for k, v in node.kwargs.items() if k in names}}
        values = [self.env.get(bound.get(key)) for key in names]
        spec = self.spec(node)
        width = module.embed_dim
        lines = [along(v, -1, width) if isinstance(v, torch.Tensor) else None for v in values]
        if not module._qkv_same_embed_dim or any(line is None or not bool((line >= 0).all()) for line in lines):
            return self.unknown(node, node.args, node.kwargs, "an attention whose inputs are not all prunable embeddings")
        line = lines[0]
        for other in lines[1:]:
            self.labels.union(line, other)
        packed = torch.cat([line, line, line])
        self.member(f"{name}.in_proj_weight", 1, line)
        self.member(f"{name}.in_proj_weight", 0, packed)
        if module.in_proj_bias is not None:
            self.member(f"{name}.in_proj_bias", 0, packed)
        for extra in ("bias_k", "bias_v"):
            if getattr(module, extra) is not None:
                self.member(f"{name}.{extra}", 2, line)
        self.member(f"{name}.out_proj.weight", 0, line)
        self.member(f"{name}.out_proj.weight", 1, line)
        if module.out_proj.bias is not None:
            self.member(f"{name}.out_proj.bias", 0, line)
        self.segments.append((line, module.num_heads))
        shape = [1] * len(spec[0].shape)
        shape[-1] = width
        return (line.reshape(shape), *_unlabelled_like(tuple(spec[1:])))

    def functional_layer(self, node: fx.Node) -> Any:
        """``F.conv*d`` / ``F.linear`` whose weight (and bias) are parameters read with ``get_attr``."""
        linear = node.target is F.linear
        names = ("input", "weight", "bias") if linear else ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        bound = {**dict(zip(names, node.args)), **node.kwargs}
        x, weight = self.env.get(bound.get("input")), self.env.get(bound.get("weight"))
        bias = self.env.get(bound["bias"]) if isinstance(bound.get("bias"), fx.Node) else None
        spec = self.spec(node)
        if not isinstance(x, torch.Tensor) or not isinstance(spec, TensorSpec):
            return self.unknown(node, node.args, node.kwargs, "a layer call on a non-tensor")
        if not isinstance(weight, _Param) or (bound.get("bias") is not None and not isinstance(bias, _Param)):
            self.pin(x, f"'{qualname(node)}' uses a weight computed in the graph or passed as an input, which pruning cannot shrink")
            return _unlabelled_like(spec)
        if bound.get("groups", 1) != 1:
            self.pin(x, f"'{qualname(node)}' is a grouped functional convolution")
            return _unlabelled_like(spec)
        ndim = len(spec.shape)
        channel_axis = ndim - 1 if linear else _channel_axis(ndim, weight.tensor.dim())
        line = along(x, channel_axis, weight.tensor.shape[1])
        if line is None:
            self.pin(x, f"'{qualname(node)}' reads channels spread over several axes")
        self.member(weight.name, 1, line)
        out = self.new_labels(qualname(node), weight.tensor.shape[0], channel_axis, ndim)
        self.member(weight.name, 0, out)
        if bias is not None:
            self.member(bias.name, 0, out)
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
        if _norm_size_attribute(module) is not None:  # no tensor to shrink: its size is rewritten
            self.member(qualname(node), 0, line, kind="shape")
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
        if not isinstance(out_spec, TensorSpec):  # arithmetic on sizes
            sizes = [v for v in self.value(tuple(args)) if isinstance(v, _Sizes)]
            lines = tuple(line for size in sizes for line in size.lines if line is not None)
            return _Sizes(out_spec, lines, scale=None) if lines else out_spec
        operands = []
        for arg, value in zip(args, self.value(tuple(args))):
            if isinstance(value, _Param):
                operands.append((value, value.shape()))
            elif isinstance(value, torch.Tensor):
                operands.append((value, tuple(self.spec(arg).shape)))
            elif isinstance(value, _Sizes):  # y / y.size(1) ** 0.5: the value changes as its channels are pruned
                self.pin(value, f"'{qualname(node)}' computes with the number of channels, which pruning would change")
        return self.merge(node, operands, out_spec.shape)

    def merge(self, node: fx.Node, operands: Sequence[tuple[Any, tuple[int, ...]]], shape: Sequence[int]) -> torch.Tensor:
        """Broadcast ``operands`` (labels or parameters, with their real shapes) to ``shape`` and merge them.

        Labels meeting at one position become one channel; a parameter's entries along a
        labelled axis become a member; a tensor that carries no labels pins what it meets.
        """
        labelled = [(v, s) for v, s in operands if isinstance(v, torch.Tensor) and bool((v >= 0).any())]
        result = unlabelled(len(shape))
        if labelled:
            broadcast = [torch.broadcast_to(v, _pad(v.shape, len(shape))) for v, _ in labelled]
            partly = any(not bool((v >= 0).all()) for v in broadcast)
            result = broadcast[0]
            for other in broadcast[1:]:
                left, right = torch.broadcast_tensors(result, other)
                self.labels.union(left.reshape(-1), right.reshape(-1))
                alone = ((left >= 0) != (right >= 0)) if partly else None  # a channel meeting entries of no channel
                if alone is not None and bool(alone.any()):
                    self.pin([left[alone], right[alone]], f"'{qualname(node)}' combines channels with entries that cannot be pruned")
                result = torch.where(left >= 0, left, right)
            result = compact(result.contiguous())
        full = expand(result, shape)
        for value, operand_shape in operands:
            offset = len(shape) - len(operand_shape)
            for axis, size in enumerate(operand_shape):
                if size == 1:
                    continue
                if result.shape[axis + offset] == 1:
                    if isinstance(value, _Param):  # entries serving no channel here: another use must not prune them
                        self.member(value.name, axis, torch.full((size,), NO_LABEL))
                    continue
                line = along(result, axis + offset, shape[axis + offset])
                if isinstance(value, _Param):
                    if line is None:
                        self.pin(full, f"'{qualname(node)}' reads parameter '{value.name}' across labelled axes")
                    else:
                        self.member(value.name, axis, line)
                        self.expanded_sizes(value, axis, line)
                elif bool((value == NO_LABEL).all()):
                    self.pin(full, f"'{qualname(node)}' combines the channels with a tensor that cannot be pruned")
        return result

    def expanded_sizes(self, param: _Param, axis: int, line: torch.Tensor) -> None:
        """A parameter's entries along ``axis`` follow ``line``'s channels: so must sizes its expands wrote there."""
        for expansion in param.expansions:
            sizes = size_arguments(expansion)
            if sizes is not None and len(sizes) == param.tensor.dim() and isinstance(sizes[axis], int) and sizes[axis] > 1:
                self.member(qualname(expansion), axis, line, kind="shape")

    def concat(self, node: fx.Node, args: Sequence[Any], kwargs: dict) -> Any:
        """torch.cat without expanding labels to full size.

        Along the channel axis the inputs' labels are laid end to end. Along any other axis
        (tokens, batch) entries at the same channel position meet the same consumer weights,
        so the inputs' channels merge as in an elementwise op, and a parameter concatenated
        there (a class token) becomes a member.
        """
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        out_spec = self.spec(node)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int) or not isinstance(out_spec, TensorSpec):
            return self.movement(node, node.target, args, kwargs)
        shape = out_spec.shape
        dim %= len(shape)
        values = [self.env[t] if isinstance(t, fx.Node) else t for t in tensors]
        real = [tuple(v.tensor.shape) if isinstance(v, _Param) else tuple(self.spec(t).shape) for v, t in zip(values, tensors)]
        label_axes = [set(labelled_axes(v)) for v in values if isinstance(v, torch.Tensor)]
        if all(axes <= {dim} for axes in label_axes):
            parts = []
            for value, size in zip(values, real):
                part_shape = [1] * len(shape)
                part_shape[dim] = size[dim]
                if isinstance(value, _Param):
                    parts.append(torch.full(part_shape, NO_LABEL))
                else:
                    parts.append(value.reshape(_pad(value.shape, len(shape))).expand(part_shape))
            return compact(torch.cat(parts, dim))
        if all(dim not in axes for axes in label_axes):
            squeezed = list(shape)
            squeezed[dim] = 1
            operands = []
            for value, size in zip(values, real):
                size = list(value.shape() if isinstance(value, _Param) else size)
                size[dim] = 1
                operands.append((value, tuple(size)))
            return self.merge(node, operands, squeezed)
        return self.movement(node, node.target, args, kwargs)

    def movement(self, node: fx.Node, function: Callable[..., Any], args: Sequence[Any], kwargs: dict) -> Any:
        """Run a data-movement operation on the labels expanded to their real shapes."""

        def real(arg: Any) -> Any:
            if isinstance(arg, slice):  # bounds computed in the graph (x[:, : x.shape[1] // 2])
                return slice(real(arg.start), real(arg.stop), real(arg.step))
            if not isinstance(arg, fx.Node):
                return arg
            value = self.env[arg]
            if isinstance(value, _Param):
                return torch.full(value.tensor.shape, NO_LABEL)
            if isinstance(value, _Sizes):
                return value.value
            return _expand_value(value, self.spec(arg))

        indices = pytree.tree_leaves((tuple(args[1:]), dict(kwargs)))
        if any(isinstance(i, fx.Node) and isinstance(self.env[i], (torch.Tensor, _Param)) for i in indices):
            return self.unknown(node, args, kwargs, "indexing with a tensor")
        result = _run_on_labels(function, pytree.tree_map(real, tuple(args)), pytree.tree_map(real, dict(kwargs)))
        if node.target in _SELECTIONS and isinstance(self.env.get(args[0]), torch.Tensor):
            self.pin_selected(node, function, args, kwargs, result)
        if node.target == "unflatten" and isinstance(self.env.get(args[0]), torch.Tensor):
            labels, dim = self.env[args[0]], args[1] if len(args) > 1 else kwargs.get("dim")
            if isinstance(dim, int) and labels.dim() and dim % labels.dim() in labelled_axes(labels):
                self.pin(labels, f"'{qualname(node)}' splits the channel axis into sizes written in the graph")
        result = pytree.tree_map(lambda t: compact(t) if isinstance(t, torch.Tensor) else t, result)
        leaves, structure = pytree.tree_flatten(result)
        spread = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor) and len(labelled_axes(leaf)) > 1]
        if spread:
            positions = self.positions(function, args, kwargs)
            for i in spread:
                leaves[i] = self.tie(node, leaves[i], positions[i] if positions is not None else None)
            result = pytree.tree_unflatten(leaves, structure)
        if isinstance(result, torch.Tensor):
            self.literal_sizes(node, result)
        return result

    def pin_selected(self, node: fx.Node, function: Callable[..., Any], args: Sequence[Any], kwargs: dict, selected: Any) -> None:
        """Pin the channels of a slice or index that keeps some channels and drops or reorders others.

        Its positions are written in the graph, so after pruning they would pick other channels.
        Selecting along axes without channels (a token, every other pixel) keeps every channel
        equally often and in order, and is fine.
        """
        source = args[0]
        labels = self.env[source]
        if not isinstance(selected, torch.Tensor) or not bool((labels >= 0).any()) or _leaves_channels(node, labels):
            return
        reason = f"'{qualname(node)}' selects channels by positions written in the graph, which pruning would shift"
        size = len(self.labels)
        before = torch.bincount(expand(labels, self.spec(source).shape).reshape(-1) + 1, minlength=size + 1)
        after = torch.bincount(selected.reshape(-1) + 1, minlength=size + 1)
        present = before > 0
        before, after = before[present], after[present]
        # Every channel, and the entries of no channel (bucket 0), must keep the same share of its
        # entries: after / before equal for all.
        if not torch.equal(after * before[0], before * after[0]) or not self.selection_follows_pruning(function, args, kwargs):
            self.pin(labels, reason)

    def selection_follows_pruning(self, function: Callable[..., Any], args: Sequence[Any], kwargs: dict) -> bool:
        """Whether a selection from a tensor with channels along one axis, run after some channels are
        removed, picks what it picked before less their entries (in the same order).

        Tried on the entries' positions with the first, the last and every other channel removed;
        a selection that fails on the smaller tensor (a literal index past its end) does not follow.
        """
        source = args[0]
        labels, shape = self.env[source], self.spec(source).shape
        axes = labelled_axes(labels)
        if len(axes) != 1:
            return True  # channels spread over several axes: the equal-share test alone
        (axis,) = axes
        line = self.roots(labels.reshape(-1))
        channels = line[line >= 0].unique()
        position = expand(fresh(0, shape[axis], axis, len(shape)), shape)
        whole = self.run_on(function, args, kwargs, source, position)
        varying = _varying_axes(whole) if isinstance(whole, torch.Tensor) else []
        if len(varying) != 1:
            return False
        (out_axis,) = varying
        for removed in (channels[:1], channels[-1:], channels[::2]):
            kept = torch.isin(line, removed, invert=True).nonzero().reshape(-1)
            expected = whole.index_select(out_axis, torch.isin(_line_at(whole, out_axis), kept).nonzero().reshape(-1))
            try:
                pruned = self.run_on(function, args, kwargs, source, position.index_select(axis, kept))
            except (RuntimeError, IndexError, ValueError):
                return False
            if not isinstance(pruned, torch.Tensor) or not torch.equal(pruned, expected):
                return False
        return True

    def positions(self, function: Callable[..., Any], args: Sequence[Any], kwargs: dict) -> list[Any] | None:
        """Where a movement puts each entry of its one labelled input, when that input has one labelled axis.

        The operation is run again on the entries' positions along that axis instead of their labels.
        """
        sources = [a for a in pytree.tree_leaves((tuple(args), dict(kwargs))) if isinstance(a, fx.Node)]
        labelled = [a for a in sources if isinstance(self.env[a], torch.Tensor) and bool((self.env[a] >= 0).any())]
        if len(labelled) != 1 or len(labelled_axes(self.env[labelled[0]])) != 1:
            return None
        (source,) = labelled
        labels = self.env[source]
        (axis,) = labelled_axes(labels)
        index = expand(fresh(0, labels.shape[axis], axis, labels.dim()), self.spec(source).shape)
        moved = self.run_on(function, args, kwargs, source, index)
        return [compact(t) if isinstance(t, torch.Tensor) else t for t in pytree.tree_leaves(moved)]

    def run_on(self, function: Callable[..., Any], args: Sequence[Any], kwargs: dict, source: fx.Node, value: torch.Tensor) -> Any:
        """Run a movement with ``value`` in place of ``source`` (other tensors as entries of no channel)."""

        def real(arg: Any) -> Any:
            if isinstance(arg, slice):
                return slice(real(arg.start), real(arg.stop), real(arg.step))
            if arg is source:
                return value
            if isinstance(arg, fx.Node) and isinstance(self.env[arg], _Sizes):
                return self.env[arg].value
            if isinstance(arg, fx.Node) and isinstance(self.env[arg], (torch.Tensor, _Param)):
                return torch.full(self.spec(arg).shape, NO_LABEL)
            return self.env[arg] if isinstance(arg, fx.Node) else arg

        return _run_on_labels(function, pytree.tree_map(real, tuple(args)), pytree.tree_map(real, dict(kwargs)))

    def roots(self, labels: torch.Tensor) -> torch.Tensor:
        """The set each label belongs to now (-1 stays -1)."""
        return self.labels.find(labels)

    def tie(self, node: fx.Node, labels: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """Channels spread over several axes (heads, channel shuffle, pixel shuffle): let one axis carry them.

        Pruning may remove entries along one axis only, the same ones at every index of the
        other labelled axes; so the labels there are merged, and the result carries labels along
        that axis alone. The axis chosen is the one along which neighbouring entries came from
        neighbouring channels (a head's width, not the head count). Channels that cannot be
        laid out so are pinned.
        """
        reason = f"'{qualname(node)}' spreads channels over several axes in a way pruning cannot follow"
        candidates = []
        if bool((labels >= 0).all()) and positions is not None and positions.shape == labels.shape:
            for axis in labelled_axes(labels):
                line = _line_at(positions, axis)
                if bool((line >= 0).all()) and len(line.unique()) == len(line):
                    candidates.append((abs(int(line[1] - line[0])), axis))
        varying = _varying_axes(self.roots(labels)) if bool((labels >= 0).all()) else []
        if len(varying) == 1:  # already tied (a permute of a head split)
            keep = varying[0]
        elif candidates:
            keep = min(candidates)[1]
            for axis in labelled_axes(labels):
                if axis != keep:
                    self.labels.union(labels.reshape(-1), labels.narrow(axis, 0, 1).expand_as(labels).reshape(-1))
        else:
            self.pin(labels, reason)
            return labels
        shape = [1] * labels.dim()
        shape[keep] = labels.shape[keep]
        return _line_at(labels, keep).reshape(shape)

    def literal_sizes(self, node: fx.Node, result: torch.Tensor) -> None:
        """Sizes written into a view/reshape/expand for a channel axis must follow pruning: record them."""
        sizes = size_arguments(node)
        if sizes is None or len(sizes) != result.dim():
            return
        spec = self.spec(node)
        for axis, size in enumerate(sizes):
            labelled = result.shape[axis] > 1 or bool((result >= 0).any())
            line = along(result, axis, spec.shape[axis]) if labelled else None
            if isinstance(size, int) and size > 1 and result.shape[axis] > 1 and line is not None:
                self.member(qualname(node), axis, line, kind="shape")
            elif isinstance(size, fx.Node) and isinstance(self.env.get(size), _Sizes):
                self.computed_size(node, axis, self.env[size], result, line)

    def computed_size(self, node: fx.Node, axis: int, size: _Sizes, result: torch.Tensor, target: torch.Tensor | None) -> None:
        """A size read from another tensor gives this axis its length.

        When it counts the same channels (in proportion), it follows pruning by itself; that is
        checked once the channels are known. When it counts other channels (a width read from
        the block's input to merge attention heads) times constants written in the graph, then
        on an axis that holds nothing but channels pruning writes the kept count in its place
        (a ``shape`` member); otherwise both sides are pinned.
        """
        (source,) = size.lines if len(size.lines) == 1 else (None,)
        counted = [line for line in size.lines if line is not None]
        if not counted:
            if target is not None and bool((target >= 0).any()):
                self.pin(result, f"'{qualname(node)}' sizes channels with a size that does not follow pruning")
            return
        static = size.scale is not None and source is not None
        rewrite = (qualname(node), axis) if static and target is not None and bool((target >= 0).all()) else None
        if static and target is not None and len(source) * size.scale == len(target):
            # The counts must stay in proportion: checked once the channels are known.
            reason = f"'{qualname(node)}' shapes a tensor with sizes computed from other channels"
            self.size_ties.append((source, target, size.scale, reason, rewrite))
            return
        if rewrite is not None:
            self.member(*rewrite, target, kind="shape")
            return
        self.pin(counted, f"'{qualname(node)}' shapes a tensor with sizes computed from pruned channels")
        self.pin(result, f"'{qualname(node)}' shapes a tensor with sizes computed from pruned channels")

    def unknown(self, node: fx.Node, args: Sequence[Any], kwargs: dict, what: str) -> Any:
        """Pin every channel reaching an operation the analyzer does not know, and those its parameters serve elsewhere."""
        values = self.value((tuple(args), dict(kwargs)))
        self.pin(values, f"'{qualname(node)}' is {what}, which the analyzer does not know")
        used = [leaf.name for leaf in pytree.tree_leaves(values) if isinstance(leaf, _Param)]
        if node.op == "call_module":
            module = self.modules[node.target]
            used += [f"{node.target}.{name}" for name, _ in (*module.named_parameters(), *module.named_buffers())]
        self.opaque.update(dict.fromkeys((self.aliases.get(name, name) for name in used), qualname(node)))
        return _unlabelled_like(self.spec(node))


def _norm_size_attribute(module: nn.Module) -> str | None:
    """The size attribute of a norm layer with no parameter or buffer that pruning shrinks, or None.

    Such a layer's size (``LayerNorm.normalized_shape``, ``GroupNorm.num_channels``, a BatchNorm's or
    InstanceNorm's ``num_features``) is a ``shape`` member, rewritten where it is stored.
    """
    if isinstance(module, nn.LayerNorm):
        return "normalized_shape" if module.weight is None else None
    if isinstance(module, nn.GroupNorm):
        return "num_channels" if module.weight is None else None
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return "num_features" if module.weight is None and module.running_mean is None else None
    return None


def size_arguments(node: fx.Node) -> list[Any] | None:
    """The sizes written into a node that pruning must update, or None for other nodes.

    For view, reshape and expand: the target size of every output axis (ints, -1 or
    nodes); for layer_norm its ``normalized_shape``; for a norm module without parameters or
    buffers the size attribute :func:`_norm_size_attribute` names.
    """
    if node.op == "call_module":
        module = node.graph.owning_module.get_submodule(node.target)
        attribute = _norm_size_attribute(module)
        if attribute is None:
            return None
        size = getattr(module, attribute)
        return list(size) if attribute == "normalized_shape" else [size]
    if node.target in ("view", "reshape", "expand") or node.target is torch.reshape:
        rest = node.args[1:]
        keyword = next((key for key in ("shape", "size") if key in node.kwargs), None)
        if not rest and keyword is not None:  # reshape(shape=...), view(size=...), expand(size=...)
            rest = (node.kwargs[keyword],)
        if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
            return list(rest[0])
        return list(rest)
    if node.target in (F.layer_norm, torch.layer_norm):
        shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        return list(shape) if isinstance(shape, (list, tuple)) else None
    return None


def set_size_arguments(node: fx.Node, sizes: list[Any]) -> None:
    """Write ``sizes`` back where :func:`size_arguments` read them."""
    if node.op == "call_module":
        module = node.graph.owning_module.get_submodule(node.target)
        attribute = _norm_size_attribute(module)
        setattr(module, attribute, tuple(sizes) if attribute == "normalized_shape" else sizes[0])
        return
    kwargs = {k: v for k, v in node.kwargs.items() if k not in ("shape", "size", "normalized_shape")}
    if node.op == "call_method":
        node.args = (node.args[0], *sizes)
    else:
        node.args = (node.args[0], sizes, *node.args[2:])
    node.kwargs = kwargs


def _expand_value(value: Any, spec: Any) -> Any:
    """Compact labels expanded to the real shapes given by ``spec``, inside tuples and lists too."""
    if isinstance(value, torch.Tensor) and isinstance(spec, TensorSpec):
        return expand(value, spec.shape)
    if isinstance(value, (tuple, list)) and isinstance(spec, (tuple, list)):
        return type(value)(_expand_value(v, s) for v, s in zip(value, spec))
    return value


def _run_on_labels(function: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Run a movement on broadcast (stride-0) label tensors; a ``view`` they cannot satisfy gets copies."""
    try:
        return function(*args, **kwargs)
    except RuntimeError:
        dense = pytree.tree_map(lambda t: t.contiguous() if isinstance(t, torch.Tensor) else t, (args, kwargs))
        return function(*dense[0], **dense[1])


def _leaves_channels(node: fx.Node, labels: torch.Tensor) -> bool:
    """Whether a getitem or narrow plainly keeps all of the one axis carrying channels (``x[:, 0]`` of ``B×T×C``)."""
    axes = labelled_axes(labels)
    if len(axes) != 1:
        return False
    if node.target in (torch.narrow, "narrow"):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dim, int) and dim % labels.dim() != axes[0]
    index = node.args[1] if len(node.args) > 1 else None
    entries = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for entry in entries if entry is not None and entry is not Ellipsis)
    if entries.count(Ellipsis) > 1 or consumed > labels.dim():
        return False
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        entries[at : at + 1] = [slice(None)] * (labels.dim() - consumed)
    axis = 0
    for entry in entries:
        if entry is None:
            continue
        if axis == axes[0]:
            return entry == slice(None)
        axis += 1
    return True  # past the indexed axes: kept whole


def _channel_axis(ndim: int, weight_dim: int) -> int:
    """A convolution's channel axis in an ``ndim``-dimensional input or output: 1 when batched, 0 when not."""
    return 1 if ndim == weight_dim else 0


def _line_at(labels: torch.Tensor, axis: int) -> torch.Tensor:
    """The entries along ``axis`` at index 0 of every other axis."""
    return labels.movedim(axis, -1).reshape(-1, labels.shape[axis])[0]


def _varying_axes(labels: torch.Tensor) -> list[int]:
    """Axes along which the entries change."""
    return [axis for axis in labelled_axes(labels) if not torch.equal(labels, labels.narrow(axis, 0, 1).expand_as(labels))]


def _pad(shape: Sequence[int], ndim: int) -> tuple[int, ...]:
    return (1,) * (ndim - len(shape)) + tuple(shape)


def _unlabelled_like(spec: Any) -> Any:
    return pytree.tree_map(lambda s: unlabelled(len(s.shape)) if isinstance(s, TensorSpec) else s, spec)


def _first_tensor(walk: _Walk, args: Sequence[Any]) -> tuple[fx.Node, torch.Tensor] | None:
    for arg in args:
        if isinstance(arg, fx.Node) and isinstance(walk.env.get(arg), torch.Tensor):
            return arg, walk.env[arg]
    return None


def _spatial_axes(op: Any) -> int | None:
    """How many trailing axes a pooling op works on (``MaxPool1d``: 1), or None when it takes all after the channel axis."""
    name = op.__name__  # a module class or a function
    return int(name[-2]) if name[-2:] in ("1d", "2d", "3d") and not name.startswith("Upsampl") else None


def _channels_only(walk: _Walk, node: fx.Node, args: Sequence[Any], op: Any = None) -> Any:
    """Ops that change only spatial extent (pooling, interpolation): channel labels pass through.

    They work on the last ``_spatial_axes(op)`` axes (a 1-d pool of a ``B×C`` tensor, read as an
    unbatched ``C×L``, pools over the channels) or on every axis after the first two.
    """
    found, spec = _first_tensor(walk, args), walk.spec(node)
    if found is None:
        return _unlabelled_like(spec)
    _, labels = found
    count = _spatial_axes(op) if op is not None else None
    first = 2 if count is None else labels.dim() - count
    if any(axis >= first for axis in labelled_axes(labels)):
        walk.pin(labels, f"'{qualname(node)}' pools over labelled axes")
        return _unlabelled_like(spec)
    return tuple(labels for _ in spec) if isinstance(spec, tuple) else labels  # with return_indices: the indices too


def _expanded_parameter(walk: _Walk, node: fx.Node) -> Any:
    """A parameter broadcast along its size-1 axes (a class token over the batch) is still that parameter."""
    param, spec = walk.env[node.args[0]], walk.spec(node)
    if isinstance(spec, TensorSpec) and len(spec.shape) == param.tensor.dim():
        return _Param(param.name, param.tensor.expand(spec.shape), (*param.expansions, node))
    return walk.movement(node, lambda self, *a, **k: getattr(self, node.target)(*a, **k), node.args, node.kwargs)


_SAME_VALUES = {"data", "real"}
"""Tensor attributes holding the tensor's own values (for a real tensor)."""
_TRANSPOSES = {"T", "mT", "H", "mH"}


def _attribute(walk: _Walk, node: fx.Node, source: Any, name: Any) -> Any:
    """``x.shape`` (sizes), ``x.data`` / ``x.real`` (the same channels), ``x.T`` / ``x.mT`` (moved);
    any other tensor-valued attribute of a labelled tensor pins it."""
    if name == "shape":
        return walk.sizes_of(node, source)
    labels = walk.env.get(source) if isinstance(source, fx.Node) else None
    if not isinstance(walk.spec(node), TensorSpec) or not isinstance(labels, torch.Tensor):
        return walk.spec(node)
    if name in _SAME_VALUES:
        return labels
    if name in _TRANSPOSES:
        return walk.movement(node, lambda tensor: getattr(tensor, "mT" if name in ("mT", "mH") else "T"), [source], {})
    return walk.unknown(node, [source], {}, f"the tensor attribute .{name}")


def _hooked(walk: _Walk, node: fx.Node, module: nn.Module) -> Any:
    """A module with forward hooks is an unknown op; a hooked conv or linear layer is listed as a producer whose
    channels are pinned, so the report says why it was not pruned."""
    what = f"a {type(module).__name__} module with forward hooks"
    out = walk.unknown(node, node.args, node.kwargs, what)
    spec = walk.spec(node)
    if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or not isinstance(spec, TensorSpec):
        return out
    ndim = len(spec.shape)
    axis = ndim - 1 if isinstance(module, nn.Linear) else _channel_axis(ndim, module.weight.dim())
    labels = walk.new_labels(qualname(node), spec.shape[axis], axis, ndim)
    walk.pin(labels, f"'{qualname(node)}' is {what}, which the analyzer does not know")
    return labels


def _index_sizes(walk: _Walk, node: fx.Node) -> Any:
    """``x.shape[i]`` or ``x.shape[a:b]``: the sizes picked, with the channels they count."""
    sizes, index = walk.env[node.args[0]], node.args[1]
    if isinstance(index, int):
        return _Sizes(walk.spec(node), (sizes.lines[index],), sizes.scale)
    if isinstance(index, slice):
        return _Sizes(walk.spec(node), tuple(sizes.lines[index]), sizes.scale)
    return _Sizes(walk.spec(node), tuple(sizes.lines), scale=None)


def _functional_layer_norm(walk: _Walk, node: fx.Node) -> Any:
    """``F.layer_norm(x, shape, weight, bias)`` over the last axis: its weight and bias entries follow the channels."""
    names = ("input", "normalized_shape", "weight", "bias")
    bound = {**dict(zip(names, node.args)), **node.kwargs}
    labels = walk.env.get(bound["input"])
    shape = bound["normalized_shape"]
    if not isinstance(labels, torch.Tensor) or not isinstance(shape, (list, tuple)) or len(shape) != 1:
        return walk.unknown(node, node.args, node.kwargs, "a layer_norm over several axes")
    line = along(labels, -1, shape[0])
    if line is None:
        walk.pin(labels, f"'{qualname(node)}' normalizes channels spread over several axes")
        return labels
    walk.member(qualname(node), 0, line, kind="shape")
    for key in ("weight", "bias"):
        value = walk.env.get(bound[key]) if isinstance(bound.get(key), fx.Node) else None
        if isinstance(value, _Param):
            walk.member(value.name, 0, line)
        elif bound.get(key) is not None:
            walk.pin(labels, f"'{qualname(node)}' scales the channels by a tensor that cannot be pruned")
    return labels


def _reduction(walk: _Walk, node: fx.Node) -> Any:
    """mean/sum/amax/amin over axes that carry no channels keep the channels; over channel axes, pin them."""
    source = node.args[0]
    labels, spec = walk.env.get(source), walk.spec(source)
    if not isinstance(labels, torch.Tensor) or not isinstance(spec, TensorSpec):
        return walk.unknown(node, node.args, node.kwargs, "a reduction of a non-tensor")
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dims is None:
        dims = tuple(range(labels.dim()))
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if not all(isinstance(d, int) for d in dims) or not isinstance(keepdim, bool):
        return walk.unknown(node, node.args, node.kwargs, "a reduction over axes computed in the graph")
    dims = tuple(sorted(d % labels.dim() for d in dims)) if labels.dim() else ()
    if any(d in labelled_axes(labels) for d in dims):
        walk.pin(labels, f"'{qualname(node)}' reduces over the channel axis")
        return _unlabelled_like(walk.spec(node))
    if keepdim:
        return labels
    kept = [size for axis, size in enumerate(labels.shape) if axis not in dims]
    return labels.reshape(kept)


def _softmax(walk: _Walk, node: fx.Node, source: Any, dim: Any) -> Any:
    """softmax / log_softmax / softmin: over an axis without channels they keep the channels; over channels, pin them.

    (Each output depends on every entry along ``dim``; removing channels there changes the rest.)
    """
    labels, spec = walk.env.get(source), walk.spec(source)
    if not isinstance(labels, torch.Tensor) or not isinstance(spec, TensorSpec) or not isinstance(dim, int):
        return walk.unknown(node, node.args, node.kwargs, "a softmax over an axis it cannot tell")
    if labels.dim() and dim % labels.dim() in labelled_axes(labels):
        walk.pin(labels, f"'{qualname(node)}' normalizes over the channel axis")
        return _unlabelled_like(walk.spec(node))
    return labels


def _prelu(walk: _Walk, node: fx.Node, module: nn.PReLU, labels: torch.Tensor) -> Any:
    """``nn.PReLU``: one slope for all, or one per channel along axis 1 (the weight becomes a member)."""
    if module.num_parameters == 1:
        return labels
    line = along(labels, 1 if labels.dim() > 1 else 0, module.num_parameters)
    if line is None:
        walk.pin(labels, f"'{qualname(node)}' has per-channel slopes for channels spread over several axes")
        return labels
    walk.member(f"{node.target}.weight", 0, line)
    return labels


def _size_arithmetic(walk: _Walk, node: fx.Node) -> Any:
    """Arithmetic on sizes: a size divided or multiplied by a constant still counts a known share of its channels.

    The constant must be written in the graph: a size read from a tensor may change with the input.
    """
    values = walk.value(tuple(node.args))
    sizes = [v for v in values if isinstance(v, _Sizes)]
    lines = tuple(line for size in sizes for line in size.lines if line is not None)
    if not lines:
        return walk.spec(node)
    if len(values) == 2 and len(sizes) == 1 and len(sizes[0].lines) == 1 and sizes[0].scale is not None:
        size = sizes[0]
        constant = node.args[1] if values[0] is size else node.args[0]
        if type(constant) is int and constant > 0:
            if node.target is operator.floordiv and values[0] is size:
                return _Sizes(walk.spec(node), size.lines, size.scale / constant)
            if node.target is operator.mul:
                return _Sizes(walk.spec(node), size.lines, size.scale * constant)
    return _Sizes(walk.spec(node), lines, scale=None)


def _contracted(walk: _Walk, node: fx.Node, sides: Sequence[torch.Tensor]) -> bool:
    """Merge channels that a product contracts against each other (last axis of every side).

    Each side must carry its channels along the contracted axis only; otherwise they are
    pinned. Returns whether the channels were merged.
    """
    reason = f"'{qualname(node)}' contracts channels in a way pruning cannot follow"
    for side in sides:
        if not bool((side >= 0).all()) or _varying_axes(walk.roots(side)) not in ([], [side.dim() - 1]):
            walk.pin(list(sides), reason)
            return False
    left, right = torch.broadcast_tensors(sides[0].unsqueeze(-2), sides[1].unsqueeze(-3))
    walk.labels.union(left.reshape(-1), right.reshape(-1))
    return True


def _matmul(walk: _Walk, node: fx.Node) -> Any:
    """``a @ b``: channels on the contracted axis of both sides merge; the other axes' channels pass through.

    A parameter on one side (``x @ W``) becomes a member along the contracted axis.
    """
    bound = {**dict(zip(("input", "other"), node.args)), **node.kwargs}
    sources = [bound.get("input"), bound.get("other")]
    spec = walk.spec(node)
    specs = [walk.spec(source) for source in sources]
    values = [walk.env.get(source) if isinstance(source, fx.Node) else None for source in sources]
    if not isinstance(spec, TensorSpec) or not all(isinstance(s, TensorSpec) and len(s.shape) >= 2 for s in specs):
        return walk.unknown(node, node.args, node.kwargs, "a matrix product of vectors or non-tensors")
    if not all(isinstance(v, (torch.Tensor, _Param)) for v in values):
        return walk.unknown(node, node.args, node.kwargs, "a matrix product of non-tensors")
    ndim = len(spec.shape)
    labels = [v.reshape(_pad(v.shape, ndim)) if isinstance(v, torch.Tensor) else None for v in values]
    # The contracted axis is the last of the left side and the second to last of the right side.
    along_contraction = [labels[0], labels[1].transpose(-1, -2) if labels[1] is not None else None]
    eats = [lab is not None and lab.shape[-1] > 1 for lab in along_contraction]
    if all(eats):
        _contracted(walk, node, along_contraction)
    elif any(eats):
        side = eats.index(True)
        consumer, other = along_contraction[side], values[1 - side]
        if isinstance(other, _Param) and other.tensor.dim() == 2 and _varying_axes(walk.roots(consumer)) == [ndim - 1]:
            walk.member(other.name, 0 if side == 0 else 1, _line_at(consumer, ndim - 1))
        else:
            walk.pin(consumer, f"'{qualname(node)}' contracts channels with a tensor that cannot be pruned")
    passing = [lab for lab, eaten in zip(labels, eats) if lab is not None and not eaten and bool((lab >= 0).any())]
    if not passing:
        return unlabelled(ndim)
    return walk.merge(node, [(lab, tuple(lab.shape)) for lab in passing], spec.shape)


def einsum_subscripts(equation: str, ndims: Sequence[int]) -> tuple[list[str], str] | None:
    """The index letters of every operand and of the output of an einsum ``equation``, one per axis.

    An ellipsis becomes letters unused elsewhere, aligned from the right as broadcasting aligns
    axes; without ``->`` the output is the ellipsis then the letters used once, alphabetically,
    as torch defines it. None for equations this cannot read (a letter repeated in one operand).
    """
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    operands = inputs.split(",")
    if len(operands) != len(ndims) or not all(c.isalpha() for part in operands for c in part.replace("...", "")):
        return None
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in equation]
    widths = [ndim - len(part.replace("...", "")) if "..." in part else 0 for part, ndim in zip(operands, ndims)]
    ellipsis = "".join(spare[: max(widths, default=0)])
    expanded = [part.replace("...", ellipsis[len(ellipsis) - width :] if width else "") for part, width in zip(operands, widths)]
    if not arrow:
        counts = Counter("".join(expanded))
        output = "..." + "".join(sorted(c for c in counts if counts[c] == 1 and c not in ellipsis))
    output = output.replace("...", ellipsis)
    if any(len(part) != ndim or len(set(part)) != ndim for part, ndim in zip(expanded, ndims)) or len(set(output)) != len(output):
        return None
    return expanded, output


def _einsum(walk: _Walk, node: fx.Node) -> Any:
    """``torch.einsum``: operands meeting at an index letter merge their channels position by position.

    Each operand may carry channels along one axis. Every other operand with that axis's letter
    must carry channels there too (they merge — q and k contracted over a head's width), be a
    parameter (it becomes a member along that axis), or broadcast over it; summing the channels
    away alone, or contracting them with an ordinary tensor, pins them. The output carries the
    channels of its one labelled letter.
    """
    equation, *operands = node.args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    spec = walk.spec(node)
    values = [walk.env.get(o) if isinstance(o, fx.Node) else None for o in operands]
    specs = [walk.spec(o) if isinstance(o, fx.Node) else None for o in operands]
    readable = isinstance(equation, str) and isinstance(spec, TensorSpec) and not node.kwargs
    if not readable or not all(isinstance(s, TensorSpec) and isinstance(v, (torch.Tensor, _Param)) for s, v in zip(specs, values)):
        return walk.unknown(node, node.args, node.kwargs, "an einsum over non-tensors")
    subscripts = einsum_subscripts(equation, [len(s.shape) for s in specs])
    if subscripts is None:
        return walk.unknown(node, node.args, node.kwargs, f"an einsum {equation!r}")
    letters, output = subscripts
    labelled = [v for v in values if isinstance(v, torch.Tensor) and bool((v >= 0).any())]
    if not labelled:
        return unlabelled(len(spec.shape))
    reason = f"'{qualname(node)}' combines channels in a way pruning cannot follow"
    lines: dict[str, list[torch.Tensor]] = {}
    for value, part in zip(values, letters):
        if not isinstance(value, torch.Tensor) or not bool((value >= 0).any()):
            continue
        varying = _varying_axes(walk.roots(value)) if bool((value >= 0).all()) else []
        if len(varying) != 1:
            walk.pin(labelled, reason)
            return unlabelled(len(spec.shape))
        lines.setdefault(part[varying[0]], []).append(_line_at(value, varying[0]))
    for letter, found in lines.items():
        for other in found[1:]:
            walk.labels.union(found[0], other)
        users = 0
        for value, part, operand_spec in zip(values, letters, specs):
            if letter not in part or operand_spec.shape[part.index(letter)] == 1:
                continue
            users += 1
            axis = part.index(letter)
            if isinstance(value, _Param):
                walk.member(value.name, axis, found[0])
            elif not bool((value >= 0).any()) or _varying_axes(walk.roots(value)) != [axis]:
                walk.pin(labelled, f"'{qualname(node)}' contracts channels with a tensor that cannot be pruned")
                return unlabelled(len(spec.shape))
        if letter not in output and users == 1:
            walk.pin(labelled, f"'{qualname(node)}' reduces over the channel axis")
            return unlabelled(len(spec.shape))
    kept = [letter for letter in lines if letter in output]
    if len(kept) > 1:
        walk.pin(labelled, reason)
        return unlabelled(len(spec.shape))
    if not kept:
        return unlabelled(len(spec.shape))
    shape = [1] * len(spec.shape)
    shape[output.index(kept[0])] = spec.shape[output.index(kept[0])]
    return lines[kept[0]][0].reshape(shape)


def _attention_function(walk: _Walk, node: fx.Node) -> Any:
    """``F.scaled_dot_product_attention``: q and k channels are contracted together; the output carries v's."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = {**dict(zip(names, node.args)), **node.kwargs}
    spec = walk.spec(node)
    q, k, v = (walk.env.get(bound.get(key)) for key in names[:3])
    mask = walk.env.get(bound["attn_mask"]) if isinstance(bound.get("attn_mask"), fx.Node) else None
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)) or not isinstance(spec, TensorSpec):
        return walk.unknown(node, node.args, node.kwargs, "an attention over non-tensors")
    if bound.get("enable_gqa") or (isinstance(mask, torch.Tensor) and bool((mask >= 0).any())):
        return walk.unknown(node, node.args, node.kwargs, "an attention with grouped heads or a mask carrying channels")
    ndim = len(spec.shape)
    q, k, v = (t.reshape(_pad(t.shape, ndim)) for t in (q, k, v))
    if bool((q >= 0).any()) or bool((k >= 0).any()):
        _contracted(walk, node, (q, k))
    if v.shape[-2] > 1:
        walk.pin(v, f"'{qualname(node)}' mixes value channels across tokens")
        return unlabelled(ndim)
    return v


def _tie_shuffle_groups(walk: _Walk, node: fx.Node, groups: int) -> None:
    """``channel_shuffle``: the same position of every shuffle group must be pruned together.

    Otherwise the pruned shuffle would interleave different positions than the original did.
    """
    labels = walk.env.get(node.args[0])
    spec = walk.spec(node.args[0])
    if not isinstance(labels, torch.Tensor) or not isinstance(spec, TensorSpec) or len(spec.shape) < 2:
        return
    line = along(labels, 1, spec.shape[1])
    if line is None or not bool((line >= 0).all()) or len(line) % groups:
        walk.pin(labels, f"'{qualname(node)}' shuffles channels it cannot keep in step")
        return
    rows = line.reshape(groups, -1)
    for row in rows[1:]:
        walk.labels.union(rows[0], row)


_SPLIT_KEYWORDS = ("split_size_or_sections", "split_size")
"""The keywords ``torch.split`` and ``Tensor.split`` take their sizes by."""


def split_sizes(node: fx.Node) -> Any:
    """The sizes (or size) a split node cuts its input into, given by position or by keyword; None if missing."""
    if len(node.args) > 1:
        return node.args[1]
    return next((node.kwargs[key] for key in _SPLIT_KEYWORDS if key in node.kwargs), None)


def set_split_sizes(node: fx.Node, sizes: list[int]) -> None:
    """Write ``sizes`` where :func:`split_sizes` read them."""
    if len(node.args) > 1:
        node.args = (node.args[0], sizes, *node.args[2:])
    else:
        key = next(key for key in _SPLIT_KEYWORDS if key in node.kwargs)
        node.kwargs = {**node.kwargs, key: sizes}


def _split_sizes(walk: _Walk, node: fx.Node) -> None:
    """Record split sizes written into the graph (they must follow pruning) and chunk counts (equal parts)."""
    is_split = node.target in (torch.split, "split")
    if not (is_split or node.target in (torch.chunk, "chunk")):
        return
    given, named = dict(zip(("input", "parts", "dim"), node.args)), node.kwargs
    source = given.get("input", named.get("tensor", named.get("input")))
    parts = split_sizes(node) if is_split else given.get("parts", named.get("chunks"))
    dim = given.get("dim", named.get("dim", 0))
    if source is None or parts is None:
        return
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
    elif isinstance(parts, int) and spec.shape[dim] % parts == 0:
        walk.segments.append((line, parts))  # every chunk must lose the same number of channels
    else:
        walk.pin(line, f"'{qualname(node)}' cuts channels into chunks of unequal size")


def _plugin_rule(walk: _Walk, node: fx.Node) -> Any:
    """Apply the channel rule a plugin registered for this node's op; None when there is none."""
    if not walk.rules or node.op not in ("call_module", "call_function", "call_method"):
        return None
    op = type(walk.modules[node.target]) if node.op == "call_module" else node.target
    kind = walk.rules.get(op)
    if kind is None:
        return None
    args = node.args
    if kind == "elementwise":
        return walk.elementwise(node, (*args, *node.kwargs.values()))
    if kind == "spatial":
        return _channels_only(walk, node, args)
    function = walk.modules[node.target] if node.op == "call_module" else node.target
    if node.op == "call_method":
        return walk.movement(node, lambda self, *a, **k: getattr(self, node.target)(*a, **k), args, node.kwargs)
    return walk.movement(node, function, args, node.kwargs)


def _step(walk: _Walk, node: fx.Node) -> Any:
    if node.op == "placeholder":
        return _unlabelled_like(walk.spec(node))
    if node.op == "get_attr":
        owner, _, name = node.target.rpartition(".")
        value = getattr(walk.modules[owner], name)
        return _Param(node.target, value) if isinstance(value, torch.Tensor) else value
    if node.op == "output":
        walk.pin(walk.value(node.args), "the model returns these channels")
        return None
    args, kwargs = node.args, node.kwargs
    rule = _plugin_rule(walk, node)
    if rule is not None:
        return rule
    if node.op == "call_module":
        module = walk.modules[node.target]
        if module._forward_hooks or module._forward_pre_hooks:  # they may change what the module computes
            return _hooked(walk, node, module)
        found = _first_tensor(walk, args)
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and found is not None and len(args) == 1:
            return walk.layer(node, module, found[1], node.target)
        if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) and found is not None:
            return walk.norm(node, module, found[1], node.target)
        if isinstance(module, nn.MultiheadAttention):
            return walk.attention(node, module, node.target)
        if type(module) in _UNARY_MODULES:
            return walk.elementwise(node, (*args, *kwargs.values()))
        if type(module) in _SOFTMAX_MODULES and len(args) == 1 and not kwargs:
            return _softmax(walk, node, args[0], module.dim)
        if type(module) is nn.PReLU and found is not None and len(args) == 1:
            return _prelu(walk, node, module, found[1])
        if type(module) in _SPATIAL_MODULES:
            return _channels_only(walk, node, args, type(module))
        if type(module) is nn.ChannelShuffle:
            _tie_shuffle_groups(walk, node, module.groups)
        if type(module) in (nn.Flatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle):
            return walk.movement(node, module, args, kwargs)
        return walk.unknown(node, args, kwargs, f"a {type(module).__name__} module")
    target = node.target
    if node.op == "call_function":
        if target is getattr and len(args) == 2:
            return _attribute(walk, node, args[0], args[1])
        if target is operator.getitem and isinstance(walk.env.get(args[0]), _Sizes):
            return _index_sizes(walk, node)
        if not isinstance(walk.spec(node), TensorSpec) and any(
            isinstance(walk.env.get(a), _Sizes) for a in args if isinstance(a, fx.Node)
        ):
            return _size_arithmetic(walk, node)
        if target in _ELEMENTWISE_FUNCTIONS:
            return walk.elementwise(node, (*args, *kwargs.values()))
        if target in (torch.matmul, operator.matmul, torch.bmm):
            return _matmul(walk, node)
        if target is F.scaled_dot_product_attention:
            return _attention_function(walk, node)
        if target is torch.einsum:
            return _einsum(walk, node)
        if target in _SPATIAL_FUNCTIONS:
            return _channels_only(walk, node, args, target)
        if target in _REDUCTIONS:
            return _reduction(walk, node)
        if target in _SOFTMAX_FUNCTIONS and args:
            return _softmax(walk, node, args[0], args[1] if len(args) > 1 else kwargs.get("dim"))
        if target in (F.linear, F.conv1d, F.conv2d, F.conv3d):
            return walk.functional_layer(node)
        if target in (F.layer_norm, torch.layer_norm):
            return _functional_layer_norm(walk, node)
        if target in (torch.cat, torch.concat):
            return walk.concat(node, args, kwargs)
        if target is torch.channel_shuffle:
            _tie_shuffle_groups(walk, node, args[1] if len(args) > 1 else kwargs["groups"])
        if target in _MOVEMENT_FUNCTIONS:
            _split_sizes(walk, node)
            if target is torch.squeeze:
                _squeezed_axes_keep_two(walk, args, kwargs)
            return walk.movement(node, target, args, kwargs)
        if not any(isinstance(a, fx.Node) for a in pytree.tree_leaves((args, kwargs))):
            return walk.spec(node)
        return walk.unknown(node, args, kwargs, f"a call to {getattr(target, '__name__', target)}")
    if node.op == "call_method":
        if target in _ELEMENTWISE_METHODS:
            return walk.elementwise(node, args[:1] if target in ("to", "float", "half", "type_as") else (*args, *kwargs.values()))
        if target in _REDUCTIONS:
            return _reduction(walk, node)
        if target in _SOFTMAX_METHODS:
            return _softmax(walk, node, args[0], args[1] if len(args) > 1 else kwargs.get("dim"))
        if target in ("matmul", "bmm", "__matmul__"):
            return _matmul(walk, node)
        if target in ("expand", "expand_as") and isinstance(walk.env.get(args[0]), _Param):
            return _expanded_parameter(walk, node)
        if target in _MOVEMENT_METHODS:
            _split_sizes(walk, node)
            if target == "squeeze":
                _squeezed_axes_keep_two(walk, args, kwargs)
            return walk.movement(node, lambda self, *a, **k: getattr(self, target)(*a, **k), args, kwargs)
        if target == "size":
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return walk.sizes_of(node, args[0], dim) if dim is None or isinstance(dim, int) else walk.spec(node)
        if target in _SHAPE_METHODS:
            labels = walk.env.get(args[0])
            has_channels = isinstance(labels, torch.Tensor) and bool((labels >= 0).any())
            return _Sizes(walk.spec(node), (labels.reshape(-1),), scale=None) if has_channels else walk.spec(node)
        return walk.unknown(node, args, kwargs, f"the tensor method .{target}()")
    raise TraceError(f"node '{node.name}' has an unknown kind {node.op!r}")


def _squeezed_axes_keep_two(walk: _Walk, args: Sequence[Any], kwargs: dict) -> None:
    """``squeeze`` drops the axes it is given (every axis without a dim) that have size 1, so a
    channel axis pruned down to one entry would vanish: the channels on such an axis keep two."""
    labels = walk.env.get(args[0]) if args and isinstance(args[0], fx.Node) else None
    if not isinstance(labels, torch.Tensor):
        return
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    axes = labelled_axes(labels)
    if dim is not None:
        given = {d % labels.dim() for d in (dim if isinstance(dim, (tuple, list)) else (dim,)) if isinstance(d, int)}
        axes = [axis for axis in axes if axis in given]
    if axes:
        walk.floors.append(labels.reshape(-1))


def _equal_blocks(channel: torch.Tensor, count: int, channels: int) -> int | None:
    """Into how many equal blocks a group's ``channels`` must be pruned so ``count`` segments of ``channel`` stay equal.

    Every segment must hold one aligned block of the group's channels, each of them equally
    often; then removing the same number from every block removes the same number of entries
    from every segment. None when the segments do not line up with such blocks.
    """
    if len(channel) % count:
        return None
    segments = channel.reshape(count, -1).sort(dim=1).values
    length = segments.shape[1]
    width = int((segments[0, 1:] != segments[0, :-1]).sum()) + 1
    if length % width:
        return None
    # Sorted, each segment must read start, start+1, …, start+width-1, every one length/width times.
    starts = segments[:, 0]
    expected = starts[:, None] + torch.arange(length)[None, :] // (length // width)
    if not torch.equal(segments, expected) or bool((starts % width).any()):
        return None
    return channels // width if len(starts.unique()) * width == channels else None


def _build_groups(walk: _Walk, ignore: Sequence[str]) -> list[ChannelGroup]:
    """Turn label sets into groups: merged labels are one channel, connected producers one group."""
    total = len(walk.labels)
    if not walk.producers:
        return []
    roots = walk.labels.roots()
    for source, target, scale, reason, rewrite in walk.size_ties:
        follows = bool((source >= 0).all()) and bool((target >= 0).all())
        if follows:
            counted, shaped = Counter(roots[source].tolist()), Counter(roots[target].tolist())
            follows = counted.keys() == shaped.keys() and all(counted[root] * scale == shaped[root] for root in counted)
        if follows:
            continue  # the size follows pruning by itself
        if rewrite is not None:
            walk.member(*rewrite, target, kind="shape")
        else:
            walk.pin([source, target], reason)
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

    # Members are located all at once; numpy then splits them per member (far cheaper per call than torch).
    if walk.members:
        sizes = [len(labels) for _, _, labels, _ in walk.members]
        owners, channels = (t.numpy() for t in located(torch.cat([labels for _, _, labels, _ in walk.members])))
        start = 0
        for (name, axis, _, kind), size in zip(walk.members, sizes):
            owner, channel = owners[start : start + size], channels[start : start + size]
            start += size
            low, high = int(owner.min()), int(owner.max())
            if high < 0:
                continue
            if low == high:  # the common case: every entry in one group
                groups[high].members.append(Member(name, axis, size, range(size), tuple(channel.tolist()), kind))
                continue
            # Positions grouped by owner (ascending within each): every entry is listed once.
            inside = np.flatnonzero(owner >= 0)
            order = inside[np.argsort(owner[inside], kind="stable")]
            ordered = owner[order]
            cuts = [0, *(np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist(), len(order)]
            for begin, end in zip(cuts, cuts[1:]):
                part = order[begin:end]
                first, last = int(part[0]), int(part[-1])
                positions = range(first, last + 1) if last - first == end - begin - 1 else tuple(part.tolist())
                member = Member(name, axis, size, positions, tuple(channel[part].tolist()), kind)
                groups[int(ordered[begin])].members.append(member)
    for labels, reason in walk.pins:
        owner, _ = located(labels)
        for index in owner[owner >= 0].unique().tolist():
            if reason not in groups[index].pinned:
                groups[index].pinned.append(reason)
    for labels in walk.floors:
        owner, _ = located(labels)
        for index in owner[owner >= 0].unique().tolist():
            groups[index].min_channels = 2
    for labels, count in walk.segments:
        owner, channel = located(labels)
        owners = owner[owner >= 0].unique().tolist()
        if len(owners) == 1 and bool((owner >= 0).all()):
            blocks = _equal_blocks(channel, count, groups[owners[0]].channels)
            if blocks is not None:
                groups[owners[0]].segments = math.lcm(groups[owners[0]].segments, blocks)
                continue
        for index in owners:
            groups[index].pinned.append(f"{count} equal segments span channels of several groups")
    if ignore:
        _pin_ignored(groups, ignore)
    return groups


def _pin_ignored(groups: list[ChannelGroup], ignore: Sequence[str]) -> None:
    """Pin the groups a glob in ``ignore`` names: by a producer, or by a layer that produces no group
    but holds members (a BatchNorm, a PReLU: its channels are the group's)."""
    producers = {producer for group in groups for producer in group.producers}
    for group in groups:
        holders = {m.name.rpartition(".")[0] for m in group.members if m.kind == "parameter"} - producers
        if any(matches(name, ignore) for name in (*group.producers, *holders)):
            group.pinned.append("ignored by the user")


def _parametrized_by(parametrized: dict[str, nn.Module], name: str) -> str | None:
    """The parametrizations of tensor ``name`` other than pruning masks (which pruning shrinks), if any;
    ``parametrized`` holds the parametrized modules by path."""
    owner, _, attribute = name.rpartition(".")
    module = parametrized.get(owner)
    if module is None or not parametrize.is_parametrized(module, attribute):
        return None
    steps = sorted({type(step).__name__ for step in module.parametrizations[attribute] if not isinstance(step, Mask)})
    return ", ".join(steps) or None


def analyze(
    gm: fx.GraphModule, *, ignore: Sequence[str] = (), plugins: Plugins | None = None
) -> list[ChannelGroup]:
    """Partition the prunable channels of an annotated graph into coupled groups.

    Args:
        gm: a graph from :func:`fxcomp.trace` (its nodes carry shapes).
        ignore: qualified-name globs of layers whose output channels must stay: the groups they
            produce, and those whose channels a layer producing none (a BatchNorm) holds.
        plugins: the plugins whose channel rules teach the analyzer more ops; loaded
            from entry points when omitted (pass them when analyzing many graphs).

    Returns the groups in graph order. A group's ``pinned`` lists why it must not
    be pruned (model output, an unknown op, user-ignored …).
    """
    require_graph(gm, "analyze")
    plugins = plugins if plugins is not None else load_plugins()
    rules = {key: entry.value for key, entry in plugins.registry.channel_rules.items()}
    first: dict[int, str] = {}
    aliases = {
        name: first.setdefault(id(tensor), name)
        for name, tensor in (*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False))
    }
    walk = _Walk(gm, modules_by_path(gm), rules=rules, aliases=aliases)
    for node in gm.graph.nodes:
        try:
            walk.env[node] = _step(walk, node)
        except Exception as error:  # noqa: BLE001 - name the node, keep the cause
            if isinstance(error, TraceError):
                raise
            raise TraceError(f"cannot analyze node '{qualname(node)}': {error}") from error
    shared = Counter(walk.aliases.values())
    parametrized = {path: module for path, module in walk.modules.items() if "parametrizations" in module._modules}
    for name, _, line, kind in walk.members:
        foreign = _parametrized_by(parametrized, name) if kind == "parameter" and parametrized else None
        if foreign:
            walk.pin(line, f"'{name}' is parametrized by {foreign}, which pruning cannot shrink; prune before parametrizing it")
        if kind == "parameter" and name in walk.opaque:
            walk.pin(line, f"'{name}' is also used by '{walk.opaque[name]}', which the analyzer does not know")
        if kind == "parameter" and shared[name] > 1:  # prune shrinks a tensor under one name only
            walk.pin(line, f"'{name}' is one tensor held by several modules (tied weights)")
    return _build_groups(walk, ignore)
