"""Built-in plugin ``cluster``: weight sharing by k-means, Deep Compression's second step.

A recipe step::

    - pass: cluster
      bits: {conv: 8, linear: 5}   # or one number for every layer: 2**bits centroids per weight
      include: "*"                 # qualified-name globs of conv / linear layers
      exclude: []

For every selected weight, 1-D k-means (Lloyd's algorithm, centroids initialized
linearly between the smallest and largest weight, the paper's best choice) runs
over its nonzero entries; each entry then reads its centroid through a
:class:`fxcomp.passes.SharedWeights` parametrization. Zeros (pruned entries) stay
zero, also under a pruning mask. A later ``recover`` step fine-tunes the centroids:
each gets the sum of its members' gradients, and the assignment never changes.
The plan gives every weight's centroid count; the statistics its relative weight
error ‖W − Ŵ‖/‖W‖.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp import RecipeError, hookimpl
from fxcomp.passes import (
    Option,
    Pass,
    PassContext,
    PassResult,
    SharedWeights,
    globs,
    has_parametrization,
    integer,
    selected_modules,
    share_weights,
)

_KINDS = {"conv": nn.modules.conv._ConvNd, "linear": nn.Linear}


def _bits(value: Any, path: str) -> dict[str, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = {kind: value for kind in _KINDS}
    if not isinstance(value, dict) or set(value) - set(_KINDS):
        raise RecipeError(f"{path}: expected a number of bits or a mapping like {{conv: 8, linear: 5}}, got {value!r}")
    for kind, bits in value.items():
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise RecipeError(f"{path}.{kind}: expected a number of bits in [1, 16], got {bits!r}")
    return dict(value)


def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of 1-D ``values`` with centroids initialized linearly between min and max.

    Returns the sorted centroids that have members and each value's centroid index. Runs
    until no value changes cluster or for ``iterations`` rounds; deterministic.
    """
    values = values.double()
    centroids = torch.linspace(float(values.min()), float(values.max()), clusters, dtype=torch.float64)
    labels = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
    for _ in range(iterations):
        sums = torch.zeros(clusters, dtype=torch.float64).index_add_(0, labels, values)
        counts = torch.bincount(labels, minlength=clusters)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
        fresh = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        if torch.equal(fresh, labels):
            break
        labels = fresh
    used = torch.bincount(labels, minlength=clusters) > 0
    renumber = torch.cumsum(used, 0) - 1
    return centroids[used], renumber[labels]


def _kind(module: nn.Module) -> str:
    return next(kind for kind, cls in _KINDS.items() if isinstance(module, cls))


class Cluster(Pass):
    """Share each conv / linear weight's values among 2**bits k-means centroids (Deep Compression)."""

    name = "cluster"
    schema = {
        "bits": Option(_bits, default={"conv": 8, "linear": 5}, doc="bits per weight index: a number or {conv, linear}"),
        "include": Option(globs(), default=("*",), doc="qualified-name globs of layers to cluster"),
        "exclude": Option(globs(), default=(), doc="qualified-name globs of layers to leave alone"),
        "iterations": Option(integer(1), default=100, doc="most k-means rounds per weight"),
    }

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        layers, skipped = [], []
        types = tuple(_KINDS.values())
        for _node, name, module in selected_modules(gm, types, self.options["include"], self.options["exclude"]):
            if has_parametrization(module, "weight", SharedWeights):
                skipped.append({"layer": name, "reason": "its weight is already shared"})
                continue
            weight = module.weight.detach()
            nonzero = weight[weight != 0]
            if nonzero.numel() == 0:
                skipped.append({"layer": name, "reason": "its weight is all zero"})
                continue
            bits = self.options["bits"].get(_kind(module))
            if bits is None:
                skipped.append({"layer": name, "reason": f"no bits given for {_kind(module)} layers"})
                continue
            clusters = min(2**bits, int(nonzero.unique().numel()))
            layers.append({"layer": name, "bits": bits, "numel": weight.numel(), "nonzero": nonzero.numel(), "clusters": clusters})
        return {"layers": layers, "skipped": skipped}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        modules = {name: module for _node, name, module in selected_modules(gm, tuple(_KINDS.values()), ["*"], [])}
        errors = {}
        for entry in plan["layers"]:
            module = modules[entry["layer"]]
            weight = module.weight.detach()
            keep = weight != 0
            centroids, labels = kmeans_1d(weight[keep], entry["clusters"], self.options["iterations"])
            assignment = torch.full(weight.shape, -1, dtype=torch.long)
            assignment[keep] = labels
            share_weights(module, "weight", centroids, assignment)
            error = torch.linalg.vector_norm(module.weight.detach().double() - weight.double())
            errors[entry["layer"]] = round(float(error / torch.linalg.vector_norm(weight.double())), 6)
        return PassResult(gm, modified=bool(plan["layers"]), stats={"layers": len(errors), "relative_error": errors})


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``cluster`` pass."""
    register(Cluster)
