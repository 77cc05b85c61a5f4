"""Direct convolutions: 2-D convolutions written as slices and matrix products of NHWC values.

A small convolution costs the CPU library (oneDNN) more in dispatch and layout
conversion than in arithmetic; written out as plain tensor operations it lets inductor
fuse it with its neighbours into one generated loop:

* ``depthwise`` (``groups == in_channels == out_channels``): one multiply-add per kernel
  tap over shifted slices of the padded input;
* ``pointwise`` (1×1, no padding): one matrix product over the channels;
* ``dense`` (``groups == 1``): the taps' slices concatenated along the channels (im2col)
  and one matrix product.

Every form works on the input permuted to NHWC and returns its output permuted back,
so the values are those of the convolution up to the order of floating-point sums.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from fxcomp.tracing import TensorSpec, node_info, qualname
from fxcomp.tracing.shapes import INFO

FORMS = ("depthwise", "pointwise", "dense")


def _padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` zero padding of ``conv``, also for ``padding='same'`` / ``'valid'``."""
    if conv.padding == "valid":
        return 0, 0, 0, 0
    if conv.padding == "same":
        (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
        top, left = dh * (kh - 1) // 2, dw * (kw - 1) // 2
        return top, dh * (kh - 1) - top, left, dw * (kw - 1) - left
    ph, pw = conv.padding
    return ph, ph, pw, pw


def form_of(conv: nn.Conv2d) -> str:
    """The direct form ``conv`` would be written in (one of :data:`FORMS`)."""
    if conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1:
        return "depthwise"
    if conv.kernel_size == (1, 1) and _padding(conv) == (0, 0, 0, 0):
        return "pointwise"
    return "dense"


class DirectConv2d(nn.Module):
    """An ``nn.Conv2d`` (zero padding, ``groups`` 1 or depthwise) computed on NHWC slices.

    The weight is stored for its form: ``depthwise`` (kh, kw, C), ``pointwise`` (O, C),
    ``dense`` (O, kh·kw·C) with the taps in row-major order.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.form = form_of(conv)
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = _padding(conv)
        weight = conv.weight.detach()
        if self.form == "depthwise":
            stored = weight[:, 0].permute(1, 2, 0)
        elif self.form == "pointwise":
            stored = weight[:, :, 0, 0]
        else:
            stored = weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
        self.weight = nn.Parameter(stored.contiguous().clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def extra_repr(self) -> str:
        return f"form={self.form}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}"

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input slices each kernel tap multiplies, NHWC, in row-major tap order."""
        top, bottom, left, right = self.padding
        padded = F.pad(x, (0, 0, left, right, top, bottom))
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        rows = (padded.shape[1] - dh * (kh - 1) - 1) // sh + 1
        cols = (padded.shape[2] - dw * (kw - 1) - 1) // sw + 1
        return [
            padded[:, i * dh : i * dh + sh * (rows - 1) + 1 : sh, j * dw : j * dw + sw * (cols - 1) + 1 : sw, :]
            for i in range(kh)
            for j in range(kw)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        if self.form == "pointwise":
            sh, sw = self.stride
            out = F.linear(x[:, ::sh, ::sw, :], self.weight, self.bias)
        elif self.form == "dense":
            out = F.linear(torch.cat(self._taps(x), dim=-1), self.weight, self.bias)
        else:
            weights = self.weight.flatten(0, 1)
            taps = self._taps(x)
            out = taps[0] * weights[0]
            for tap, weight in zip(taps[1:], weights[1:]):
                out = out + tap * weight
            if self.bias is not None:
                out = out + self.bias
        return out.permute(0, 3, 1, 2)


def _why_not(node: fx.Node, conv: nn.Conv2d, called: Collection[str]) -> str | None:
    """Why the convolution ``node`` calls stays a convolution, if it does (``called``: the paths the graph calls)."""
    path = str(node.target)
    if any(path.startswith(leaf + ".") for leaf in called):
        return "it is also called inside another module"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} (only zero padding is written directly)"
    if conv.groups != 1 and form_of(conv) != "depthwise":
        return f"grouped convolution (groups={conv.groups}) that is not depthwise"
    if not conv.weight.dtype.is_floating_point:
        return f"weight dtype {conv.weight.dtype}"
    spec = node_info(node).inputs[0] if INFO in node.meta and node_info(node).inputs else None
    if not (isinstance(spec, TensorSpec) and len(spec.shape) == 4):
        return "its input is not a batch of images (N, C, H, W)"
    return None


def to_direct_convs(gm: fx.GraphModule) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Replace ``gm``'s plain ``nn.Conv2d`` modules by :class:`DirectConv2d`, in place.

    ``gm`` must carry shapes (:func:`fxcomp.tracing.shapes.propagate`). Returns the converted
    convolutions (``node``, ``form``) and those left as they are (``node``, ``reason``).
    """
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.find_nodes(op="call_module"):
        calls.setdefault(str(node.target), []).append(node)
    converted: list[dict[str, str]] = []
    kept: list[dict[str, str]] = []
    for path, nodes in calls.items():
        conv = gm.get_submodule(path)
        if not isinstance(conv, nn.Conv2d):
            continue
        if parametrize.is_parametrized(conv):
            reasons = ["its weight is parametrized (a mask or quantization), which a direct convolution would drop"]
        elif type(conv) is not nn.Conv2d:
            reasons = [f"{type(conv).__name__} is a subclass of Conv2d, whose forward may differ"]
        else:
            reasons = [reason for node in nodes if (reason := _why_not(node, conv, calls)) is not None]
        if reasons:
            kept.append({"node": qualname(nodes[0]), "reason": reasons[0]})
            continue
        direct = DirectConv2d(conv)
        owner, _, name = path.rpartition(".")
        setattr(gm.get_submodule(owner), name, direct)
        converted.extend({"node": qualname(node), "form": direct.form} for node in nodes)
    return converted, kept
