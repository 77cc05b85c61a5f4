"""Scoring a candidate: prune (and rewrite the layers it chooses to) for real, check the budget,
recalibrate BatchNorm (and optionally fine-tune a few steps), measure held-out accuracy.

Candidates are scored one after another, by worker processes on this machine
(``workers``: forked, each with its share of the threads), or across the processes of
a ``torch.distributed`` job (each rank scores every ``world_size``-th candidate and the
results are gathered, so every rank makes the same decisions).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as multiprocessing
import torch.fx as fx
from torch.utils.data import Dataset, Subset

from fxcomp import RecipeError, TrainingError, node_info, propagate
from fxcomp.data import Splits
from fxcomp.passes import Pass, PassContext, parameter_values
from fxcomp.recovery import evaluate, recalibrate_batchnorm, short_finetune

from fxcomp_plugins.search.budget import CostModel
from fxcomp_plugins.search.evolution import PRUNE, Genome
from fxcomp_plugins.search.latency import LatencyTable

_CORRECTIONS = 8
"""How many times the cost model's target is corrected against a candidate's real cost."""


@dataclass
class Problem:
    """Everything needed to score a candidate (shared with worker processes)."""

    gm: fx.GraphModule
    context: PassContext
    prune: type[Pass]
    prune_options: dict[str, Any]
    names: list[str]
    model: CostModel
    target: float
    tolerance: float
    cap: float
    recalibration_batches: int
    eval_data: Any
    seed: int
    metric: str = "macs"
    latency: LatencyTable | None = None
    overhead_ms: float = 0.0
    full_ms: float = 0.0
    finetune_steps: int = 0
    finetune_lr: float = 0.01
    layers: list[str] = field(default_factory=list)
    choices: list[list[str]] = field(default_factory=list)
    rewrite_passes: dict[str, type[Pass]] = field(default_factory=dict)
    rewrite_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    accuracies: dict[str, float] = field(default_factory=dict)
    """Proxy accuracy by :func:`fingerprint`: genomes that build the same model (ratios that keep the
    same channels, rewrites pruning made pointless) are scored once per process."""

    def rewrites(self, genome: Genome) -> dict[str, str]:
        """The layers ``genome`` rewrites, by qualified name, and how."""
        return {layer: choice for layer, choice in zip(self.layers, genome.choices) if choice != PRUNE}

    def rewrite(self, technique: str, layers: Sequence[str]) -> Pass:
        """The ``technique`` pass set up to rewrite exactly ``layers``."""
        literal = [re.sub(r"([*?\[])", r"[\1]", layer) for layer in layers]  # names as globs matching only themselves
        return self.rewrite_passes[technique](**self.rewrite_options[technique], include=literal)

    def real_cost(self, pruned: fx.GraphModule) -> float:
        """``pruned``'s cost in the budget's metric as a fraction of the original's."""
        if self.metric == "latency":
            return (self.latency.layers_ms(pruned) + self.overhead_ms) / self.full_ms
        return real_fraction(pruned, self.model.full, self.metric)

    def settle(self, pruned: fx.GraphModule) -> fx.GraphModule:
        """The pruned graph as the proxy scores it: BatchNorm re-estimated, then fine-tuned ``finetune_steps`` steps.

        Every candidate sees the same random state (a shuffling DataLoader draws from the
        global generator), so the batches depend only on the seed; the caller's state is kept.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            recalibrate_batchnorm(pruned, self.context.train_data, batches=self.recalibration_batches, seed=self.seed)
            if self.finetune_steps:
                try:
                    pruned = short_finetune(pruned, self.context.train_data, steps=self.finetune_steps, lr=self.finetune_lr, seed=self.seed)
                except TrainingError as error:
                    raise TrainingError(f"search.finetune_lr {self.finetune_lr:g}: {error}") from error
        return pruned


def real_fraction(gm: fx.GraphModule, original: float, metric: str) -> float:
    """``gm``'s MACs or parameters as a fraction of ``original``."""
    if metric == "macs":
        value = sum(node_info(node).macs for node in gm.graph.nodes)
    else:
        value = sum(tensor.numel() for _, tensor in parameter_values(gm))
    return value / original


def held_out(data: Any, samples: int | None) -> Any:
    """The first ``samples`` examples of a Dataset or of a Splits' validation part (all of it, or of
    any other data, otherwise)."""
    if isinstance(data, Splits):
        data = data.val
    if samples is None or not isinstance(data, Dataset) or not hasattr(data, "__len__") or len(data) <= samples:
        return data
    return Subset(data, range(samples))


