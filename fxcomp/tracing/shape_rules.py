"""Closed-form output shapes for the commonest operations, used by the meta-tensor fast path.

On meta tensors, PyTorch computes elementwise, normalization and activation
outputs through Python decompositions that cost 0.1–0.5 ms per call; the rules
here give the same shape and dtype in microseconds. A rule answers only for the
exact module types, functions and methods listed (a subclass with its own
``forward`` runs for real on meta tensors instead), and returns ``None`` when
its arguments are not the plain case it knows, so the operation runs instead.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

Rule = Callable[[Sequence[Any], dict[str, Any]], torch.Tensor | None]


def _empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _like_first(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """Output shaped and typed like the first argument (activations, normalization, dropout)."""
    first = args[0] if args else kwargs.get("input")
    if not isinstance(first, torch.Tensor) or kwargs.get("dtype") is not None:
        return None
    return _empty(first.shape, first.dtype)


def _broadcast(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """Add, subtract, multiply: broadcast shapes, promoted dtype."""
    if len(args) != 2 or kwargs.keys() - {"alpha"}:
        return None
    left, right = args
    tensors = [value for value in args if isinstance(value, torch.Tensor)]
    if not tensors or not all(isinstance(v, (torch.Tensor, int, float, bool)) for v in args):
        return None
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    return _empty(shape, torch.result_type(left, right))


def _adaptive_pool(output_size: Any, x: torch.Tensor, spatial: int) -> torch.Tensor | None:
    sizes = (output_size,) * spatial if isinstance(output_size, int) else tuple(output_size)
    if len(sizes) != spatial or x.dim() not in (spatial + 1, spatial + 2):
        return None
    kept = x.shape[: x.dim() - spatial]
    inner = x.shape[x.dim() - spatial :]
    return _empty((*kept, *(inner[i] if s is None else s for i, s in enumerate(sizes))), x.dtype)


def _adaptive_avg_pool2d(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    if len(args) != 2 or kwargs or not isinstance(args[0], torch.Tensor):
        return None
    return _adaptive_pool(args[1], args[0], 2)


_UNARY_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
)

_UNARY_FUNCTIONS = (
    F.relu,
    torch.relu,
    torch.relu_,
    F.relu6,
    F.hardtanh,
    F.gelu,
    F.silu,
    F.sigmoid,
    torch.sigmoid,
    torch.tanh,
    F.hardswish,
    F.hardsigmoid,
    F.leaky_relu,
    F.elu,
    F.mish,
    F.dropout,
    F.batch_norm,
    F.layer_norm,
    F.group_norm,
)

_BINARY_FUNCTIONS = (
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    torch.add,
    torch.sub,
    torch.mul,
)

FUNCTION_RULES: dict[Any, Rule] = {
    **dict.fromkeys(_UNARY_FUNCTIONS, _like_first),
    **dict.fromkeys(_BINARY_FUNCTIONS, _broadcast),
    F.adaptive_avg_pool2d: _adaptive_avg_pool2d,
}
"""Rules for ``call_function`` targets."""

METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(("relu", "relu_", "sigmoid", "tanh", "contiguous"), _like_first),
    **dict.fromkeys(("add", "add_", "sub", "mul", "mul_"), _broadcast),
}
"""Rules for ``call_method`` targets (the tensor is the first argument)."""


def module_rule(module: nn.Module, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The output of calling ``module`` on meta ``args``, if a rule knows its exact type; else None."""
    module_type = type(module)
    if module_type in _UNARY_MODULES:
        return _like_first(args, kwargs) if len(args) == 1 and not kwargs else None
    if module_type is nn.AdaptiveAvgPool2d and len(args) == 1 and isinstance(args[0], torch.Tensor) and not kwargs:
        return _adaptive_pool(module.output_size, args[0], 2)
    return None
