"""Built-in plugin ``prune``: structured pruning of coupled channel groups.

The pass asks :func:`fxcomp.analyze` for the channel groups, scores each
group's channels with an importance criterion (looked up in the plugins'
importance registry, so other plugins can add criteria), removes the lowest
scored ones, and physically shrinks every member: parameters, buffers, the
attributes of the modules that own them (``in_channels``, ``num_features``,
``groups`` …) and split sizes written into the graph. The plan records, for
every pruned parameter and buffer, the indices kept along each pruned axis.

Criteria registered here (``register(name, criterion)`` with
``criterion(group, gm, context) -> Tensor`` of one score per channel):

* ``l1`` / ``l2``: the L1 / L2 norm of the channel's entries summed over every
  parameter of the group (the coupled weights all count, as in DepGraph);
* ``bn_scale``: the absolute BatchNorm scale ``|gamma|`` (network slimming);
* ``fpgm``: the filter's summed distance to the layer's other filters
  (filter pruning via geometric median: filters near the median are redundant);
* ``random``: uniform scores from a fixed seed (a baseline).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp import ChannelGroup, FxcompError, RecipeError, analyze, hookimpl, node_info, propagate, qualname
from fxcomp.passes import Option, Pass, PassContext, PassResult, choice, globs, integer, number, optional, string

Criterion = Callable[[ChannelGroup, fx.GraphModule, PassContext], torch.Tensor]


def _total_macs(gm: fx.GraphModule) -> int:
    return sum(node_info(node).macs for node in gm.graph.nodes)


def _parameter(gm: fx.GraphModule, name: str) -> torch.Tensor:
    owner, _, attribute = name.rpartition(".")
    return getattr(gm.get_submodule(owner), attribute)


def _norm_importance(power: int) -> Criterion:
    def criterion(group: ChannelGroup, gm: fx.GraphModule, context: PassContext) -> torch.Tensor:
        scores = torch.zeros(group.channels, dtype=torch.float64)
        for member in group.members:
            if member.kind != "parameter" or not isinstance(_parameter(gm, member.name), nn.Parameter):
                continue
            values = _parameter(gm, member.name).detach().double().abs().pow(power)
            per_entry = values.movedim(member.axis, 0).reshape(values.shape[member.axis], -1).sum(1)
            channels = torch.tensor(member.channels)
            inside = channels >= 0
            scores.index_add_(0, channels[inside], per_entry[inside])
        return scores.pow(1 / power)

    return criterion


def _owner_and_attribute(gm: fx.GraphModule, name: str) -> tuple[nn.Module, str]:
    owner, _, attribute = name.rpartition(".")
    return gm.get_submodule(owner), attribute


def _bn_scale_importance(group: ChannelGroup, gm: fx.GraphModule, context: PassContext) -> torch.Tensor:
    """|gamma| of the group's BatchNorms (network slimming), summed where several share the channels."""
    scores = torch.zeros(group.channels, dtype=torch.float64)
    found = False
    for member in group.members:
        owner, attribute = _owner_and_attribute(gm, member.name)
        if isinstance(owner, nn.modules.batchnorm._BatchNorm) and attribute == "weight" and owner.affine:
            channels = torch.tensor(member.channels)
            inside = channels >= 0
            scores.index_add_(0, channels[inside], owner.weight.detach().double().abs()[inside])
            found = True
    if not found:
        raise FxcompError(
            f"prune.importance: bn_scale needs a BatchNorm with affine weights, and the channels of "
            f"{', '.join(group.producers)} have none; use importance: l1, or ignore those layers"
        )
    return scores


def _fpgm_importance(group: ChannelGroup, gm: fx.GraphModule, context: PassContext) -> torch.Tensor:
    """Filter pruning via geometric median: filters close to all others (small distance sum) are redundant."""
    scores = torch.zeros(group.channels, dtype=torch.float64)
    for member in group.members:
        owner, attribute = _owner_and_attribute(gm, member.name)
        is_filter = attribute == "weight" and (
            (isinstance(owner, nn.Linear) and member.axis == 0)
            or (isinstance(owner, nn.modules.conv._ConvNd) and member.axis == (1 if owner.transposed else 0))
        )
        if not is_filter:
            continue
        filters = owner.weight.detach().double().movedim(member.axis, 0)
        filters = filters.reshape(filters.shape[0], -1)
        distances = torch.cdist(filters, filters).sum(1)
        channels = torch.tensor(member.channels)
        inside = channels >= 0
        scores.index_add_(0, channels[inside], distances[inside])
    return scores