@dataclass
class Pruned:
    """A candidate's graph, the rewrites its passes applied (layer → technique) and where each layer's output now comes from."""

    graph: fx.GraphModule
    rewrites: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)


def prune_with(problem: Problem, ratios: Sequence[float], rewrites: Mapping[str, str]) -> Pruned:
    """A copy of the problem's graph pruned with one ratio per group, then with ``rewrites`` (layer → technique) applied.

    A rewrite pass skips a layer pruning left with nothing to gain; the result lists only
    the rewrites made. Everything runs from the same random state (the seed), so a
    data-driven importance whose calibration data draws random numbers (shuffling,
    augmentation) ranks channels the same way for every candidate and for ``apply``.
    """
    chosen = {name: ratio for name, ratio in zip(problem.names, ratios) if ratio > 0}
    pruning = problem.prune(**problem.prune_options, ratio=0.0, group_ratios=chosen)  # groups not listed keep every channel
    pruned = Pruned(copy.deepcopy(problem.gm))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(problem.seed)
        plan = pruning.plan(pruned.graph, problem.context)
        pruned.graph = pruning.apply(pruned.graph, plan, problem.context).graph_module
        propagate(pruned.graph, problem.context.example_inputs)
        for technique in problem.rewrite_passes:
            layers = [layer for layer, choice in rewrites.items() if choice == technique]
            if layers:
                rewrite = problem.rewrite(technique, layers)
                plan = rewrite.plan(pruned.graph, problem.context)
                pruned.graph = rewrite.apply(pruned.graph, plan, problem.context).graph_module
                propagate(pruned.graph, problem.context.example_inputs)
                pruned.rewrites.update((entry["layer"], technique) for entry in plan["layers"])
                pruned.renamed.update(plan["renamed"])
    return pruned


def fingerprint(gm: fx.GraphModule) -> str:
    """A digest of everything that decides what ``gm`` computes: its modules, code and state."""
    digest = hashlib.sha256(str(gm).encode())
    for name, tensor in gm.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def meet_budget(problem: Problem, genome: Genome) -> tuple[list[float] | None, Pruned | None, float | None, str]:
    """Ratios along the genome's direction whose real cost, with its rewrites, is within the tolerance of the
    target, the pruned graph and its cost.

    The cost model's target (``goal``) is corrected against the real cost: by secant steps
    through the last two (goal, real cost) points — the first step assumes they are
    proportional — kept inside the bracket of goals known to give too high and too low a
    cost, bisecting it when a step leaves it. Channel counts are whole, so the real cost
    moves in steps, and groups of equal ratio step together; when a step jumps over the
    budget, the two bracketing candidates are mixed group by group (:func:`_mixed`). A
    direction that cannot reach the budget (groups capped at ``max_ratio``) or still
    misses it gives ``None`` and the reason.
    """
    direction, rewrites = genome.direction, problem.rewrites(genome)
    goal, cost = problem.target, None
    below, above = 0.0, 1.0  # goals known to give too low / too high a real cost (or none at all)
    tried: list[tuple[float, float]] = []
    cheaper: list[float] | None = None  # the last ratios that cost less than the budget
    dearer: list[float] | None = None  # and more
    capped = False
    for _ in range(_CORRECTIONS):
        ratios = problem.model.project(direction, goal, problem.cap)
        if ratios is None:  # past what the capped groups can remove
            capped = True
            below = max(below, goal)
            goal = (below + above) / 2
            continue
        pruned = prune_with(problem, ratios, rewrites)
        cost = problem.real_cost(pruned.graph)
        if _within(problem, cost):
            return ratios, pruned, cost, ""
        if cost > problem.target:
            above, dearer = goal, ratios
        else:
            below, cheaper = goal, ratios
        tried.append((goal, cost))
        goal = _next_goal(tried, problem.target, below, above)
    if cheaper is not None and dearer is not None:
        found = _mixed(problem, cheaper, dearer, rewrites)
        if found is not None:
            return found
    if capped and all(tried_cost > problem.target for _, tried_cost in tried):
        return None, None, cost, f"cannot reach {problem.target:.3f} with at most {problem.cap:g} of each group removed"
    return None, None, cost, f"its real cost stays at {cost:.3f} of the original, off the budget {problem.target:.3f}"


def _within(problem: Problem, cost: float) -> bool:
    return abs(cost - problem.target) <= problem.tolerance * problem.target


