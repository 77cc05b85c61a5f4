"""Stage 1 of the flow: trace a model into an fx graph annotated with shapes, names and costs."""

from fxcomp.tracing.names import modules_by_path, qualname
from fxcomp.tracing.shapes import (
    NodeInfo,
    TensorSpec,
    eval_mode,
    in_mode,
    kept_modes,
    node_info,
    propagate,
    require_graph,
)
from fxcomp.tracing.tracer import as_input_tuple, trace

__all__ = [
    "NodeInfo",
    "TensorSpec",
    "as_input_tuple",
    "eval_mode",
    "in_mode",
    "kept_modes",
    "modules_by_path",
    "node_info",
    "propagate",
    "qualname",
    "require_graph",
    "trace",
]
