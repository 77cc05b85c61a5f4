"""Tests of argument values and their descriptions in messages, shared by the public API."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch


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
