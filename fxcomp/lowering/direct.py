"""Direct convolutions: 2-D convolutions written as slices and matrix products of NHWC values.

A small convolution costs the CPU library (oneDNN) more in dispatch and layout
conversion than in arithmetic; written out as plain tensor operations it lets inductor
fuse the slicing, padding, depthwise multiply-adds, bias and the elementwise neighbours
into generated loops (the matrix products still call a GEMM library):

* ``depthwise`` (``groups == in_channels``, ``out_channels`` a multiple of it): one
  multiply-add per kernel tap over shifted slices of the padded input;
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
    """The direct form ``conv`` would be written in: ``depthwise``, ``pointwise`` or ``dense``."""
    if conv.groups == conv.in_channels > 1:  # out_channels is a multiple of groups
        return "depthwise"
    if conv.kernel_size == (1, 1) and _padding(conv) == (0, 0, 0, 0):
        return "pointwise"
    return "dense"


class DirectConv2d(nn.Module):
    """An ``nn.Conv2d`` (zero padding, ``groups`` 1 or depthwise) computed on NHWC slices.

    The weight is stored for its form: ``depthwise`` (kh, kw, C·m) for a depth multiplier
    m (each input channel repeated m times), ``pointwise`` (O, C), ``dense`` (O, kh·kw·C)
    with the taps in row-major order.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.form = form_of(conv)
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = _padding(conv)
        weight = conv.weight.detach()
        self.multiplier = weight.shape[0] // conv.in_channels if self.form == "depthwise" else 1
        if self.form == "depthwise":
            stored = weight[:, 0].permute(1, 2, 0)
        elif self.form == "pointwise":
            stored = weight[:, :, 0, 0]
        else:
            stored = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
        self.weight = nn.Parameter(stored.contiguous().clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.train(conv.training)

    def extra_repr(self) -> str:
        multiplier = f", multiplier={self.multiplier}" if self.multiplier > 1 else ""
        return (f"form={self.form}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}{multiplier}")

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input slices each kernel tap multiplies, NHWC, in row-major tap order."""
        top, bottom, left, right = self.padding
        padded = F.pad(x, (0, 0, left, right, top, bottom))
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        rows = (padded.shape[1] - dh * (kh - 1) - 1) // sh + 1
        cols = (padded.shape[2] - dw * (kw - 1) - 1) // sw + 1
        if rows < 1 or cols < 1:
            raise ValueError(
                f"an input of {x.shape[1]}×{x.shape[2]} (padded {padded.shape[1]}×{padded.shape[2]}) is smaller "
                f"than the dilated kernel {dh * (kh - 1) + 1}×{dw * (kw - 1) + 1}; give images at least that large"
            )
        return [
            padded[:, i * dh : i * dh + sh * (rows - 1) + 1 : sh, j * dw : j * dw + sw * (cols - 1) + 1 : sw, :]
            for i in range(kh)
            for j in range(kw)
        ]

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the name Conv2d.forward takes it by
        x = input.permute(0, 2, 3, 1)
        if self.form == "pointwise":
            sh, sw = self.stride
            out = F.linear(x[:, ::sh, ::sw, :], self.weight, self.bias)
        elif self.form == "dense":
            out = F.linear(torch.cat(self._taps(x), dim=-1), self.weight, self.bias)
        else:
            if self.multiplier > 1:  # output channel c·m + k reads input channel c
                x = x.unsqueeze(-1).expand(*x.shape, self.multiplier).flatten(-2)
            weights = self.weight.flatten(0, 1)
            taps = self._taps(x)
            out = taps[0] * weights[0]
            for tap, weight in zip(taps[1:], weights[1:]):
                out = out + tap * weight
            if self.bias is not None:
                out = out + self.bias
        return out.permute(0, 3, 1, 2)


def _why_not(path: str, conv: nn.Conv2d, called: Collection[str], read: Collection[str]) -> str | None:
    """Why the plain ``Conv2d`` at ``path`` stays a convolution whatever it is called on, if it does.

    ``called``: the module paths the graph calls; ``read``: the attribute paths it reads (``get_attr``).
    """
    if any(path.startswith(leaf + ".") for leaf in called):
        return "it is also called inside another module"
    if any(target == path or target.startswith(path + ".") for target in read):
        return "the graph also reads its weight or bias, which a direct convolution stores differently"
    if conv._forward_hooks or conv._forward_pre_hooks:
        return "it has forward hooks, which a direct convolution would drop"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} (only zero padding is written directly)"
    if conv.groups != 1 and form_of(conv) != "depthwise":
        return f"grouped convolution (groups={conv.groups}) that is not depthwise"
    if not conv.weight.dtype.is_floating_point:
        return f"weight dtype {conv.weight.dtype}"
    return None


def _takes_images(node: fx.Node) -> bool:
    """Whether the module call ``node`` passes it a 4-D tensor (a batch of images), positionally or as ``input=``."""
    value = node.args[0] if node.args else node.kwargs.get("input")
    spec = node_info(value).output if isinstance(value, fx.Node) and INFO in value.meta else None
    return isinstance(spec, TensorSpec) and len(spec.shape) == 4


def _convs(gm: fx.GraphModule) -> dict[str, tuple[nn.Conv2d, str | None, fx.Node]]:
    """Each ``Conv2d`` the graph calls, by path: the module, why it stays (``None``: it can be written directly), its first call."""
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.find_nodes(op="call_module"):
        calls.setdefault(str(node.target), []).append(node)
    read = {str(node.target) for node in gm.graph.find_nodes(op="get_attr")}
    convs = {}
    for path, nodes in calls.items():
        conv = gm.get_submodule(path)
        if not isinstance(conv, nn.Conv2d):
            continue
        if parametrize.is_parametrized(conv):
            reason = "its weight is parametrized (a mask or quantization), which a direct convolution would drop"
        elif type(conv) is not nn.Conv2d:
            reason = f"{type(conv).__name__} is a subclass of Conv2d, whose forward may differ"
        else:
            reason = _why_not(path, conv, calls, read)
            if reason is None and not all(map(_takes_images, nodes)):
                reason = "its input is not a batch of images (N, C, H, W)"
        convs[path] = (conv, reason, nodes[0])
    return convs


def can_write_directly(gm: fx.GraphModule) -> bool:
    """Whether :func:`to_direct_convs` would convert at least one convolution of ``gm`` (annotated with shapes)."""
    return any(reason is None for _, reason, _ in _convs(gm).values())


def to_direct_convs(gm: fx.GraphModule) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Replace ``gm``'s plain ``nn.Conv2d`` modules by :class:`DirectConv2d`, in place.

    ``gm`` must carry shapes (:func:`fxcomp.tracing.shapes.propagate`). Returns, one record
    per module (named by its first call), the converted convolutions (``node``, ``form``)
    and those left as they are (``node``, ``reason``).
    """
    converted: list[dict[str, str]] = []
    kept: list[dict[str, str]] = []
    for path, (conv, reason, first) in _convs(gm).items():
        if reason is not None:
            kept.append({"node": qualname(first), "reason": reason})
            continue
        direct = DirectConv2d(conv)
        owner, _, name = path.rpartition(".")
        setattr(gm.get_submodule(owner), name, direct)
        converted.append({"node": qualname(first), "form": direct.form})
    return converted, kept
