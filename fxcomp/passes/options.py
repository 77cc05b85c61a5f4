"""Declarative pass options, validated at construction with error messages that name the field.

A pass declares its options as a mapping from name to :class:`Option`; each
option has a check (a callable that validates and normalizes one value) and a
default. Errors read ``passes[1].ratio: expected a number in [0, 1), got 1.5``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fxcomp.arguments import is_real, is_whole
from fxcomp.errors import PluginError, RecipeError

Check = Callable[[Any, str], Any]
"""Validates ``value`` for the field at ``path`` and returns it normalized, or raises RecipeError."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default marking an option the user must give."""


@dataclass(frozen=True)
class Option:
    """One option of a pass: how to check it, its default and what it means."""

    check: Check
    default: Any = REQUIRED
    doc: str = ""

    def __post_init__(self) -> None:
        if self.check in _FACTORIES:
            raise PluginError(f"Option({self.check.__name__}) takes the check, not its factory: write {self.check.__name__}(...)")


def _fail(path: str, expected: str, value: Any) -> RecipeError:
    return RecipeError(f"{path}: expected {expected}, got {value!r}")


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Check:
    """A finite real number, optionally within bounds (closed unless ``*_open``)."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    span = f" in {left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    expected = "a number" + (span if low is not None or high is not None else "")

    def check(value: Any, path: str) -> float:
        if not is_real(value):
            raise _fail(path, expected, value)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise _fail(path, expected, value)
        return float(value)

    return check


def integer(low: int | None = None, high: int | None = None) -> Check:
    """A whole number (Python's or NumPy's), optionally within closed bounds, normalized to ``int``."""
    if low is not None and high is not None:
        expected = f"an integer in [{low}, {high}]"
    elif low is not None:
        expected = f"an integer >= {low}"
    else:
        expected = "an integer"

    def check(value: Any, path: str) -> int:
        if not is_whole(value):
            raise _fail(path, expected, value)
        if (low is not None and value < low) or (high is not None and value > high):
            raise _fail(path, expected, value)
        return int(value)

    return check


def choice(*values: str) -> Check:
    """One of a fixed set of strings."""
    expected = "one of " + ", ".join(repr(v) for v in values)

    def check(value: Any, path: str) -> str:
        if value not in values:
            raise _fail(path, expected, value)
        return value

    return check


def choices(*values: str) -> Check:
    """One or several of a fixed set of strings (a string or a list), normalized to a tuple without repeats."""
    expected = "one or a list of " + ", ".join(repr(v) for v in values)

    def check(value: Any, path: str) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) and v in values for v in items):
            raise _fail(path, expected, value)
        return tuple(dict.fromkeys(items))

    return check


def string() -> Check:
    """A non-empty string."""

    def check(value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise _fail(path, "a non-empty string", value)
        return value

    return check


def boolean() -> Check:
    """``true`` or ``false``."""

    def check(value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise _fail(path, "true or false", value)
        return value

    return check


def globs() -> Check:
    """A qualified-name glob or a list of them (``layer1.*``), normalized to a tuple."""

    def check(value: Any, path: str) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise _fail(path, "a glob string or a list of glob strings", value)
        return tuple(items)

    return check


def optional(inner: Check) -> Check:
    """``null``/``None`` or whatever ``inner`` accepts."""

    def check(value: Any, path: str) -> Any:
        return None if value is None else inner(value, path)

    return check


def validate_options(schema: Mapping[str, Option], given: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Check ``given`` against ``schema``; return every option with defaults filled in."""
    unknown = sorted(set(given) - set(schema))
    if unknown:
        known = ", ".join(sorted(schema)) or "none"
        raise RecipeError(f"{path}.{unknown[0]}: unknown option; this pass takes: {known}")
    options = {}
    for name, option in schema.items():
        field = f"{path}.{name}"
        if name in given:
            options[name] = option.check(given[name], field)
        elif option.default is REQUIRED:
            raise RecipeError(f"{field}: required option is missing")
        else:
            options[name] = option.default
    return options


_FACTORIES = (number, integer, choice, choices, globs, string, boolean, optional)
