"""Built-in plugin ``lowrank``: replace a layer's weight by a product of smaller ones.

* ``nn.Linear`` and 1×1 convolutions, weight W (M×N): a truncated SVD W ≈ B·A with
  A (K×N) and B (M×K) becomes two layers, N → K → M (each factor takes √σ).
* k×k convolutions, ``method: tucker2``: W (O, I, k…) ≈ core ×₀ U_O ×₁ U_I (HOSVD refined
  by a few HOOI sweeps) becomes a 1×1 conv I → R_I, a k×k core conv R_I → R_O carrying the
  stride, padding and dilation, and a 1×1 conv R_O → O with the bias.
* 2-D k×k convolutions, ``method: spatial_svd``: W reshaped to (I·kh)×(O·kw) is split by
  an SVD into a kh×1 conv I → K and a 1×kw conv K → O.

Grouped convolutions are factored group by group (the new layers keep the groups).
The rank comes from ``rank`` (an int), ``ratio`` (the fraction of the full rank kept) or
``energy`` (the fraction of the squared singular values kept; the default, 0.9). A layer
whose factors would not use fewer MACs and fewer parameters is skipped and the reason
recorded (``skip_no_gain: false`` factors it anyway). The plan gives every layer's ranks, relative reconstruction error
‖W − Ŵ‖/‖W‖ and MACs/parameters before and after; keeping the full rank is exact, and
the pass then promises outputs within 1e-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp import RecipeError, hookimpl, qualname
from fxcomp.passes import (
    Option,
    Pass,
    PassContext,
    PassResult,
    boolean,
    calls_per_module,
    choice,
    cost_change,
    globs,
    integer,
    no_gain_reason,
    number,
    optional,
    replace_with_chain,
    selected_modules,
    why_not_replaceable,
)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_HOOI_SWEEPS = 3
_FLOAT64_LIMIT = 1 << 22
DEFAULT_ENERGY = 0.9


@dataclass
class _Factored:
    """A layer's replacement: the new layers, their ranks and the weight they multiply out to."""

    method: str
    modules: list[nn.Module]
    ranks: list[int]
    approximation: torch.Tensor


def keep_rank(singular_values: torch.Tensor, rank: int | None, ratio: float | None, energy: float | None) -> int:
    """How many of the descending ``singular_values`` to keep under one of the three rules."""
    full = len(singular_values)
    if rank is not None:
        return min(rank, full)
    if ratio is not None:
        return min(full, max(1, math.ceil(ratio * full - 1e-9)))
    squares = singular_values.double().pow(2)
    if not squares.sum():
        return 1  # an all-zero matrix (one group of a grouped conv): any rank holds all of its energy
    share = squares.cumsum(0) / squares.sum()
    wanted = DEFAULT_ENERGY if energy is None else energy
    return min(full, int(torch.searchsorted(share, torch.tensor(wanted - 1e-12, dtype=share.dtype))) + 1)


def _top_left_vectors(matrix: torch.Tensor, count: int) -> torch.Tensor:
    return torch.linalg.svd(matrix, full_matrices=False)[0][:, :count]


def _group_weights(layer: nn.Module) -> torch.Tensor:
    """The weight as (groups, O/groups, I/groups, kernel…): float64, or float32 above 4M entries.

    float64 makes the full-rank rewrite exact to rounding; for large layers (a VGG classifier)
    float32 keeps the SVD several times faster and still within the 1e-5 promise.
    """
    groups = layer.groups if isinstance(layer, _CONVS) else 1
    weight = layer.weight.detach()
    weight = weight.double() if weight.numel() <= _FLOAT64_LIMIT else weight.float()
    return weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])


