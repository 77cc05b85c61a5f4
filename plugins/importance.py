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

from collections.abc import Callable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from fxcomp import ChannelGroup, Member, RecipeError
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


def _filter_axis(owner: nn.Module, attribute: str) -> int | None:
    """The output-channel axis of a conv or linear weight, else None."""
    if attribute != "weight":
        return None
    if isinstance(owner, nn.Linear):
        return 0
    if isinstance(owner, nn.modules.conv._ConvNd):
        return 1 if owner.transposed else 0
    return None


@each_group
def fpgm_importance(group: ChannelGroup, gm: fx.GraphModule, context: PassContext) -> torch.Tensor:
    """Filter pruning via geometric median: filters close to all others (small distance sum) are redundant."""
    scores = torch.zeros(group.channels, dtype=torch.float64)
    for member in group.members:
        owner, attribute = _owner_and_attribute(gm, member.name)
        if _filter_axis(owner, attribute) != member.axis:
            continue
        filters = owner.weight.detach().double().movedim(member.axis, 0)
        filters = filters.reshape(filters.shape[0], -1)
        _scatter(scores, member, torch.cdist(filters, filters).sum(1))
    return scores


@each_group
def random_importance(group: ChannelGroup, gm: fx.GraphModule, context: PassContext) -> torch.Tensor:
    """Uniform random scores, seeded by the group's shape (a baseline)."""
    generator = torch.Generator().manual_seed(len(group.members) * 7919 + group.channels)
    return torch.rand(group.channels, generator=generator, dtype=torch.float64)


def _loss(output: object, target: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise RecipeError(
            "prune.importance: taylor needs a model returning one (batch, classes) tensor of logits; "
            "use importance: activation or l1 for other models"
        )
    if target is None:
        target = output.detach().argmax(1)
    return F.cross_entropy(output, target)


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


def _input_axis(module: nn.Module) -> int | None:
    """The input-channel axis of a conv or linear weight, else None."""
    if isinstance(module, nn.Linear):
        return 1
    if isinstance(module, nn.modules.conv._ConvNd):
        return 0 if module.transposed else 1
    return None


def _channel_axis(module: nn.Module, value: torch.Tensor) -> int:
    """Where ``module``'s input or output ``value`` holds its channels: last for linear layers, first for
    an unbatched convolution's, else axis 1 (0 without a batch axis)."""
    if isinstance(module, nn.Linear):
        return value.dim() - 1
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1 if value.dim() == module.weight.dim() else 0
    return 1 if value.dim() > 1 else 0


def activation_importance(
    groups: Sequence[ChannelGroup], gm: fx.GraphModule, context: PassContext
) -> list[torch.Tensor]:
    """Mean |activation| of each channel where the next conv/linear layers read it, over the calibration data.

    A group whose channels reach no such layer is scored where its producers write them.
    """
    readers: dict[str, list[tuple[ChannelGroup, Member]]] = {}
    for group in groups:
        found = False
        for member in group.members:
            owner, attribute = _owner_and_attribute(gm, member.name)
            if attribute == "weight" and _input_axis(owner) == member.axis and member.kind == "parameter":
                readers.setdefault(member.name.rpartition(".")[0], []).append((group, member))
                found = True
        if not found:
            for member in group.members:
                owner, attribute = _owner_and_attribute(gm, member.name)
                if _filter_axis(owner, attribute) == member.axis:
                    readers.setdefault(member.name.rpartition(".")[0] + "#out", []).append((group, member))
    sums = {id(group): torch.zeros(group.channels, dtype=torch.float64) for group in groups}

    def record(key: str, value: torch.Tensor, module: nn.Module) -> None:
        channel_axis = _channel_axis(module, value)
        per_entry = _per_entry(value.detach().abs().double(), channel_axis) / (value.numel() / value.shape[channel_axis])
        for group, member in readers[key]:
            _scatter(sums[id(group)], member, per_entry)

    handles = []
    for key in readers:
        name, _, where = key.partition("#")
        module = gm.get_submodule(name)
        if where == "out":
            handles.append(module.register_forward_hook(lambda m, a, out, key=key: record(key, out, m)))
        else:
            handles.append(module.register_forward_pre_hook(lambda m, a, key=key: record(key, a[0], m)))
    try:
        with eval_mode(gm), torch.no_grad():
            for _ in calibration_outputs(gm, context.calib_data, "prune.importance: activation"):
                pass
    finally:
        for handle in handles:
            handle.remove()
    return [sums[id(group)] for group in groups]
