"""Built-in plugin ``early_exit``: attach exit heads so easy inputs can skip the rest of a classifier.

A recipe step::

    - pass: early_exit
      at: auto            # or a list of node / module names, e.g. [layer1, layer2]
      num_exits: 2        # with auto: exits at 1/3 and 2/3 of the model's MACs
      head_conv: 0        # channels of a 3×3 conv + BatchNorm + ReLU before pooling (0: none)
      head_pool: 1        # average-pool to this size per spatial axis (1: global; 4: 4×4 as in SDN)
      head_hidden: 0      # width of a hidden linear layer + ReLU before the classifier (0: none)
      criterion: confidence

Exits go only at cut points, where one tensor carries all live state (not inside a
residual block; see :func:`fxcomp.dynamic.cut_problems`). With ``auto``, exit *j* of
*n* goes at the cut point whose cumulative MACs are nearest to *j*/(*n* + 1) of the
model's (among equal ones, the last: after the block's activation); the plan lists the
nearer points it rejected and why. A head is average pooling (global, or to
``head_pool`` per axis) and a linear layer, optionally after a small conv, for a
(batch, channels, …) tensor; a linear layer for a (batch, features) one. ``head_hidden``
puts a hidden linear layer and a ReLU before the classifier. The graph itself is unchanged, so the pass promises exact
outputs; ``compress`` returns an :class:`fxcomp.EarlyExitModel`. Train the heads with a
``recover`` step (``exits: {train: heads}`` keeps the backbone frozen), then pick
thresholds with :func:`fxcomp.calibrate_exits`.

The plugin also registers a check: after every later pass, the exits must still sit at
cut points and every head must still accept its tensor (``prune`` after ``early_exit``
would change the widths under the heads, so prune first).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp import CheckContext, RecipeError, hookimpl, node_info, qualname
from fxcomp.dynamic import CRITERIA, EarlyExitModel, add_exits, cut_problems, has_exits, resolve_cuts
from fxcomp.passes import Option, Pass, PassContext, PassResult, choice, integer, optional, relative_error
from fxcomp.tracing import TensorSpec, eval_mode

_POOLS = {3: nn.AdaptiveAvgPool1d, 4: nn.AdaptiveAvgPool2d, 5: nn.AdaptiveAvgPool3d}
_CONVS = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}
_NORMS = {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
_REJECTIONS_SHOWN = 3


def _at(value: Any, path: str) -> Any:
    if value == "auto":
        return value
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise RecipeError(f"{path}: expected 'auto' or a list of node or module names, got {value!r}")


def _head_problem(spec: Any) -> str | None:
    if not isinstance(spec, TensorSpec) or not spec.dtype.is_floating_point:
        return "its output is not a floating-point tensor"
    if len(spec.shape) not in (2, *_POOLS):
        return f"no default head for a {len(spec.shape)}-d tensor; attach your own with fxcomp.dynamic.add_exits"
    return None


def build_head(
    shape: tuple[int, ...], classes: int, conv_channels: int = 0, pool: int = 1, hidden: int = 0
) -> nn.Sequential:
    """A default exit head for a tensor of ``shape``:
    [conv → BN → ReLU →] average pool to ``pool`` → flatten → [linear → ReLU →] linear."""
    layers: list[nn.Module] = []
    features = shape[1]
    if len(shape) > 2:
        rank = len(shape)
        if conv_channels:
            layers += [
                _CONVS[rank](features, conv_channels, 3, padding=1, bias=False),
                _NORMS[rank](conv_channels),
                nn.ReLU(inplace=True),
            ]
            features = conv_channels
        layers += [_POOLS[rank](pool), nn.Flatten()]
        features *= pool ** (rank - 2)
    if hidden:
        layers += [nn.Linear(features, hidden), nn.ReLU(inplace=True)]
        features = hidden
    return nn.Sequential(*layers, nn.Linear(features, classes))


def _describe(head: nn.Sequential) -> str:
    return " → ".join(type(layer).__name__ for layer in head)


DEFAULT_EXITS = 2
"""Exits ``at: auto`` places when ``num_exits`` is not given."""


class EarlyExit(Pass):
    """Insert exit heads at cut points of a classifier (BranchyNet / Shallow-Deep Networks)."""

    name = "early_exit"
    tolerance = 0.0  # the graph is not changed: exits only run in an EarlyExitModel
    schema = {
        "at": Option(_at, default="auto", doc="'auto' or node/module names to put exits after"),
        "num_exits": Option(optional(integer(1)), default=None,
                            doc=f"with at: auto, how many exits, evenly spaced in MACs (default {DEFAULT_EXITS})"),
        "head_conv": Option(integer(0), default=0, doc="channels of a 3×3 conv + BN + ReLU in each head (0: none)"),
        "head_pool": Option(integer(1), default=1, doc="average-pool size per spatial axis before the linear layer"),
        "head_hidden": Option(integer(0), default=0, doc="width of a hidden linear layer + ReLU in each head (0: none)"),
        "criterion": Option(choice(*CRITERIA), default="confidence", doc="max softmax probability, or entropy"),
        "seed": Option(integer(0), default=0, doc="seeds the heads' initial weights"),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["at"] != "auto" and self.options["num_exits"] is not None:
            raise RecipeError("early_exit: num_exits spaces automatic exits; with at: [...] the list gives them, so drop num_exits")

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        if has_exits(gm):
            raise RecipeError("the model already has early exits; give every exit in one early_exit step")
        output = next(node for node in gm.graph.nodes if node.op == "output").args[0]
        spec = node_info(output).output if isinstance(output, fx.Node) else None
        if not isinstance(spec, TensorSpec) or len(spec.shape) != 2:
            raise RecipeError("early_exit needs a classifier whose output is one (batch, classes) tensor")
        problems = cut_problems(gm)
        for node, problem in problems.items():
            if problem is None:
                problems[node] = _head_problem(node_info(node).output)
        cumulative, total = {}, 0
        for node in gm.graph.nodes:
            total += node_info(node).macs
            cumulative[node] = total
        if self.options["at"] == "auto":
            chosen, rejected = self._auto(problems, cumulative, total)
        else:
            chosen, rejected = resolve_cuts(gm, self.options["at"], problems), []
        exits = []
        for node in chosen:
            shape = tuple(node_info(node).output.shape)
            head = self._head(shape, spec.shape[1])
            exits.append(
                {
                    "at": qualname(node),
                    "node": node.name,
                    "shape": list(shape),
                    "macs_fraction": cumulative[node] / total if total else 0.0,
                    "head": _describe(head),
                }
            )
        return {"exits": exits, "rejected": rejected, "classes": spec.shape[1], "criterion": self.options["criterion"]}

    def _auto(
        self, problems: dict[fx.Node, str | None], cumulative: dict[fx.Node, int], total: int
    ) -> tuple[list[fx.Node], list[dict[str, Any]]]:
        count = self.options["num_exits"] or DEFAULT_EXITS
        valid = [node for node, problem in problems.items() if problem is None]
        if not valid or total == 0:
            raise RecipeError("early_exit found no cut point for an exit in this model; give points with at: [...]")
        chosen, rejected = [], []
        for j in range(1, count + 1):
            target = j / (count + 1) * total
            # nearest in MACs; among equals the last node (after the block's activation)
            best = min(reversed(valid), key=lambda n: abs(cumulative[n] - target))
            distance = abs(cumulative[best] - target)
            closer = [n for n, p in problems.items() if p is not None and abs(cumulative[n] - target) < distance]
            closer.sort(key=lambda n: abs(cumulative[n] - target))
            rejected += [
                {"target_fraction": j / (count + 1), "node": qualname(n), "reason": problems[n]}
                for n in closer[:_REJECTIONS_SHOWN]
            ]
            if best in chosen:
                raise RecipeError(
                    f"early_exit found fewer than {count} distinct cut points; lower num_exits or give points with at: [...]"
                )
            chosen.append(best)
        return chosen, rejected

    def _head(self, shape: tuple[int, ...], classes: int) -> nn.Sequential:
        options = self.options
        return build_head(shape, classes, options["head_conv"], options["head_pool"], options["head_hidden"])

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        nodes = {node.name: node for node in gm.graph.nodes}
        heads = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options["seed"])
            for entry in plan["exits"]:
                shape = tuple(node_info(nodes[entry["node"]]).output.shape)
                heads.append(self._head(shape, plan["classes"]))
        add_exits(gm, [entry["node"] for entry in plan["exits"]], heads, criterion=plan["criterion"])
        head_params = sum(p.numel() for head in heads for p in head.parameters())
        return PassResult(gm, modified=True, stats={"exits": len(heads), "head_params": head_params})


def exits_still_fit(gm: fx.GraphModule, context: CheckContext) -> list[str]:
    """After any pass: a graph with exits must still have them at cut points, each head accepting its
    tensor, and a pass that promises its outputs within a tolerance must keep the exits' logits within it."""
    if not has_exits(gm):
        context.state.clear()
        return []
    try:
        model = EarlyExitModel(gm)
        with torch.no_grad(), eval_mode(model):  # the graph keeps its own mode
            outputs = model.all_exits(*context.example_inputs)
    except Exception as error:  # noqa: BLE001 - any failure means the exits no longer fit the graph
        return [f"the early exits no longer fit the rewritten graph ({error}); run early_exit after this pass"]
    final = outputs[-1]
    problems = [
        f"exit {i} gives {tuple(out.shape)} instead of {tuple(final.shape)}"
        for i, out in enumerate(outputs[:-1])
        if out.shape != final.shape
    ]
    exits = (tuple(node.name for node in model.cuts), outputs[:-1])
    previous = context.state.get("exits")
    context.state["exits"] = exits
    if problems or previous is None or previous[0] != exits[0] or context.tolerance is None:
        return problems
    error, index = relative_error(exits[1], previous[1])
    if error > context.tolerance:
        return [
            f"exit {index}'s logits changed by {error:.3g}, more than the {context.tolerance:g} the pass promises "
            f"(it rewrote what the exit at '{exits[0][index]}' reads); run early_exit after this pass"
        ]
    return []


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``early_exit`` pass."""
    register(EarlyExit)


@hookimpl
def fxcomp_register_checks(register: Any) -> None:
    """Check after every pass that early exits still fit the graph."""
    register("early_exits_fit", exits_still_fit)