def _conv_like(layer: nn.Module, inputs: int, outputs: int, weight: torch.Tensor, **geometry: Any) -> nn.Module:
    """A conv of ``layer``'s dimensionality holding ``weight`` (no bias), with ``geometry`` overrides."""
    options = {
        "stride": 1,
        "padding": 0,
        "dilation": 1,
        "groups": layer.groups,
        "padding_mode": "zeros",
        **geometry,
    }
    conv = _CONVS[weight.dim() - 3](inputs, outputs, tuple(weight.shape[2:]), bias=False, **options)
    conv.weight = nn.Parameter(weight.to(layer.weight.dtype), layer.weight.requires_grad)
    return conv.to(layer.weight.device)


def _with_bias(module: nn.Module, layer: nn.Module) -> nn.Module:
    if layer.bias is not None:
        module.bias = nn.Parameter(layer.bias.detach().clone(), layer.bias.requires_grad)
    return module


def _svd(layer: nn.Module, weights: torch.Tensor, decomposition: tuple[torch.Tensor, ...], rank: int) -> _Factored:
    """N → K → M, for a linear layer or a 1×1 conv (the first factor keeps the stride and padding)."""
    u, s, vh = decomposition
    root = s[:, :rank].sqrt()
    first = vh[:, :rank] * root.unsqueeze(2)  # (g, K, I/g)
    second = u[:, :, :rank] * root.unsqueeze(1)  # (g, O/g, K)
    approximation = (second @ first).reshape(layer.weight.shape)
    if isinstance(layer, nn.Linear):
        down = nn.Linear(layer.in_features, rank, bias=False, device=layer.weight.device, dtype=layer.weight.dtype)
        up = nn.Linear(rank, layer.out_features, bias=False, device=layer.weight.device, dtype=layer.weight.dtype)
        down.weight = nn.Parameter(first[0].to(layer.weight.dtype), layer.weight.requires_grad)
        up.weight = nn.Parameter(second[0].to(layer.weight.dtype), layer.weight.requires_grad)
        return _Factored("svd", [down, _with_bias(up, layer)], [rank], approximation)
    ones = (1,) * (weights.dim() - 3)
    groups = layer.groups
    down = _conv_like(
        layer,
        layer.in_channels,
        groups * rank,
        first.reshape(groups * rank, -1, *ones),
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        padding_mode=layer.padding_mode,
    )
    up = _conv_like(layer, groups * rank, layer.out_channels, second.reshape(layer.out_channels, rank, *ones))
    return _Factored("svd", [down, _with_bias(up, layer)], [rank], approximation)


