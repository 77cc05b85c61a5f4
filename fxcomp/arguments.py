"""Tests of argument values, their descriptions in messages and the copy of a model argument the API works on, shared by the public API."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.nn as nn

from fxcomp.errors import UsageError, first_line

M = TypeVar("M", bound=nn.Module)


def is_whole(value: Any) -> bool:
    """Whether ``value`` is a whole number (a Python or numpy integer, not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite real number (a Python or numpy number, not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def described(shape: Sequence[int], dtype: torch.dtype | None = None) -> str:
    """``2×3×8×8 float32``: a shape (and dtype) as messages show them."""
    text = "×".join(map(str, shape)) or "a scalar"
    return f"{text} {str(dtype).removeprefix('torch.')}" if dtype is not None else text


def working_copy(model: M) -> M:
    """A deep copy of the caller's ``model`` to work on, so it stays untouched.

    Raises :class:`UsageError` for a model ``copy.deepcopy`` refuses: old-style
    ``torch.nn.utils.weight_norm`` / ``spectral_norm`` hooks keep computed tensors.
    """
    try:
        return copy.deepcopy(model)
    except RuntimeError as error:
        raise UsageError(
            f"cannot copy the model to work on ({first_line(error)}); remove torch.nn.utils.weight_norm hooks "
            "(torch.nn.utils.remove_weight_norm) or use torch.nn.utils.parametrizations.weight_norm"
        ) from error
