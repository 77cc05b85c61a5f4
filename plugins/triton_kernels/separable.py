"""A depthwise-separable convolution (depthwise k×k, then pointwise 1×1) fused into one kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .runtime import as_bias, dot_precision, interpreting, tuned

# Fixed when this module is imported: Triton decides at decoration time whether to interpret.
INTERPRETED: bool = interpreting()


@triton.jit
def _separable_kernel(x_ptr, dw_ptr, dw_bias_ptr, pw_ptr, pw_bias_ptr, out_ptr,
                      B, C, H, W, D, O, HO, WO, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, MULTIPLIER,
                      KH: tl.constexpr, KW: tl.constexpr, MID_RELU: tl.constexpr, RELU: tl.constexpr,
                      BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_O: tl.constexpr,
                      PRECISION: tl.constexpr):
    """One BLOCK_P × BLOCK_O tile of the fused separable convolution's output.

    Contiguous float32: x [B, C, H, W]; dw [D, KH, KW] with D = C·MULTIPLIER, depthwise channel d
    reading input channel d // MULTIPLIER; dw_bias [D] (or None); pw [O, D]; pw_bias [O] (or
    None); out [B, O, HO, WO]. The BLOCK_P pixels are indices into the flattened (b, ho, wo).
    For each block of BLOCK_D depthwise channels the depthwise tile [BLOCK_P, BLOCK_D] (bias
    and MID_RELU applied) is built in registers from KH·KW masked loads (zero padding) and
    multiplied into the output tile by the pointwise weights: it never goes to memory.
    """
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    pixel_ok, out_ok = pixels < B * HO * WO, outs < O
    batch, ho, wo = pixels // (HO * WO), (pixels // WO) % HO, pixels % WO
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
    for start in range(0, D, BLOCK_D):
        channels = start + tl.arange(0, BLOCK_D)
        channel_ok = channels < D
        planes = (batch[:, None] * C + (channels // MULTIPLIER)[None, :]) * H
        depthwise = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
        for i in range(KH):
            hi = ho * STRIDE_H - PAD_H + i * DIL_H
            for j in range(KW):
                wi = wo * STRIDE_W - PAD_W + j * DIL_W
                inside = pixel_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
                x = tl.load(x_ptr + (planes + hi[:, None]) * W + wi[:, None],
                            mask=inside[:, None] & channel_ok[None, :], other=0.0)
                tap = tl.load(dw_ptr + channels * (KH * KW) + i * KW + j, mask=channel_ok, other=0.0)
                depthwise += x * tap[None, :]
        if dw_bias_ptr is not None:
            depthwise += tl.load(dw_bias_ptr + channels, mask=channel_ok, other=0.0)[None, :]
        if MID_RELU:
            depthwise = tl.maximum(depthwise, 0.0)
        pw = tl.load(pw_ptr + outs[:, None] * D + channels[None, :], mask=out_ok[:, None] & channel_ok[None, :],
                     other=0.0)
        acc = tl.dot(depthwise, tl.trans(pw), acc, input_precision=PRECISION)
    if pw_bias_ptr is not None:
        acc += tl.load(pw_bias_ptr + outs, mask=out_ok, other=0.0)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    offsets = ((batch * O)[:, None] + outs[None, :]) * (HO * WO) + (ho * WO + wo)[:, None]
    tl.store(out_ptr + offsets, acc, mask=pixel_ok[:, None] & out_ok[None, :])


_launcher = tuned(
    _separable_kernel,
    configs=[
        triton.Config({"BLOCK_P": p, "BLOCK_D": d, "BLOCK_O": o}, num_warps=w, num_stages=s)
        for p, d, o, w, s in [
            (64, 16, 64, 4, 2), (64, 32, 64, 4, 2), (128, 32, 64, 4, 2),
            (128, 32, 128, 8, 2), (256, 16, 64, 8, 2), (32, 32, 128, 4, 2),
        ]
    ],
    key=["B", "C", "H", "W", "D", "O", "HO", "WO"],
    # The kh·kw gathers dominate in the interpreter: one program per 256 pixels, 64 output channels.
    interpreter={"BLOCK_P": 256, "BLOCK_D": 32, "BLOCK_O": 64},
)


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """A convolution's output length along one spatial dimension."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def separable_conv2d(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor | None,
                     pw_weight: torch.Tensor, pw_bias: torch.Tensor | None, *, stride: tuple[int, int],
                     padding: tuple[int, int], dilation: tuple[int, int], multiplier: int,
                     mid_relu: bool, relu: bool) -> torch.Tensor:
    """Depthwise conv (+ dw_bias, optional ReLU) then pointwise 1×1 conv (+ pw_bias, optional ReLU), fused.

    x [B, C, H, W]; dw_weight [C·multiplier, kh, kw] (a depthwise conv weight [D, 1, kh, kw]
    is accepted too), output channel d of the depthwise conv reading input channel
    d // multiplier with zero padding; dw_bias [C·multiplier] or None; pw_weight
    [O, C·multiplier] (or [O, D, 1, 1]); pw_bias [O] or None. Returns float32 [B, O, Ho, Wo].
    """
    if x.dim() != 4:
        raise ValueError(f"separable_conv2d: x must be [B, C, H, W], not {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    depth = channels * multiplier
    dw_weight = dw_weight.reshape(depth, *dw_weight.shape[-2:])
    pw_weight = pw_weight.reshape(pw_weight.shape[0], depth)
    (kh, kw), outputs = dw_weight.shape[1:], pw_weight.shape[0]
    out_h = _output_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = _output_size(width, kw, stride[1], padding[1], dilation[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"separable_conv2d: a {kh}×{kw} kernel leaves no output of a {height}×{width} input")
    out = torch.empty(batch, outputs, out_h, out_w, device=x.device, dtype=torch.float32)
    launch = _launcher[lambda meta: (triton.cdiv(batch * out_h * out_w, meta["BLOCK_P"]),
                                     triton.cdiv(outputs, meta["BLOCK_O"]))]
    launch(x.contiguous().float(), dw_weight.contiguous().float(), as_bias(dw_bias, depth),
           pw_weight.contiguous().float(), as_bias(pw_bias, outputs), out,
           batch, channels, height, width, depth, outputs, out_h, out_w, *stride, *padding, *dilation, multiplier,
           KH=kh, KW=kw, MID_RELU=mid_relu, RELU=relu, PRECISION=dot_precision())
    return out


def separable_conv2d_reference(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor | None,
                               pw_weight: torch.Tensor, pw_bias: torch.Tensor | None, *, stride: tuple[int, int],
                               padding: tuple[int, int], dilation: tuple[int, int], multiplier: int,
                               mid_relu: bool, relu: bool) -> torch.Tensor:
    """What :func:`separable_conv2d` computes, in plain torch (float32): two ``F.conv2d`` calls."""
    channels = x.shape[1]
    depth = channels * multiplier
    dw = dw_weight.float().reshape(depth, 1, *dw_weight.shape[-2:])
    mid = F.conv2d(x.float(), dw, None if dw_bias is None else dw_bias.float(), stride, padding, dilation, channels)
    if mid_relu:
        mid = torch.relu(mid)
    out = F.conv2d(mid, pw_weight.float().reshape(-1, depth, 1, 1), None if pw_bias is None else pw_bias.float())
    return torch.relu(out) if relu else out
