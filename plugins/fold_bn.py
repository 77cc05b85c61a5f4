"""Built-in plugin ``fold_bn``: fold BatchNorm into the convolution or linear layer before it.

In eval mode a BatchNorm is an affine map per channel,
``y = (x - mean) / sqrt(var + eps) * gamma + beta``; when its input comes
straight from a conv or linear layer that nobody else reads, the map is folded
into that layer's weight and bias and the BatchNorm disappears. The result
computes the same function (the pass promises a relative output change below
1e-5) with one layer fewer. Folding assumes inference: a folded model no longer
normalizes with batch statistics when trained.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize

from fxcomp import hookimpl, qualname
from fxcomp.dynamic import EXITS, has_exits
from fxcomp.passes import (
    Mask,
    Option,
    PackedWeight,
    Pass,
    PassContext,
    PassResult,
    SharedWeights,
    WeightQuant,
    calls_per_module,
    class_before_parametrizations,
    globs,
    matches,
    parameter_holders,
    read_directly,
)
from fxcomp.tracing import TensorSpec, node_info

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def _why_not_foldable(gm: fx.GraphModule, bn_node: fx.Node, calls: dict[str, int], holders: dict[int, int]) -> str | None:
    """Why ``bn_node`` cannot be folded into its producer, or None when it can (``holders`` from
    :func:`fxcomp.passes.parameter_holders`)."""
    bn = gm.get_submodule(bn_node.target)
    if bn.running_mean is None or bn.running_var is None:
        return "the BatchNorm keeps no running statistics (track_running_stats=False)"
    producer = _bn_input(bn_node)
    if not isinstance(producer, fx.Node):
        return "its input is a constant"
    layer = gm.get_submodule(producer.target) if producer.op == "call_module" else None
    if not isinstance(layer, _FOLDABLE):
        return f"its input comes from '{qualname(producer)}', not from a conv or linear layer"
    if len(producer.users) != 1:
        return f"the output of '{qualname(producer)}' is also read elsewhere"
    exit_points = gm.meta[EXITS]["at"] if has_exits(gm) else ()
    if producer.name in exit_points or bn_node.name in exit_points:
        return f"an early exit reads the output of '{qualname(producer if producer.name in exit_points else bn_node)}'"
    if calls[producer.target] != 1 or calls[bn_node.target] != 1:
        return "the layer or the BatchNorm module is called more than once"
    for module, name in ((layer, producer.target), (bn, bn_node.target)):
        cls = class_before_parametrizations(module)
        if not cls.__module__.startswith("torch.nn.modules"):
            return f"'{name}' is a {cls.__name__}, whose forward folding cannot follow"
    if any(holders[id(p)] > 1 for p in layer.parameters()):
        return f"the weight of '{producer.target}' is shared with another module; folding would untie it"
    for module, name in ((layer, producer.target), (bn, bn_node.target)):
        if module._forward_hooks or module._forward_pre_hooks:
            return f"'{name}' has forward hooks, which would see the folded values"
        read = read_directly(gm, name)
        if read is not None:
            return f"the graph also reads '{read}' directly"
    output = node_info(producer).output
    if isinstance(layer, nn.Linear) and not (isinstance(output, TensorSpec) and len(output.shape) == 2):
        return "a BatchNorm after a linear layer with more than 2-D output normalizes a different axis"
    batched = len(layer.kernel_size) + 2 if not isinstance(layer, nn.Linear) else 2
    if not isinstance(output, TensorSpec) or len(output.shape) != batched:
        return "the layer's input is unbatched, so the BatchNorm normalizes a different axis than its output channels"
    if isinstance(layer, nn.modules.conv._ConvTransposeNd) and layer.groups != 1:
        return "grouped transposed convolutions are not folded"
    if bn.num_features != (layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels):
        return "the BatchNorm's num_features differs from the layer's output channels"
    return _why_weight_cannot_absorb(layer)


def _bn_input(bn_node: fx.Node) -> Any:
    """What the BatchNorm call normalizes (passed by position or as ``input=``)."""
    return bn_node.args[0] if bn_node.args else bn_node.kwargs.get("input")


def _why_weight_cannot_absorb(layer: nn.Module) -> str | None:
    """Why scaling the layer's parametrized weight would not scale what it computes, or None.

    Masks and per-output-row fake quantization take a rescaled weight as it is; other
    parametrizations (weight or spectral normalization) compute the weight anew; a codebook
    keeps its centroids, stored integers keep their scales, and a transposed convolution's
    output channels are not the rows its quantization scales.
    """
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    for step in layer.parametrizations["weight"]:
        if not isinstance(step, (Mask, WeightQuant, SharedWeights, PackedWeight)):
            return f"its weight is computed by {type(step).__name__}, which a rescaled weight would not pass through"
        if isinstance(step, (SharedWeights, PackedWeight)):
            return f"its weight is stored as {type(step).__name__}; run fold_bn before the pass that added it"
        if isinstance(step, WeightQuant) and isinstance(layer, nn.modules.conv._ConvTransposeNd):
            return "its weight is fake-quantized along another axis than its output channels; run fold_bn before quantize"
    return None


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = layer.weight.double()
    out_axis = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
    shape = [1] * weight.dim()
    shape[out_axis] = -1
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(shift)
    dtype = layer.weight.dtype
    folded = (weight * scale.reshape(shape)).to(dtype)
    if parametrize.is_parametrized(layer, "weight"):
        trainable = layer.parametrizations.weight.original.requires_grad
        layer.weight = folded  # stored through the parametrization, so a mask keeps its zeros
    else:
        trainable = layer.weight.requires_grad
        layer.weight = nn.Parameter(folded, trainable)
    # The folded bias holds the layer's bias and the BatchNorm's shift: trainable if either was.
    sources = [tensor for tensor in (layer.bias, bn.bias) if tensor is not None]
    bias_trainable = any(tensor.requires_grad for tensor in sources) if sources else trainable
    layer.bias = nn.Parameter((bias * scale + shift).to(dtype), bias_trainable)


class FoldBatchNorm(Pass):
    """Fold every eligible BatchNorm into the conv/linear layer that feeds it."""

    name = "fold_bn"
    tolerance = 1e-5
    schema = {
        "include": Option(globs(), default=("*",), doc="qualified-name globs of BatchNorms to fold"),
        "exclude": Option(globs(), default=(), doc="qualified-name globs of BatchNorms to keep"),
    }

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        calls, holders = calls_per_module(gm.graph), parameter_holders(gm)
        folds, skipped = [], []
        for node in gm.graph.nodes:
            if node.op != "call_module" or not isinstance(
                gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm
            ):
                continue
            name = qualname(node)
            if not matches(name, self.options["include"]) or matches(name, self.options["exclude"]):
                continue
            reason = _why_not_foldable(gm, node, calls, holders)
            if reason is None:
                folds.append({"layer": qualname(_bn_input(node)), "batchnorm": name})
            else:
                skipped.append({"batchnorm": name, "reason": reason})
        # A folded BatchNorm's output is now its layer's: feature readers follow this table.
        renamed = {fold["batchnorm"]: fold["layer"] for fold in folds}
        return {"folds": folds, "skipped": skipped, "renamed": renamed}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        by_name = {qualname(node): node for node in gm.graph.nodes}
        for fold in plan["folds"]:
            layer_node, bn_node = by_name[fold["layer"]], by_name[fold["batchnorm"]]
            _fold(gm.get_submodule(layer_node.target), gm.get_submodule(bn_node.target))
            bn_node.replace_all_uses_with(layer_node)
            gm.graph.erase_node(bn_node)
            gm.delete_submodule(bn_node.target)
        return PassResult(
            gm, modified=bool(plan["folds"]), stats={"folded": len(plan["folds"]), "skipped": len(plan["skipped"])}
        )


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``fold_bn`` pass."""
    register(FoldBatchNorm)
