"""Built-in plugin ``separable``: turn a trained convolution into a depthwise-separable pair.

A conv with weight W (O, I, k…) sums, over input channels i, the O×k… slice W[:, i]
applied to channel i. Each slice, read as an O×(k…) matrix, has an SVD; its best
rank-m approximation gives m depthwise filters for channel i (√σ·vⱼ) and the matching
m columns of a pointwise 1×1 conv (√σ·uⱼ). The result is a depthwise conv
(I → I·m channels, groups=I, with the original stride, padding and dilation) followed by
a pointwise conv (I·m → O, with the bias), initialized in closed form with no training
("Network Decoupling", Guo et al. 2018). m = ``depth_multiplier``; m = min(O, k…) is
exact, and the pass then promises outputs within 1e-5. A conv with groups > 1 is
treated group by group (the pointwise conv keeps the groups); depthwise convs are left
alone.

With ``max_error`` the multiplier is chosen per layer: the smallest m whose relative
weight error ‖W − Ŵ‖/‖W‖ is at most ``max_error``; a layer is converted only when that m
uses fewer MACs and parameters than the original (``skip_no_gain: false`` converts it
anyway). The plan lists every layer's multiplier, error and MACs/parameters before and
after, and why others were skipped.
"""

from __future__ import annotations

import math
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


def channel_slices(conv: nn.Module) -> torch.Tensor:
    """W[:, i] for every input channel i as an (O/groups)×(k…) matrix: shape (I, O/groups, k…) in float64."""
    groups, outputs, kernel = conv.groups, conv.out_channels // conv.groups, math.prod(conv.kernel_size)
    per_group = conv.in_channels // groups
    weight = conv.weight.detach().double().reshape(groups, outputs, per_group, kernel)
    return weight.permute(0, 2, 1, 3).reshape(conv.in_channels, outputs, kernel)


def channel_svd(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, S, Vh)`` of every input channel's slice (:func:`channel_slices`), batched over channels."""
    return torch.linalg.svd(channel_slices(conv), full_matrices=False)


def relative_errors(singular_values: torch.Tensor) -> torch.Tensor:
    """The relative weight error of every multiplier m = 0 … min(O/groups, k…): entry m.

    ``singular_values`` is the ``S`` of :func:`channel_svd`, shape (I, r).
    """
    squares = singular_values.pow(2)
    tails = squares.flip(1).cumsum(1).flip(1).sum(0)  # energy left out when keeping m = 0, 1, …
    total = tails[0]
    return torch.cat([tails, tails.new_zeros(1)]).div(total).sqrt()


