"""JSON encoding of the values a graph's arguments and a module's attributes hold.

JSON's own scalars stand for themselves; everything else is a one-key object
naming its kind: ``{"tuple": [...]}``, ``{"node": "conv1"}``, ``{"dtype": "float32"}``.
Decoding knows only these kinds, so a file cannot make it build anything else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from fxcomp.errors import LoadError, SaveError

_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in vars(torch).values() if isinstance(dtype, torch.dtype)}
_MEMORY_FORMATS = {
    str(fmt).removeprefix("torch."): fmt
    for fmt in (torch.contiguous_format, torch.channels_last, torch.channels_last_3d, torch.preserve_format)
}
_LAYOUTS = {str(layout).removeprefix("torch."): layout for layout in (torch.strided, torch.sparse_coo)}


def encode(value: Any, where: str) -> Any:
    """Encode ``value`` as JSON; ``where`` names its place for the error when it cannot be saved."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, tuple):
        return {"tuple": [encode(v, where) for v in value]}
    if isinstance(value, list):
        return {"list": [encode(v, where) for v in value]}
    if isinstance(value, (set, frozenset)) and all(isinstance(v, str) for v in value):
        return {"set": sorted(value)}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode(v, where) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [encode(v, where) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    raise SaveError(
        f"{where} holds a {type(value).__name__} ({_preview(value)}), which fxcomp's file format cannot store; "
        "keep such values out of the graph (e.g. trace the module that makes them as a leaf)"
    )


def _preview(value: Any) -> str:
    """The start of ``value``'s repr, on one line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _lookup(table: dict[str, Any], name: Any, kind: str) -> Any:
    if not isinstance(name, str) or name not in table:
        raise LoadError(f"the file names an unknown {kind} {name!r:.40}; it was not written by fxcomp.save")
    return table[name]


def decode(data: Any, node: Callable[[str], fx.Node] | None = None) -> Any:
    """Decode what :func:`encode` wrote; ``node`` resolves node references (None where none may appear)."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        raise LoadError("the file holds a bare JSON list; it was not written by fxcomp.save")
    if not isinstance(data, dict) or len(data) != 1:
        raise LoadError(f"the file holds a malformed value {data!r:.80}; it was not written by fxcomp.save")
    (kind, payload), = data.items()
    if kind == "node":
        if node is None:
            raise LoadError("the file refers to a graph node where none may appear")
        return node(payload)
    if kind in ("tuple", "list", "slice", "set"):
        if not isinstance(payload, list):
            raise LoadError(f"the file holds a malformed {kind}; it was not written by fxcomp.save")
        items = [decode(item, node) for item in payload]
        if kind == "slice":
            if len(items) != 3:
                raise LoadError("the file holds a malformed slice; it was not written by fxcomp.save")
            return slice(*items)
        return {"tuple": tuple, "list": list, "set": set}[kind](items)
    if kind == "dict":
        if not isinstance(payload, dict):
            raise LoadError("the file holds a malformed dict; it was not written by fxcomp.save")
        return {key: decode(value, node) for key, value in payload.items()}
    if kind == "float":
        return float(_lookup({"inf": "inf", "-inf": "-inf", "nan": "nan"}, payload, "float"))
    if kind == "ellipsis":
        return Ellipsis
    if kind == "dtype":
        return _lookup(_DTYPES, payload, "dtype")
    if kind == "device":
        try:
            return torch.device(payload)
        except (TypeError, RuntimeError) as error:
            raise LoadError(f"the file holds a malformed device {payload!r:.40}; it was not written by fxcomp.save") from error
    if kind == "memory_format":
        return _lookup(_MEMORY_FORMATS, payload, "memory format")
    if kind == "layout":
        return _lookup(_LAYOUTS, payload, "layout")
    raise LoadError(f"the file holds a value of unknown kind {kind!r}; it was not written by fxcomp.save")
