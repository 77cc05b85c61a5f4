"""Checks run after every pass: lint, shapes, a forward run, output structure, exactness, plugin checks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from fxcomp.arguments import is_real
from fxcomp.errors import PassError, TraceError, first_line
from fxcomp.passes.base import CheckContext, Pass
from fxcomp.plugin.registry import Entry
from fxcomp.tracing import eval_mode, kept_modes, propagate, qualname


PRECISION_EPSILONS = 16
"""A nonzero promised tolerance is widened to this many machine epsilons of a float16 / bfloat16 model."""


def precision_tolerance(tolerance: float, *values: Any) -> tuple[float, torch.dtype | None]:
    """``tolerance`` as it holds for ``values`` (outputs, parameters), and the dtype that widened it, if any.

    Promises like 1e-5 are made for float32: in float16 or bfloat16 rounding alone moves outputs
    further, so where such a tensor is in play a nonzero tolerance becomes at least
    :data:`PRECISION_EPSILONS` of its epsilons. A promise of 0 (bitwise the same) stays 0.
    """
    coarse = [
        leaf.dtype
        for leaf in pytree.tree_leaves(values)
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and torch.finfo(leaf.dtype).eps > torch.finfo(torch.float32).eps
    ]
    if not tolerance or not coarse:
        return tolerance, None
    dtype = max(coarse, key=lambda d: torch.finfo(d).eps)
    widened = PRECISION_EPSILONS * torch.finfo(dtype).eps
    return (widened, dtype) if widened > tolerance else (tolerance, None)


def promised(tolerance: float, dtype: torch.dtype | None) -> str:
    """A tolerance from :func:`precision_tolerance` in words."""
    return f"{tolerance:g}" if dtype is None else f"{tolerance:g} (at {str(dtype).removeprefix('torch.')} precision)"


class _Locator(fx.Interpreter):
    """Runs a graph node by node and remembers the node that raised."""

    failed: fx.Node | None = None

    def run_node(self, node: fx.Node) -> Any:
        try:
            return super().run_node(node)
        except Exception:
            self.failed = self.failed or node
            raise


def run_graph(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> Any:
    """Run ``gm`` in eval mode without gradients.

    On failure, raises ``RuntimeError`` whose message names the node that failed.
    """
    with eval_mode(gm), torch.no_grad():
        try:
            return gm(*inputs)
        except Exception as error:  # noqa: BLE001 - re-run node by node to find the culprit
            locator = _Locator(gm)
            try:
                locator.run(*inputs)
            except Exception:  # noqa: BLE001 - the first failure is what we report
                pass
            where = f"node '{qualname(locator.failed)}'" if locator.failed is not None else "the graph"
            raise RuntimeError(f"{where} raised {type(error).__name__}: {first_line(error)}") from error


def output_nodes(gm: fx.GraphModule) -> list[str]:
    """Qualified names of the nodes producing each flattened output, in pytree order."""
    output = next(node for node in gm.graph.nodes if node.op == "output")
    leaves, _spec = pytree.tree_flatten(output.args[0])
    return [qualname(leaf) if isinstance(leaf, fx.Node) else repr(leaf) for leaf in leaves]


def _tensor_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` over the finite entries; infinite when shapes or non-finite entries disagree."""
    value, reference = value.detach(), reference.detach()
    if value.shape != reference.shape:
        return math.inf
    finite = torch.isfinite(reference)
    same_nonfinite = torch.equal(value[~finite].nan_to_num(), reference[~finite].nan_to_num())
    if not same_nonfinite or not torch.equal(torch.isfinite(value), finite):
        return math.inf
    if not finite.any():
        return 0.0
    scale = reference[finite].abs().max().item() or 1.0
    return (value[finite] - reference[finite]).abs().max().item() / scale


def relative_error(outputs: Any, reference: Any) -> tuple[float, int]:
    """Largest ``max|a - b| / max|b|`` over the tensor outputs, and the output it occurs in.

    Integer and boolean outputs (class indices, masks) must match exactly: any difference
    is an infinite error. Entries that are not finite must agree exactly (a NaN where the
    reference has a number, or the other way round, is an infinite error), and so must the
    shapes and dtypes. Outputs on the meta device hold no values: where both are, only their
    shapes are compared; where one is, the error is infinite.
    """
    worst, where = 0.0, 0
    for index, (value, ref) in enumerate(zip(pytree.tree_leaves(outputs), pytree.tree_leaves(reference))):
        if isinstance(value, torch.Tensor) and (value.is_meta or (isinstance(ref, torch.Tensor) and ref.is_meta)):
            both = isinstance(ref, torch.Tensor) and value.is_meta and ref.is_meta
            if not both or value.shape != ref.shape:  # values appearing or vanishing are a change too
                worst, where = math.inf, index
            continue
        error = _leaf_error(value, ref)
        if error > worst:
            worst, where = error, index
    return worst, where


def _leaf_error(value: Any, reference: Any) -> float:
    """One output's relative error: floating-point tensors (complex ones by their real and imaginary
    parts) within a tolerance, integer and boolean tensors and Python integers exactly."""
    if isinstance(value, torch.Tensor):
        if not isinstance(reference, torch.Tensor) or value.dtype != reference.dtype or value.shape != reference.shape:
            return math.inf
        if value.is_complex():
            value, reference = torch.view_as_real(value), torch.view_as_real(reference)
        if value.is_floating_point():
            return _tensor_error(value, reference) if value.numel() else 0.0
        return 0.0 if torch.equal(value, reference) else math.inf
    if isinstance(value, int):  # bool included
        return 0.0 if type(value) is type(reference) and value == reference else math.inf
    return 0.0


