"""Per-layer tables of an annotated graph, and the before/after report of a compression."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from tabulate import tabulate

from fxcomp.analysis import ChannelGroup
from fxcomp.passes.masks import parameter_values
from fxcomp.tracing import TensorSpec, node_info, require_graph

_SHOWN_OPS = ("call_module", "call_function", "call_method")


@dataclass(frozen=True)
class LayerRow:
    """One node of an annotated graph, as the tables show it.

    ``sparsity`` is the fraction of exactly-zero entries of the node's weights
    (its parameters of two or more dimensions, read as the model computes them,
    so masked entries count as zero); None for a node without weights.
    """

    name: str
    op: str
    inputs: str
    output: str
    params: int
    macs: int
    sparsity: float | None


@dataclass(frozen=True)
class Totals:
    """Whole-model figures: unique parameters, how many of them are nonzero, MACs, and weight sparsity.

    ``sparsity`` counts the zeros of all weights (parameters of two or more dimensions), None
    for a model without any; ``nonzero`` counts every parameter entry that is not zero. Both
    are None for parameters on the meta device, which hold no values.
    """

    params: int
    nonzero: int | None
    macs: int
    sparsity: float | None


def _op_name(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return node.op


def _format_spec(spec: Any) -> str:
    if isinstance(spec, TensorSpec):
        return str(spec)
    if isinstance(spec, (tuple, list)):
        return "(" + ", ".join(_format_spec(s) for s in spec) + ")"
    return repr(spec)


def _weight_sparsity(values: Iterable[torch.Tensor]) -> float | None:
    """Fraction of zero entries among the weights (tensors of two or more dimensions) in ``values``, if any.

    None when there are none, or when a weight holds no data (on the meta device).
    """
    weights = [value for value in values if value.dim() >= 2]
    if any(weight.is_meta for weight in weights):
        return None
    size = sum(weight.numel() for weight in weights)
    return sum(weight.numel() - int(weight.count_nonzero()) for weight in weights) / size if size else None


def _node_values(gm: fx.GraphModule, node: fx.Node) -> list[torch.Tensor]:
    """The parameter values a node owns, as :func:`fxcomp.tracing.costs.node_params` counts them."""
    if node.op == "call_module":
        return [value for _, value in parameter_values(gm.get_submodule(node.target))]
    if node.op == "get_attr":
        owner, _, name = node.target.rpartition(".")
        value = getattr(gm.get_submodule(owner), name)
        return [value.detach()] if isinstance(value, nn.Parameter) else []
    return []


def layer_rows(gm: fx.GraphModule) -> list[LayerRow]:
    """A row per call node (and per parameter read through ``get_attr``) of an annotated graph."""
    require_graph(gm, "layer_table")
    rows = []
    for node in gm.graph.nodes:
        info = node_info(node)
        if node.op not in _SHOWN_OPS and not info.params:
            continue
        tensor_inputs = [s for s in info.inputs if isinstance(s, TensorSpec)]
        rows.append(
            LayerRow(
                name=info.qualname,
                op=_op_name(gm, node),
                inputs=", ".join(str(s) for s in tensor_inputs),
                output=_format_spec(info.output),
                params=info.params,
                macs=info.macs,
                sparsity=_weight_sparsity(_node_values(gm, node)),
            )
        )
    return rows


def totals(gm: fx.GraphModule) -> Totals:
    """Unique parameter count, nonzero parameters, total MACs and weight sparsity of an annotated graph."""
    require_graph(gm, "totals")
    values = [value for _, value in parameter_values(gm)]
    return Totals(
        params=sum(p.numel() for p in gm.parameters()),
        nonzero=None if any(value.is_meta for value in values) else sum(int(value.count_nonzero()) for value in values),
        macs=sum(node_info(n).macs for n in gm.graph.nodes),
        sparsity=_weight_sparsity(values),
    )


def _count(value: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.1%}"


def _shows_sparsity(rows: Iterable[LayerRow]) -> bool:
    """Whether some row's weight sparsity displays as more than zero (the odd zero of a random init does not)."""
    return any(_percent(row.sparsity) not in ("-", _percent(0.0)) for row in rows)


def layer_table(gm: fx.GraphModule) -> str:
    """The per-layer table of ``gm``: name, op, input/output shapes, params, MACs, with totals.

    When some layer's weight sparsity shows as at least 0.1% (after ``sparsify``, say), a last
    column gives each layer's weight sparsity; the odd exact zero of a random init does not add it.
    """
    layers, total = layer_rows(gm), totals(gm)
    rows = [[r.name, r.op, r.inputs, r.output, _count(r.params), _count(r.macs), _percent(r.sparsity)] for r in layers]
    rows.append(["total", "", "", "", _count(total.params), _count(total.macs), _percent(total.sparsity)])
    headers = ["layer", "op", "input", "output", "params", "MACs", "sparsity"]
    if not _shows_sparsity(layers):
        rows, headers = [row[:-1] for row in rows], headers[:-1]
    return tabulate(rows, headers=headers, tablefmt="simple")


_PRODUCERS_SHOWN = 3


