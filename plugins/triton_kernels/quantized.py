"""Linear layers whose weights stay int8 or packed int4 in memory and are dequantized tile by tile in-kernel."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .runtime import LINEAR_INTERPRETER, as_bias, dot_precision, interpreting, linear_configs, output_tiles, tuned

# Fixed when this module is imported: Triton decides at decoration time whether to interpret.
INTERPRETED: bool = interpreting()


@triton.jit
def _int8_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, B, N, M,
                 BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One BLOCK_B × BLOCK_M tile of ``out = x·(w·scale)ᵀ + bias``.

    Row-major contiguous: x float32 [B, N], w int8 [M, N], scale float32 [M] (one per output row),
    bias float32 [M] (or None), out float32 [B, M]. Each int8 weight tile is converted to float32
    on-chip; since the scale is constant along a row it multiplies the accumulated tile once.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    outs = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok, out_ok = rows < B, outs < M
    acc = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        x = tl.load(x_ptr + rows[:, None] * N + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        w = tl.load(w_ptr + outs[:, None] * N + cols[None, :], mask=out_ok[:, None] & col_ok[None, :], other=0)
        acc = tl.dot(x, tl.trans(w.to(tl.float32)), acc, input_precision=PRECISION)
    out = acc * tl.load(scale_ptr + outs, mask=out_ok, other=0.0)[None, :]
    if bias_ptr is not None:
        out += tl.load(bias_ptr + outs, mask=out_ok, other=0.0)[None, :]
    tl.store(out_ptr + rows[:, None] * M + outs[None, :], out, mask=row_ok[:, None] & out_ok[None, :])


@triton.jit
def _int4_kernel(x_ptr, packed_ptr, scale_ptr, bias_ptr, out_ptr, B, N, M, GROUP_SIZE,
                 BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One BLOCK_B × BLOCK_M tile of ``out = x·Wᵀ + bias`` with W stored as grouped int4.

    Row-major contiguous: x float32 [B, N]; packed uint8 [M, ceil(N/2)], byte j of row m holding
    element 2j in its low nibble and 2j+1 in its high nibble, each ``value + 8``; scale float32
    [M, ceil(N/GROUP_SIZE)], element n of row m scaled by ``scale[m, n // GROUP_SIZE]``; bias
    float32 [M] (or None); out float32 [B, M]. Each weight tile is unpacked and scaled on-chip.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    outs = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok, out_ok = rows < B, outs < M
    packed_row, groups = (N + 1) // 2, tl.cdiv(N, GROUP_SIZE)
    acc = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        w_ok = out_ok[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] * N + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        byte = tl.load(packed_ptr + outs[:, None] * packed_row + (cols // 2)[None, :], mask=w_ok, other=0)
        nibble = (byte.to(tl.int32) >> ((cols % 2) * 4)[None, :]) & 15
        scale = tl.load(scale_ptr + outs[:, None] * groups + (cols // GROUP_SIZE)[None, :], mask=w_ok, other=0.0)
        w = (nibble - 8).to(tl.float32) * scale
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + outs, mask=out_ok, other=0.0)[None, :]
    tl.store(out_ptr + rows[:, None] * M + outs[None, :], acc, mask=row_ok[:, None] & out_ok[None, :])


_int8_launcher = tuned(_int8_kernel, configs=linear_configs(), key=["B", "N", "M"], interpreter=LINEAR_INTERPRETER)
_int4_launcher = tuned(_int4_kernel, configs=linear_configs(), key=["B", "N", "M"], interpreter=LINEAR_INTERPRETER)


def _check_x(name: str, x: torch.Tensor, weight: torch.Tensor, columns: int) -> None:
    """Raise unless x is [B, N] and weight is a 2-D [M, columns] matrix."""
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[1] != columns:
        raise ValueError(f"{name}: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not fit x[B,N], "
                         f"weight[M,{columns}] for N = {x.shape[-1]}")


def int8_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x·(weight·scales)ᵀ + bias`` in float32: x [B, N], weight int8 [M, N], scales [M] (any shape of
    M entries, one per output row), bias [M] or None; returns float32 [B, M]."""
    _check_x("int8_linear", x, weight, x.shape[-1])
    if weight.dtype != torch.int8:
        raise ValueError(f"int8_linear: weight must be int8, not {weight.dtype}")
    (batch, features), outputs = x.shape, weight.shape[0]
    out = torch.empty(batch, outputs, device=x.device, dtype=torch.float32)
    _int8_launcher[output_tiles(batch, outputs)](
        x.contiguous().float(), weight.contiguous(), scales.reshape(outputs).contiguous().float(),
        as_bias(bias, outputs), out, batch, features, outputs, PRECISION=dot_precision())
    return out


def int8_linear_reference(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """What :func:`int8_linear` computes, in plain torch (float32)."""
    out = x.float() @ (weight.float() * scales.reshape(-1, 1).float()).T
    return out if bias is None else out + bias.float()


def pack_int4_rows(integers: torch.Tensor) -> torch.Tensor:
    """Whole numbers in [−8, 7], int [M, N], packed row by row: uint8 [M, ceil(N/2)], byte j of a row
    holding element 2j + 8 in its low nibble and element 2j+1 + 8 in its high nibble (a zero nibble
    past the end of an odd row)."""
    if integers.numel() and not -8 <= int(integers.min()) <= int(integers.max()) <= 7:
        raise ValueError("pack_int4_rows: values must lie in [-8, 7]")
    nibbles = (integers.to(torch.int16) + 8).to(torch.uint8)
    if nibbles.shape[1] % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(nibbles.shape[0], 1)], dim=1)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def unpack_int4_rows(packed: torch.Tensor, columns: int) -> torch.Tensor:
    """The int8 [M, columns] matrix :func:`pack_int4_rows` packed into ``packed``."""
    nibbles = torch.stack([packed & 15, packed >> 4], dim=2).reshape(packed.shape[0], -1)[:, :columns]
    return nibbles.to(torch.int8) - 8


def int4_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x·Wᵀ + bias`` in float32 with W [M, N] stored as int4 groups of ``group_size`` along a row.

    x [B, N]; packed uint8 [M, ceil(N/2)] (layout of :func:`pack_int4_rows`); scales
    [M, ceil(N/group_size)], W[m, n] = ``(nibble − 8) · scales[m, n // group_size]``; bias [M]
    or None. ``group_size`` need not divide N. Returns float32 [B, M].
    """
    features = x.shape[-1]
    _check_x("int4_linear", x, packed, (features + 1) // 2)
    if group_size < 1:
        raise ValueError(f"int4_linear: group_size must be positive, not {group_size}")
    outputs, groups = packed.shape[0], -(-features // group_size)
    if packed.dtype != torch.uint8 or scales.shape != (outputs, groups):
        raise ValueError(f"int4_linear: packed must be uint8 (is {packed.dtype}) and scales "
                         f"[{outputs}, {groups}] (is {list(scales.shape)})")
    batch = x.shape[0]
    out = torch.empty(batch, outputs, device=x.device, dtype=torch.float32)
    _int4_launcher[output_tiles(batch, outputs)](
        x.contiguous().float(), packed.contiguous(), scales.contiguous().float(), as_bias(bias, outputs), out,
        batch, features, outputs, group_size, PRECISION=dot_precision())
    return out


def int4_linear_reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """What :func:`int4_linear` computes, in plain torch (float32)."""
    features = x.shape[-1]
    scale = scales.float().repeat_interleave(group_size, dim=1)[:, :features]
    out = x.float() @ (unpack_int4_rows(packed, features).float() * scale).T
    return out if bias is None else out + bias.float()
