"""Errors a user can cause.

Every one of them is an :class:`FxcompError` whose one-line message says what
to change. The command line prints that line and exits with status 2.
"""

from __future__ import annotations


class FxcompError(Exception):
    """Base class of every error caused by the user's input."""


class TraceError(FxcompError):
    """The model cannot be traced into an fx graph, or its shapes cannot be propagated."""


class RecipeError(FxcompError, ValueError):
    """A recipe, a pass option or a distillation setting is invalid; the message names the bad field's path."""


class PassError(FxcompError):
    """A pass failed, or its result failed verification; the message names the pass and the node."""


class PluginError(FxcompError):
    """A plugin is broken or conflicts with another plugin."""


class SaveError(FxcompError):
    """A module cannot be saved in fxcomp's safe format, or an output file cannot be written where asked."""


class LoadError(FxcompError):
    """A file is not a valid fxcomp model file, or asks for something not on the allow-list."""


class CalibrationError(FxcompError):
    """A data-driven pass got no calibration data, or batches that do not fit the model."""


class UsageError(FxcompError):
    """A command-line argument, a model reference (``MODULE:CALLABLE``) or an argument of a Python call is invalid."""


class DataError(FxcompError):
    """A data set's files are missing or malformed, or it cannot be split as asked."""


class TrainingError(FxcompError):
    """Training diverged (its loss is no longer finite) or the model's outputs do not fit its labels."""


class ExitError(FxcompError):
    """An early exit cannot be placed where asked, or an early-exit model is used in a way it does not support."""


class LoweringError(FxcompError):
    """A model cannot be lowered to the requested backend, or a kernel disagrees with the graph it replaces."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type name when empty), to quote inside a one-line message."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