def _random_importance(group: ChannelGroup, gm: fx.GraphModule, context: PassContext) -> torch.Tensor:
    generator = torch.Generator().manual_seed(len(group.members) * 7919 + group.channels)
    return torch.rand(group.channels, generator=generator, dtype=torch.float64)


def _channels_to_remove(scores: torch.Tensor, ratio: float, round_to: int, segments: int) -> list[int]:
    """Lowest-scored channels to remove: ``ratio`` of them, keeping a multiple of ``round_to`` per segment."""
    channels = scores.numel()
    per_segment = channels // segments
    step = math.lcm(round_to, 1)
    keep = per_segment - int(per_segment * ratio)
    keep = max(step, int(math.ceil(keep / step)) * step) if per_segment >= step else per_segment
    keep = min(keep, per_segment)
    removed: list[int] = []
    for segment in range(segments):
        part = scores[segment * per_segment : (segment + 1) * per_segment]
        order = torch.argsort(part, stable=True)
        removed.extend(int(i) + segment * per_segment for i in order[: per_segment - keep])
    return sorted(removed)


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[name] = value


def _update_attributes(module: nn.Module) -> None:
    """Make a module's size attributes agree with its (shrunken) parameters."""
    if isinstance(module, nn.modules.conv._ConvNd):
        weight = module.weight
        if module.transposed:
            module.in_channels = weight.shape[0]
            module.out_channels = weight.shape[1] * module.groups
        elif module.groups > 1 and module.groups == module.in_channels:
            # Depthwise with a channel multiplier: every input channel keeps its `multiplier` outputs.
            multiplier = module.out_channels // module.groups
            module.out_channels = weight.shape[0]
            module.in_channels = module.groups = weight.shape[0] // multiplier
        else:
            module.out_channels = weight.shape[0]
            module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        reference = module.weight if module.weight is not None else module.running_mean
        module.num_features = reference.shape[0]
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.weight.shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (module.weight.shape[0],)


