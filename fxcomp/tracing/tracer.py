"""Tracing a model into an annotated ``torch.fx.GraphModule``."""

from __future__ import annotations

import inspect
import types
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp.errors import TraceError
from fxcomp.tracing.shapes import propagate

LeafSpec = type[nn.Module] | str


def as_input_tuple(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Normalize ``example_inputs`` (a tensor or a tuple/list of tensors) to a tuple."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(inputs, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TraceError(
            f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}; "
            "pass e.g. torch.randn(1, 3, 224, 224)"
        )
    return tuple(inputs)


class _TrainingFlag(int):
    """A module's ``training`` flag while it is traced: true or false as the flag is, and recorded in
    the graph as a read of the flag, so ``F.dropout(x, training=self.training)`` follows
    ``train()``/``eval()`` of the traced graph instead of the mode the model was traced in."""

    path: str

    def __new__(cls, value: bool, path: str) -> _TrainingFlag:
        flag = super().__new__(cls, value)
        flag.path = path
        return flag

    def __repr__(self) -> str:
        return repr(bool(self))


class _Tracer(fx.Tracer):
    """An fx tracer that also stops at user-chosen leaf modules (by type or qualified name) and keeps
    modules' ``training`` flags passed to functions as reads of the flag (branches on it are still fixed)."""

    def __init__(self, leaf_modules: Sequence[LeafSpec]) -> None:
        super().__init__()
        self._leaf_types = tuple(spec for spec in leaf_modules if isinstance(spec, type))
        self._leaf_names = {spec for spec in leaf_modules if isinstance(spec, str)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self._leaf_names or isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, _TrainingFlag):
            return self.create_node("get_attr", f"{a.path}.training" if a.path else "training", (), {})
        return super().create_arg(a)

    def trace(self, root: nn.Module, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        modules = list(root.named_modules())
        modes = [module.training for _, module in modules]
        for name, module in modules:  # a plain attribute: set it directly, not through Module.__setattr__
            module.__dict__["training"] = _TrainingFlag(module.training, name)
        try:
            return super().trace(root, concrete_args)
        finally:
            for (_, module), training in zip(modules, modes):
                module.__dict__["training"] = training


def _innermost_module_frame(
    error: BaseException, model: nn.Module
) -> tuple[str, nn.Module, types.FrameType, int] | None:
    """The innermost frame of ``error``'s traceback running a ``forward`` of one of ``model``'s modules."""
    names = {id(module): name for name, module in model.named_modules()}
    found = None
    tb = error.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            found = (names[id(owner)], owner, tb.tb_frame, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _trace_failure_message(error: Exception, model: nn.Module) -> str:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    located = _innermost_module_frame(error, model)
    if located is None:
        return (
            f"cannot trace {type(model).__name__}: {reason}; "
            "pass leaf_modules=[...] to keep the failing module opaque, or concrete_args={...} "
            "to fix the input that steers control flow"
        )
    name, module, frame, line = located
    where = f"module '{name}'" if name else "the model's own forward"
    hint = f"leaf_modules=['{name}']" if name else "leaf_modules=[...] for the failing submodule"
    return (
        f"cannot trace {where} ({type(module).__name__}, {frame.f_code.co_filename}:{line}): {reason}; "
        f"pass {hint} to keep it as one opaque call, or concrete_args={{...}} to fix the input "
        "that steers control flow"
    )


def _default_concrete_args(model: nn.Module, graph: fx.Graph, concrete_args: dict[str, Any]) -> None:
    """Make each specialized argument's value its placeholder's default, so callers need not pass it again.

    (fx keeps such an argument as a required input and asserts its value.)
    """
    parameters = list(inspect.signature(model.forward).parameters.values())
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    plain = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)
    if not plain or len(parameters) != len(placeholders):
        return
    for parameter, node in zip(parameters, placeholders):
        value = concrete_args.get(parameter.name, fx.PH)
        if value is None or isinstance(value, (bool, int, float, str)):
            node.args = (value,)


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    leaf_modules: Sequence[LeafSpec] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Trace ``model`` into a ``GraphModule`` whose nodes carry shapes, dtypes, MACs and parameters.

    Args:
        model: the module to trace. It is not modified; like ``torch.fx.symbolic_trace``,
            the result shares its submodules and parameters (``fxcomp.compress`` works on a copy).
        example_inputs: a tensor or a tuple of tensors, one per positional input of ``forward``.
            Real, meta or CPU tensors; only their shapes and dtypes are used where possible.
        leaf_modules: module types or qualified names to keep as single opaque calls.
        concrete_args: values for ``forward`` arguments to specialize on (``torch.fx`` semantics).

    Every node gets ``fxcomp.node_info(node)`` with its qualified name, output and input
    specs, MACs and parameter count. Raises :class:`fxcomp.TraceError` naming the module
    and source line when fx cannot trace the model.
    """
    if not isinstance(model, nn.Module):
        raise TraceError(f"expected a torch.nn.Module to trace, got {type(model).__name__}")
    inputs = as_input_tuple(example_inputs)
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as error:  # noqa: BLE001 - any tracing failure becomes a TraceError
        raise TraceError(_trace_failure_message(error, model)) from error
    _default_concrete_args(model, graph, concrete_args or {})
    try:
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except SyntaxError as error:  # fx writes attribute access for every submodule name
        raise TraceError(
            f"cannot generate Python code for {type(model).__name__}'s graph ({error.msg}); "
            "a submodule or parameter name is a Python keyword or not an identifier: rename it"
        ) from error
    gm.training = model.training
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    required = [n for n in placeholders if not n.args]
    if not len(required) <= len(inputs) <= len(placeholders):
        names = ", ".join(n.target for n in required)
        raise TraceError(
            f"{type(model).__name__}.forward needs {len(required)} tensor input(s) ({names}) "
            f"but example_inputs has {len(inputs)}; pass one example tensor per input"
        )
    propagate(gm, inputs)
    return gm
