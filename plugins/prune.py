"""Built-in plugin ``prune``: structured pruning of coupled channel groups.

The pass asks :func:`fxcomp.analyze` for the channel groups, scores each
group's channels with an importance criterion (looked up in the plugins'
importance registry, so other plugins can add criteria), removes the lowest
scored ones, and physically shrinks every member: parameters, buffers, the
attributes of the modules that own them (``in_channels``, ``num_features``,
``groups`` …) and split sizes written into the graph. The plan records, for
every pruned parameter and buffer, the indices kept along each pruned axis.

``scope: local`` removes the same fraction of every group; ``scope: global``
ranks the channels of all groups together (each group's scores divided by their
mean, so layers of different scale compare) and removes the lowest overall.
``iterative_steps: n`` prunes in ``n`` equal steps, analyzing and scoring the
already-pruned model again before each step (``calib_data`` given as a one-shot
iterator, a generator say, is kept as it is read, so every step sees its batches).

The criteria registered here are described in :mod:`fxcomp_plugins.importance`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from fxcomp import ChannelGroup, PluginError, RecipeError, UsageError, analyze, hookimpl, node_info, propagate, qualname
from fxcomp.analysis import set_size_arguments, set_split_sizes, size_arguments, split_sizes
from fxcomp.passes import (
    Option, Pass, PassContext, PassResult, choice, globs, integer, matches, number, optional, parameter_values, string,
)
from fxcomp_plugins.importance import (
    Criterion,
    activation_importance,
    bn_scale_importance,
    fpgm_importance,
    norm_importance,
    random_importance,
    taylor_importance,
)


_TABLES = {"parameter": "kept", "split": "splits", "shape": "shapes"}
"""Member kind → the plan table recording its kept entries."""


def _total_macs(gm: fx.GraphModule) -> int:
    return sum(node_info(node).macs for node in gm.graph.nodes)


def _channels_to_remove(scores: torch.Tensor, ratio: float, round_to: int, segments: int, least: int = 1) -> list[int]:
    """Lowest-scored channels to remove: ``ratio`` of them, keeping a multiple of ``round_to`` per segment
    and at least ``least`` channels in all."""
    channels = scores.numel()
    per_segment = channels // segments
    step = math.lcm(round_to, 1)
    keep = max(per_segment - int(per_segment * ratio + 1e-6), -(-least // segments))
    keep = max(step, int(math.ceil(keep / step)) * step) if per_segment >= step else per_segment
    keep = min(keep, per_segment)
    removed: list[int] = []
    for segment in range(segments):
        part = scores[segment * per_segment : (segment + 1) * per_segment]
        order = torch.argsort(part, stable=True)
        removed.extend(i + segment * per_segment for i in order[: per_segment - keep].tolist())
    return sorted(removed)


def _needs_values(criterion: str) -> UsageError:
    return UsageError(
        f"prune.importance: '{criterion}' needs the weights' values, which a model on the meta device does not have; "
        "load real weights or use importance: random"
    )


def _select(value: torch.Tensor, axes: dict[str, list[int]]) -> torch.Tensor:
    for axis, indices in axes.items():
        value = value.index_select(int(axis), torch.tensor(indices, dtype=torch.long))
    return value.contiguous()


def _shrink(module: nn.Module, name: str, axes: dict[str, list[int]]) -> None:
    """Keep only the given entries of a parameter or buffer (of a masked weight: of its tensor and mask)."""
    if parametrize.is_parametrized(module, name):  # by masks only: the analyzer pins other parametrizations
        chain = module.parametrizations[name]
        stored = chain.original
        chain._parameters["original"] = nn.Parameter(_select(stored.detach(), axes), requires_grad=stored.requires_grad)
        for step in chain:
            step.mask = _select(step.mask, axes)
    elif name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(_select(old.detach(), axes), requires_grad=old.requires_grad)
    else:
        module._buffers[name] = _select(module._buffers[name], axes)


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
    elif isinstance(module, nn.MultiheadAttention):
        width = module.in_proj_weight.shape[1]
        head_dim = width // module.num_heads
        with torch.no_grad():
            # Scores are q·k / sqrt(head_dim): scale q so the narrower heads keep the original scale.
            scale = math.sqrt(head_dim / module.head_dim)
            module.in_proj_weight[:width] *= scale
            if module.in_proj_bias is not None:
                module.in_proj_bias[:width] *= scale
        module.embed_dim = module.kdim = module.vdim = width
        module.head_dim = head_dim
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        reference = module.weight if module.weight is not None else module.running_mean
        module.num_features = reference.shape[0]
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.weight.shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (module.weight.shape[0],)
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()


def _compose(
    composed: dict[str, dict[str, list[int]]], step: dict[str, dict[str, list[int]]], size: Any
) -> None:
    """Fold one step's kept indices (positions in the already-pruned tensors) into indices of the original."""
    for name, axes in step.items():
        previous = composed.setdefault(name, {})
        for axis, kept in axes.items():
            base = previous.get(axis) or list(range(size(name, int(axis))))
            previous[axis] = [base[i] for i in kept]