def _tucker2_factors(weight: torch.Tensor, out_rank: int, in_rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HOSVD then HOOI sweeps for one group's (O, I, k…) weight: (U_O, U_I, core)."""
    outputs, inputs = weight.shape[:2]
    u_out = _top_left_vectors(weight.reshape(outputs, -1), out_rank)
    u_in = _top_left_vectors(weight.transpose(0, 1).reshape(inputs, -1), in_rank)
    for _ in range(_HOOI_SWEEPS):
        u_out = _top_left_vectors(torch.einsum("oi...,is->os...", weight, u_in).reshape(outputs, -1), out_rank)
        u_in = _top_left_vectors(torch.einsum("oi...,or->ir...", weight, u_out).reshape(inputs, -1), in_rank)
    core = torch.einsum("oi...,or,is->rs...", weight, u_out, u_in)
    return u_out, u_in, core


def _tucker2(layer: nn.Module, weights: torch.Tensor, out_rank: int, in_rank: int) -> _Factored:
    factors = [_tucker2_factors(weight, out_rank, in_rank) for weight in weights]
    u_out = torch.stack([f[0] for f in factors])  # (g, O/g, R_O)
    u_in = torch.stack([f[1] for f in factors])  # (g, I/g, R_I)
    core = torch.stack([f[2] for f in factors])  # (g, R_O, R_I, k…)
    approximation = torch.einsum("grs...,gor,gis->goi...", core, u_out, u_in).reshape(layer.weight.shape)
    groups, ones = layer.groups, (1,) * (weights.dim() - 3)
    inner, outer = groups * in_rank, groups * out_rank
    project = _conv_like(layer, layer.in_channels, inner, u_in.transpose(1, 2).reshape(inner, -1, *ones))
    middle = _conv_like(
        layer,
        inner,
        outer,
        core.reshape(outer, in_rank, *core.shape[3:]),
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        padding_mode=layer.padding_mode,
    )
    restore = _conv_like(layer, outer, layer.out_channels, u_out.reshape(layer.out_channels, out_rank, *ones))
    return _Factored("tucker2", [project, middle, _with_bias(restore, layer)], [out_rank, in_rank], approximation)


def _spatial_matrices(weights: torch.Tensor) -> torch.Tensor:
    """Each group's (O, I, kh, kw) weight as the (I·kh)×(O·kw) matrix an SVD splits into kh×1 and 1×kw."""
    groups, outputs, inputs, height, width = weights.shape
    return weights.permute(0, 2, 3, 1, 4).reshape(groups, inputs * height, outputs * width)


def _spatial_svd(layer: nn.Conv2d, weights: torch.Tensor, decomposition: tuple[torch.Tensor, ...], rank: int) -> _Factored:
    groups, outputs, inputs, height, width = weights.shape
    u, s, vh = decomposition
    root = s[:, :rank].sqrt()
    vertical = (u[:, :, :rank] * root.unsqueeze(1)).transpose(1, 2).reshape(groups * rank, inputs, height, 1)
    horizontal = (vh[:, :rank] * root.unsqueeze(2)).reshape(groups, rank, outputs, width)
    horizontal = horizontal.permute(0, 2, 1, 3).reshape(groups * outputs, rank, 1, width)
    approximation = torch.einsum(
        "gkiy,gokx->goiyx", vertical.reshape(groups, rank, inputs, height), horizontal.reshape(groups, outputs, rank, width)
    ).reshape(layer.weight.shape)
    padding = layer.padding if isinstance(layer.padding, str) else (layer.padding[0], 0)
    first = _conv_like(
        layer,
        layer.in_channels,
        groups * rank,
        vertical,
        stride=(layer.stride[0], 1),
        padding=padding,
        dilation=(layer.dilation[0], 1),
        padding_mode=layer.padding_mode,
    )
    padding = layer.padding if isinstance(layer.padding, str) else (0, layer.padding[1])
    second = _conv_like(
        layer,
        groups * rank,
        layer.out_channels,
        horizontal,
        stride=(1, layer.stride[1]),
        padding=padding,
        dilation=(1, layer.dilation[1]),
        padding_mode=layer.padding_mode,
    )
    return _Factored("spatial_svd", [first, _with_bias(second, layer)], [rank], approximation)


class LowRank(Pass):
    """Factor linear layers and convolutions into low-rank chains (SVD, Tucker-2 or spatial SVD)."""

    name = "lowrank"
    schema = {
        "include": Option(globs(), default=("*",), doc="qualified-name globs of layers to factor"),
        "exclude": Option(globs(), default=(), doc="qualified-name globs of layers to leave alone"),
        "rank": Option(optional(integer(1)), default=None, doc="keep this many singular values (per mode)"),
        "ratio": Option(optional(number(0, 1, low_open=True)), default=None, doc="keep this fraction of the full rank"),
        "energy": Option(
            optional(number(0, 1, low_open=True)),
            default=None,
            doc=f"keep this fraction of the squared singular values (default {DEFAULT_ENERGY} when no rule is given)",
        ),
        "method": Option(choice("tucker2", "spatial_svd"), default="tucker2", doc="how k×k convolutions are factored"),
        "skip_no_gain": Option(
            boolean(), default=True, doc="skip layers whose factors cost as many MACs or parameters (false: factor anyway)"
        ),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        rules = [key for key in ("rank", "ratio", "energy") if self.options[key] is not None]
        if len(rules) > 1:
            raise RecipeError(f"pass 'lowrank': give one of rank, ratio or energy, not {' and '.join(rules)}")
        self._factored: dict[str, _Factored] = {}

    def _rank(self, singular_values: torch.Tensor) -> int:
        """The rank to keep: the largest any group needs (groups share one rank)."""
        rule = (self.options["rank"], self.options["ratio"], self.options["energy"])
        return max(keep_rank(values, *rule) for values in singular_values)

    def _factor(self, layer: nn.Module) -> tuple[_Factored, bool] | str:
        """The layer's factorization and whether it keeps the full rank, or why it is skipped."""
        weights = _group_weights(layer)
        if weights.is_meta:
            return "its weight is on the meta device (no values to factor); load real weights first"
        if not weights.abs().sum():
            return "its weight is all zeros"
        kernel = math.prod(weights.shape[3:])
        if kernel == 1:
            decomposition = torch.linalg.svd(weights.flatten(2), full_matrices=False)
            rank = self._rank(decomposition[1])
            return _svd(layer, weights, decomposition, rank), rank == decomposition[1].shape[1]
        if self.options["method"] == "spatial_svd":
            if not isinstance(layer, nn.Conv2d) or 1 in layer.kernel_size:
                return "spatial_svd needs a 2-D convolution whose kernel is at least 2×2"
            decomposition = torch.linalg.svd(_spatial_matrices(weights), full_matrices=False)
            rank = self._rank(decomposition[1])
            return _spatial_svd(layer, weights, decomposition, rank), rank == decomposition[1].shape[1]
        out_singular = torch.linalg.svdvals(weights.flatten(2))
        in_singular = torch.linalg.svdvals(weights.transpose(1, 2).flatten(2))
        out_rank, in_rank = self._rank(out_singular), self._rank(in_singular)
        full = out_rank == out_singular.shape[1] and in_rank == in_singular.shape[1]
        return _tucker2(layer, weights, out_rank, in_rank), full

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        calls = calls_per_module(gm.graph)
        layers, skipped, all_full = [], [], True
        self._factored = {}
        for node, name, layer in selected_modules(gm, (nn.Linear, *_CONVS), self.options["include"], self.options["exclude"]):
            reason = why_not_replaceable(gm, node, calls)
            outcome = self._factor(layer) if reason is None else reason
            if isinstance(outcome, str):
                skipped.append({"layer": name, "reason": outcome})
                continue
            factored, full = outcome
            change = cost_change(node, factored.modules)
            reason = no_gain_reason(change, f"rank {'/'.join(map(str, factored.ranks))}")
            if self.options["skip_no_gain"] and reason is not None:
                skipped.append({"layer": name, "reason": reason})
                continue
            weight = layer.weight.detach().to(factored.approximation.dtype)
            error = float((weight - factored.approximation).norm() / weight.norm())
            layers.append({"layer": name, "method": factored.method, "ranks": factored.ranks, "error": error, **change})
            self._factored[name] = factored
            all_full = all_full and full
        # Keeping every layer's full rank is exact: then the pipeline holds the pass to it.
        self.tolerance = 1e-5 if layers and all_full else None
        renamed = {entry["layer"]: f"{entry['layer']}.{len(self._factored[entry['layer']].modules) - 1}" for entry in layers}
        return {"layers": layers, "skipped": skipped, "renamed": renamed}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        by_name = {qualname(node): node for node in gm.graph.nodes}
        for entry in plan["layers"]:
            node = by_name[entry["layer"]]
            factored = self._factored.get(entry["layer"])
            if factored is None:  # a plan made elsewhere: factor again, with the same rules
                outcome = self._factor(gm.get_submodule(node.target))
                factored = outcome[0] if not isinstance(outcome, str) else None
            if factored is None or factored.ranks != entry["ranks"]:
                raise RecipeError(
                    f"pass 'lowrank': the plan for '{entry['layer']}' was made with other options; "
                    "apply a plan made by this pass's own plan()"
                )
            replace_with_chain(gm, node, factored.modules)
        self._factored = {}
        saved = sum(entry["macs_before"] - entry["macs_after"] for entry in plan["layers"])
        return PassResult(gm, modified=bool(plan["layers"]), stats={"factored": len(plan["layers"]), "macs_saved": saved})


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``lowrank`` pass."""
    register(LowRank)
