"""Channel-importance criteria of the built-in ``prune`` plugin.

A criterion is ``criterion(groups, gm, context) -> list[Tensor]``: one float64
score per channel for each group it is given (higher = more important). It sees
all groups at once, so a data-driven criterion runs the calibration data once.

* ``l1`` / ``l2``: the L1 / L2 norm of the channel's entries summed over every
  parameter of the group (the coupled weights all count, as in DepGraph);
* ``bn_scale``: the absolute BatchNorm scale ``|gamma|`` (network slimming);
* ``fpgm``: the filter's summed distance to the layer's other filters
  (filter pruning via geometric median: filters near the median are redundant);
* ``taylor``: first-order Taylor estimate of the loss change when the channel is
  removed, ``|Σ w·∂L/∂w|`` over all of the channel's coupled entries, with the
  gradient accumulated over ``calib_data`` (Molchanov et al. 2019). The loss is
  cross-entropy against the batch targets or, for unlabelled batches, against the
  model's own predictions;
* ``activation``: the mean absolute value of the channel in the tensors the next
  layers read, over ``calib_data``;
* ``random``: uniform scores from a fixed seed (a baseline).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from fxcomp import CalibrationError, ChannelGroup, Member, RecipeError
from fxcomp.passes import PassContext, calibration_outputs
from fxcomp.tracing import eval_mode

Criterion = Callable[[Sequence[ChannelGroup], fx.GraphModule, PassContext], list[torch.Tensor]]
GroupCriterion = Callable[[ChannelGroup, fx.GraphModule, PassContext], torch.Tensor]


def each_group(score: GroupCriterion) -> Criterion:
    """A criterion that scores every group on its own with ``score(group, gm, context)``."""

    def criterion(groups: Sequence[ChannelGroup], gm: fx.GraphModule, context: PassContext) -> list[torch.Tensor]:
        return [score(group, gm, context) for group in groups]

    criterion.__doc__ = score.__doc__
    return criterion


def _owner_and_attribute(gm: fx.GraphModule, name: str) -> tuple[nn.Module, str]:
    owner, _, attribute = name.rpartition(".")
    return gm.get_submodule(owner), attribute


def _parameters(group: ChannelGroup, gm: fx.GraphModule) -> list[tuple[Member, torch.Tensor, nn.Parameter]]:
    """The group's members that are trainable parameters: ``(member, value, stored parameter)``.

    ``value`` is what the model computes with (a masked weight with its zeros); the stored
    parameter is what gradients reach (for a masked weight, the tensor under the mask).
    """
    found = []
    for member in group.members:
        if member.kind != "parameter":
            continue
        owner, attribute = _owner_and_attribute(gm, member.name)
        stored = owner._parameters.get(attribute)
        if parametrize.is_parametrized(owner, attribute):
            stored = owner.parametrizations[attribute].original
        if isinstance(stored, nn.Parameter):
            found.append((member, getattr(owner, attribute).detach(), stored))
    return found


def _scatter(scores: torch.Tensor, member: Member, per_entry: torch.Tensor) -> None:
    """Add ``per_entry`` (one value per entry along the member's axis) to the channels they belong to."""
    positions = member.positions
    if isinstance(positions, range):
        entries = per_entry[positions.start : positions.stop]
    else:
        entries = per_entry[torch.tensor(positions)]
    scores.index_add_(0, torch.tensor(member.group_channels), entries.double())


def _per_entry(values: torch.Tensor, axis: int) -> torch.Tensor:
    """Sum of ``values`` over every axis but ``axis``."""
    return values.movedim(axis, 0).reshape(values.shape[axis], -1).sum(1)


def norm_importance(power: int) -> Criterion:
    """The L``power`` norm of each channel over all its coupled parameter entries."""

    def score(group: ChannelGroup, gm: fx.GraphModule, context: PassContext) -> torch.Tensor:
        scores = torch.zeros(group.channels, dtype=torch.float64)
        for member, value, _ in _parameters(group, gm):
            _scatter(scores, member, _per_entry(value.double().abs().pow(power), member.axis))
        return scores.pow(1 / power)

    return each_group(score)


@each_group
def bn_scale_importance(group: ChannelGroup, gm: fx.GraphModule, context: PassContext) -> torch.Tensor:
    """|gamma| of the group's BatchNorms (network slimming), summed where several share the channels."""
    scores = torch.zeros(group.channels, dtype=torch.float64)
    found = False
    for member in group.members:
        owner, attribute = _owner_and_attribute(gm, member.name)
        if isinstance(owner, nn.modules.batchnorm._BatchNorm) and attribute == "weight" and owner.affine:
            _scatter(scores, member, owner.weight.detach().abs())
            found = True
    if not found:
        raise RecipeError(
            f"prune.importance: bn_scale needs a BatchNorm with affine weights, and the channels of "
            f"{', '.join(group.producers)} have none; use importance: l1, or ignore those layers"
        )
    return scores


_FUNCTIONAL_LAYERS = (F.linear, F.conv1d, F.conv2d, F.conv3d)


@dataclass(frozen=True)
class _Layer:
    """One conv / linear call of the graph (a module or ``F.conv*d`` / ``F.linear`` on a parameter)."""

    node: fx.Node
    weight: str  # the weight's qualified name
    input_axis: int
    output_axis: int
    linear: bool
    weight_dim: int

    def channel_axis(self, value: torch.Tensor) -> int:
        """Where the layer's input or output ``value`` holds its channels: last for a linear layer, first
        for an unbatched convolution's, else axis 1."""
        if self.linear:
            return value.dim() - 1
        return 1 if value.dim() == self.weight_dim else 0


def _layers(gm: fx.GraphModule) -> list[_Layer]:
    """Every conv / linear call of ``gm``, in graph order."""
    layers = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, nn.Linear):
                layers.append(_Layer(node, f"{node.target}.weight", 1, 0, True, 2))
            elif isinstance(module, nn.modules.conv._ConvNd):
                axes = (0, 1) if module.transposed else (1, 0)
                layers.append(_Layer(node, f"{node.target}.weight", *axes, False, module.weight.dim()))
        elif node.op == "call_function" and node.target in _FUNCTIONAL_LAYERS:
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            if isinstance(weight, fx.Node) and weight.op == "get_attr":
                owner, attribute = _owner_and_attribute(gm, weight.target)
                dim = getattr(owner, attribute).dim()
                layers.append(_Layer(node, weight.target, 1, 0, node.target is F.linear, dim))
    return layers


