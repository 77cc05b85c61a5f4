"""Built-in plugin ``search``: automatic per-group pruning ratios under a budget (MetaPruning / AMC style).

The pass ``search`` looks for the per-group pruning ratios that keep the most accuracy
at a budget — ``target_macs``, ``target_params`` or a latency — and, with ``techniques``,
which layers to factor (``lowrank``) or split into depthwise-separable pairs
(``separable``) on top of the pruning, with
an evolutionary search (:mod:`.evolution`) scored by a fast proxy (:mod:`.evaluation`):
each candidate is pruned for real (the ``prune`` pass with ``group_ratios``, then the
chosen layers rewritten by the ``lowrank`` / ``separable`` passes), its cost
checked against the budget, its BatchNorm statistics re-estimated on a few training
batches (and, with ``finetune_steps``, the candidate fine-tuned that many steps, as in
NetAdapt), and its accuracy measured on held-out data (``compress(..., val_data=...)``).
The best candidate is applied; a ``recover`` step after it fine-tunes the result.
Every evaluated candidate and the Pareto front go to the plan, and to ``history`` (JSON)
and ``plot`` (PNG, needs matplotlib: ``pip install 'fxcomp[plot]'``) when given.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch.utils.data import DataLoader, RandomSampler

from fxcomp import DataError, RecipeError, SaveError, analyze, hookimpl, qualname, torch_threads
from fxcomp.export import check_writable
from fxcomp.passes import Option, Pass, PassContext, PassResult, boolean, choices, integer, number, optional, string

from fxcomp_plugins.search.budget import CostModel
from fxcomp_plugins.search.evaluation import Problem, held_out, prune_with, score_all, worker_threads
from fxcomp_plugins.search.evolution import PRUNE, Candidate, Evolution, pareto_front, ranked
from fxcomp_plugins.search.latency import LatencyTable, model_ms
from fxcomp_plugins.search.plot import check_plotting, plot_search

TOLERANCE = 0.02
"""How far (relative) a candidate's real cost may be from the budget."""

REWRITES = ("lowrank", "separable")
"""The techniques a layer may get on top of pruning, in the order they are applied."""


def _no_candidate(target: float, notes: list[str]) -> str:
    """Why no candidate met the budget (the most frequent reason) and what to change."""
    reason = Counter(notes).most_common(1)[0][0]
    if reason.startswith("cannot reach"):
        advice = "raise max_ratio or the target"
    else:
        advice = ("the real cost steps over the 2% window (channels go in steps of round_to and of coupled groups, "
                  "rewrites cut whole layers): lower round_to, move the target or drop rewrite techniques")
    return f"search: no candidate meets the budget {target:.3g} ({reason}); {advice}"


def _check_table_path(path: str | None) -> None:
    """Refuse, before any search, a latency table path that can never be a file (missing folders are created)."""
    if path is None:
        return
    if os.path.isdir(path):
        raise RecipeError(f"search.latency_table: '{path}' is a directory; give a file name")
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RecipeError(f"search.latency_table: '{path}' lies under '{parent}', which is a file; choose another path")


def _own_shuffle(data: Any) -> bool:
    """Whether ``data`` is a DataLoader that shuffles with a generator of its own (which every pass advances)."""
    if not isinstance(data, DataLoader):
        return False
    sampler = getattr(data, "sampler", None)
    return isinstance(sampler, RandomSampler) and (data.generator is not None or sampler.generator is not None)


