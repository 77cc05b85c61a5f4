"""Built-in plugin ``cluster``: weight sharing by k-means, Deep Compression's second step.

A recipe step::

    - pass: cluster
      bits: {conv: 8, linear: 5}   # or one number for every layer: 2**bits centroids per weight
      include: "*"                 # qualified-name globs of conv / linear layers
      exclude: []

For every selected weight, 1-D k-means (Lloyd's algorithm, centroids initialized
linearly between the smallest and largest weight, the paper's best choice) runs
over its nonzero entries with at most ``2**bits`` centroids; a centroid that ends
without members (linear initialization puts some in the gap a pruned weight leaves
around zero) is dropped, which shortens the codebook and its indices. Each entry
then reads its centroid through a :class:`fxcomp.passes.SharedWeights`
parametrization. Zeros (pruned entries) stay zero, also under a pruning mask. A
weight another module holds too (tied weights) or an empty one is skipped, with the
reason in the plan. A later ``recover`` step fine-tunes the centroids: each gets the
sum of its members' gradients, and the assignment never changes.
The plan gives every weight's largest centroid count (``max_clusters``); the
statistics the count k-means kept (``clusters``) and the relative weight error
‖W − Ŵ‖/‖W‖.
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
    is_whole,
    parameter_holders,
    selected_modules,
    share_weights,
    weight_skip_reason,
)

_KINDS = {"conv": nn.modules.conv._ConvNd, "linear": nn.Linear}


def _bits(value: Any, path: str) -> dict[str, int]:
    if is_whole(value):
        value = {kind: value for kind in _KINDS}
    if not isinstance(value, dict) or not value or set(value) - set(_KINDS):
        raise RecipeError(f"{path}: expected a number of bits or a mapping like {{conv: 8, linear: 5}}, got {value!r}")
    for kind, bits in value.items():
        if not is_whole(bits) or not 1 <= bits <= 16:
            raise RecipeError(f"{path}.{kind}: expected a number of bits in [1, 16], got {bits!r}")
    return {kind: int(bits) for kind, bits in value.items()}  # plain ints: the plan is JSON


def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of 1-D ``values`` with ``clusters`` centroids initialized linearly between min and max.

    With no more distinct values than ``clusters``, the centroids are those values.

    Returns the sorted centroids that end with members (each its members' mean; a
    centroid left empty is dropped, so there may be fewer than ``clusters``) and each
    value's index into them. Runs until no value changes cluster or for
    ``iterations`` rounds; deterministic.
    """
    values = values.double()
    distinct, index = values.unique(sorted=True, return_inverse=True)
    if len(distinct) <= clusters:  # a centroid per value: exact
        return distinct, index
    centroids = torch.linspace(float(values.min()), float(values.max()), clusters, dtype=torch.float64)
    labels = _nearest(values, centroids)
    for _ in range(iterations):
        centroids = _means(values, labels, centroids).sort().values
        fresh = _nearest(values, centroids)
        if torch.equal(fresh, labels):
            break
        labels = fresh
    centroids = _means(values, labels, centroids)
    used = torch.bincount(labels, minlength=clusters) > 0
    renumber = torch.cumsum(used, 0) - 1
    return centroids[used], renumber[labels]


def _nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Each value's nearest centroid (``centroids`` sorted)."""
    return torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)


def _means(values: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Each cluster's mean; a cluster without members keeps its centroid."""
    sums = torch.zeros_like(centroids).index_add_(0, labels, values)
    counts = torch.bincount(labels, minlength=len(centroids))
    return torch.where(counts > 0, sums / counts.clamp(min=1), centroids)


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
        holders = parameter_holders(gm)
        for _node, name, module in selected_modules(gm, types, self.options["include"], self.options["exclude"]):
            reason = self._skip_reason(module, holders)
            if reason is not None:
                skipped.append({"layer": name, "reason": reason})
                continue
            weight = module.weight.detach()
            nonzero = weight[weight != 0]
            bits = self.options["bits"][_kind(module)]
            most = min(2**bits, int(nonzero.unique().numel()))
            layers.append({"layer": name, "bits": bits, "numel": weight.numel(), "nonzero": nonzero.numel(), "max_clusters": most})
        return {"layers": layers, "skipped": skipped}

    def _skip_reason(self, module: nn.Module, holders: dict[int, int]) -> str | None:
        """Why the layer ``module`` is left alone, or None; ``holders`` from :func:`parameter_holders`."""
        if has_parametrization(module, "weight", SharedWeights):
            return "its weight is already shared"
        if _kind(module) not in self.options["bits"]:
            return f"no bits given for {_kind(module)} layers"
        reason = weight_skip_reason(module, holders)
        if reason is None and not module.weight.count_nonzero():
            reason = "its weight is all zero"
        return reason

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        modules = {name: module for _node, name, module in selected_modules(gm, tuple(_KINDS.values()), ["*"], [])}
        errors, kept = {}, {}
        for entry in plan["layers"]:
            module = modules[entry["layer"]]
            weight = module.weight.detach()
            keep = weight != 0
            centroids, labels = kmeans_1d(weight[keep], entry["max_clusters"], self.options["iterations"])
            assignment = torch.full(weight.shape, -1, dtype=torch.long)
            assignment[keep] = labels
            share_weights(module, "weight", centroids, assignment)
            kept[entry["layer"]] = len(centroids)
            error = torch.linalg.vector_norm(module.weight.detach().double() - weight.double())
            errors[entry["layer"]] = round(float(error / torch.linalg.vector_norm(weight.double())), 6)
        return PassResult(gm, modified=bool(plan["layers"]), stats={"layers": len(errors), "clusters": kept, "relative_error": errors})


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``cluster`` pass."""
    register(Cluster)
