"""``EarlyExitModel``: a classifier cut into stages with an exit head after each cut.

The exits live in the rewritten ``GraphModule`` itself, so every tool that takes a
graph (the report, ``fxcomp.save``, later passes) keeps working: the heads are the
submodule ``exit_heads`` (not called by the graph) and ``gm.meta["fxcomp_exits"]``
records where they read from, the exit criterion and the thresholds. An
:class:`EarlyExitModel` is a view of such a graph that runs it stage by stage.
"""

from __future__ import annotations

import copy
import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp.dynamic.cuts import cut_problems, find_node, resolve_cuts
from fxcomp.dynamic.stages import single_exit_graph, split_stages
from fxcomp.errors import ExitError, first_line
from fxcomp.report import totals
from fxcomp.tracing import TensorSpec, eval_mode, node_info, propagate, qualname, trace

EXITS = "fxcomp_exits"
"""The key of ``GraphModule.meta`` holding the exit plan."""

HEADS = "exit_heads"
"""The submodule (an ``nn.ModuleList``) of a ``GraphModule`` holding the exit heads."""

CRITERIA = ("confidence", "entropy")


def has_exits(gm: nn.Module) -> bool:
    """Whether ``gm`` is a ``GraphModule`` carrying early exits."""
    return isinstance(gm, fx.GraphModule) and EXITS in gm.meta


def _output_node(gm: fx.GraphModule) -> fx.Node:
    return next(node for node in gm.graph.nodes if node.op == "output")


def _check_classifier(gm: fx.GraphModule) -> None:
    value = _output_node(gm).args[0]
    spec = node_info(value).output if isinstance(value, fx.Node) else None
    if not isinstance(spec, TensorSpec) or len(spec.shape) != 2:
        raise ExitError(
            "early exits need a classifier whose output is one (batch, classes) tensor; "
            f"this model returns {spec if spec is not None else type(value).__name__}"
        )


def _inputs_like(gm: fx.GraphModule, batch: int) -> tuple[torch.Tensor, ...]:
    inputs = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            spec = node_info(node).output
            if not isinstance(spec, TensorSpec):
                raise ExitError(f"input '{node.name}' is not a tensor; early-exit models take tensors")
            inputs.append(torch.zeros((batch, *spec.shape[1:]), dtype=spec.dtype))
    return tuple(inputs)


def add_exits(
    gm: fx.GraphModule, at: str | Sequence[str], heads: Sequence[nn.Module], *, criterion: str = "confidence"
) -> list[fx.Node]:
    """Attach exit ``heads`` to the annotated classifier ``gm`` at the cut points ``at``; return the cut nodes.

    ``at`` names nodes or modules (see :func:`fxcomp.dynamic.find_node`), or one of them; each must be a cut point.
    ``heads[i]`` maps the tensor of the point ``at[i]`` names to the model's (batch, classes) logits.
    The exits are numbered, and the nodes returned, in graph order. The graph itself is
    unchanged: it still computes exactly the model's output.
    """
    if has_exits(gm) or hasattr(gm, HEADS):
        raise ExitError(f"the model already has early exits (a '{HEADS}' submodule); add all exits in one pass")
    if criterion not in CRITERIA:
        raise ExitError(f"exit criterion '{criterion}' is not one of: {', '.join(CRITERIA)}")
    _check_classifier(gm)
    names = [at] if isinstance(at, str) else list(at)
    nodes = resolve_cuts(gm, names)
    if len(heads) != len(nodes):
        raise ExitError(f"{len(nodes)} exit points but {len(heads)} heads; give one head per exit")
    head_at = {find_node(gm, name): head for name, head in zip(names, heads)}
    heads = [head_at[node] for node in nodes]
    classes = node_info(_output_node(gm).args[0]).output.shape[1]
    for node, head in zip(nodes, heads):
        spec = node_info(node).output
        try:
            with torch.no_grad(), eval_mode(head):
                produced = head(torch.zeros((2, *spec.shape[1:]), dtype=spec.dtype))
        except Exception as error:  # noqa: BLE001 - the user's head does not fit its cut point
            raise ExitError(
                f"the head at '{qualname(node)}' fails on a {'×'.join(map(str, (2, *spec.shape[1:])))} tensor "
                f"({type(error).__name__}: {first_line(error)}); give a head that takes the cut point's shape"
            ) from error
        if not isinstance(produced, torch.Tensor) or tuple(produced.shape) != (2, classes):
            shape = tuple(produced.shape) if isinstance(produced, torch.Tensor) else type(produced).__name__
            raise ExitError(f"the head at '{qualname(node)}' gives {shape} for a batch of 2; it must give (2, {classes})")
    gm.add_submodule(HEADS, nn.ModuleList(heads))
    gm.meta[EXITS] = {"at": [node.name for node in nodes], "criterion": criterion, "thresholds": None}
    return nodes


