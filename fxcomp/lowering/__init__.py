"""Stage 6 of the flow: lower a rewritten graph to a backend (plain torch, inductor, or kernels).

:func:`lower` does it; plugins contribute kernels as :class:`Lowering` s through the
``fxcomp_register_lowerings`` hook.
"""

from fxcomp.lowering.base import Declined, Lowering, Matched, module_at, sole_user
from fxcomp.lowering.lower import LoweringResult, lower
from fxcomp.lowering.report import LoweringReport

__all__ = [
    "Declined",
    "Lowering",
    "LoweringReport",
    "LoweringResult",
    "Matched",
    "lower",
    "module_at",
    "sole_user",
]
