"""fxcomp: plugin-based graph rewrites on torch.fx that compress neural networks.

The data flows one way: trace → analyze → plan → rewrite → verify → lower → export.

* :func:`trace` turns a model into a ``GraphModule`` annotated with shapes, MACs and names;
* :func:`analyze` partitions its prunable channels into coupled groups;
* :func:`compress` runs a recipe of passes (from plugins) on a copy and verifies each;
* :class:`EarlyExitModel` runs a classifier with early exits (the ``early_exit`` pass adds them)
  and :func:`calibrate_exits` picks its thresholds (:mod:`fxcomp.dynamic`);
* :func:`recover` fine-tunes or distills a compressed model back to accuracy (:mod:`fxcomp.recovery`,
  data sets in :mod:`fxcomp.data`);
* :func:`sparsity` reads how many weights are zero; :func:`strip_masks` bakes pruning masks in;
* :func:`lower` runs a rewritten graph on a backend: as it is, compiled by inductor, or with
  kernels plugins register as :class:`Lowering` s (the built-in ones are Triton kernels);
* :func:`save` / :func:`load` store a rewritten graph in a format that never runs code on load;
* :func:`layer_table` and :func:`to_dot` show a graph, :func:`group_table` its channel groups;
* :func:`interleaved_latency` times models against each other on a noisy machine, and
  :func:`torch_threads` fixes the thread count for a block (:mod:`fxcomp.timing`).
"""

from fxcomp.analysis import ChannelGroup, Member, analyze
from fxcomp.dynamic import EarlyExitModel, ExitCalibration, ExitStatistics, calibrate_exits, exit_statistics
from fxcomp.errors import (
    CalibrationError,
    DataError,
    ExitError,
    FxcompError,
    LoadError,
    LoweringError,
    PassError,
    PluginError,
    RecipeError,
    SaveError,
    TraceError,
    TrainingError,
    UsageError,
)
from fxcomp.export import load, save, to_dot
from fxcomp.lowering import Declined, Lowering, LoweringReport, LoweringResult, Matched, lower
from fxcomp.passes import CheckContext, Option, Pass, PassContext, PassResult
from fxcomp.passes.masks import Mask, sparsity, strip_masks
from fxcomp.passes.pipeline import CompressionResult, compress
from fxcomp.plugin import PluginInfo, Plugins, hookimpl, load_plugins
from fxcomp.recovery import RecoveryResult, recover
from fxcomp.report import CompressionReport, group_table, layer_table
from fxcomp.timing import interleaved_latency, torch_threads
from fxcomp.tracing import NodeInfo, TensorSpec, node_info, propagate, qualname, trace

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "ChannelGroup",
    "CheckContext",
    "CompressionReport",
    "CompressionResult",
    "DataError",
    "Declined",
    "EarlyExitModel",
    "ExitCalibration",
    "ExitError",
    "ExitStatistics",
    "FxcompError",
    "LoadError",
    "Lowering",
    "LoweringError",
    "LoweringReport",
    "LoweringResult",
    "Mask",
    "Matched",
    "Member",
    "NodeInfo",
    "Option",
    "Pass",
    "PassContext",
    "PassError",
    "PassResult",
    "PluginError",
    "PluginInfo",
    "Plugins",
    "RecipeError",
    "RecoveryResult",
    "SaveError",
    "TensorSpec",
    "TraceError",
    "TrainingError",
    "UsageError",
    "analyze",
    "calibrate_exits",
    "compress",
    "exit_statistics",
    "group_table",
    "hookimpl",
    "interleaved_latency",
    "layer_table",
    "load",
    "load_plugins",
    "lower",
    "node_info",
    "propagate",
    "qualname",
    "recover",
    "save",
    "sparsity",
    "strip_masks",
    "to_dot",
    "torch_threads",
    "trace",
]