def _nothing_to_score(criterion: str, group: ChannelGroup, what: str) -> RecipeError:
    return RecipeError(
        f"prune.importance: {criterion} scores {what}, and the channels of {', '.join(group.producers)} have none; "
        "use importance: l1 or taylor, or ignore those layers"
    )


def fpgm_importance(groups: Sequence[ChannelGroup], gm: fx.GraphModule, context: PassContext) -> list[torch.Tensor]:
    """Filter pruning via geometric median: filters close to all others (small distance sum) are redundant."""
    filters = {(layer.weight, layer.output_axis) for layer in _layers(gm)}
    results = []
    for group in groups:
        scores = torch.zeros(group.channels, dtype=torch.float64)
        found = False
        for member in group.members:
            if member.kind != "parameter" or (member.name, member.axis) not in filters:
                continue
            owner, attribute = _owner_and_attribute(gm, member.name)
            weight = getattr(owner, attribute).detach().double().movedim(member.axis, 0)
            weight = weight.reshape(weight.shape[0], -1)
            _scatter(scores, member, torch.cdist(weight, weight).sum(1))
            found = True
        if not found:
            raise _nothing_to_score("fpgm", group, "the filters of conv / linear layers")
        results.append(scores)
    return results


@each_group
def random_importance(group: ChannelGroup, gm: fx.GraphModule, context: PassContext) -> torch.Tensor:
    """Uniform random scores, seeded by the group's first producer and size (a baseline)."""
    # Seeded by name too: groups of one shape drew the same scores, so each lost the same channels.
    generator = torch.Generator().manual_seed(zlib.crc32(group.producers[0].encode()) * 7919 + group.channels)
    return torch.rand(group.channels, generator=generator, dtype=torch.float64)