def _real(value: Any) -> float | None:
    """``value`` as a float when it is one real number (a Python or numpy number, or a one-entry tensor)."""
    if isinstance(value, torch.Tensor):
        plain = value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool
        return float(value) if plain else None
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


class EarlyExitModel(nn.Module):
    """A classifier that can stop at an earlier exit for inputs it is already sure about.

    Wraps a ``GraphModule`` with exits (from the ``early_exit`` pass or :func:`add_exits`),
    stored as :attr:`model`. It behaves as follows:

    * training mode: returns the logits of every exit, the final output last (for a joint loss);
    * eval mode without thresholds: returns exactly (bitwise) what the original model returns;
    * eval mode with :attr:`thresholds`: each sample takes the first exit whose criterion
      passes — max softmax probability ≥ threshold (``confidence``) or entropy ≤ threshold
      (``entropy``) — and later stages run only on the samples still going. The result has
      the original output's shape; :attr:`last_exits` tells which exit each sample took
      (``num_exits`` for the final output).

    It starts in the mode of the graph it wraps, so a model compressed or loaded in eval
    mode answers like the original.
    """

    def __init__(self, graph_module: fx.GraphModule) -> None:
        super().__init__()
        if not has_exits(graph_module):
            raise ExitError("this GraphModule has no early exits; run the early_exit pass first")
        self.model = graph_module
        names = graph_module.meta[EXITS]["at"]
        by_name = {node.name: node for node in graph_module.graph.nodes}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ExitError(
                f"exit point(s) {missing} are no longer in the graph (a later pass removed them); "
                "put early_exit after the passes that rewrite the graph"
            )
        self.cuts = [by_name[name] for name in names]
        problems = cut_problems(graph_module)
        for node in self.cuts:
            if problems.get(node) is not None:
                raise ExitError(
                    f"'{qualname(node)}' is no longer a cut point after rewriting ({problems[node]}); "
                    "put early_exit after the passes that rewrite the graph"
                )
        self.stages = split_stages(graph_module, self.cuts)
        self.training = graph_module.training
        self.last_exits: torch.Tensor | None = None
        self.backbone_frozen = False
        self._frozen: list[str] = []  # the backbone parameters freeze_backbone took gradients from
        self._costs_cache: tuple[list[float], list[float]] | None = None

    # -- structure ------------------------------------------------------------------------------

    @property
    def heads(self) -> nn.ModuleList:
        """The exit heads, in graph order."""
        return self.model.get_submodule(HEADS)

    @property
    def num_exits(self) -> int:
        """How many early exits there are (the final output is not counted)."""
        return len(self.cuts)

    @property
    def exit_names(self) -> list[str]:
        """The qualified names of the nodes the exits read."""
        return [qualname(node) for node in self.cuts]

    @property
    def criterion(self) -> str:
        """``confidence`` (max softmax probability ≥ threshold) or ``entropy`` (entropy ≤ threshold)."""
        return self.model.meta[EXITS]["criterion"]

    @criterion.setter
    def criterion(self, value: str) -> None:
        if value not in CRITERIA:
            raise ExitError(f"exit criterion '{value}' is not one of: {', '.join(CRITERIA)}")
        self.model.meta[EXITS]["criterion"] = value

    @property
    def thresholds(self) -> list[float] | None:
        """One threshold per early exit, or None: every sample runs the whole model."""
        values = self.model.meta[EXITS]["thresholds"]
        return list(values) if values is not None else None

    @thresholds.setter
    def thresholds(self, values: Sequence[float] | None) -> None:
        if values is not None:
            given = [] if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) else list(values)
            numbers_given = [_real(v) for v in given]
            values = numbers_given if given and None not in numbers_given else None
            if values is None or len(values) != self.num_exits or any(math.isnan(v) for v in values):
                raise ExitError(f"thresholds: give a list of {self.num_exits} numbers (one per early exit), or None")
        self.model.meta[EXITS]["thresholds"] = values

    def _costs(self) -> tuple[list[float], list[float]]:
        """Per-sample MACs of each stage and of each head."""
        if self._costs_cache is None:
            order = list(self.model.graph.nodes)
            batch = next(node_info(n).output.shape[0] for n in order if n.op == "placeholder")
            bounds = [order.index(cut) for cut in self.cuts] + [len(order)]
            stage_macs, start = [], 0
            for end in bounds:
                stage_macs.append(sum(node_info(n).macs for n in order[start : end + 1] if n.op != "output") / batch)
                start = end + 1
            head_macs = []
            for head, cut in zip(self.heads, self.cuts):
                spec = node_info(cut).output
                example = torch.zeros((1, *spec.shape[1:]), dtype=spec.dtype)
                head_macs.append(float(totals(trace(copy.deepcopy(head), example)).macs))
            self._costs_cache = (stage_macs, head_macs)
        return self._costs_cache

    def can_leave(self, threshold: float) -> bool:
        """Whether any sample can pass ``threshold`` (confidence ≤ 1, entropy ≥ 0); heads that cannot are skipped."""
        return threshold <= 1 if self.criterion == "confidence" else threshold >= 0

    def macs_per_sample(self, thresholds: Sequence[float] | None = None) -> list[float]:
        """MACs one sample costs when it leaves at each exit (the final output last).

        Leaving at exit *i* costs stages 0…*i* and the heads evaluated on the way: those
        whose threshold some sample can pass (all of them when no thresholds are given).
        """
        stage_macs, head_macs = self._costs()
        if thresholds is not None:
            head_macs = [m if self.can_leave(t) else 0.0 for m, t in zip(head_macs, thresholds)]
        leaving = [sum(stage_macs[: i + 1]) + sum(head_macs[: i + 1]) for i in range(self.num_exits)]
        return [*leaving, sum(stage_macs) + sum(head_macs)]

    def model_macs_per_sample(self) -> float:
        """MACs per sample of the original model (every stage, no head)."""
        return sum(self._costs()[0])

    def exit_plan(self) -> list[dict[str, Any]]:
        """One row per exit, the final output last: where it reads, its head, the MACs per sample a
        sample leaving there costs (and as a fraction of the original model's), its threshold."""
        thresholds = self.thresholds
        macs, model_macs = self.macs_per_sample(thresholds), self.model_macs_per_sample()
        if thresholds is None:
            macs[-1] = model_macs  # without thresholds no head runs
        rows = []
        for index in range(self.num_exits + 1):
            early = index < self.num_exits
            head = self.heads[index] if early else None
            rows.append(
                {
                    "exit": index,
                    "at": self.exit_names[index] if early else "output",
                    "head": " → ".join(type(m).__name__ for m in head.children()) or type(head).__name__ if head else "-",
                    "head_params": sum(p.numel() for p in head.parameters()) if head else 0,
                    "macs": macs[index],
                    "macs_fraction": macs[index] / model_macs if model_macs else 0.0,
                    "threshold": thresholds[index] if early and thresholds is not None else None,
                }
            )
        return rows

    # -- running --------------------------------------------------------------------------------

    def all_exits(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """The logits of every exit for every sample, the final output last."""
        value = self.stages[0](*inputs)
        outputs = []
        for head, stage in zip(self.heads, self.stages[1:]):
            outputs.append(head(value))
            value = stage(value)
        return [*outputs, value]

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per sample, how sure ``logits`` are, higher is surer: max probability, or minus the entropy."""
        if self.criterion == "confidence":
            return logits.softmax(1).amax(1)
        return (logits.softmax(1) * logits.log_softmax(1)).sum(1)

    def _leaves(self, logits: torch.Tensor, threshold: float) -> torch.Tensor:
        score = self.scores(logits)
        return score >= threshold if self.criterion == "confidence" else score >= -threshold

    def forward(self, *inputs: torch.Tensor) -> Any:
        if self.training:
            return self.all_exits(*inputs)
        thresholds = self.thresholds
        if thresholds is None:
            self.last_exits = None
            return self.model(*inputs)
        return self._route(thresholds, inputs)

    def _route(self, thresholds: list[float], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        value = self.stages[0](*inputs)
        batch = value.shape[0]
        out: torch.Tensor | None = None
        taken = torch.full((batch,), self.num_exits, dtype=torch.long)
        active = torch.arange(batch)
        for index, (head, stage) in enumerate(zip(self.heads, self.stages[1:])):
            if not self.can_leave(thresholds[index]):
                value = stage(value)
                continue
            logits = head(value)
            leave = self._leaves(logits, thresholds[index])
            if bool(leave.all()):
                if out is None:  # every sample leaves here together: no copy
                    taken.fill_(index)
                    self.last_exits = taken
                    return logits
                out[active] = logits
                taken[active] = index
                self.last_exits = taken
                return out
            if bool(leave.any()):
                if out is None:
                    out = logits.new_empty((batch, *logits.shape[1:]))
                out[active[leave]] = logits[leave]
                taken[active[leave]] = index
                stay = ~leave
                value, active = value[stay], active[stay]
            value = stage(value)
        self.last_exits = taken
        if out is None:
            return value
        out[active] = value
        return out

    # -- training and export --------------------------------------------------------------------

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Train only the heads (``frozen``): the backbone's parameters get no gradient and its
        normalization statistics stay as they are (the backbone stays in eval mode).

        ``freeze_backbone(False)`` gives gradients back only to the parameters freezing took
        them from; backbone parameters that were already frozen stay so.
        """
        if frozen and not self.backbone_frozen:
            head_parameters = {id(p) for p in self.heads.parameters()}
            self._frozen = [
                name for name, p in self.model.named_parameters() if id(p) not in head_parameters and p.requires_grad
            ]
        parameters = dict(self.model.named_parameters())
        for name in self._frozen:
            parameters[name].requires_grad_(not frozen)
        if not frozen:
            self._frozen = []
        self.backbone_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> EarlyExitModel:
        """Set the training mode; with a frozen backbone only the heads train (the backbone stays in eval mode)."""
        super().train(mode)
        if self.backbone_frozen:
            self.model.train(False)
            self.heads.train(mode)
        return self

    def fixed_exit(self, index: int) -> fx.GraphModule:
        """A plain ``GraphModule`` that always answers from exit ``index`` (``num_exits`` or -1: the final output).

        It has no control flow, so it exports with ``torch.export`` and to ONNX. It shares
        parameters with this model.
        """
        if isinstance(index, bool) or (isinstance(index, torch.Tensor) and index.dtype == torch.bool):
            raise ExitError(f"fixed_exit takes an exit's index (a whole number), got {index!r}")
        try:
            index = operator.index(index)
        except TypeError:
            raise ExitError(f"fixed_exit takes an exit's index (a whole number), got {index!r}") from None
        if index < 0:
            index += self.num_exits + 1
        if not 0 <= index <= self.num_exits:
            raise ExitError(f"exit {index} does not exist; this model has exits 0…{self.num_exits} (the last is the final output)")
        if index == self.num_exits:
            graph = single_exit_graph(self.model, None, None)
        else:
            graph = single_exit_graph(self.model, self.cuts[index], f"{HEADS}.{index}")
        propagate(graph, _inputs_like(self.model, 1))
        return graph

    def __deepcopy__(self, memo: dict[int, Any]) -> EarlyExitModel:
        copied = EarlyExitModel(copy.deepcopy(self.model, memo))
        copied.backbone_frozen = self.backbone_frozen
        copied._frozen = list(self._frozen)
        copied.train(self.training)
        return copied

    def extra_repr(self) -> str:
        return f"exits at {self.exit_names}, criterion={self.criterion}, thresholds={self.thresholds}"
