"""Calibration data for data-driven passes: batches of model inputs, optionally with targets.

``calib_data`` given to :func:`fxcomp.compress` is any iterable (a list, a
``DataLoader``) of batches. A batch is the model's inputs (a tensor, or a tuple
with one tensor per model input) or the inputs followed by one target tensor:
for a one-input model ``x`` and ``(x,)`` are inputs, ``(x, y)`` is a labelled
batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from fxcomp.arguments import described
from fxcomp.errors import CalibrationError, FxcompError, first_line
from fxcomp.tracing import node_info


@dataclass(frozen=True)
class Batch:
    """One calibration batch: the model inputs and, when given, the target."""

    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor | None


def _required_inputs(gm: fx.GraphModule) -> list[fx.Node]:
    """The placeholders a batch must fill (those without a default)."""
    return [node for node in gm.graph.nodes if node.op == "placeholder" and not node.args]


def calibration_batches(gm: fx.GraphModule, calib_data: Any, needed_by: str) -> Iterator[Batch]:
    """Iterate ``calib_data`` as :class:`Batch` es for ``gm``.

    ``needed_by`` names the option that needs the data (``"prune.importance: taylor"``);
    it starts the message of the :class:`fxcomp.CalibrationError` raised when there is
    no data or a batch does not fit the model's inputs.
    """
    if calib_data is None:
        raise CalibrationError(
            f"{needed_by} needs calibration data; pass calib_data=[batch, ...] to fxcomp.compress "
            "(a batch is the model's inputs, or the inputs and a target)"
        )
    if not isinstance(calib_data, Iterable) or isinstance(calib_data, torch.Tensor):
        raise CalibrationError(
            f"{needed_by}: calib_data must be an iterable of batches (a list or a DataLoader), "
            f"got {type(calib_data).__name__}; wrap a single batch in a list"
        )
    count = len(_required_inputs(gm))
    seen = 0
    for batch in calib_data:
        parts = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch) if isinstance(batch, (tuple, list)) else ()
        if not parts or not all(isinstance(p, torch.Tensor) for p in parts) or len(parts) not in (count, count + 1):
            raise CalibrationError(
                f"{needed_by}: a calibration batch must hold the model's {count} input tensor(s), optionally "
                f"followed by a target; got {_describe(batch)}"
            )
        seen += 1
        yield Batch(parts[:count], parts[count] if len(parts) > count else None)
    if not seen:
        raise CalibrationError(f"{needed_by}: calib_data is empty; give at least one batch")


def calibration_outputs(
    gm: fx.GraphModule, calib_data: Any, needed_by: str, *, run: Callable[..., Any] | None = None
) -> Iterator[tuple[Batch, Any]]:
    """Run ``gm`` on each batch of ``calib_data``; yield the batch and the model's output.

    ``run`` replaces ``gm`` as what is called with each batch's inputs (e.g. an
    ``fx.Interpreter`` that records values inside the graph).

    The forward runs when the caller asks for the next pair, so it sees the caller's grad
    mode and hooks. A batch whose inputs differ from the traced example inputs in rank,
    dtype or a non-batch size and that makes the model fail raises
    :class:`fxcomp.CalibrationError` naming both shapes; other failures propagate.
    """
    traced = [node_info(node).output for node in _required_inputs(gm)]
    for batch in calibration_batches(gm, calib_data, needed_by):
        try:
            output = (run or gm)(*batch.inputs)
        except FxcompError:
            raise
        except Exception as error:  # noqa: BLE001 - re-raised unless the batch is the likely cause
            mismatch = next(
                (
                    (given, expected)
                    for given, expected in zip(batch.inputs, traced)
                    if given.dtype != expected.dtype or given.dim() != len(expected.shape) or given.shape[1:] != expected.shape[1:]
                ),
                None,
            )
            if mismatch is None:
                raise
            given, expected = mismatch
            raise CalibrationError(
                f"{needed_by}: the model fails on a calibration batch of {described(given.shape, given.dtype)} "
                f"({type(error).__name__}: {first_line(error)}); give batches shaped like the example inputs "
                f"({described(expected.shape, expected.dtype)}, any batch size)"
            ) from error
        yield batch, output


def _describe(batch: Any) -> str:
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of " + ", ".join(type(p).__name__ for p in batch)
    return type(batch).__name__
