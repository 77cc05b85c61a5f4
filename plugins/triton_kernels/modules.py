"""The kernel modules lowered graphs call: buffers in the layout a kernel reads, a forward that launches it.

Triton is imported when a module first runs (``fxcomp_plugins.triton_kernels.<kernel>``),
so building and saving these modules works without it. Linear kernels take inputs of any
rank whose last dimension is the feature dimension, like ``nn.Linear``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor


def _launcher(kernel_module: str, name: str, x: torch.Tensor | None = None) -> Callable[..., torch.Tensor]:
    """The kernel ``name`` of ``kernel_module``, or its pure-torch reference when ``x`` holds no data
    (meta and fake tensors, with which fxcomp propagates shapes)."""
    symbolic = x is not None and (x.is_meta or isinstance(x, FakeTensor))
    return getattr(importlib.import_module(f"{__package__}.{kernel_module}"), f"{name}_reference" if symbolic else name)


def _rows(x: torch.Tensor, features: int, launch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``launch`` on ``x`` viewed as a matrix of feature rows, reshaped back to ``x``'s leading dimensions."""
    if x.shape[-1] != features:  # the kernels do not bound-check their loads against the weights
        raise ValueError(f"expected inputs with {features} features in the last dimension, got shape {tuple(x.shape)}")
    out = launch(x.reshape(-1, x.shape[-1]))
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _optional(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    module.register_buffer(name, None if value is None else value.detach().clone())


class LowRankLinearKernel(nn.Module):
    """``x·Vᵀ·Uᵀ + b`` (a low-rank pair of linear layers) with the rank-K intermediate kept on-chip."""

    def __init__(self, v: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("v", v.detach().float().contiguous())
        self.register_buffer("u", u.detach().float().contiguous())
        _optional(self, "bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        launch = _launcher("lowrank", "lowrank_linear", x)
        return _rows(x, self.v.shape[1], lambda rows: launch(rows, self.v, self.u, self.bias))

    def extra_repr(self) -> str:
        return f"in_features={self.v.shape[1]}, rank={self.v.shape[0]}, out_features={self.u.shape[0]}"


class Int8LinearKernel(nn.Module):
    """A linear layer with int8 weights and one scale per output channel, dequantized inside the kernel."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.int8).contiguous())
        self.register_buffer("scales", scales.detach().float().reshape(-1).contiguous())
        _optional(self, "bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        launch = _launcher("quantized", "int8_linear", x)
        return _rows(x, self.weight.shape[1], lambda rows: launch(rows, self.weight, self.scales, self.bias))

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}"


class Int4LinearKernel(nn.Module):
    """A linear layer with int4 weights (two per byte) and one scale per group of ``group_size`` inputs."""

    def __init__(self, integers: torch.Tensor, scales: torch.Tensor, group_size: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        pack = _launcher("quantized", "pack_int4_rows")
        self.in_features, self.group_size = integers.shape[1], group_size
        self.register_buffer("packed", pack(integers.detach().to(torch.int8)).contiguous())
        self.register_buffer("scales", scales.detach().float().contiguous())
        _optional(self, "bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        launch = _launcher("quantized", "int4_linear", x)
        return _rows(x, self.in_features, lambda rows: launch(rows, self.packed, self.scales, self.group_size, self.bias))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.packed.shape[0]}, group_size={self.group_size}"


class CodebookLinearKernel(nn.Module):
    """A linear layer whose weights are ``codebook[indices]`` (k-means weight sharing), looked up in the kernel."""

    def __init__(self, indices: torch.Tensor, codebook: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("indices", indices.detach().contiguous())
        self.register_buffer("codebook", codebook.detach().float().contiguous())
        _optional(self, "bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        launch = _launcher("codebook", "codebook_linear", x)
        return _rows(x, self.indices.shape[1], lambda rows: launch(rows, self.indices, self.codebook, self.bias))

    def extra_repr(self) -> str:
        return f"in_features={self.indices.shape[1]}, out_features={self.indices.shape[0]}, codebook={len(self.codebook)}"


class CSRLinearKernel(nn.Module):
    """A linear layer whose sparse weights are stored in CSR (row pointers, column indices, values)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        crow, col, values = _launcher("sparse", "to_csr")(weight.detach().float())
        self.in_features = weight.shape[1]
        self.register_buffer("crow", crow)
        self.register_buffer("col", col)
        self.register_buffer("values", values)
        _optional(self, "bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        launch = _launcher("sparse", "csr_linear", x)
        return _rows(x, self.in_features, lambda rows: launch(rows, self.crow, self.col, self.values, self.bias))

    def extra_repr(self) -> str:
        outputs = len(self.crow) - 1
        return f"in_features={self.in_features}, out_features={outputs}, density={len(self.values) / max(1, outputs * self.in_features):.1%}"


class SeparableConvKernel(nn.Module):
    """A depthwise k×k convolution and the pointwise 1×1 convolution after it in one kernel.

    BatchNorms after either are folded into the weights; ``mid_relu`` and ``relu`` apply a
    ReLU after the depthwise and the pointwise stage. The depthwise output never leaves the chip.
    """

    def __init__(self, dw_weight: torch.Tensor, dw_bias: torch.Tensor | None, pw_weight: torch.Tensor,
                 pw_bias: torch.Tensor | None, *, geometry: dict[str, Any], mid_relu: bool, relu: bool) -> None:
        super().__init__()
        self.register_buffer("dw_weight", dw_weight.detach().float().contiguous())
        _optional(self, "dw_bias", dw_bias)
        self.register_buffer("pw_weight", pw_weight.detach().float().contiguous())
        _optional(self, "pw_bias", pw_bias)
        self.stride, self.padding, self.dilation = (list(geometry[key]) for key in ("stride", "padding", "dilation"))
        self.multiplier, self.mid_relu, self.relu = int(geometry["multiplier"]), mid_relu, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.dw_weight.shape[0] // self.multiplier
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"expected inputs of shape [B, {channels}, H, W], got {tuple(x.shape)}")
        launch = _launcher("separable", "separable_conv2d", x)
        return launch(
            x, self.dw_weight, self.dw_bias, self.pw_weight, self.pw_bias,
            stride=tuple(self.stride), padding=tuple(self.padding), dilation=tuple(self.dilation),
            multiplier=self.multiplier, mid_relu=self.mid_relu, relu=self.relu,
        )

    def extra_repr(self) -> str:
        channels, kh, kw = self.dw_weight.shape
        return (f"{channels // self.multiplier}→{channels} depthwise {kh}×{kw}, stride={tuple(self.stride)}, "
                f"padding={tuple(self.padding)}, dilation={tuple(self.dilation)} → {self.pw_weight.shape[0]} pointwise, "
                f"mid_relu={self.mid_relu}, relu={self.relu}")


KERNEL_MODULES = (
    LowRankLinearKernel,
    Int8LinearKernel,
    Int4LinearKernel,
    CodebookLinearKernel,
    CSRLinearKernel,
    SeparableConvKernel,
)
"""Every kernel module class (allow-listed for ``fxcomp.save``)."""
