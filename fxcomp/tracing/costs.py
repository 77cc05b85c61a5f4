"""Multiply-accumulate (MAC) and parameter counts per node.

MACs count the multiply-accumulates of convolutions, linear layers, matrix
products and attention, plus one per element for the affine part of a
normalization layer. Activations, pooling and elementwise arithmetic count
zero, following the convention of thop, fvcore and torch-pruning, so totals
are comparable with published figures (ResNet-50 at 224×224: 4.1 GMACs).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _conv_macs(module: nn.Module, inputs: Sequence[Any], output: Any) -> int:
    kernel = _numel(module.kernel_size)
    if module.transposed:
        # Every input element is scattered into out_channels/groups × kernel outputs.
        return _numel(inputs[0].shape) * (module.out_channels // module.groups) * kernel
    return _numel(output.shape) * (module.in_channels // module.groups) * kernel


def _linear_macs(module: nn.Module, inputs: Sequence[Any], output: Any) -> int:
    return _numel(output.shape) * module.in_features


def _bilinear_macs(module: nn.Module, inputs: Sequence[Any], output: Any) -> int:
    return _numel(output.shape) * module.in1_features * module.in2_features


def _norm_macs(module: nn.Module, inputs: Sequence[Any], output: Any) -> int:
    return _numel(output.shape)


def _attention_macs(module: nn.MultiheadAttention, inputs: Sequence[Any], output: Any) -> int:
    query, key = inputs[0], inputs[1]
    if module.batch_first or query.dim() == 2:
        target_len, source_len = query.shape[-2], key.shape[-2]
    else:
        target_len, source_len = query.shape[0], key.shape[0]
    batch = _numel(query.shape) // (target_len * query.shape[-1])
    embed, kdim, vdim = module.embed_dim, module.kdim, module.vdim
    projections = target_len * embed * embed + source_len * embed * (kdim + vdim)
    scores_and_mix = 2 * target_len * source_len * embed
    out_projection = target_len * embed * embed
    return batch * (projections + scores_and_mix + out_projection)


_MODULE_RULES: list[tuple[type[nn.Module], Callable[[Any, Sequence[Any], Any], int]]] = [
    (nn.modules.conv._ConvNd, _conv_macs),
    (nn.Linear, _linear_macs),
    (nn.Bilinear, _bilinear_macs),
    (nn.MultiheadAttention, _attention_macs),
    (nn.modules.batchnorm._NormBase, _norm_macs),
    (nn.GroupNorm, _norm_macs),
    (nn.LayerNorm, _norm_macs),
]


def _matmul_macs(args: Sequence[Any], output: Any) -> int:
    left = args[0]
    if not isinstance(left, torch.Tensor) or not isinstance(output, torch.Tensor):
        return 0
    return _numel(output.shape) * left.shape[-1]


def _addmm_macs(args: Sequence[Any], output: Any) -> int:
    return _matmul_macs(args[1:], output)


def _functional_conv_macs(args: Sequence[Any], output: Any) -> int:
    weight = args[1]
    # weight is (out, in/groups, *kernel): each output element reads in/groups × kernel inputs.
    return _numel(output.shape) * _numel(weight.shape[1:])


def _functional_linear_macs(args: Sequence[Any], output: Any) -> int:
    return _numel(output.shape) * args[1].shape[-1]


def _sdpa_macs(args: Sequence[Any], output: Any) -> int:
    query, key = args[0], args[1]
    return 2 * _numel(query.shape[:-1]) * key.shape[-2] * query.shape[-1]


def _elementwise_macs(args: Sequence[Any], output: Any) -> int:
    return _numel(output.shape) if isinstance(output, torch.Tensor) else 0


_FUNCTION_RULES: dict[Any, Callable[[Sequence[Any], Any], int]] = {
    torch.matmul: _matmul_macs,
    operator.matmul: _matmul_macs,
    torch.mm: _matmul_macs,
    torch.bmm: _matmul_macs,
    torch.addmm: _addmm_macs,
    torch.baddbmm: _addmm_macs,
    F.conv1d: _functional_conv_macs,
    F.conv2d: _functional_conv_macs,
    F.conv3d: _functional_conv_macs,
    F.linear: _functional_linear_macs,
    F.scaled_dot_product_attention: _sdpa_macs,
    F.batch_norm: _elementwise_macs,
    F.layer_norm: _elementwise_macs,
    F.group_norm: _elementwise_macs,
    F.instance_norm: _elementwise_macs,
}

_METHOD_RULES: dict[str, Callable[[Sequence[Any], Any], int]] = {
    "matmul": _matmul_macs,
    "mm": _matmul_macs,
    "bmm": _matmul_macs,
    "addmm": _addmm_macs,
    "baddbmm": _addmm_macs,
}


def module_macs(module: nn.Module, args: Sequence[Any], output: Any) -> int:
    """MACs of one call of ``module`` given its positional ``args`` and ``output`` (0 when not counted)."""
    for module_type, rule in _MODULE_RULES:
        if isinstance(module, module_type):
            return int(rule(module, args, output))
    return 0


def node_macs(node: fx.Node, module: nn.Module | None, args: Sequence[Any], output: Any) -> int:
    """MACs of one execution of ``node`` given its evaluated positional ``args`` and ``output``."""
    if node.op == "call_module" and module is not None:
        return module_macs(module, args, output)
    if node.op == "call_function" and node.target in _FUNCTION_RULES:
        return int(_FUNCTION_RULES[node.target](args, output))
    if node.op == "call_method" and node.target in _METHOD_RULES:
        return int(_METHOD_RULES[node.target](args, output))
    return 0


def node_params(node: fx.Node, modules: Mapping[str, nn.Module]) -> int:
    """Parameters a node owns: those of a called module, or the parameter a ``get_attr`` reads.

    ``modules`` maps paths to submodules (:func:`fxcomp.tracing.names.modules_by_path`).
    """
    if node.op == "call_module":
        return sum(p.numel() for p in modules[node.target].parameters())
    if node.op == "get_attr":
        owner, _, name = node.target.rpartition(".")
        value = getattr(modules[owner], name)
        return value.numel() if isinstance(value, nn.Parameter) else 0
    return 0
