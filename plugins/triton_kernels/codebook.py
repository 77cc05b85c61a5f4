"""A linear layer whose weights are indices into a small codebook (weight sharing), looked up in-kernel."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .runtime import LINEAR_INTERPRETER, as_bias, dot_precision, interpreting, linear_configs, output_tiles, tuned

# Fixed when this module is imported: Triton decides at decoration time whether to interpret.
INTERPRETED: bool = interpreting()

INDEX_DTYPES = (torch.uint8, torch.int16, torch.int32)


@triton.jit
def _codebook_kernel(x_ptr, index_ptr, codebook_ptr, bias_ptr, out_ptr, B, N, M,
                     BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One BLOCK_B × BLOCK_M tile of ``out = x·Wᵀ + bias`` with ``W[m, n] = codebook[index[m, n]]``.

    Row-major contiguous: x float32 [B, N], index uint8/int16/int32 [M, N], codebook float32 [C],
    bias float32 [M] (or None), out float32 [B, M]. Each weight tile is gathered from the
    codebook on-chip; only the indices are read from the weight matrix.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    outs = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok, out_ok = rows < B, outs < M
    acc = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        w_ok = out_ok[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] * N + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        index = tl.load(index_ptr + outs[:, None] * N + cols[None, :], mask=w_ok, other=0).to(tl.int32)
        w = tl.load(codebook_ptr + index, mask=w_ok, other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + outs, mask=out_ok, other=0.0)[None, :]
    tl.store(out_ptr + rows[:, None] * M + outs[None, :], acc, mask=row_ok[:, None] & out_ok[None, :])


_launcher = tuned(_codebook_kernel, configs=linear_configs(), key=["B", "N", "M"], interpreter=LINEAR_INTERPRETER)


def codebook_linear(x: torch.Tensor, indices: torch.Tensor, codebook: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x·Wᵀ + bias`` in float32 with ``W[m, n] = codebook[indices[m, n]]``.

    x [B, N]; indices uint8, int16 or int32 [M, N], each in [0, C); codebook [C]; bias [M] or
    None. Returns float32 [B, M].
    """
    if x.dim() != 2 or indices.dim() != 2 or indices.shape[1] != x.shape[1] or codebook.dim() != 1:
        raise ValueError(f"codebook_linear: x {tuple(x.shape)}, indices {tuple(indices.shape)}, codebook "
                         f"{tuple(codebook.shape)} do not fit x[B,N], indices[M,N], codebook[C]")
    if indices.dtype not in INDEX_DTYPES:
        raise ValueError(f"codebook_linear: indices must be one of {INDEX_DTYPES}, not {indices.dtype}")
    (batch, features), outputs = x.shape, indices.shape[0]
    out = torch.empty(batch, outputs, device=x.device, dtype=torch.float32)
    _launcher[output_tiles(batch, outputs)](x.contiguous().float(), indices.contiguous(), codebook.contiguous().float(),
                                            as_bias(bias, outputs), out, batch, features, outputs, PRECISION=dot_precision())
    return out


def codebook_linear_reference(x: torch.Tensor, indices: torch.Tensor, codebook: torch.Tensor,
                              bias: torch.Tensor | None = None) -> torch.Tensor:
    """What :func:`codebook_linear` computes, in plain torch (float32)."""
    out = x.float() @ codebook.float()[indices.long()].T
    return out if bias is None else out + bias.float()
