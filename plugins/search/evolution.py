"""The evolutionary search over pruning directions: seeded population, crossover, mutation, selection.

A genome is a *direction*: one non-negative weight per prunable group saying how hard
that group is pruned relative to the others (largest weight 1). The budget fixes the
overall strength (:meth:`fxcomp_plugins.search.budget.CostModel.project`), so every
genome that can meet the budget costs the same and only the allocation evolves. The
first genome is the uniform allocation, so the search never does worse than it on the proxy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DECIMALS = 3
"""Genomes are rounded to this many decimals, so repeated genomes are evaluated once."""


@dataclass
class Candidate:
    """One evaluated genome: its ratios, real cost (fraction of the original) and proxy accuracy."""

    generation: int
    direction: list[float]
    ratios: dict[str, float] = field(default_factory=dict)
    cost: float | None = None
    accuracy: float | None = None
    feasible: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The candidate as a JSON-able dict (the search history's entries)."""
        return {
            "generation": self.generation,
            "direction": self.direction,
            "ratios": self.ratios,
            "cost": self.cost,
            "accuracy": self.accuracy,
            "feasible": self.feasible,
            "note": self.note,
        }


def normalized(genome: Sequence[float]) -> list[float]:
    """``genome`` scaled so its largest weight is 1 (all zeros stay zeros), rounded."""
    top = max(genome, default=0.0)
    return [round(weight / top, DECIMALS) if top > 0 else 0.0 for weight in genome]


class Evolution:
    """Proposes genomes: a first generation, then children of the best feasible candidates.

    Args:
        genes: prunable groups.
        population: genomes per generation.
        mutation: the probability that a gene of a child is perturbed (Gaussian, σ = 0.3).
        crossover: the probability that a child mixes two parents gene by gene (else it copies one).
        seed: seeds everything; the same seed proposes the same genomes.
    """

    def __init__(self, genes: int, *, population: int, mutation: float, crossover: float, seed: int) -> None:
        self.genes, self.population = genes, population
        self.mutation, self.crossover = mutation, crossover
        self.random = random.Random(seed)
        self.seen: set[tuple[float, ...]] = set()

    def _fresh(self, genome: list[float]) -> bool:
        key = tuple(genome)
        if key in self.seen or not any(genome):
            return False
        self.seen.add(key)
        return True

    def first(self) -> list[list[float]]:
        """The uniform allocation, then random ones."""
        genomes = [normalized([1.0] * self.genes)]
        self._fresh(genomes[0])
        for _ in range(100 * self.population):
            if len(genomes) == self.population:
                break
            genome = normalized([self.random.uniform(0.1, 1.0) for _ in range(self.genes)])
            if self._fresh(genome):
                genomes.append(genome)
        return genomes

    def _parent(self, ranked: Sequence[Candidate]) -> Candidate:
        """A binary tournament among the ranked (best first) feasible candidates."""
        first, second = self.random.randrange(len(ranked)), self.random.randrange(len(ranked))
        return ranked[min(first, second)]

    def children(self, ranked: Sequence[Candidate], count: int) -> list[list[float]]:
        """Up to ``count`` new genomes bred from ``ranked`` (feasible candidates, best first)."""
        genomes: list[list[float]] = []
        for _ in range(100 * count):
            if len(genomes) == count or not ranked:
                break
            mother, father = self._parent(ranked), self._parent(ranked)
            if self.random.random() < self.crossover:
                genome = [m if self.random.random() < 0.5 else f for m, f in zip(mother.direction, father.direction)]
            else:
                genome = list(mother.direction)
            genome = [
                min(1.0, max(0.0, weight + self.random.gauss(0.0, 0.3))) if self.random.random() < self.mutation else weight
                for weight in genome
            ]
            genome = normalized(genome)
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
