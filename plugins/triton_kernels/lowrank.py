"""A low-rank linear layer ``x·vᵀ·uᵀ + b`` whose rank-K intermediate never leaves the chip."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

from .runtime import LINEAR_INTERPRETER, MAX_RANK, as_bias, dot_precision, interpreting, tuned

# Fixed when this module is imported: Triton decides at decoration time whether to interpret.
INTERPRETED: bool = interpreting()


@triton.jit
def _lowrank_kernel(x_ptr, v_ptr, u_ptr, bias_ptr, out_ptr, B, N, M, K,
                    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """BLOCK_B rows of ``out = x·vᵀ·uᵀ + bias``, for every ``num_programs(1)``-th BLOCK_M tile of outputs.

    Row-major contiguous float32: x [B, N], v [K, N], u [M, K], bias [M] (or None), out [B, M].
    BLOCK_K ≥ K covers the whole rank: the BLOCK_B × BLOCK_K intermediate ``x·vᵀ`` is
    accumulated in registers over N once per program, then multiplied by each of the
    program's u tiles without going to memory. Programs along axis 1 split the output
    tiles between them, each recomputing the intermediate (see :func:`_grid`).
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ranks = tl.arange(0, BLOCK_K)
    row_ok, rank_ok = rows < B, ranks < K
    inner = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        x = tl.load(x_ptr + rows[:, None] * N + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        v = tl.load(v_ptr + ranks[:, None] * N + cols[None, :], mask=rank_ok[:, None] & col_ok[None, :], other=0.0)
        inner = tl.dot(x, tl.trans(v), inner, input_precision=PRECISION)
    for tile in range(tl.program_id(1), tl.cdiv(M, BLOCK_M), tl.num_programs(1)):
        outs = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        out_ok = outs < M
        u = tl.load(u_ptr + outs[:, None] * K + ranks[None, :], mask=out_ok[:, None] & rank_ok[None, :], other=0.0)
        out = tl.dot(inner, tl.trans(u), input_precision=PRECISION)
        if bias_ptr is not None:
            out += tl.load(bias_ptr + outs, mask=out_ok, other=0.0)[None, :]
        tl.store(out_ptr + rows[:, None] * M + outs[None, :], out, mask=row_ok[:, None] & out_ok[None, :])


# Enough programs to fill a GPU (about one per streaming multiprocessor of a large one); in the
# interpreter every extra program only repeats work, so there it is one per row block.
_TARGET_PROGRAMS = 1 if INTERPRETED else 128


def _grid(batch: int, outputs: int) -> Callable[[dict[str, Any]], tuple[int, int]]:
    """Row blocks × output splits: as many splits as needed to reach ``_TARGET_PROGRAMS`` programs.

    Each split recomputes its row block's intermediate (2·BLOCK_B·N·K FLOPs, v re-read from
    cache), which only happens when there are too few row blocks to fill the device, i.e. when
    the layer is bound by memory rather than arithmetic. An empty batch launches no program.
    """
    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        row_blocks, out_tiles = triton.cdiv(batch, meta["BLOCK_B"]), triton.cdiv(outputs, meta["BLOCK_M"])
        return row_blocks, max(1, min(out_tiles, triton.cdiv(_TARGET_PROGRAMS, max(1, row_blocks))))

    return grid


_launcher = tuned(
    _lowrank_kernel,
    configs=[
        triton.Config({"BLOCK_B": b, "BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for b, m, n, w, s in [
            # small ranks
            (32, 64, 64, 4, 3), (64, 64, 32, 4, 3), (64, 128, 32, 8, 3), (128, 64, 32, 8, 3),
            # ranks up to 256: the v and u tiles are BLOCK_K wide, so these keep shared memory under 100 KB
            (32, 32, 16, 4, 2), (64, 32, 16, 4, 2), (32, 64, 16, 4, 2),
        ]
    ],
    key=["B", "N", "M", "K"],
    interpreter=LINEAR_INTERPRETER,
)


def lowrank_linear(x: torch.Tensor, v: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x·vᵀ·uᵀ + bias`` in float32 for x [B, N], v [K, N], u [M, K], bias [M] or None; returns [B, M].

    Inputs are made contiguous float32 (on x's device); K may be at most 256.
    """
    if not (x.dim() == v.dim() == u.dim() == 2 and v.shape[1] == x.shape[1] and u.shape[1] == v.shape[0]
            and 0 < v.shape[0] <= MAX_RANK):
        raise ValueError(f"lowrank_linear: x {tuple(x.shape)}, v {tuple(v.shape)}, u {tuple(u.shape)} "
                         f"do not fit x[B,N], v[K,N], u[M,K] with 0 < K <= {MAX_RANK}")
    (batch, features), (outputs, rank) = x.shape, u.shape
    x, v, u = (t.contiguous().float() for t in (x, v, u))
    out = torch.empty(batch, outputs, device=x.device, dtype=torch.float32)
    block_k = max(16, triton.next_power_of_2(rank))
    _launcher[_grid(batch, outputs)](x, v, u, as_bias(bias, outputs), out, batch, features, outputs, rank,
                                            BLOCK_K=block_k, PRECISION=dot_precision())
    return out


def lowrank_linear_reference(x: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                             bias: torch.Tensor | None = None) -> torch.Tensor:
    """What :func:`lowrank_linear` computes, in plain torch (float32)."""
    out = x.float() @ v.float().T @ u.float().T
    return out if bias is None else out + bias.float()
