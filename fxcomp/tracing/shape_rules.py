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


def _cat(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """Concatenation of tensors of one dtype and rank that differ only along ``dim``."""
    if not 1 <= len(args) <= 2 or kwargs.keys() - {"dim"} or (len(args) == 2 and "dim" in kwargs):
        return None
    tensors, dim = args[0], args[1] if len(args) == 2 else kwargs.get("dim", 0)
    if not isinstance(tensors, (tuple, list)) or not tensors or type(dim) is not int:
        return None
    first = tensors[0]
    # Contiguous inputs on one device: the real output is then contiguous too.
    if not all(isinstance(t, torch.Tensor) and t.device == first.device and t.is_contiguous() for t in tensors):
        return None
    if not first.dim() or not -first.dim() <= dim < first.dim():
        return None
    dim %= first.dim()
    for tensor in tensors:
        same = tensor.dim() == first.dim() and tensor.dtype == first.dtype
        if not same or any(tensor.shape[a] != first.shape[a] for a in range(first.dim()) if a != dim):
            return None
    shape = list(first.shape)
    shape[dim] = sum(tensor.shape[dim] for tensor in tensors)
    return _empty(shape, first.dtype)


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
    torch.cat: _cat,
    torch.concat: _cat,
}
"""Rules for ``call_function`` targets."""

METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(("relu", "relu_", "sigmoid", "tanh", "contiguous"), _like_first),
    **dict.fromkeys(("add", "add_", "sub", "mul", "mul_"), _broadcast),
}
"""Rules for ``call_method`` targets (the tensor is the first argument)."""


def _tuple(value: Any, count: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * count


def _window(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool = False) -> int:
    """Output length of a sliding window (convolution, pooling) along one axis."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = -(-span // stride) + 1 if ceil_mode else span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the right padding
    return out


def _conv(module: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor | None:
    spatial = len(module.kernel_size)
    if module.transposed or isinstance(module.padding, str) or x.dim() != spatial + 2 or x.shape[1] != module.in_channels:
        return None
    sizes = [
        _window(x.shape[2 + i], module.kernel_size[i], module.stride[i], module.padding[i], module.dilation[i])
        for i in range(spatial)
    ]
    return _empty((x.shape[0], module.out_channels, *sizes), x.dtype) if min(sizes) > 0 else None


def _pool(module: nn.MaxPool2d | nn.AvgPool2d, x: torch.Tensor) -> torch.Tensor | None:
    if x.dim() != 4 or getattr(module, "return_indices", False):
        return None
    kernel, padding = _tuple(module.kernel_size, 2), _tuple(module.padding, 2)
    stride = _tuple(module.stride if module.stride is not None else module.kernel_size, 2)
    dilation = _tuple(getattr(module, "dilation", 1), 2)
    sizes = [_window(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i], module.ceil_mode) for i in range(2)]
    return _empty((*x.shape[:2], *sizes), x.dtype) if min(sizes) > 0 else None


_ATTENTION_ARGUMENTS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


def _attention(module: nn.MultiheadAttention, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """``nn.MultiheadAttention`` without masks: ``(output, weights or None)``."""
    if len(args) > len(_ATTENTION_ARGUMENTS) or kwargs.keys() - set(_ATTENTION_ARGUMENTS[len(args) :]):
        return None
    bound = {**dict(zip(_ATTENTION_ARGUMENTS, args)), **kwargs}
    query, key, value = (bound.get(name) for name in ("query", "key", "value"))
    if not all(isinstance(t, torch.Tensor) for t in (query, key, value)):
        return None
    masked = bound.get("key_padding_mask") is not None or bound.get("attn_mask") is not None or bound.get("is_causal", False)
    dtype = module.out_proj.weight.dtype
    if masked or not query.dim() == key.dim() == value.dim() or query.dim() not in (2, 3):
        return None
    if not query.dtype == key.dtype == value.dtype == dtype or not dtype.is_floating_point:
        return None
    if any(parameter.dtype != dtype for parameter in module.parameters()):
        return None
    if (query.shape[-1], key.shape[-1], value.shape[-1]) != (module.embed_dim, module.kdim, module.vdim):
        return None
    batched = query.dim() == 3
    batch_axis, sequence_axis = (0, 1) if module.batch_first else (1, 0)
    if batched and not query.shape[batch_axis] == key.shape[batch_axis] == value.shape[batch_axis]:
        return None
    if key.shape[sequence_axis if batched else 0] != value.shape[sequence_axis if batched else 0]:
        return None
    output = _empty(query.shape, dtype)
    if batched and module.batch_first:  # computed sequence-first, returned as a transposed view
        output = _empty((query.shape[1], query.shape[0], query.shape[2]), dtype).transpose(0, 1)
    if not bound.get("need_weights", True):
        return output, None
    targets, sources = query.shape[sequence_axis if batched else 0], key.shape[sequence_axis if batched else 0]
    sources += (module.bias_k is not None) + module.add_zero_attn  # each appends one key/value slot
    heads = () if bound.get("average_attn_weights", True) else (module.num_heads,)
    batch = (query.shape[batch_axis],) if batched else ()
    return output, _empty((*batch, *heads, targets, sources), dtype)


def module_rule(module: nn.Module, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """The output of calling ``module`` on meta ``args``, if a rule knows its exact type; else None."""
    module_type = type(module)
    if module_type is nn.MultiheadAttention:
        return _attention(module, args, kwargs)
    if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if module_type in _UNARY_MODULES:
        return _like_first(args, kwargs)
    if module_type is nn.AdaptiveAvgPool2d:
        return _adaptive_pool(module.output_size, x, 2)
    if module_type in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        return _conv(module, x)
    if module_type is nn.Linear:
        return _empty((*x.shape[:-1], module.out_features), x.dtype) if x.dim() and x.shape[-1] == module.in_features else None
    if module_type in (nn.MaxPool2d, nn.AvgPool2d):
        return _pool(module, x)
    return None
