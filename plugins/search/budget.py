"""What a pruning candidate costs: an analytic model over the channel groups, and projection onto a budget.

A candidate gives each prunable group the fraction ``r`` of its channels to remove. The
model predicts a graph's MACs or parameters from the fractions kept: every parameter
(and every layer's MACs, through its weight) scales with the kept share of each of its
channel axes, where an axis can hold the channels of several groups (after a concat).
Rounding and ops without weights make it approximate; the search measures the real
cost of every pruned candidate and corrects the model's target when they disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx as fx

from fxcomp import ChannelGroup, node_info
from fxcomp.passes import parameter_values

METRICS = ("macs", "params")


@dataclass
class _Term:
    """A cost at full width and, per channel axis, the share of its entries each group holds."""

    base: float
    axes: list[list[tuple[int, float]]]


def _axis_shares(groups: Sequence[ChannelGroup]) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """Parameter name → axis → (group index, share of the axis's entries in that group)."""
    shares: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for index, group in enumerate(groups):
        for member in group.members:
            if member.kind == "parameter" and member.size:
                owned = len(member.positions) / member.size
                shares.setdefault(member.name, {}).setdefault(member.axis, []).append((index, owned))
    return shares


class CostModel:
    """Predicts ``metric`` (MACs or parameters) of ``gm`` pruned by per-group removal fractions."""

    def __init__(self, gm: fx.GraphModule, groups: Sequence[ChannelGroup], metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
        self.groups, self.metric = list(groups), metric
        shares = _axis_shares(self.groups)
        if metric == "params":
            values = dict(parameter_values(gm))
            self.terms = [_Term(float(value.numel()), list(shares.get(name, {}).values())) for name, value in values.items()]
        else:
            self.terms = []
            for node in gm.graph.nodes:
                macs = node_info(node).macs
                if macs:
                    weight = f"{node.target}.weight" if node.op == "call_module" else ""
                    channel_axes = [axes for axis, axes in shares.get(weight, {}).items() if axis in (0, 1)]
                    self.terms.append(_Term(float(macs), channel_axes))
        self.full = sum(term.base for term in self.terms)

    def fraction(self, ratios: Sequence[float]) -> float:
        """The predicted cost, as a fraction of the unpruned one, when group ``i`` loses ``ratios[i]``."""
        total = 0.0
        for term in self.terms:
            value = term.base
            for axis in term.axes:
                value *= 1.0 - sum(share * ratios[index] for index, share in axis)
            total += value
        return total / self.full if self.full else 1.0

    def project(self, direction: Sequence[float], target: float, cap: float) -> list[float] | None:
        """Ratios ``min(λ·direction, cap)`` whose predicted cost fraction is ``target``; None if out of reach.

        The cost falls as λ grows, so λ is found by bisection. ``direction`` holds
        non-negative weights (how much each group is pruned relative to the others).
        """
        if not any(weight > 0 for weight in direction):
            return None
        scale = cap / min(weight for weight in direction if weight > 0)

        def ratios(lam: float) -> list[float]:
            return [min(lam * weight, cap) for weight in direction]

        if self.fraction(ratios(scale)) > target:
            return None
        low, high = 0.0, scale
        for _ in range(50):
            middle = (low + high) / 2
            if self.fraction(ratios(middle)) > target:
                low = middle
            else:
                high = middle
        return ratios(high)