def _integer_difference(outputs: Any, reference: Any, index: int) -> tuple[int, int] | None:
    """How many entries of integer output ``index`` differ, and of how many (None when it is no such output)."""
    value, ref = pytree.tree_leaves(outputs)[index], pytree.tree_leaves(reference)[index]
    comparable = isinstance(value, torch.Tensor) and isinstance(ref, torch.Tensor) and value.shape == ref.shape
    if not comparable or value.dtype != ref.dtype or value.is_floating_point() or value.is_complex() or value.is_meta:
        return None
    return int((value != ref).sum()), value.numel()


@dataclass(frozen=True)
class Mismatch:
    """Where outputs differ in kind from a reference: the flattened output ``index`` (None when the
    structure itself differs) and what was found against what was expected."""

    index: int | None
    got: str
    want: str


def output_mismatch(outputs: Any, reference: Any) -> Mismatch | None:
    """The first difference in structure, or in a tensor output's shape or dtype, between ``outputs`` and ``reference``."""
    leaves, spec = pytree.tree_flatten(outputs)
    reference_leaves, reference_spec = pytree.tree_flatten(reference)
    if spec != reference_spec:
        return Mismatch(None, str(spec), str(reference_spec))
    for index, (value, want) in enumerate(zip(leaves, reference_leaves)):
        if isinstance(want, torch.Tensor):
            same = isinstance(value, torch.Tensor) and value.shape == want.shape and value.dtype == want.dtype
            if not same:
                got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else repr(value)
                return Mismatch(index, got, f"{tuple(want.shape)} {want.dtype}")
    return None


def _check_structure(label: str, gm: fx.GraphModule, outputs: Any, baseline: Any) -> None:
    mismatch = output_mismatch(outputs, baseline)
    if mismatch is None:
        return
    if mismatch.index is None:
        raise PassError(f"{label} changed the structure of the model's outputs from {mismatch.want} to {mismatch.got}")
    node = output_nodes(gm)[mismatch.index]
    raise PassError(f"{label} changed output {mismatch.index} (node '{node}') from {mismatch.want} to {mismatch.got}")


def verify(
    gm: fx.GraphModule,
    applied: Pass,
    label: str,
    inputs: Sequence[torch.Tensor],
    reference: Any,
    baseline: Any,
    checks: dict[str, Entry],
    states: dict[str, dict[str, Any]],
) -> Any:
    """Check ``gm`` after ``applied`` ran; return its outputs for ``inputs``.

    ``reference`` holds the outputs before the pass (for the exactness promise),
    ``baseline`` the original model's outputs (for structure and shapes), ``states``
    each plugin check's state (from :func:`start_checks`).
    Raises :class:`fxcomp.PassError` naming the pass and, where one is at fault, the node.
    """
    try:
        gm.graph.lint()
    except Exception as error:  # noqa: BLE001 - lint raises plain RuntimeErrors
        raise PassError(f"{label} left a malformed graph: {first_line(error)}") from error
    gm.recompile()
    try:
        propagate(gm, inputs)
    except TraceError as error:
        raise PassError(f"{label} broke shape propagation: {error}") from error
    try:
        outputs = run_graph(gm, inputs)
    except RuntimeError as error:
        raise PassError(f"{label} produced a graph that fails to run: {error}") from error
    _check_structure(label, gm, outputs, baseline)
    if applied.tolerance is not None and not (is_real(applied.tolerance) and applied.tolerance >= 0):
        raise PassError(f"{label} declares tolerance {applied.tolerance!r}; a pass's tolerance is a number >= 0, or None")
    tolerance, dtype = applied.tolerance, None
    if tolerance is not None:
        tolerance, dtype = precision_tolerance(tolerance, outputs, list(gm.parameters()))
        error, index = relative_error(outputs, reference)
        flipped = _integer_difference(outputs, reference, index) if error == math.inf else None
        if flipped is not None:
            raise PassError(
                f"{label} changed integer output {index} (node '{output_nodes(gm)[index]}') in {flipped[0]} of "
                f"{flipped[1]} entries; integer outputs (class indices, masks) must match exactly, and rounding within "
                f"the promised {applied.tolerance:g} can flip an argmax at a near-tie: return the scores instead"
            )
        if error > tolerance:
            raise PassError(
                f"{label} promises outputs within relative error {promised(tolerance, dtype)} but output {index} "
                f"(node '{output_nodes(gm)[index]}') changed by {error:.3g}"
            )
    _run_checks(gm, label, checks, states, CheckContext(applied.name, tuple(inputs), outputs, reference, tolerance))
    return outputs


def start_checks(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], outputs: Any, checks: dict[str, Entry]) -> dict[str, dict[str, Any]]:
    """Run every plugin check on the graph before any pass; return each check's state for :func:`verify`."""
    states: dict[str, dict[str, Any]] = {name: {} for name in checks}
    _run_checks(gm, "the model before any pass", checks, states, CheckContext(None, tuple(inputs), outputs, outputs))
    return states


def _run_checks(
    gm: fx.GraphModule, label: str, checks: dict[str, Entry], states: dict[str, dict[str, Any]], context: CheckContext
) -> None:
    for name, entry in checks.items():
        where = f"check '{name}' (plugin '{entry.plugin}')"
        try:
            with kept_modes(gm):  # a check that switches modes must not leave them switched
                problems = entry.value(gm, dataclasses.replace(context, state=states.setdefault(name, {})))
        except Exception as error:  # noqa: BLE001 - a crashing check is reported like a failing one
            raise PassError(f"{label}: {where} raised: {first_line(error)}") from error
        if problems is not None and (not isinstance(problems, (list, tuple)) or not all(isinstance(p, str) for p in problems)):
            raise PassError(f"{where} returned {type(problems).__name__}; a check returns a list of problem strings (empty when fine)")
        if problems:
            raise PassError(f"{label} failed {where}: {problems[0]}")
