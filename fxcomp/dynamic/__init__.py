"""Dynamic computation: early exits that let easy inputs skip the rest of the network.

* :func:`cut_problems` / :func:`find_node` say where a graph can be cut into stages;
* :func:`add_exits` attaches exit heads to a traced classifier (the ``early_exit`` pass uses it);
* :class:`EarlyExitModel` runs such a graph stage by stage, letting confident samples leave;
* :func:`calibrate_exits` picks thresholds on validation data; :func:`exit_statistics`
  measures accuracy, exit shares and MACs of the thresholds set.
"""

from fxcomp.dynamic.calibrate import (
    ExitCalibration,
    ExitStatistics,
    calibrate_exits,
    exit_statistics,
)
from fxcomp.dynamic.cuts import cut_problems, find_node, resolve_cuts
from fxcomp.dynamic.model import (
    CRITERIA,
    EXITS,
    HEADS,
    EarlyExitModel,
    add_exits,
    has_exits,
)

__all__ = [
    "CRITERIA",
    "EXITS",
    "HEADS",
    "EarlyExitModel",
    "ExitCalibration",
    "ExitStatistics",
    "add_exits",
    "calibrate_exits",
    "cut_problems",
    "exit_statistics",
    "find_node",
    "has_exits",
    "resolve_cuts",
]
