"""The evolutionary search over pruning directions: seeded population, crossover, mutation, selection.

A genome is a *direction* — one non-negative weight per prunable group saying how hard
that group is pruned relative to the others (largest weight 1) — and, when the search may
rewrite layers, one *choice* per rewritable layer: ``prune`` (pruned only) or a rewrite
applied on top of the pruning (``lowrank``, ``separable``). The budget fixes the overall
strength (:meth:`fxcomp_plugins.search.budget.CostModel.project`), so every genome that
can meet the budget costs the same and only the allocation evolves. The first genome is
the uniform allocation without rewrites, so the search never does worse than it on the proxy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DECIMALS = 3
"""Genomes are rounded to this many decimals, so repeated genomes are evaluated once."""

PRUNE = "prune"
"""The choice of a layer that is only pruned."""

REWRITE_SHARE = 0.25
"""The probability that a random choice (first generation, mutation) rewrites its layer: a rewrite
cuts a layer's MACs and parameters by half or more, so rewriting most layers would leave pruning
under the budget."""


@dataclass(frozen=True)
class Genome:
    """A direction over the prunable groups and a choice per rewritable layer."""

    direction: tuple[float, ...]
    choices: tuple[str, ...] = ()

    def key(self) -> tuple[tuple[float, ...], tuple[str, ...]]:
        """What makes two genomes the same."""
        return self.direction, self.choices


@dataclass
class Candidate:
    """One evaluated genome: its ratios, the rewrites applied, real cost (fraction of the original) and proxy accuracy.

    ``rewrites`` are the layers a rewrite pass changed (a chosen rewrite that pruning made
    unprofitable is skipped by its pass, and not listed; a rejected candidate lists the ones
    its genome asked for); ``renamed`` maps each to the layer now giving its output, as the
    rewrite passes' plans do.
    """

    generation: int
    genome: Genome
    ratios: dict[str, float] = field(default_factory=dict)
    rewrites: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    cost: float | None = None
    accuracy: float | None = None
    feasible: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The candidate as a JSON-able dict (the search history's entries)."""
        return {
            "generation": self.generation,
            "direction": list(self.genome.direction),
            "rewrites": self.rewrites,
            "ratios": self.ratios,
            "cost": self.cost,
            "accuracy": self.accuracy,
            "feasible": self.feasible,
            "note": self.note,
        }


def normalized(genome: Sequence[float]) -> tuple[float, ...]:
    """``genome`` scaled so its largest weight is 1 (all zeros stay zeros), rounded."""
    top = max(genome, default=0.0)
    return tuple(round(weight / top, DECIMALS) if top > 0 else 0.0 for weight in genome)


class Evolution:
    """Proposes genomes: a first generation, then children of the best feasible candidates.

    Args:
        genes: prunable groups.
        choices: per rewritable layer, what it may get (``prune`` first).
        population: genomes per generation.
        mutation: the probability that a gene of a child is perturbed (a weight by a
            Gaussian, σ = 0.3; a choice redrawn as in the first generation).
        crossover: the probability that a child mixes two parents gene by gene (else it copies one).
        seed: seeds everything; the same seed proposes the same genomes.
    """

    def __init__(
        self, genes: int, *, choices: Sequence[Sequence[str]] = (), population: int, mutation: float, crossover: float, seed: int
    ) -> None:
        self.genes, self.choices, self.population = genes, [list(options) for options in choices], population
        self.mutation, self.crossover = mutation, crossover
        self.random = random.Random(seed)
        self.seen: set[tuple[tuple[float, ...], tuple[str, ...]]] = set()

    def _fresh(self, genome: Genome) -> bool:
        key = genome.key()
        if key in self.seen or not any(genome.direction):
            return False
        self.seen.add(key)
        return True

    def _draw(self, options: Sequence[str]) -> str:
        """A random choice for a layer: a rewrite with probability :data:`REWRITE_SHARE`, else ``prune``."""
        return self.random.choice(options[1:]) if self.random.random() < REWRITE_SHARE else PRUNE

    def first(self) -> list[Genome]:
        """The uniform allocation without rewrites, then random ones."""
        genomes = [Genome(normalized([1.0] * self.genes), (PRUNE,) * len(self.choices))]
        self._fresh(genomes[0])
        for _ in range(100 * self.population):
            if len(genomes) == self.population:
                break
            direction = normalized([self.random.uniform(0.1, 1.0) for _ in range(self.genes)])
            genome = Genome(direction, tuple(self._draw(options) for options in self.choices))
            if self._fresh(genome):
                genomes.append(genome)
        return genomes

    def _parent(self, ranked: Sequence[Candidate]) -> Genome:
        """A binary tournament among the ranked (best first) feasible candidates."""
        first, second = self.random.randrange(len(ranked)), self.random.randrange(len(ranked))
        return ranked[min(first, second)].genome

    def _mixed(self, mother: Sequence[Any], father: Sequence[Any]) -> list[Any]:
        return [m if self.random.random() < 0.5 else f for m, f in zip(mother, father)]

    def children(self, ranked: Sequence[Candidate], count: int) -> list[Genome]:
        """Up to ``count`` new genomes bred from ``ranked`` (feasible candidates, best first)."""
        genomes: list[Genome] = []
        for _ in range(100 * count):
            if len(genomes) == count or not ranked:
                break
            mother, father = self._parent(ranked), self._parent(ranked)
            if self.random.random() < self.crossover:
                direction, choices = self._mixed(mother.direction, father.direction), self._mixed(mother.choices, father.choices)
            else:
                direction, choices = list(mother.direction), list(mother.choices)
            direction = [
                min(1.0, max(0.0, weight + self.random.gauss(0.0, 0.3))) if self.random.random() < self.mutation else weight
                for weight in direction
            ]
            choices = tuple(
                self._draw(options) if self.random.random() < self.mutation else choice
                for choice, options in zip(choices, self.choices)
            )
            genome = Genome(normalized(direction), choices)
            if self._fresh(genome):
                genomes.append(genome)
        return genomes


def ranked(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The feasible candidates, best proxy accuracy first (then lower cost, then earlier)."""
    order = {id(candidate): index for index, candidate in enumerate(candidates)}
    feasible = [c for c in candidates if c.feasible]
    return sorted(feasible, key=lambda c: (-c.accuracy, c.cost, order[id(c)]))


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The feasible candidates no other beats on both cost (lower) and accuracy (higher)."""
    front = []
    for candidate in sorted((c for c in candidates if c.feasible), key=lambda c: (c.cost, -c.accuracy)):
        if not front or candidate.accuracy > front[-1].accuracy:
            front.append(candidate)
    return front
