"""A linear layer whose weight is stored in CSR form: only the nonzeros are read."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .runtime import as_bias, interpreting, tuned

# Fixed when this module is imported: Triton decides at decoration time whether to interpret.
INTERPRETED: bool = interpreting()


@triton.jit
def _csr_kernel(x_ptr, crow_ptr, col_ptr, value_ptr, bias_ptr, out_ptr, B, N, M,
                BLOCK_B: tl.constexpr, BLOCK_NZ: tl.constexpr):
    """``out[b, m] = Σ_j value[j]·x[b, col[j]] + bias[m]`` for one output row m and BLOCK_B batch rows.

    Contiguous: x float32 [B, N]; crow int32 [M + 1], row m's entries being j in
    [crow[m], crow[m + 1]); col int32 [nnz]; value float32 [nnz]; bias float32 [M] (or None);
    out float32 [B, M]. The row's nonzeros are consumed BLOCK_NZ at a time, gathering the
    matching columns of x; partial products stay in registers until the final row sum.
    """
    row = tl.program_id(0)
    batch = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    batch_ok = batch < B
    begin, end = tl.load(crow_ptr + row), tl.load(crow_ptr + row + 1)
    acc = tl.zeros((BLOCK_B, BLOCK_NZ), dtype=tl.float32)
    for start in range(begin, end, BLOCK_NZ):
        entries = start + tl.arange(0, BLOCK_NZ)
        entry_ok = entries < end
        cols = tl.load(col_ptr + entries, mask=entry_ok, other=0)
        values = tl.load(value_ptr + entries, mask=entry_ok, other=0.0)
        x = tl.load(x_ptr + batch[:, None] * N + cols[None, :], mask=batch_ok[:, None] & entry_ok[None, :], other=0.0)
        acc += x * values[None, :]
    out = tl.sum(acc, axis=1)
    if bias_ptr is not None:
        out += tl.load(bias_ptr + row)
    tl.store(out_ptr + batch * M + row, out, mask=batch_ok)


_launcher = tuned(
    _csr_kernel,
    configs=[
        triton.Config({"BLOCK_B": b, "BLOCK_NZ": nz}, num_warps=w)
        for b, nz, w in [(16, 64, 2), (32, 64, 4), (64, 32, 4), (64, 128, 8), (128, 32, 8), (8, 256, 4)]
    ],
    key=["B", "N", "M"],
    # One program per output row and 128 batch rows, 256 nonzeros per step.
    interpreter={"BLOCK_B": 128, "BLOCK_NZ": 256},
)


def csr_linear(x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x·Wᵀ + bias`` in float32 with W [M, N] in CSR form.

    x [B, N]; crow int32 [M + 1] (row m's entries are ``crow[m]:crow[m + 1]``, crow[0] = 0);
    col int32 [nnz], each in [0, N); values [nnz]; bias [M] or None. Returns float32 [B, M].
    """
    if x.dim() != 2 or crow.dim() != 1 or col.shape != values.shape or col.dim() != 1:
        raise ValueError(f"csr_linear: x {tuple(x.shape)}, crow {tuple(crow.shape)}, col {tuple(col.shape)}, "
                         f"values {tuple(values.shape)} do not fit x[B,N], crow[M+1], col[nnz], values[nnz]")
    if crow.dtype != torch.int32 or col.dtype != torch.int32:
        raise ValueError(f"csr_linear: crow and col must be int32, not {crow.dtype} and {col.dtype}")
    (batch, features), outputs = x.shape, crow.shape[0] - 1
    out = torch.empty(batch, outputs, device=x.device, dtype=torch.float32)
    _launcher[lambda meta: (outputs, triton.cdiv(batch, meta["BLOCK_B"]))](
        x.contiguous().float(), crow.contiguous(), col.contiguous(), values.contiguous().float(),
        as_bias(bias, outputs), out, batch, features, outputs)
    return out


def csr_linear_reference(x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """What :func:`csr_linear` computes, in plain torch (float32)."""
    # Entry j lies in row m when crow[m] <= j < crow[m + 1] (static shapes, so meta tensors work too).
    rows = torch.searchsorted(crow[1:], torch.arange(col.shape[0], device=crow.device, dtype=crow.dtype), right=True)
    weight = torch.zeros(crow.shape[0] - 1, x.shape[1], device=x.device, dtype=torch.float32)
    weight.index_put_((rows, col.long()), values.float(), accumulate=True)
    out = x.float() @ weight.T
    return out if bias is None else out + bias.float()


def to_csr(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(crow, col, values)`` of a 2-D ``weight`` [M, N]: exactly its nonzeros, row by row, int32 indices."""
    if weight.dim() != 2:
        raise ValueError(f"to_csr: weight must be 2-D, not {tuple(weight.shape)}")
    rows, col = weight.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=weight.shape[0])
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return crow.to(torch.int32), col.to(torch.int32), weight[rows, col]