def _loss(output: object, target: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise RecipeError(
            "prune.importance: taylor needs a model returning one (batch, classes) tensor of logits; "
            "use importance: activation or l1 for other models"
        )
    if target is None:
        target = output.detach().argmax(1)
    classes = output.shape[1]
    labels = target.dim() == 1 and not target.is_floating_point() and not target.is_complex() and target.dtype != torch.bool
    probabilities = target.shape == output.shape and target.is_floating_point()
    in_range = not labels or not len(target) or (0 <= target.min() and target.max() < classes)
    if len(target) != len(output) or not (labels or probabilities) or not in_range:
        raise CalibrationError(
            f"prune.importance: taylor's calib_data targets ({tuple(target.shape)}, {str(target.dtype).removeprefix('torch.')}) "
            f"do not fit the model's {tuple(output.shape)} logits; give one integer label in [0, {classes}) per example, "
            "or batches without targets"
        )
    return F.cross_entropy(output, target.long() if labels else target.to(output.dtype))


def taylor_importance(groups: Sequence[ChannelGroup], gm: fx.GraphModule, context: PassContext) -> list[torch.Tensor]:
    """|Σ w·∂L/∂w| per channel over its coupled parameters, gradients summed over the calibration data."""
    parameters = dict(gm.named_parameters())
    saved = {name: (p.requires_grad, p.grad) for name, p in parameters.items()}
    try:
        for parameter in parameters.values():
            parameter.requires_grad_(True)
            parameter.grad = None
        with eval_mode(gm), torch.enable_grad():
            for batch, output in calibration_outputs(gm, context.calib_data, "prune.importance: taylor"):
                _loss(output, batch.target).backward()
        results = []
        for group in groups:
            scores = torch.zeros(group.channels, dtype=torch.float64)
            for member, value, parameter in _parameters(group, gm):
                if parameter.grad is not None:
                    _scatter(scores, member, _per_entry((value * parameter.grad).double(), member.axis))
            results.append(scores.abs())
        return results
    finally:
        for name, parameter in parameters.items():
            parameter.requires_grad_(saved[name][0])
            parameter.grad = saved[name][1]


def activation_importance(
    groups: Sequence[ChannelGroup], gm: fx.GraphModule, context: PassContext
) -> list[torch.Tensor]:
    """Mean |activation| of each channel where the next conv/linear layers read it, over the calibration data.

    A group whose channels reach no such layer is scored where its producers write them.
    """
    layers = _layers(gm)
    watched: dict[tuple[fx.Node, str], list[tuple[ChannelGroup, Member]]] = {}
    for group in groups:
        members = [member for member in group.members if member.kind == "parameter"]
        for where in ("input", "output"):
            reads = [
                (layer, member)
                for member in members
                for layer in layers
                if (member.name, member.axis) == (layer.weight, getattr(layer, f"{where}_axis"))
            ]
            for layer, member in reads:
                watched.setdefault((layer.node, where), []).append((group, member))
            if reads:
                break
        else:
            raise _nothing_to_score("activation", group, "the inputs and outputs of conv / linear layers")
    layer_of = {layer.node: layer for layer in layers}
    sums = {id(group): torch.zeros(group.channels, dtype=torch.float64) for group in groups}

    def record(node: fx.Node, where: str, value: torch.Tensor) -> None:
        channel_axis = layer_of[node].channel_axis(value)
        per_entry = _per_entry(value.detach().abs().double(), channel_axis) / (value.numel() / value.shape[channel_axis])
        for group, member in watched[(node, where)]:
            _scatter(sums[id(group)], member, per_entry)

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> object:
            if (node, "input") in watched:
                args, kwargs = self.fetch_args_kwargs_from_env(node)
                record(node, "input", args[0] if args else kwargs["input"])
            result = super().run_node(node)
            if (node, "output") in watched:
                record(node, "output", result)
            return result

    with eval_mode(gm), torch.no_grad():
        def run(*inputs: torch.Tensor) -> object:
            return Recorder(gm).run(*gm.graph._codegen.process_inputs(*inputs))  # as GraphModule.forward flattens them

        for _ in calibration_outputs(gm, context.calib_data, "prune.importance: activation", run=run):
            pass
    return [sums[id(group)] for group in groups]