class Search(Pass):
    """Search per-group pruning ratios (and per-layer rewrites) for a budget, then apply the best."""

    name = "search"
    schema = {
        "target_macs": Option(optional(number(0, 1, low_open=True, high_open=True)), default=None,
                              doc="fraction of the original MACs to keep"),
        "target_params": Option(optional(number(0, 1, low_open=True, high_open=True)), default=None,
                                doc="fraction of the original parameters to keep"),
        "target_latency_ms": Option(optional(number(0, None, low_open=True)), default=None,
                                    doc="latency at the traced input shape, from the per-layer latency table"),
        "target_latency": Option(optional(number(0, 1, low_open=True, high_open=True)), default=None,
                                 doc="fraction of the latency measured at the start of the search, instead"),
        "latency_table": Option(optional(string()), default=None,
                                doc="the latency table's cache file (default ~/.cache/fxcomp/latency.json)"),
        "population": Option(integer(2), default=12, doc="candidates per generation"),
        "generations": Option(integer(1), default=6, doc="generations (the first is the uniform ratio and random ones)"),
        "mutation": Option(number(0, 1), default=0.3, doc="probability that a child's gene is perturbed"),
        "crossover": Option(number(0, 1), default=0.5, doc="probability that a child mixes two parents"),
        "max_ratio": Option(number(0, 1, high_open=True), default=0.8, doc="most of any group's channels removed"),
        "techniques": Option(choices(PRUNE, *REWRITES), default=(PRUNE,),
                             doc="what the search may do to a layer: prune (always), and lowrank or separable on top"),
        "lowrank_ratio": Option(number(0, 1, low_open=True, high_open=True), default=0.5,
                                doc="the fraction of its full rank a layer the search factors keeps"),
        "importance": Option(string(), default="l1", doc="prune's importance criterion"),
        "round_to": Option(integer(1), default=1, doc="prune's round_to"),
        "recalibration_batches": Option(integer(0), default=8, doc="training batches that re-estimate BatchNorm"),
        "finetune_steps": Option(integer(0), default=0,
                                 doc="training steps (batches of 128, at most one pass) each candidate gets before it is scored"),
        "finetune_lr": Option(number(0, None, low_open=True), default=0.01, doc="learning rate of those steps"),
        "eval_samples": Option(optional(integer(1)), default=2000, doc="held-out examples scoring each candidate"),
        "workers": Option(integer(1), default=1, doc="processes scoring candidates on this machine"),
        "seed": Option(integer(0), default=0, doc="seeds the search"),
        "history": Option(optional(string()), default=None, doc="write every candidate and the Pareto front here (JSON)"),
        "plot": Option(optional(string()), default=None, doc="plot accuracy against cost here (PNG; needs matplotlib)"),
        "progress": Option(boolean(), default=True, doc="a line per generation on stderr"),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        budgets = {"target_macs": "macs", "target_params": "params", "target_latency_ms": "latency", "target_latency": "latency"}
        targets = [key for key in budgets if self.options[key] is not None]
        if len(targets) != 1:
            raise RecipeError("search: give exactly one budget: target_macs, target_params, target_latency_ms or target_latency")
        self.metric = budgets[targets[0]]
        if PRUNE not in self.options["techniques"]:
            raise RecipeError("search.techniques: include prune; pruning is what meets the budget, rewrites come on top")
        if self.metric == "latency" and self.options["workers"] > 1:
            raise RecipeError("search: latency budgets are measured on this machine, which needs it to itself; use workers: 1")
        _check_table_path(self.options["latency_table"])
        for key in ("history", "plot"):  # checked now, not after the whole search
            if self.options[key]:
                try:
                    check_writable(self.options[key])
                except SaveError as error:
                    raise RecipeError(f"search.{key}: {error}") from None
        if self.options["plot"]:
            check_plotting()

    def _problem(self, gm: fx.GraphModule, context: PassContext, latency: dict[str, Any] | None = None) -> Problem:
        if context.train_data is None or context.val_data is None:
            raise DataError(
                "search scores candidates on held-out data: pass train_data= and val_data= to fxcomp.compress "
                "(--train-data on the CLI)"
            )
        for role, data in (("train_data", context.train_data), ("val_data", context.val_data)):
            if isinstance(data, Iterator):
                raise DataError(
                    f"search: {role} is a one-shot iterator (a generator?), but every candidate reads it again; "
                    "pass a DataLoader, a Dataset or a list of (inputs, target) batches"
                )
            if _own_shuffle(data):
                raise DataError(
                    f"search: {role} shuffles with its own generator, so each candidate would see other batches; "
                    "drop generator= (search seeds the global one so every candidate gets the same batches)"
                )
            if isinstance(data, Sized) and len(data) == 0:
                raise DataError(f"search: {role} is empty; give it the examples candidates are re-estimated and scored on")
        for technique in self.options["techniques"]:
            if technique not in context.plugins.registry.passes:
                raise RecipeError(
                    f"search uses the '{technique}' pass, which no loaded plugin registers; "
                    f"remove {technique} from FXCOMP_DISABLE_PLUGINS"
                )
        groups = [group for group in analyze(gm, plugins=context.plugins) if group.prunable]
        if not groups:
            raise RecipeError("search: the model has no prunable channel group; fxcomp.analyze(gm) lists why each is pinned")
        problem = Problem(
            gm=gm,
            context=context,
            prune=context.plugins.registry.passes["prune"].value,
            prune_options={"importance": self.options["importance"], "round_to": self.options["round_to"],
                           "max_ratio_per_group": self.options["max_ratio"]},
            names=[group.producers[0] for group in groups],
            model=CostModel(gm, groups, "params" if self.metric == "params" else "macs"),
            target=self.options["target_macs"] or self.options["target_params"] or 1.0,
            tolerance=TOLERANCE,
            cap=self.options["max_ratio"],
            recalibration_batches=self.options["recalibration_batches"],
            eval_data=held_out(context.val_data, self.options["eval_samples"]),
            seed=self.options["seed"],
            metric=self.metric,
            finetune_steps=self.options["finetune_steps"],
            finetune_lr=self.options["finetune_lr"],
            rewrite_passes={technique: context.plugins.registry.passes[technique].value
                            for technique in REWRITES if technique in self.options["techniques"]},
            rewrite_options={"lowrank": {"ratio": self.options["lowrank_ratio"]}, "separable": {}},
        )
        if self.metric == "latency":
            self._latency_budget(problem, gm, latency)
        return problem

    @staticmethod
    def _rewritable(problem: Problem, gm: fx.GraphModule, context: PassContext, among: list[str] | None = None) -> None:
        """The layers (of ``among``, or all) each rewrite technique would change in ``gm`` (its own plan says), and their choices."""
        takers: dict[str, list[str]] = {}
        for technique, rewrite in problem.rewrite_passes.items():
            planner = rewrite(**problem.rewrite_options[technique]) if among is None else problem.rewrite(technique, among)
            for entry in planner.plan(gm, context)["layers"]:
                takers.setdefault(entry["layer"], []).append(technique)
        order = {qualname(node): index for index, node in enumerate(gm.graph.nodes)}
        problem.layers = sorted(takers, key=order.__getitem__)
        problem.choices = [[PRUNE, *takers[layer]] for layer in problem.layers]

    def _latency_budget(self, problem: Problem, gm: fx.GraphModule, measured: dict[str, Any] | None) -> None:
        """Fill the problem's latency table, the unpruned model's latency and the rest-of-model overhead
        (measured, or as the plan recorded them)."""
        path = self.options["latency_table"] or str(Path.home() / ".cache" / "fxcomp" / "latency.json")
        problem.latency = LatencyTable(path, torch.get_num_threads())
        if measured is None:
            # The whole model first: it also warms up what the layer timings run on, so that the
            # full-width entries are not measured colder (slower) than the pruned ones after them.
            full_ms = model_ms(gm, torch.get_num_threads())
            layers = problem.latency.layers_ms(gm)
            problem.full_ms = max(full_ms, layers)
            problem.overhead_ms = problem.full_ms - layers
        else:
            problem.full_ms, problem.overhead_ms = measured["full_ms"], measured["overhead_ms"]
        problem.target = self.options["target_latency"] or self.options["target_latency_ms"] / problem.full_ms
        if problem.target >= 1:
            raise RecipeError(
                f"search: the model already runs in {problem.full_ms:.2f} ms, within target_latency_ms; give a lower target"
            )

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        start = time.perf_counter()
        problem = self._problem(gm, context)
        self._rewritable(problem, gm, context)
        evolution = Evolution(
            len(problem.names), choices=problem.choices, population=self.options["population"], mutation=self.options["mutation"],
            crossover=self.options["crossover"], seed=self.options["seed"],
        )
        candidates: list[Candidate] = []
        genomes = evolution.first()
        for generation in range(self.options["generations"]):
            for genome, record in zip(genomes, score_all(problem, genomes, self.options["workers"])):
                candidates.append(Candidate(generation, genome, **record))
            best = ranked(candidates)
            self._progress(generation, candidates, best)
            elite = best[: max(1, len(best) // 2)]
            genomes = evolution.children(elite, self.options["population"] - min(len(elite), self.options["population"] // 4))
            if not genomes:
                break
        best = ranked(candidates)
        if problem.latency is not None:
            problem.latency.save()
        if not best:
            raise RecipeError(_no_candidate(problem.target, [candidate.note for candidate in candidates]))
        plan = self._record(problem, candidates, best[0], time.perf_counter() - start)
        self._write(plan)
        return plan

    def _progress(self, generation: int, candidates: list[Candidate], best: list[Candidate]) -> None:
        if not self.options["progress"]:
            return
        leader = f"best proxy accuracy {100 * best[0].accuracy:.2f}% at cost {best[0].cost:.3f}" if best else "no feasible candidate yet"
        print(f"search: generation {generation + 1}/{self.options['generations']}, {len(candidates)} candidates, {leader}",
              file=sys.stderr, flush=True)

    def _record(self, problem: Problem, candidates: list[Candidate], chosen: Candidate, seconds: float) -> dict[str, Any]:
        uniform = candidates[0]
        latency = {"full_ms": problem.full_ms, "overhead_ms": problem.overhead_ms, "target_ms": self.options["target_latency_ms"],
                   "measured_layers": problem.latency.measured} if problem.latency is not None else None
        return {
            "metric": self.metric,
            "target": problem.target,
            "latency": latency,
            "chosen": chosen.as_dict(),
            "renamed": chosen.renamed,
            "uniform": uniform.as_dict(),
            "evaluated": len(candidates),
            "rejected": [c.as_dict() for c in candidates if not c.feasible],
            "pareto": [c.as_dict() for c in pareto_front(candidates)],
            "candidates": [c.as_dict() for c in candidates],
            "seconds": round(seconds, 1),
        }

    def _write(self, plan: dict[str, Any]) -> None:
        if self.options["history"]:
            Path(self.options["history"]).write_text(json.dumps(plan, indent=2))
        if self.options["plot"]:
            plot_search(plan, self.options["plot"])

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        problem = self._problem(gm, context, plan["latency"])
        ratios = [plan["chosen"]["ratios"][name] for name in problem.names]
        rewrites = plan["chosen"].get("rewrites", {})
        self._rewritable(problem, gm, context, among=sorted(rewrites))  # only the layers the plan rewrites
        allowed = dict(zip(problem.layers, problem.choices))
        for layer, technique in sorted(rewrites.items()):
            if technique not in allowed.get(layer, ()):
                raise RecipeError(f"search: the plan rewrites '{layer}' with {technique}, which this search cannot; apply the plan its own search made")
        # The model the search scored, built and settled (BatchNorm re-estimated, fine-tuned) with as many
        # threads as a scoring process had: float sums, and the rewrites' factorizations, depend on the split.
        with torch_threads(worker_threads(self.options["workers"])):
            pruned = prune_with(problem, ratios, rewrites)
            cost = problem.real_cost(pruned.graph)
            if abs(cost - problem.target) > TOLERANCE * problem.target or pruned.rewrites != rewrites:
                raise RecipeError(
                    f"search: the chosen candidate gives {cost:.3f} of the original {self.metric} (budget {problem.target:.3g}) "
                    f"and rewrites {len(pruned.rewrites)} of its {len(rewrites)} layers on this machine; run the search where it is applied"
                )
            graph = problem.settle(pruned.graph)
        stats = {self.metric: round(cost, 4), "proxy_accuracy": plan["chosen"]["accuracy"], "rewritten_layers": len(pruned.rewrites)}
        return PassResult(graph, modified=True, stats=stats)


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``search`` pass."""
    register(Search)
