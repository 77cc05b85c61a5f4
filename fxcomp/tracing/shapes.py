"""Shape, dtype and cost propagation over a traced graph.

Propagation never computes on real data where it can avoid it. It tries, in
order, and keeps the first that runs the whole graph:

1. meta tensors: every value is a tensor on the ``meta`` device (shape and
   dtype, no data); the commonest operations get their output from a closed-form
   rule (:mod:`fxcomp.tracing.shape_rules`), the others run their meta kernels,
   modules with their parameters swapped for meta copies;
2. fake tensors (``FakeTensorMode``), which also handle code that creates CPU
   tensors inside ``forward`` and mixes them with its inputs;
3. a real run, only when an operation needs real values (``.item()``,
   data-dependent shapes) and the model holds real data.

So annotating a ResNet-50 does no real FLOPs, and models whose weights live on
the meta device work. Every run happens under ``torch.no_grad()`` and in eval
mode, so no state (BatchNorm statistics) changes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.utils import _pytree as pytree

from fxcomp.errors import TraceError
from fxcomp.tracing.costs import node_macs, node_params
from fxcomp.tracing.names import assign_qualnames, modules_by_path, qualname
from fxcomp.tracing.shape_rules import FUNCTION_RULES, METHOD_RULES, module_rule

INFO = "fxcomp_info"
"""``node.meta`` key holding the node's :class:`NodeInfo`."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor value."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __str__(self) -> str:
        return "×".join(str(size) for size in self.shape) if self.shape else "scalar"


@dataclass(frozen=True)
class NodeInfo:
    """What propagation learned about one node.

    ``output`` and ``inputs`` hold a :class:`TensorSpec` where the value is a
    tensor, the plain value for ints, floats, bools, strings and ``None``, and
    containers of those for tuples, lists and dicts.
    """

    qualname: str
    output: Any
    inputs: tuple[Any, ...]
    macs: int
    params: int


def describe_value(value: Any) -> Any:
    """Replace every tensor in ``value`` by its :class:`TensorSpec`."""
    if isinstance(value, torch.Tensor):  # the common case, without walking a tree
        return _spec(value)
    return pytree.tree_map(_spec, value)