def group_table(groups: Sequence[ChannelGroup]) -> str:
    """The channel groups of :func:`fxcomp.analyze` as a table, then how much of the model pruning may touch.

    One row per group, in graph order: its first producers (the layers whose output channels it
    holds), its channel count, equal segments (groups, heads), and whether it may be pruned or
    why it is pinned.
    """
    rows = []
    for index, group in enumerate(groups):
        producers = ", ".join(group.producers[:_PRODUCERS_SHOWN])
        if len(group.producers) > _PRODUCERS_SHOWN:
            producers += f" (+{len(group.producers) - _PRODUCERS_SHOWN} more)"
        rows.append([index, producers, group.channels, group.segments, "yes" if group.prunable else "no", "; ".join(group.pinned)])
    table = tabulate(rows, headers=["group", "producers", "channels", "segments", "prunable", "pinned because"])
    prunable = [group for group in groups if group.prunable]
    channels = sum(group.channels for group in groups)
    summary = (
        f"{len(prunable)} of {len(groups)} groups prunable, holding "
        f"{sum(group.channels for group in prunable)} of {channels} channels"
    )
    return f"{table}\n\n{summary}"


def _ratio(before: int, after: int) -> str:
    return f"{before / after:.3f}×" if after else "all removed"


@dataclass
class CompressionReport:
    """What a compression changed: per layer and in total, plus what each pass reported."""

    before: list[LayerRow]
    after: list[LayerRow]
    before_totals: Totals
    after_totals: Totals
    passes: list[dict[str, Any]] = field(default_factory=list)
    exits: list[dict[str, Any]] | None = None

    def changed_layers(self) -> list[tuple[LayerRow | None, LayerRow | None]]:
        """(before, after) pairs of the layers with parameters or MACs whose figures or sparsity changed."""
        after = {row.name: row for row in self.after}
        before = {row.name: row for row in self.before}
        pairs = []
        for name in [*before, *(n for n in after if n not in before)]:
            old, new = before.get(name), after.get(name)
            costly = any(r is not None and (r.params or r.macs) for r in (old, new))
            same = old is not None and new is not None and (old.params, old.macs, old.output, old.sparsity) == (
                new.params,
                new.macs,
                new.output,
                new.sparsity,
            )
            if costly and not same:
                pairs.append((old, new))
        return pairs

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable form of the report."""
        return {
            "before": [asdict(r) for r in self.before],
            "after": [asdict(r) for r in self.after],
            "before_totals": asdict(self.before_totals),
            "after_totals": asdict(self.after_totals),
            "passes": self.passes,
            "exits": self.exits,
        }

    def __str__(self) -> str:
        """Tables of the changed layers, the totals and the passes.

        When some layer's weight sparsity shows as at least 0.1%, before or after, the layer table also shows
        each layer's weight sparsity and the totals the nonzero parameters.
        """
        sparse = _shows_sparsity([*self.before, *self.after])
        layer_lines = [
            [
                (old or new).name,
                (old or new).op,
                old.output if old else "(new)",
                new.output if new else "(removed)",
                _count(old.params) if old else "-",
                _count(new.params) if new else "-",
                _count(old.macs) if old else "-",
                _count(new.macs) if new else "-",
                *([_percent(old.sparsity if old else None), _percent(new.sparsity if new else None)] if sparse else []),
            ]
            for old, new in self.changed_layers()
        ]
        headers = ["layer", "op", "output before", "output after", "params", "→ params", "MACs", "→ MACs"]
        if sparse:
            headers += ["sparsity", "→ sparsity"]
        layers = tabulate(layer_lines, headers=headers) if layer_lines else "no layer changed"
        b, a = self.before_totals, self.after_totals
        figures = [
            ["params", _count(b.params), _count(a.params), _ratio(b.params, a.params)],
            ["MACs", _count(b.macs), _count(a.macs), _ratio(b.macs, a.macs)],
        ]
        if sparse:
            figures.append(["nonzero params", _count(b.nonzero), _count(a.nonzero), _ratio(b.nonzero, a.nonzero)])
        summary = tabulate(figures, headers=["total", "before", "after", "before ÷ after"])
        passes = tabulate(
            [[p["pass"], _modified(p), _stats(p.get("stats", {}))] for p in self.passes],
            headers=["pass", "modified", "stats"],
        )
        text = f"{layers}\n\n{summary}\n\n{passes}"
        return f"{text}\n\n{exit_table(self.exits)}" if self.exits else text


def exit_table(plan: list[dict[str, Any]]) -> str:
    """The exit plan of an early-exit model (:meth:`fxcomp.EarlyExitModel.exit_plan`) as a table."""
    rows = [
        [
            row["exit"],
            row["at"],
            row["head"],
            _count(row["head_params"]),
            _count(round(row["macs"])),
            f"{row['macs_fraction']:.1%}",
            "-" if row["threshold"] is None else f"{row['threshold']:.4g}",
        ]
        for row in plan
    ]
    return tabulate(rows, headers=["exit", "reads", "head", "head params", "MACs / sample", "of model", "threshold"])


def _modified(record: dict[str, Any]) -> str:
    """Whether a pass changed the graph; a dry run's last pass was only planned."""
    if "modified" not in record:
        return "planned only"
    return "yes" if record["modified"] else "no"


def _stats(stats: dict[str, Any]) -> str:
    """Scalars as they are; lists and mappings (a training history) by their length, in full in ``to_dict``."""
    return ", ".join(
        f"{key}=[{len(value)} entries]" if isinstance(value, (list, dict)) else f"{key}={value}" for key, value in stats.items()
    )