def _mixed(
    problem: Problem, cheaper: list[float], dearer: list[float], rewrites: Mapping[str, str]
) -> tuple[list[float], Pruned, float, str] | None:
    """Move the groups from ``dearer``'s ratios to ``cheaper``'s one at a time (the ones that differ most
    first) until the real cost falls within the budget; None if no mix does."""
    order = sorted(range(len(cheaper)), key=lambda index: cheaper[index] - dearer[index], reverse=True)
    ratios = list(dearer)
    for index in order[:-1]:
        if ratios[index] == cheaper[index]:
            continue
        ratios[index] = cheaper[index]
        pruned = prune_with(problem, ratios, rewrites)
        cost = problem.real_cost(pruned.graph)
        if _within(problem, cost):
            return list(ratios), pruned, cost, ""
        if cost < problem.target:
            return None
    return None


def _next_goal(tried: list[tuple[float, float]], target: float, below: float, above: float) -> float:
    """A secant step towards ``target`` through the last two tries (proportional after one), kept in the bracket."""
    goal, cost = tried[-1]
    step = goal * target / cost
    if len(tried) > 1:
        previous_goal, previous_cost = tried[-2]
        if cost != previous_cost and (cost - previous_cost) * (goal - previous_goal) > 0:
            step = goal + (target - cost) * (goal - previous_goal) / (cost - previous_cost)
    return step if below < step < above else (below + above) / 2


def score(problem: Problem, genome: Genome) -> dict[str, Any]:
    """Prune along the genome's direction within the budget (with its rewrites), recalibrate BatchNorm,
    evaluate: a JSON-able record.

    With a latency budget the record also carries the table entries measured on the way
    (``measured``), so that entries measured in another process reach the main table.
    """
    known = set(problem.latency.entries) if problem.latency is not None else set()
    record = _score(problem, genome)
    if problem.latency is not None:
        record["measured"] = {key: ms for key, ms in problem.latency.entries.items() if key not in known}
    return record


def _score(problem: Problem, genome: Genome) -> dict[str, Any]:
    ratios, pruned, cost, note = meet_budget(problem, genome)
    if pruned is None:  # a rejected candidate lists the rewrites it asked for
        return {"ratios": {}, "rewrites": problem.rewrites(genome), "cost": cost, "accuracy": None, "feasible": False, "note": note}
    built = fingerprint(pruned.graph)
    if built not in problem.accuracies:
        problem.accuracies[built] = evaluate(problem.settle(pruned.graph), problem.eval_data)[1]
    accuracy = problem.accuracies[built]
    return {
        "ratios": dict(zip(problem.names, ratios)),  # exact: apply must rebuild the same graph
        "rewrites": pruned.rewrites,
        "renamed": pruned.renamed,
        "cost": cost,
        "accuracy": accuracy,
        "feasible": True,
        "note": "",
    }


_WORKER_PROBLEM: Problem | None = None


def worker_threads(workers: int) -> int:
    """The threads each of ``workers`` scoring processes gets: this process's, shared out."""
    return max(1, torch.get_num_threads() // workers)


def _start_worker(problem: Problem, threads: int) -> None:
    global _WORKER_PROBLEM
    _WORKER_PROBLEM = problem
    torch.set_num_threads(threads)


def _score_in_worker(genome: Genome) -> dict[str, Any]:
    assert _WORKER_PROBLEM is not None
    return score(_WORKER_PROBLEM, genome)


def score_all(problem: Problem, genomes: Sequence[Genome], workers: int) -> list[dict[str, Any]]:
    """Score every genome, in this process, in ``workers`` forked processes, or across a distributed job."""
    records = _score_all(problem, genomes, workers)
    for record in records:
        measured = record.pop("measured", {})
        if problem.latency is not None:
            problem.latency.entries.update(measured)
    return records


def _score_all(problem: Problem, genomes: Sequence[Genome], workers: int) -> list[dict[str, Any]]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
        mine = {index: score(problem, genomes[index]) for index in range(rank, len(genomes), world)}
        gathered: list[dict[int, dict[str, Any]] | None] = [None] * world
        dist.all_gather_object(gathered, mine)
        merged = {index: record for part in gathered for index, record in (part or {}).items()}
        return [merged[index] for index in range(len(genomes))]
    if workers <= 1:
        return [score(problem, genome) for genome in genomes]
    if "fork" not in multiprocessing.get_all_start_methods():
        raise RecipeError("search.workers: worker processes need the 'fork' start method, which this platform lacks; use workers: 1")
    threads = worker_threads(workers)
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_start_worker, initargs=(problem, threads)) as pool:
        return pool.map(_score_in_worker, genomes, chunksize=1)
