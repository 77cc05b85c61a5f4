"""Per-layer tables of an annotated graph, and the before/after report of a compression."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch.fx as fx
from tabulate import tabulate

from fxcomp.tracing import TensorSpec, node_info

_SHOWN_OPS = ("call_module", "call_function", "call_method")


@dataclass(frozen=True)
class LayerRow:
    """One node of an annotated graph, as the tables show it."""

    name: str
    op: str
    inputs: str
    output: str
    params: int
    macs: int


@dataclass(frozen=True)
class Totals:
    """Whole-model figures: unique parameters and MACs for the example inputs."""

    params: int
    macs: int


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


def layer_rows(gm: fx.GraphModule) -> list[LayerRow]:
    """A row per call node (and per parameter read through ``get_attr``) of an annotated graph."""
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
            )
        )
    return rows


def totals(gm: fx.GraphModule) -> Totals:
    """Unique parameter count and total MACs of an annotated graph."""
    params = sum(p.numel() for p in gm.parameters())
    return Totals(params=params, macs=sum(node_info(n).macs for n in gm.graph.nodes))


def _count(value: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def layer_table(gm: fx.GraphModule) -> str:
    """The per-layer table of ``gm``: name, op, input/output shapes, params, MACs, with totals."""
    rows = [[r.name, r.op, r.inputs, r.output, _count(r.params), _count(r.macs)] for r in layer_rows(gm)]
    total = totals(gm)
    rows.append(["total", "", "", "", _count(total.params), _count(total.macs)])
    return tabulate(rows, headers=["layer", "op", "input", "output", "params", "MACs"], tablefmt="simple")


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

    def changed_layers(self) -> list[tuple[LayerRow | None, LayerRow | None]]:
        """(before, after) pairs of the layers with parameters or MACs whose figures changed."""
        after = {row.name: row for row in self.after}
        before = {row.name: row for row in self.before}
        pairs = []
        for name in [*before, *(n for n in after if n not in before)]:
            old, new = before.get(name), after.get(name)
            costly = any(r is not None and (r.params or r.macs) for r in (old, new))
            same = old is not None and new is not None and (old.params, old.macs, old.output) == (
                new.params,
                new.macs,
                new.output,
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
        }

    def __str__(self) -> str:
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
            ]
            for old, new in self.changed_layers()
        ]
        headers = ["layer", "op", "output before", "output after", "params", "→ params", "MACs", "→ MACs"]
        layers = tabulate(layer_lines, headers=headers) if layer_lines else "no layer changed"
        b, a = self.before_totals, self.after_totals
        summary = tabulate(
            [
                ["params", _count(b.params), _count(a.params), _ratio(b.params, a.params)],
                ["MACs", _count(b.macs), _count(a.macs), _ratio(b.macs, a.macs)],
            ],
            headers=["total", "before", "after", "before ÷ after"],
        )
        passes = tabulate(
            [[p["pass"], "yes" if p.get("modified") else "no", _stats(p.get("stats", {}))] for p in self.passes],
            headers=["pass", "modified", "stats"],
        )
        return f"{layers}\n\n{summary}\n\n{passes}"


def _stats(stats: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in stats.items())