def _spec(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        return TensorSpec(tuple(int(size) for size in leaf.shape), leaf.dtype)
    if leaf is None or isinstance(leaf, (bool, int, float, str)):
        return leaf
    return type(leaf).__name__


def node_info(node: fx.Node) -> NodeInfo:
    """The :class:`NodeInfo` of a node of a graph produced by :func:`fxcomp.trace`."""
    try:
        return node.meta[INFO]
    except KeyError:
        raise TraceError(
            f"node '{node.name}' has no shape information; trace the model with fxcomp.trace "
            "or call fxcomp.propagate(gm, example_inputs) after editing the graph"
        ) from None


def require_graph(value: Any, caller: str) -> None:
    """Raise a :class:`fxcomp.TraceError` telling how to get one unless ``value`` is a ``GraphModule``."""
    if isinstance(value, fx.GraphModule):
        return
    hint = "its .model" if isinstance(getattr(value, "model", None), fx.GraphModule) else "fxcomp.trace(model, example_inputs)"
    raise TraceError(f"{caller} takes a GraphModule from fxcomp.trace, got {type(value).__name__}; pass {hint}")


class _NodeFailure(Exception):
    def __init__(self, node: fx.Node, error: Exception) -> None:
        super().__init__(str(error))
        self.node = node
        self.error = error


def _check_weight_dtype(module: nn.Module | None, args: tuple) -> None:
    """Refuse a conv or linear layer fed another floating dtype than its weight's, as real kernels do.

    (Meta and fake kernels accept the mix, so propagation would pass a model that cannot run.)
    """
    if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or not args or not isinstance(args[0], torch.Tensor):
        return
    weight, x = getattr(module, "weight", None), args[0]
    if isinstance(weight, torch.Tensor) and weight.is_floating_point() and x.is_floating_point() and weight.dtype != x.dtype:
        raise RuntimeError(f"the input is {x.dtype} but the layer's weight is {weight.dtype}")


class _Propagator(fx.Interpreter):
    """Runs the graph once and writes a :class:`NodeInfo` into every node."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.modules = modules_by_path(gm)

    def run_node(self, node: fx.Node) -> Any:
        try:
            with self._set_current_node(node):
                args, kwargs = self.fetch_args_kwargs_from_env(node)
                module = self.modules[node.target] if node.op == "call_module" else None
                _check_weight_dtype(module, args)
                result = getattr(self, node.op)(node.target, args, kwargs)
            macs = node_macs(node, module, args, result)
        except Exception as error:  # noqa: BLE001 - every failure is reported with its node
            raise _NodeFailure(node, error) from error
        node.meta[INFO] = NodeInfo(
            qualname=qualname(node),
            output=describe_value(result),
            inputs=tuple(describe_value(arg) for arg in args),
            macs=macs,
            params=node_params(node, self.modules),
        )
        return result


class _MetaPropagator(_Propagator):
    """A :class:`_Propagator` whose values are meta tensors, with shape rules for common operations."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self._meta: dict[int, torch.Tensor] = {}

    def _as_meta(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        copy = self._meta.get(id(value))
        if copy is None:
            copy = self._meta[id(value)] = torch.empty_like(value, device="meta")
        return copy

    def placeholder(self, target: Any, args: tuple, kwargs: dict) -> Any:
        return self._as_meta(super().placeholder(target, args, kwargs))

    def get_attr(self, target: Any, args: tuple, kwargs: dict) -> Any:
        return self._as_meta(super().get_attr(target, args, kwargs))

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        module = self.modules[target]
        result = module_rule(module, args, kwargs)
        if result is not None:
            return result
        state = {name: self._as_meta(t) for name, t in module.state_dict(keep_vars=True).items()}
        return functional_call(module, state, args, kwargs)

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        rule = FUNCTION_RULES.get(target) if isinstance(target, Hashable) else None
        result = rule(args, kwargs) if rule is not None else None
        return result if result is not None else super().call_function(target, args, kwargs)

    def call_method(self, target: Any, args: tuple, kwargs: dict) -> Any:
        rule = METHOD_RULES.get(target)
        result = rule(args, kwargs) if rule is not None else None
        return result if result is not None else super().call_method(target, args, kwargs)


def eval_mode(module: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Put every submodule in eval mode for the duration, then restore each one's flag."""
    return in_mode(module, training=False)


@contextlib.contextmanager
def in_mode(module: nn.Module, *, training: bool) -> Iterator[None]:
    """Put every submodule in training (or eval) mode for the duration, then restore each one's flag."""
    with kept_modes(module):
        module.train(training)
        yield


@contextlib.contextmanager
def kept_modes(module: nn.Module) -> Iterator[None]:
    """Restore every submodule's training flag afterwards, whatever the body switched."""
    flags = [(child, child.training) for child in module.modules()]
    try:
        yield
    finally:
        for child, training in flags:
            child.training = training


def _holds_real_data(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> bool:
    tensors = [*gm.parameters(), *gm.buffers(), *inputs]
    return not any(tensor.is_meta for tensor in tensors)


def _failure_message(failure: _NodeFailure) -> str:
    node = failure.node
    error = str(failure.error).strip().splitlines()
    reason = error[0] if error else type(failure.error).__name__
    return (
        f"cannot compute the shapes of node '{qualname(node)}' ({node.op} {node.target}): {reason}; "
        "check that example_inputs have the shapes and dtypes the model expects"
    )


_FAKE_TENSOR_LOGGER = "torch._subclasses.fake_tensor"  # logs a traceback for every op that fails, before it raises


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence ``logger`` (the failure it would log is raised, and reported as a TraceError)."""
    log = logging.getLogger(logger)
    disabled, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = disabled


def propagate(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> None:
    """Annotate every node of ``gm`` with its :class:`NodeInfo` for ``example_inputs``.

    Raises :class:`fxcomp.TraceError` naming the first node whose shapes cannot
    be computed.
    """
    assign_qualnames(gm.graph)
    with eval_mode(gm), torch.no_grad():
        try:
            _MetaPropagator(gm).run(*example_inputs)
            return
        except _NodeFailure:
            pass  # some operation needs more than meta tensors; try fake tensors
        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        try:
            fake_inputs = [fake_mode.from_tensor(tensor) for tensor in example_inputs]
            with fake_mode, _quiet(_FAKE_TENSOR_LOGGER):
                _Propagator(gm).run(*fake_inputs)
            return
        except _NodeFailure as failure:
            if not _holds_real_data(gm, example_inputs):
                raise TraceError(_failure_message(failure)) from failure.error
        try:
            _Propagator(gm).run(*example_inputs)
        except _NodeFailure as failure:
            raise TraceError(_failure_message(failure)) from failure.error
