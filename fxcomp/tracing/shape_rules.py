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


def _plain(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` has the strides of a new contiguous tensor, as every rule's output has.

    A rule answers only for such inputs: then the real operation's output is contiguous too,
    and a later ``view`` fails or succeeds on the rule's output as it would for real.
    """
    expected, step = [], 1
    for size in reversed(tensor.shape):
        expected.append(step)
        step *= max(size, 1)
    return tensor.stride() == tuple(reversed(expected))


def _like_first(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """Output shaped and typed like the first argument (activations, dropout), for plain floating-point inputs."""
    first = args[0] if args else kwargs.get("input")
    if not isinstance(first, torch.Tensor) or kwargs.get("dtype") is not None or "memory_format" in kwargs:
        return None
    if not first.dtype.is_floating_point or not _plain(first):
        return None  # integer inputs promote (sigmoid) or fail (gelu); the real kernel knows which
    return _empty(first.shape, first.dtype)


def _bind(names: Sequence[str], args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call by parameter name, for the leading parameters ``names``."""
    return {**dict(zip(names, args)), **kwargs}


def _per_channel(tensors: Sequence[Any], x: torch.Tensor) -> bool:
    """Whether the given statistics / affine tensors (None allowed) are 1-D, one entry per channel, of x's dtype."""
    present = [t for t in tensors if t is not None]
    return all(isinstance(t, torch.Tensor) and t.shape == (x.shape[1],) and t.dtype == x.dtype for t in present)


def _batch_norm(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``F.batch_norm``: statistics and affine parameters must match the channels."""
    names = ("input", "running_mean", "running_var", "weight", "bias")
    bound = _bind(names, args, kwargs)
    x = bound.get("input")
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not _per_channel([bound.get(n) for n in names[1:]], x):
        return None
    return _like_first((x,), {})


def _layer_norm(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``F.layer_norm``: ``normalized_shape`` must be the input's trailing sizes."""
    names = ("input", "normalized_shape", "weight", "bias")
    bound = _bind(names, args, kwargs)
    x, shape = bound.get("input"), bound.get("normalized_shape")
    if not isinstance(x, torch.Tensor) or not isinstance(shape, (list, tuple, torch.Size)) or not shape:
        return None
    affine = [bound.get(n) for n in ("weight", "bias") if bound.get(n) is not None]
    if tuple(x.shape[-len(shape) :]) != tuple(shape) or len(shape) > x.dim():
        return None
    if not all(isinstance(t, torch.Tensor) and tuple(t.shape) == tuple(shape) and t.dtype == x.dtype for t in affine):
        return None
    return _like_first((x,), {})


def _group_norm(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``F.group_norm``: the channels must split into ``num_groups``."""
    names = ("input", "num_groups", "weight", "bias")
    bound = _bind(names, args, kwargs)
    x, groups = bound.get("input"), bound.get("num_groups")
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or type(groups) is not int or groups <= 0 or x.shape[1] % groups:
        return None
    return _like_first((x,), {}) if _per_channel([bound.get("weight"), bound.get("bias")], x) else None


def _broadcast(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """Add, subtract, multiply of plain non-boolean operands: broadcast shapes, promoted dtype."""
    if len(args) != 2 or kwargs:
        return None  # alpha= has type rules of its own; the real kernel checks them
    left, right = args
    tensors = [value for value in args if isinstance(value, torch.Tensor)]
    if not tensors or not all(isinstance(v, (torch.Tensor, int, float)) and not isinstance(v, bool) for v in args):
        return None
    if any(t.dtype == torch.bool or not _plain(t) for t in tensors):
        return None
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    return _empty(shape, torch.result_type(left, right))


def _in_place(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``x += y``, ``x.mul_(y)``: the result is ``x`` itself, so the broadcast must keep its shape and dtype."""
    result = _broadcast(args, kwargs)
    left = args[0] if args else None
    if result is None or not isinstance(left, torch.Tensor) or (result.shape, result.dtype) != (left.shape, left.dtype):
        return None
    return result


def _adaptive_pool(output_size: Any, x: torch.Tensor, spatial: int) -> torch.Tensor | None:
    sizes = (output_size,) * spatial if isinstance(output_size, int) else tuple(output_size)
    if not x.dtype.is_floating_point or not _plain(x):
        return None
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
    if not all(isinstance(t, torch.Tensor) and t.device == first.device and _plain(t) for t in tensors):
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


_NORM_RANKS: dict[type[nn.Module], tuple[int, ...]] = {
    nn.BatchNorm1d: (2, 3),
    nn.BatchNorm2d: (4,),
    nn.BatchNorm3d: (5,),
    nn.InstanceNorm1d: (3,),
    nn.InstanceNorm2d: (4,),
    nn.InstanceNorm3d: (5,),
}
"""The input ranks a norm module's rule answers for (batched inputs only for instance norms)."""

_NORM_MODULES = (*_NORM_RANKS, nn.GroupNorm, nn.LayerNorm)


def _norm_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Normalization modules: the input must have their rank, channels or trailing shape, and dtype."""
    state = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if any(t.dtype != x.dtype for t in state):
        return None
    if isinstance(module, nn.LayerNorm):
        shape = tuple(module.normalized_shape)
        fits = len(shape) <= x.dim() and tuple(x.shape[x.dim() - len(shape) :]) == shape
    elif isinstance(module, nn.GroupNorm):
        fits = x.dim() >= 2 and x.shape[1] == module.num_channels
    else:
        fits = x.dim() in _NORM_RANKS[type(module)] and (x.shape[1] == module.num_features or not state)
    return _like_first((x,), {}) if fits else None


def _dropout_accepts(module: nn.Module, x: torch.Tensor) -> bool:
    """Channel dropout modules accept inputs of two ranks only (others raise or warn)."""
    ranks = {nn.Dropout1d: (2, 3), nn.Dropout3d: (4, 5)}.get(type(module))
    return ranks is None or x.dim() in ranks


_UNARY_MODULES = (
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
    **dict.fromkeys((operator.iadd, operator.isub, operator.imul), _in_place),
    F.batch_norm: _batch_norm,
    F.layer_norm: _layer_norm,
    F.group_norm: _group_norm,
    F.adaptive_avg_pool2d: _adaptive_avg_pool2d,
    torch.cat: _cat,
    torch.concat: _cat,
}
"""Rules for ``call_function`` targets."""

METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(("relu", "relu_", "sigmoid", "tanh", "contiguous"), _like_first),
    **dict.fromkeys(("add", "sub", "mul"), _broadcast),
    **dict.fromkeys(("add_", "mul_"), _in_place),
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
    if any(p.dtype != x.dtype for p in module.parameters()) or not _plain(x) or min(x.shape[2:]) == 0:
        return None
    if module.padding_mode != "zeros":  # reflect needs padding < size; circular wraps at most once
        limit = [size - (module.padding_mode == "reflect") for size in x.shape[2:]]
        if any(pad > most for pad, most in zip(module.padding, limit)):
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
    if any(2 * padding[i] > dilation[i] * (kernel[i] - 1) + 1 for i in range(2)) or not _plain(x):
        return None  # at most half the (dilated) kernel may be padding
    if isinstance(module, nn.AvgPool2d) and not x.dtype.is_floating_point:
        return None
    sizes = [_window(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i], module.ceil_mode) for i in range(2)]
    return _empty((*x.shape[:2], *sizes), x.dtype) if min(sizes) > 0 else None


_ATTENTION_ARGUMENTS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


def _attention(module: nn.MultiheadAttention, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """``nn.MultiheadAttention`` without masks: ``(output, weights or None)``."""
    if len(args) > len(_ATTENTION_ARGUMENTS) or kwargs.keys() - set(_ATTENTION_ARGUMENTS[len(args) :]):
        return None
    bound = _bind(_ATTENTION_ARGUMENTS, args, kwargs)
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
    if module_type in _NORM_MODULES:
        return _norm_module(module, x)
    if module_type in _UNARY_MODULES:
        return _like_first(args, kwargs) if _dropout_accepts(module, x) else None
    if module_type is nn.AdaptiveAvgPool2d:
        return _adaptive_pool(module.output_size, x, 2)
    if module_type in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        return _conv(module, x)
    if module_type is nn.Linear:
        if not x.dim() or x.shape[-1] != module.in_features or not _plain(x):
            return None
        return _empty((*x.shape[:-1], module.out_features), x.dtype) if module.weight.dtype == x.dtype else None
    if module_type in (nn.MaxPool2d, nn.AvgPool2d):
        return _pool(module, x)
    return None
