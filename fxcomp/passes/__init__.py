"""Stages plan → rewrite → verify.

This package's namespace is the pass-author API: the :class:`Pass` contract and
the option checks (and :func:`is_whole`, their test for a Python or NumPy whole
number); :class:`Mask` / :func:`add_mask`, which hold pruned weights at zero, and :func:`parameter_values`, which reads weights as the model
computes them (:mod:`fxcomp.passes.masks`); :func:`calibration_batches` /
:func:`calibration_outputs`, which feed ``calib_data`` to data-driven passes (:mod:`fxcomp.passes.calibration`); and :func:`replace_with_chain` /
:func:`cost_change`, which swap one layer for several and weigh the swap
(:mod:`fxcomp.passes.rewrite`). The recipe loader
(:mod:`fxcomp.passes.recipe`), the checks run after each pass
(:mod:`fxcomp.passes.verify`) and ``compress`` (:mod:`fxcomp.passes.pipeline`)
build on it and on the plugins.
"""

from fxcomp.arguments import is_whole
from fxcomp.passes.base import (
    CheckContext,
    Pass,
    PassContext,
    PassResult,
    matches,
    selected_modules,
    weight_skip_reason,
)
from fxcomp.passes.calibration import Batch, calibration_batches, calibration_outputs
from fxcomp.passes.masks import Mask, add_mask, class_before_parametrizations, has_parametrization, parameter_values
from fxcomp.passes.quantization import (
    OBSERVERS,
    ActivationQuant,
    IntegerWeight,
    PackedWeight,
    QDQActivation,
    QDQLayer,
    WeightQuant,
    convert,
    fake_quantize,
    integer_forward,
    integer_weight,
    pack_int4,
    qdq_model,
    quantize_parameter,
    quantize_weight,
    unpack_int4,
)
from fxcomp.passes.sharing import SharedWeights, share_weights
from fxcomp.passes.rewrite import (
    calls_per_module,
    chain_costs,
    cost_change,
    no_gain_reason,
    parameter_holders,
    read_directly,
    replace_with_chain,
    why_not_replaceable,
)
from fxcomp.passes.options import (
    REQUIRED,
    Option,
    boolean,
    choice,
    choices,
    globs,
    integer,
    number,
    optional,
    string,
    validate_options,
)
from fxcomp.passes.verify import relative_error

__all__ = [
    "OBSERVERS",
    "ActivationQuant",
    "IntegerWeight",
    "REQUIRED",
    "SharedWeights",
    "WeightQuant",
    "Batch",
    "CheckContext",
    "Mask",
    "Option",
    "PackedWeight",
    "QDQActivation",
    "QDQLayer",
    "Pass",
    "PassContext",
    "PassResult",
    "add_mask",
    "boolean",
    "calibration_batches",
    "calibration_outputs",
    "calls_per_module",
    "chain_costs",
    "choice",
    "class_before_parametrizations",
    "choices",
    "convert",
    "cost_change",
    "fake_quantize",
    "globs",
    "has_parametrization",
    "integer",
    "integer_forward",
    "integer_weight",
    "is_whole",
    "matches",
    "no_gain_reason",
    "parameter_holders",
    "number",
    "optional",
    "pack_int4",
    "parameter_values",
    "qdq_model",
    "quantize_parameter",
    "quantize_weight",
    "read_directly",
    "relative_error",
    "replace_with_chain",
    "selected_modules",
    "share_weights",
    "string",
    "unpack_int4",
    "validate_options",
    "weight_skip_reason",
    "why_not_replaceable",
]