def _keep_every_member_alive(
    group: ChannelGroup, scores: torch.Tensor, removed: list[int], round_to: int
) -> list[int]:
    """Spare the best channel of any member that would lose every entry (a concatenated branch, say).

    Sparing breaks equal segments or ``round_to``, so a group with such constraints is left whole instead.
    """
    gone = set(removed)
    for member in group.members:
        if not member.whole or not set(member.group_channels) <= gone:
            continue
        if group.segments > 1 or round_to > 1:
            return []
        best = max(set(member.group_channels), key=lambda c: (float(scores[c]), -c))
        gone.discard(best)
    return sorted(gone)


def _group_ratios(value: Any, path: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise RecipeError(f"{path}: expected a mapping from a group's first producer to a ratio, got {value!r}")
    for name, ratio in value.items():
        if not isinstance(name, str) or isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise RecipeError(f"{path}.{name}: expected a ratio in [0, 1), got {ratio!r}")
    return {name: float(ratio) for name, ratio in value.items()}


def _share_to_remove(original: int, current: int, goal: float) -> float:
    """The fraction of ``current`` channels to remove so that ``goal`` of the ``original`` ones are gone."""
    keep = original - int(original * goal + 1e-6)
    return max(0.0, (current - keep) / current) if current else 0.0


def _step_fraction(
    group: ChannelGroup, scores: torch.Tensor | None, original_channels: dict[str, int], goal: float
) -> float:
    """The fraction of a group's current channels to remove so that ``goal`` of its original ones are gone."""
    if scores is None:
        return 0.0
    return _share_to_remove(original_channels.get(group.producers[0], group.channels), group.channels, goal)


def _global_step_fraction(
    groups: list[ChannelGroup], scores: list[torch.Tensor | None], original_channels: dict[str, int], goal: float
) -> float:
    """The fraction of all scored channels to remove so that ``goal`` of the scored groups' original channels are gone."""
    scored = [group for group, group_scores in zip(groups, scores) if group_scores is not None]
    original = sum(original_channels.get(group.producers[0], group.channels) for group in scored)
    return _share_to_remove(original, sum(group.channels for group in scored), goal)


class _Replayed:
    """One-shot calibration batches (a generator) that read again: each batch is kept when first read.

    With ``iterative_steps`` a data-driven criterion reads ``calib_data`` once per step.
    """

    def __init__(self, batches: Iterator[Any]) -> None:
        self._batches, self._seen = batches, []

    def __iter__(self) -> Iterator[Any]:
        index = 0
        while True:
            if index == len(self._seen):
                try:
                    self._seen.append(next(self._batches))
                except StopIteration:
                    return
            yield self._seen[index]
            index += 1


def _tensor_versions(gm: fx.GraphModule) -> dict[str, tuple[int, int]]:
    """Each parameter's and buffer's identity and in-place version counter: what a criterion must leave alone."""
    named = [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]
    return {name: (id(tensor), tensor._version) for name, tensor in named}


class Prune(Pass):
    """Remove the least important channels of every prunable coupled group."""

    name = "prune"
    schema = {
        "ratio": Option(
            optional(number(0, 1, high_open=True)),
            default=None,
            doc="fraction of the channels to remove (of each group with scope local, of all with scope global)",
        ),
        "target_macs": Option(
            optional(number(0, 1, low_open=True, high_open=True)),
            default=None,
            doc="fraction of the original MACs to keep, instead of ratio (reached within 2%; else an error names the nearest)",
        ),
        "importance": Option(
            string(), default="l1", doc="criterion: l1, l2, bn_scale, fpgm, taylor, activation, random, or a plugin's"
        ),
        "scope": Option(
            choice("local", "global"),
            default="local",
            doc="local: the same fraction of every group; global: rank all channels together",
        ),
        "ignore": Option(globs(), default=(), doc="qualified-name globs of layers whose output channels stay (each must match a layer)"),
        "round_to": Option(integer(1), default=1, doc="keep a multiple of this many channels per group"),
        "max_ratio_per_group": Option(number(0, 1), default=0.95, doc="never remove more than this fraction"),
        "iterative_steps": Option(
            integer(1), default=1, doc="prune in this many steps, re-analyzing and re-scoring between them"
        ),
        "group_ratios": Option(
            _group_ratios,
            default={},
            doc="per-group ratios by the group's first producer (scope local); other groups take ratio (default 0)",
        ),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        per_group = bool(self.options["group_ratios"])
        if per_group and (self.options["target_macs"] is not None or self.options["scope"] != "local"):
            raise RecipeError("prune: group_ratios works with scope local and an optional ratio, not with target_macs")
        if per_group and self.options["ratio"] is None:
            self.options["ratio"] = 0.0
        if (self.options["ratio"] is None) == (self.options["target_macs"] is None):
            raise RecipeError("prune: give exactly one of ratio and target_macs")

    def _criterion(self, context: PassContext) -> Criterion:
        criteria = context.plugins.registry.importance
        if self.options["importance"] not in criteria:
            raise RecipeError(
                f"prune.importance: no criterion '{self.options['importance']}' is registered; "
                f"registered: {', '.join(sorted(criteria))}"
            )
        return criteria[self.options["importance"]].value

    def _scores(
        self, criterion: Criterion, groups: list[ChannelGroup], gm: fx.GraphModule, context: PassContext
    ) -> list[torch.Tensor | None]:
        """The criterion's scores for the prunable groups, None for the pinned ones."""
        prunable = [group for group in groups if group.prunable]
        name = self.options["importance"]
        before = _tensor_versions(gm)
        try:
            scores = list(criterion(prunable, gm, context)) if prunable else []
        except (RuntimeError, NotImplementedError) as error:
            if any(tensor.is_meta for tensor in (*gm.parameters(), *gm.buffers())):
                raise _needs_values(name) from error
            raise
        if any(isinstance(s, torch.Tensor) and s.is_meta for s in scores):
            raise _needs_values(name)
        after = _tensor_versions(gm)
        changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
        if changed:
            raise PluginError(f"importance criterion '{name}' changed the model's '{changed[0]}' while scoring; score without writing to the model")
        if len(scores) != len(prunable) or any(
            not isinstance(s, torch.Tensor) or s.shape != (g.channels,) for s, g in zip(scores, prunable)
        ):
            raise PluginError(
                f"importance criterion '{name}' must return one 1-D tensor of per-channel scores for each group"
            )
        if not all(bool(torch.isfinite(s).all()) for s in scores):
            raise PluginError(f"importance criterion '{name}' returned NaN or infinite scores; return finite per-channel scores")
        found = iter(scores)
        return [next(found).double() if group.prunable else None for group in groups]

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        criterion = self._criterion(context)
        steps = self.options["iterative_steps"]
        original_macs = _total_macs(gm)
        if self.options["target_macs"] is not None and not original_macs:
            raise RecipeError("prune.target_macs: the model has no MACs to reduce; give a ratio of channels instead")
        scratch = copy.deepcopy(gm) if steps > 1 else gm
        sizes = {name: tuple(value.shape) for name, value in [*parameter_values(gm), *gm.named_buffers()]}
        nodes = {qualname(node): node for node in gm.graph.nodes}
        if steps > 1 and isinstance(context.calib_data, Iterator):
            context = dataclasses.replace(context, calib_data=_Replayed(context.calib_data))

        def size(name: str, axis: int) -> int:
            if name in sizes:
                return sizes[name][axis]
            node = nodes[name]
            if node.target in (torch.split, "split"):
                return sum(split_sizes(node))
            written = size_arguments(node)
            if isinstance(written[axis], int):
                return written[axis]
            # Computed in the graph: the extent of the output axis it sizes (layer_norm's sizes are its last axes).
            return node_info(node).output.shape[axis - len(written)]

        tables: dict[str, dict[str, dict[str, list[int]]]] = {table: {} for table in _TABLES.values()}
        records, pinned, reached = [], [], None
        for step in range(1, steps + 1):
            groups = analyze(scratch, ignore=self.options["ignore"], plugins=context.plugins)
            scores = self._scores(criterion, groups, scratch, context)
            if step == 1:
                pinned = [{"producers": g.producers, "reasons": g.pinned} for g in groups if not g.prunable]
                original_channels = {group.producers[0]: group.channels for group in groups}
                self._check_group_names(groups)
                self._check_ignore(scratch, groups)
            # Each group's cap, as a fraction of its current channels: max_ratio_per_group of its original ones.
            cap = self.options["max_ratio_per_group"]
            caps = [_step_fraction(g, s, original_channels, cap) for g, s in zip(groups, scores)]
            if self.options["ratio"] is not None:
                goal = self.options["ratio"] * step / steps
                if self.options["scope"] == "local":
                    ratios = self.options["group_ratios"]
                    goals = [min(ratios.get(g.producers[0], self.options["ratio"]) * step / steps, cap) for g in groups]
                    fractions = [_step_fraction(g, s, original_channels, c) for g, s, c in zip(groups, scores, goals)]
                else:
                    share = _global_step_fraction(groups, scores, original_channels, goal)
                    fractions = self._fractions(share, groups, scores, caps)
                step_plan = self._plan_at(fractions, groups, scores)
            else:
                goal = 1 - (1 - self.options["target_macs"]) * step / steps
                step_plan, reached = self._plan_for_macs(
                    scratch, context, groups, scores, caps, goal, original_macs, last=step == steps
                )
            records.extend({"step": step, **group} for group in step_plan["groups"])
            for table in _TABLES.values():
                _compose(tables[table], step_plan[table], size)
            if step < steps:
                self.apply(scratch, step_plan, context)
                propagate(scratch, context.example_inputs)
        plan: dict[str, Any] = {"groups": records, **tables, "pinned": pinned}
        if reached is not None:
            plan["target_macs"] = {"target": self.options["target_macs"], "kept": round(reached, 4)}
        return plan

    def _check_group_names(self, groups: list[ChannelGroup]) -> None:
        """Every name in ``group_ratios`` must be the first producer of a prunable group."""
        known = [group.producers[0] for group in groups if group.prunable]
        unknown = sorted(set(self.options["group_ratios"]) - set(known))
        if unknown:
            raise RecipeError(
                f"prune.group_ratios.{unknown[0]}: no prunable group starts at this layer; "
                f"groups are named by their first producer: {', '.join(known[:8])}{' …' if len(known) > 8 else ''}"
            )

    def _check_ignore(self, gm: fx.GraphModule, groups: list[ChannelGroup]) -> None:
        """Every glob in ``ignore`` must match a layer: a module or a group's producer (``F.conv2d`` nodes too)."""
        producers = [producer for group in groups for producer in group.producers]
        names = {name for name, _ in gm.named_modules() if name} | set(producers)
        for pattern in self.options["ignore"]:
            if not any(matches(name, [pattern]) for name in names):
                raise RecipeError(
                    f"prune.ignore: '{pattern}' matches no layer of the model; globs match qualified names "
                    f"like {', '.join(producers[:6])}{' …' if len(producers) > 6 else ''}"
                )

    def _plan_for_macs(
        self,
        gm: fx.GraphModule,
        context: PassContext,
        groups: list[ChannelGroup],
        scores: list[torch.Tensor | None],
        caps: list[float],
        target: float,
        original_macs: int,
        last: bool,
    ) -> tuple[dict[str, Any], float]:
        """Bisect the ratio for the plan keeping nearest ``target`` of ``original_macs``, and that fraction.

        The last step's plan must keep within 2% of the target; an earlier step's may miss (the next makes up).
        """
        measured = {(): _total_macs(gm) / original_macs}  # kept fraction by the channels a plan removes

        def attempt(ratio: float) -> tuple[dict[str, Any], float]:
            plan = self._plan_at(self._fractions(ratio, groups, scores, caps), groups, scores)
            key = tuple((tuple(group["producers"]), tuple(group["removed"])) for group in plan["groups"])
            if key not in measured:
                scratch = copy.deepcopy(gm)
                self.apply(scratch, plan, context)
                propagate(scratch, context.example_inputs)
                measured[key] = _total_macs(scratch) / original_macs
            return plan, measured[key]

        def miss(candidate: tuple[dict[str, Any], float]) -> float:
            return abs(candidate[1] / target - 1)

        low, high = 0.0, 1.0
        above, below = attempt(low), attempt(high)
        if below[1] > target * 1.02:
            raise RecipeError(
                f"prune.target_macs: {self.options['target_macs']:g} is out of reach; pruning every unpinned group "
                f"by max_ratio_per_group={self.options['max_ratio_per_group']:g} keeps {below[1]:.3f} of the MACs; "
                f"give target_macs >= {below[1]:.3f} or raise max_ratio_per_group"
            )
        for _ in range(30):
            if miss(min(above, below, key=miss)) <= 0.02:
                break
            middle = (low + high) / 2
            candidate = attempt(middle)
            if candidate[1] < target:
                high, below = middle, candidate
            else:
                low, above = middle, candidate
        best = min(above, below, key=miss)
        if last and miss(best) > 0.02:
            raise self._missed(below[1], above[1])
        return best

    def _missed(self, below: float, above: float) -> RecipeError:
        """The error for a target_macs no plan keeps within 2%: the nearest fractions kept and what to change."""
        changes = ["give target_macs near one of them"]
        if self.options["round_to"] > 1:
            changes.append(f"lower round_to (now {self.options['round_to']})")
        if self.options["scope"] == "local":
            changes.append("use scope: global, which removes channels one at a time")
        return RecipeError(
            f"prune.target_macs: no plan keeps {self.options['target_macs']:g} of the MACs within 2%; the nearest keep "
            f"{below:.3f} and {above:.3f}; {', '.join(changes[:-1])}{' or ' if len(changes) > 1 else ''}{changes[-1]}"
        )

    def _fractions(
        self, ratio: float, groups: list[ChannelGroup], scores: list[torch.Tensor | None], caps: list[float]
    ) -> list[float]:
        """The fraction of each group's channels to remove (0 for pinned groups), at most its entry in ``caps``."""
        if self.options["scope"] == "local":
            return [min(ratio, cap) for cap in caps]
        scored = [(index, s) for index, s in enumerate(scores) if s is not None]
        if not scored:
            return [0.0] * len(groups)
        normalized = torch.cat([s / s.mean() if bool(s.mean() > 0) else s for _, s in scored])
        owner = torch.repeat_interleave(torch.arange(len(scored)), torch.tensor([s.numel() for _, s in scored]))
        lowest = torch.argsort(normalized, stable=True)[: int(normalized.numel() * ratio + 1e-9)]
        counts = torch.bincount(owner[lowest], minlength=len(scored))
        fractions = [0.0] * len(groups)
        for (index, s), count in zip(scored, counts.tolist()):
            fractions[index] = min(count / s.numel(), caps[index])
        return fractions

    def _plan_at(
        self, fractions: list[float], groups: list[ChannelGroup], scores: list[torch.Tensor | None]
    ) -> dict[str, Any]:
        """Remove ``fractions[i]`` of group ``i``'s channels, the lowest scored first."""
        planned: list[dict[str, Any]] = []
        tables: dict[str, dict[str, dict[str, list[int]]]] = {table: {} for table in _TABLES.values()}
        whole: list[ChannelGroup] = []
        for group, group_scores, fraction in zip(groups, scores, fractions):
            removed = []
            if group_scores is not None and fraction > 0:
                round_to = self.options["round_to"]
                lowest = _channels_to_remove(group_scores, fraction, round_to, group.segments, group.min_channels)
                removed = _keep_every_member_alive(group, group_scores, lowest, round_to)
            if not removed:
                whole.append(group)
                continue
            planned.append({"producers": group.producers, "channels": group.channels, "removed": removed})
            gone = set(removed)
            for member in group.members:
                axes = tables[_TABLES[member.kind]].setdefault(member.name, {})
                dropped = {i for i, channel in zip(member.positions, member.group_channels) if channel in gone}
                axes[str(member.axis)] = sorted(set(axes.get(str(member.axis), range(member.size))) - dropped)
        if planned:
            # A size the graph computes from another group's channels (``C // heads``) changes when that
            # group is pruned; where it sizes a group kept whole, its full count is written in its place.
            for member in (m for group in whole for m in group.members if m.kind == "shape"):
                axes = tables["shapes"].setdefault(member.name, {})
                axes.setdefault(str(member.axis), list(range(member.size)))
        return {"groups": planned, **tables}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        _explicit_attention_scales(gm)
        owners = set()
        for name, axes in plan["kept"].items():
            owner_path, _, attribute = name.rpartition(".")
            owner = gm.get_submodule(owner_path)
            _shrink(owner, attribute, axes)
            owners.add(owner)
        for owner in owners:
            _update_attributes(owner)
        nodes = {qualname(node): node for node in gm.graph.nodes}
        for name, axes in plan["splits"].items():
            node = nodes[name]
            ((_, indices),) = axes.items()
            start, kept = 0, set(indices)
            new_sizes = []
            for size in split_sizes(node):
                new_sizes.append(sum(1 for i in range(start, start + size) if i in kept))
                start += size
            set_split_sizes(node, new_sizes)
        for name, axes in plan["shapes"].items():
            node = nodes[name]
            new_sizes = size_arguments(node)
            for axis, indices in axes.items():
                new_sizes[int(axis)] = len(indices)
            set_size_arguments(node, new_sizes)
        removed = sum(len(group["removed"]) for group in plan["groups"])
        return PassResult(gm, modified=removed > 0, stats={"groups": len(plan["groups"]), "channels_removed": removed})


def _explicit_attention_scales(gm: fx.GraphModule) -> None:
    """Write the default scale (1/√width) into every ``scaled_dot_product_attention`` call.

    The default follows the width of q and k, which pruning may shrink; the model computed with
    the original width.
    """
    for node in gm.graph.nodes:
        if node.target is F.scaled_dot_product_attention and len(node.args) < 7 and node.kwargs.get("scale") is None:
            query = node.args[0] if node.args else node.kwargs["query"]
            node.kwargs = {**node.kwargs, "scale": node_info(query).output.shape[-1] ** -0.5}


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``prune`` pass."""
    register(Prune)


@hookimpl
def fxcomp_register_importance(register: Any) -> None:
    """Register the built-in importance criteria."""
    register("l1", norm_importance(1))
    register("l2", norm_importance(2))
    register("bn_scale", bn_scale_importance)
    register("fpgm", fpgm_importance)
    register("taylor", taylor_importance)
    register("activation", activation_importance)
    register("random", random_importance)