def decouple(conv: nn.Module, multiplier: int, decomposition: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """The depthwise and pointwise convs approximating ``conv`` with ``multiplier`` filters per channel.

    ``decomposition`` is :func:`channel_svd` of ``conv``.
    """
    u, s, vh = decomposition
    root = s[:, :multiplier].sqrt()
    depthwise_weight = (vh[:, :multiplier] * root.unsqueeze(2)).reshape(
        conv.in_channels * multiplier, 1, *conv.kernel_size
    )
    groups, outputs = conv.groups, conv.out_channels // conv.groups
    per_group = conv.in_channels // groups
    columns = (u[:, :, :multiplier] * root.unsqueeze(1)).reshape(groups, per_group, outputs, multiplier)
    pointwise_weight = columns.permute(0, 2, 1, 3).reshape(conv.out_channels, per_group * multiplier)
    pointwise_weight = pointwise_weight.reshape(*pointwise_weight.shape, *(1,) * (conv.weight.dim() - 2))
    kind = _CONVS[conv.weight.dim() - 3]  # the plain class, also for a subclass of it
    dtype, device, trainable = conv.weight.dtype, conv.weight.device, conv.weight.requires_grad
    depthwise = kind(
        conv.in_channels,
        conv.in_channels * multiplier,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.in_channels,
        bias=False,
        padding_mode=conv.padding_mode,
        device=device,
        dtype=dtype,
    )
    pointwise = kind(
        conv.in_channels * multiplier, conv.out_channels, 1, groups=groups, bias=conv.bias is not None, device=device, dtype=dtype
    )
    depthwise.weight = nn.Parameter(depthwise_weight.to(dtype), trainable)
    pointwise.weight = nn.Parameter(pointwise_weight.to(dtype), trainable)
    if conv.bias is not None:
        pointwise.bias = nn.Parameter(conv.bias.detach().clone(), conv.bias.requires_grad)
    return [depthwise, pointwise]


class Separable(Pass):
    """Replace standard convolutions by depthwise + pointwise pairs initialized by per-channel SVD."""

    name = "separable"
    schema = {
        "include": Option(globs(), default=("*",), doc="qualified-name globs of convolutions to convert"),
        "exclude": Option(globs(), default=(), doc="qualified-name globs of convolutions to leave alone"),
        "depth_multiplier": Option(
            optional(integer(1)), default=None, doc="depthwise filters per input channel (default 1; capped at min(O, k…))"
        ),
        "max_error": Option(
            optional(number(0, None)), default=None, doc="choose each layer's multiplier: the smallest within this weight error"
        ),
        "skip_no_gain": Option(
            boolean(), default=True, doc="skip layers whose pair costs as many MACs or parameters (false: convert anyway)"
        ),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["depth_multiplier"] is not None and self.options["max_error"] is not None:
            raise RecipeError("pass 'separable': give depth_multiplier or max_error, not both")

    def _multiplier(self, errors: torch.Tensor) -> int:
        """The multiplier for a layer whose error for multiplier m is ``errors[m]``."""
        full = len(errors) - 1
        if self.options["max_error"] is None:
            return min(self.options["depth_multiplier"] or 1, full)
        within = (errors[1:] <= self.options["max_error"]).nonzero()
        return int(within[0]) + 1 if len(within) else full

    def _why_not(self, gm: fx.GraphModule, node: fx.Node, calls: dict[str, int]) -> str | None:
        conv = gm.get_submodule(node.target)
        reason = why_not_replaceable(gm, node, calls)
        if reason is not None:
            return reason
        if math.prod(conv.kernel_size) == 1:
            return "a 1×1 convolution is already pointwise"
        if conv.in_channels == conv.groups:
            return "it is already depthwise (one input channel per group)"
        if conv.weight.is_meta:
            return "its weight is on the meta device (no values to factor); load real weights first"
        if not conv.weight.detach().abs().sum():
            return "its weight is all zeros"
        return None

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        calls = calls_per_module(gm.graph)
        layers, skipped, exact = [], [], True
        for node, name, conv in selected_modules(gm, _CONVS, self.options["include"], self.options["exclude"]):
            reason = self._why_not(gm, node, calls)
            if reason is not None:
                skipped.append({"layer": name, "reason": reason})
                continue
            decomposition = channel_svd(conv)
            errors = relative_errors(decomposition[1])
            multiplier = self._multiplier(errors)
            change = cost_change(node, decouple(conv, multiplier, decomposition))
            reason = no_gain_reason(change, f"multiplier {multiplier}")
            if self.options["skip_no_gain"] and reason is not None:
                skipped.append({"layer": name, "reason": reason})
                continue
            layers.append({"layer": name, "depth_multiplier": multiplier, "error": float(errors[multiplier]), **change})
            exact = exact and multiplier == len(errors) - 1
        # Every layer at its full multiplier is exact: then the pipeline holds the pass to it.
        self.tolerance = 1e-5 if layers and exact else None
        return {"layers": layers, "skipped": skipped, "renamed": {entry["layer"]: f"{entry['layer']}.1" for entry in layers}}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        by_name = {qualname(node): node for node in gm.graph.nodes}
        for entry in plan["layers"]:
            node = by_name[entry["layer"]]
            conv = gm.get_submodule(node.target)
            replace_with_chain(gm, node, decouple(conv, entry["depth_multiplier"], channel_svd(conv)))
        saved = sum(entry["macs_before"] - entry["macs_after"] for entry in plan["layers"])
        return PassResult(gm, modified=bool(plan["layers"]), stats={"converted": len(plan["layers"]), "macs_saved": saved})


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``separable`` pass."""
    register(Separable)
