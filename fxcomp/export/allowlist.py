"""What a saved graph may call: the allow-list :func:`fxcomp.load` checks every name against.

A file names module classes and functions by string; loading resolves those
strings only through these tables, never through ``importlib``. The tables
hold the ``torch.nn`` layer classes, fxcomp's own parametrization
(:class:`fxcomp.passes.Mask`, :class:`fxcomp.passes.SharedWeights`,
:class:`fxcomp.passes.WeightQuant`), the direct convolutions of
``lower(direct_convs=True)`` (:class:`fxcomp.lowering.direct.DirectConv2d`: plain
attributes and parameters), the tensor operators of ``torch``,
``torch.nn.functional``, ``torch.fft``, ``torch.linalg``, ``torch.special``,
``operator`` and ``math``, and whatever plugins register through the
``fxcomp_register_serializables`` hook. Anything that reads files or calls an
arbitrary callable (``torch.from_file``, ``operator.call``,
``operator.methodcaller``, ``torch.nn.functional.handle_torch_function`` …) is
left out, and so are the tensor methods that take a callable or leave torch
(``apply_``, ``map_``, ``numpy``, hooks, storages): a method ``getattr`` reads
can then never be called.
"""

from __future__ import annotations

import builtins
import math
import operator
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp.lowering.direct import DirectConv2d
from fxcomp.passes.masks import Mask
from fxcomp.passes.quantization import ActivationQuant, PackedWeight, WeightQuant
from fxcomp.passes.sharing import SharedWeights

_FUNCTION_TYPES = (types.FunctionType, types.BuiltinFunctionType, types.BuiltinMethodType)
_EXCLUDED = {
    "torch.from_file",
    "operator.attrgetter",
    "operator.call",
    "operator.itemgetter",
    "operator.methodcaller",
}
_CALLING = ("torch_function", "boolean_dispatch", "triplet_margin_with_distance_loss")
"""Parts of function names that call a callable they are given."""
_UNSAFE_METHODS = {
    "apply_", "map_", "map2_", "numpy", "register_hook", "register_post_accumulate_grad_hook", "storage",
    "untyped_storage", "share_memory_", "backward",
}  # fmt: skip
_BUILTINS = ("getattr", "len")


def qualified_name(obj: Any) -> str:
    """``module.qualname`` of a class or function, as it appears in saved files."""
    return f"{obj.__module__}.{obj.__qualname__}"


def _namespace_functions(prefix: str, namespace: Any, names: Iterable[str]) -> dict[str, Any]:
    table = {}
    for name in names:
        obj = getattr(namespace, name, None)
        calling = any(part in name for part in _CALLING)
        if isinstance(obj, _FUNCTION_TYPES) and f"{prefix}.{name}" not in _EXCLUDED and not calling:
            table[f"{prefix}.{name}"] = obj
    return table


def _public(namespace: Any) -> list[str]:
    return [name for name in dir(namespace) if not name.startswith("_")]


def _builtin_functions() -> dict[str, Any]:
    table: dict[str, Any] = {}
    table.update(_namespace_functions("operator", operator, _public(operator)))
    table.update(_namespace_functions("math", math, _public(math)))
    table.update(_namespace_functions("builtins", builtins, _BUILTINS))
    table.update(_namespace_functions("torch", torch, _public(torch._C._VariableFunctions)))
    table.update(_namespace_functions("torch", torch, [*torch.functional.__all__, "_assert"]))
    for prefix, namespace in (
        ("torch.nn.functional", torch.nn.functional),
        ("torch._C._nn", torch._C._nn),
        ("torch.fft", torch.fft),
        ("torch.linalg", torch.linalg),
        ("torch.special", torch.special),
    ):
        table.update(_namespace_functions(prefix, namespace, _public(namespace)))
    table["torch.fx._symbolic_trace._assert_is_none"] = fx._symbolic_trace._assert_is_none
    return table


def _torch_nn_classes() -> dict[str, type[nn.Module]]:
    found: dict[str, type[nn.Module]] = {}
    pending = [nn.Module]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("torch.nn.modules."):
            found[qualified_name(cls)] = cls
    return found


@dataclass(frozen=True)
class AllowList:
    """Module classes and functions a saved graph may refer to, by qualified name."""

    classes: dict[str, type[nn.Module]]
    functions: dict[str, Any]
    function_names: dict[Any, str]

    def class_name(self, cls: type) -> str | None:
        """The saved name of ``cls``, or None if it is not allowed."""
        name = qualified_name(cls)
        return name if self.classes.get(name) is cls else None

    def function_name(self, function: Any) -> str | None:
        """The saved name of ``function``, or None if it is not allowed."""
        try:
            return self.function_names.get(function)
        except TypeError:  # unhashable callables are never on the list
            return None


def build_allowlist(extra: Iterable[Any] = ()) -> AllowList:
    """The built-in allow-list plus ``extra`` module classes and functions (from plugins)."""
    classes = _torch_nn_classes()
    classes[qualified_name(Mask)] = Mask
    classes[qualified_name(SharedWeights)] = SharedWeights
    classes[qualified_name(WeightQuant)] = WeightQuant
    classes[qualified_name(ActivationQuant)] = ActivationQuant
    classes[qualified_name(PackedWeight)] = PackedWeight
    classes[qualified_name(DirectConv2d)] = DirectConv2d
    functions = _builtin_functions()
    for obj in extra:
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            classes[qualified_name(obj)] = obj
        else:
            functions[qualified_name(obj)] = obj
    names: dict[Any, str] = {}
    for name, function in functions.items():
        names.setdefault(function, name)
    return AllowList(classes=classes, functions=functions, function_names=names)


def is_safe_method(name: Any) -> bool:
    """Whether ``name`` may be the target of a ``call_method`` node: a public tensor method."""
    return (
        isinstance(name, str)
        and name.isidentifier()
        and not name.startswith("_")
        and name not in _UNSAFE_METHODS
        and hasattr(torch.Tensor, name)
    )
