"""Where fxcomp's Triton kernels can run, and how they are launched.

The kernels run on a CUDA device, or anywhere in Triton's CPU interpreter (slowly) when
``TRITON_INTERPRET`` is set before they are first imported: Triton decides at decoration time
whether a ``@triton.jit`` function is compiled or interpreted. This module imports without
Triton so that callers can ask :func:`why_unavailable` first.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import triton

INTERPRET_ENV = "TRITON_INTERPRET"

MAX_RANK = 256
"""The largest rank the low-rank kernel keeps on-chip."""

# The values Triton itself reads as true for INTERPRET_ENV.
_TRUE = ("1", "true", "yes", "on", "y")

KERNEL_MODULES = tuple(
    f"{__package__}.{name}" for name in ("lowrank", "quantized", "codebook", "separable", "sparse")
)

_INTERPRET_ADVICE = (
    f"set {INTERPRET_ENV}=1 before fxcomp's Triton kernels are first imported "
    "(runs them in Triton's CPU interpreter, slowly)"
)


def interpreting() -> bool:
    """Whether kernels decorated now would run in Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get(INTERPRET_ENV, "").lower() in _TRUE


def _compiled_modules() -> list[str]:
    """The kernel modules already imported with compiled (GPU) kernels rather than interpreted ones."""
    return [name for name in KERNEL_MODULES if name in sys.modules and not sys.modules[name].INTERPRETED]


def why_unavailable() -> str | None:
    """None when fxcomp's Triton kernels can run here, else one line saying what to change."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed: pip install 'fxcomp[triton]'"
    if torch.cuda.is_available():
        return None
    if _compiled_modules():
        return ("no CUDA device, and fxcomp's Triton kernels were already imported for the GPU: "
                f"in a new process, {_INTERPRET_ADVICE}")
    if not interpreting() and any(name not in sys.modules for name in KERNEL_MODULES):
        return f"no CUDA device: {_INTERPRET_ADVICE}"
    return None


def dot_precision() -> str:
    """``tl.dot``'s ``input_precision`` for float32 operands: TF32 only where torch allows it for matmuls.

    Triton defaults to TF32 on GPUs; torch computes float32 matmuls in full precision unless
    ``torch.backends.cuda.matmul.allow_tf32`` is set, and the kernels should agree with torch.
    """
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def as_bias(bias: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """``bias`` as the contiguous float32 vector of ``size`` entries a kernel reads, or None."""
    return None if bias is None else bias.reshape(size).contiguous().float()


def _cdiv(size: int, block: int) -> int:
    """How many blocks of ``block`` cover ``size``."""
    return (size + block - 1) // block


def output_tiles(batch: int, outputs: int) -> Callable[[dict[str, Any]], tuple[int, int]]:
    """The launch grid of BLOCK_B × BLOCK_M tiles covering a [batch, outputs] result."""
    return lambda meta: (_cdiv(batch, meta["BLOCK_B"]), _cdiv(outputs, meta["BLOCK_M"]))


def linear_configs() -> list[triton.Config]:
    """CUDA autotune configs for the kernels computing ``x·Wᵀ`` with W decoded tile by tile in-kernel."""
    import triton

    return [
        triton.Config({"BLOCK_B": b, "BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for b, m, n, w, s in [
            (16, 64, 64, 4, 4), (32, 64, 64, 4, 4), (64, 64, 64, 4, 3),
            (64, 128, 32, 4, 4), (128, 64, 32, 4, 4), (128, 128, 32, 8, 3),
        ]
    ]


# One program instance per 64 × 128 output tile, N consumed 128 columns at a time.
LINEAR_INTERPRETER = {"BLOCK_B": 64, "BLOCK_M": 128, "BLOCK_N": 128}


class _FixedConfig:
    """A kernel launched with one fixed set of meta-parameters (``launcher[grid](*args)``)."""

    def __init__(self, kernel: Any, meta: dict[str, int]) -> None:
        self.kernel, self.meta = kernel, meta

    def __getitem__(self, grid: Callable[[dict[str, Any]], tuple[int, ...]]) -> Callable[..., Any]:
        def launch(*args: Any, **kwargs: Any) -> Any:
            return self.kernel[grid](*args, **kwargs, **self.meta)

        return launch


def tuned(kernel: Any, *, configs: Sequence[triton.Config], key: list[str], interpreter: dict[str, int]) -> Any:
    """``kernel`` ready to launch as ``launcher[grid](*args, **other_meta)`` with its tile sizes chosen.

    On a GPU the tile sizes are autotuned over ``configs`` (once per distinct value of the
    arguments named in ``key``). In Triton's interpreter autotuning would run every config,
    so ``interpreter`` (large tiles: the interpreter runs each program instance in numpy, so few,
    big programs are fast) is passed instead. ``grid`` is a callable of the meta-parameters.
    """
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction):
        return _FixedConfig(kernel, interpreter)
    import triton

    return triton.autotune(configs=list(configs), key=key)(kernel)