class Prune(Pass):
    """Remove the least important channels of every prunable coupled group."""

    name = "prune"
    schema = {
        "ratio": Option(
            optional(number(0, 1, high_open=True)), default=None, doc="fraction of each group's channels to remove"
        ),
        "target_macs": Option(
            optional(number(0, 1, low_open=True, high_open=True)),
            default=None,
            doc="fraction of the original MACs to keep (reached within 2%), instead of ratio",
        ),
        "importance": Option(string(), default="l1", doc="importance criterion: l1, l2, bn_scale, fpgm, random, …"),
        "scope": Option(choice("local"), default="local", doc="local: the same ratio in every group"),
        "ignore": Option(globs(), default=(), doc="qualified-name globs of layers whose output channels stay"),
        "round_to": Option(integer(1), default=1, doc="keep a multiple of this many channels per group"),
        "max_ratio_per_group": Option(number(0, 1), default=0.95, doc="never remove more than this fraction"),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if (self.options["ratio"] is None) == (self.options["target_macs"] is None):
            raise RecipeError("prune: give exactly one of ratio and target_macs")

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        criteria = context.plugins.registry.importance
        if self.options["importance"] not in criteria:
            raise RecipeError(
                f"prune.importance: no criterion '{self.options['importance']}' is registered; "
                f"registered: {', '.join(sorted(criteria))}"
            )
        criterion: Criterion = criteria[self.options["importance"]].value
        groups = analyze(gm, ignore=self.options["ignore"])
        scores = [criterion(group, gm, context) if group.prunable else None for group in groups]
        cap = self.options["max_ratio_per_group"]
        if self.options["ratio"] is not None:
            return self._plan_at(min(self.options["ratio"], cap), groups, scores)
        return self._plan_for_macs(gm, context, groups, scores, cap)

    def _plan_for_macs(
        self,
        gm: fx.GraphModule,
        context: PassContext,
        groups: list[ChannelGroup],
        scores: list[torch.Tensor | None],
        cap: float,
    ) -> dict[str, Any]:
        """Bisect the per-group ratio until the pruned graph keeps ``target_macs`` of the MACs (±2%)."""
        target = self.options["target_macs"]
        before = _total_macs(gm)

        def kept_fraction(plan: dict[str, Any]) -> float:
            scratch = copy.deepcopy(gm)
            self.apply(scratch, plan, context)
            propagate(scratch, context.example_inputs)
            return _total_macs(scratch) / before

        low, high = 0.0, cap
        plan = self._plan_at(high, groups, scores)
        fraction = kept_fraction(plan)
        if fraction > target * 1.02:
            raise FxcompError(
                f"prune.target_macs: {target:g} is out of reach; pruning every unpinned group by "
                f"max_ratio_per_group={cap:g} keeps {fraction:.3f} of the MACs"
            )
        for _ in range(30):
            if abs(fraction / target - 1) <= 0.02:
                break
            middle = (low + high) / 2
            candidate = self._plan_at(middle, groups, scores)
            candidate_fraction = kept_fraction(candidate)
            if candidate_fraction < target:
                high = middle
            else:
                low = middle
            if candidate_fraction <= target * 1.02:
                plan, fraction = candidate, candidate_fraction
        plan["target_macs"] = {"target": target, "kept": round(fraction, 4), "ratio": round(plan["ratio"], 4)}
        return plan

    def _plan_at(
        self, ratio: float, groups: list[ChannelGroup], scores: list[torch.Tensor | None]
    ) -> dict[str, Any]:
        planned, kept, splits, pinned = [], {}, {}, []
        for group, group_scores in zip(groups, scores):
            if group_scores is None:
                pinned.append({"producers": group.producers, "reasons": group.pinned})
                continue
            removed = _channels_to_remove(group_scores, ratio, self.options["round_to"], group.segments)
            if not removed:
                continue
            planned.append({"producers": group.producers, "channels": group.channels, "removed": removed})
            gone = set(removed)
            for member in group.members:
                table = splits if member.kind == "split" else kept
                axes = table.setdefault(member.name, {})
                previous = set(axes.get(str(member.axis), range(len(member.channels))))
                axes[str(member.axis)] = sorted(
                    i for i in previous if not (member.channels[i] >= 0 and member.channels[i] in gone)
                )
        return {"ratio": ratio, "groups": planned, "kept": kept, "splits": splits, "pinned": pinned}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        owners = set()
        for name, axes in plan["kept"].items():
            owner_path, _, attribute = name.rpartition(".")
            owner = gm.get_submodule(owner_path)
            value = getattr(owner, attribute).detach()
            for axis, indices in axes.items():
                value = value.index_select(int(axis), torch.tensor(indices, dtype=torch.long))
            _set_tensor(owner, attribute, value.contiguous())
            owners.add(owner)
        for owner in owners:
            _update_attributes(owner)
        nodes = {qualname(node): node for node in gm.graph.nodes}
        for name, axes in plan["splits"].items():
            node = nodes[name]
            ((_, indices),) = axes.items()
            sizes, start, kept = list(node.args[1]), 0, set(indices)
            new_sizes = []
            for size in sizes:
                new_sizes.append(sum(1 for i in range(start, start + size) if i in kept))
                start += size
            node.args = (node.args[0], new_sizes, *node.args[2:])
        removed = sum(len(group["removed"]) for group in plan["groups"])
        return PassResult(gm, modified=removed > 0, stats={"groups": len(plan["groups"]), "channels_removed": removed})


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``prune`` pass."""
    register(Prune)


@hookimpl
def fxcomp_register_importance(register: Any) -> None:
    """Register the built-in importance criteria."""
    register("l1", _norm_importance(1))
    register("l2", _norm_importance(2))
    register("random", _random_importance)
    register("bn_scale", _bn_scale_importance)
    register("fpgm", _fpgm_importance)
