"""Built-in plugin ``triton_kernels``: Triton kernels for the patterns fxcomp's rewrites produce.

Registers, for the ``triton`` backend of :func:`fxcomp.lower`, the lowerings of
:mod:`fxcomp_plugins.triton_kernels.lowerings` (low-rank linear pairs, int8/int4
weight-only linears, codebook linears, sparse CSR linears, fused depthwise +
pointwise convolutions), and allow-lists their kernel modules for ``fxcomp.save``.
Each kernel has a pure-torch reference beside it and CUDA autotune configurations.

Triton is an optional extra (``pip install 'fxcomp[triton]'``) and is imported only
when a kernel runs. Without a CUDA device the kernels run in Triton's interpreter,
which needs ``TRITON_INTERPRET=1`` in the environment before the kernels are
first imported (it is slow: for checking, not for speed).
"""

from __future__ import annotations

from typing import Any

from fxcomp import hookimpl

from fxcomp_plugins.triton_kernels.lowerings import LOWERINGS
from fxcomp_plugins.triton_kernels.modules import KERNEL_MODULES

BACKEND = "triton"


@hookimpl
def fxcomp_register_lowerings(register: Any) -> None:
    """Every kernel pattern as a lowering of the ``triton`` backend."""
    for name, lowering in LOWERINGS.items():
        register(BACKEND, name, lowering)


@hookimpl
def fxcomp_register_serializables(register: Any) -> None:
    """The kernel modules, so lowered graphs save and load with ``fxcomp.save``."""
    for module_class in KERNEL_MODULES:
        register(module_class)
