"""``lower``: run a rewritten graph on a backend — as it is, compiled by inductor, or with kernels.

* ``eager``: the graph as it is (plain torch);
* ``inductor``: ``torch.compile`` (on CPU inductor emits C++);
  both with ``channels_last`` (the 4-D weights and values in NHWC memory format) and
  ``direct_convs`` (convolutions written as NHWC slices and matrix products), or with
  ``autotune``: each combination of the two timed on the example inputs, the fastest kept;
* any other name: the lowerings plugins registered for that backend (``triton`` for the
  built-in kernels) replace the patterns they match by kernel modules; every
  replacement is checked against the values it replaces, then the whole model is run.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.utils import _pytree as pytree

from fxcomp.arguments import is_real
from fxcomp.dynamic.model import EarlyExitModel
from fxcomp.errors import FxcompError, LoweringError, first_line
from fxcomp.lowering.base import Declined, Lowering, Matched
from fxcomp.lowering.direct import can_write_directly
from fxcomp.lowering.layout import to_layout
from fxcomp.lowering.report import LoweringReport, layout_name, layout_options
from fxcomp.passes.masks import class_before_parametrizations
from fxcomp.passes.verify import output_mismatch, precision_tolerance, promised, relative_error, run_graph
from fxcomp.plugin.host import DISABLE_ENV, Plugins, load_plugins
from fxcomp.plugin.registry import BUILT_IN_BACKENDS, INDUCTOR_MODES
from fxcomp.timing import interleaved_latency
from fxcomp.tracing import NodeInfo, TensorSpec, as_input_tuple, node_info, qualname
from fxcomp.tracing.names import QUALNAME
from fxcomp.tracing.shapes import INFO, propagate

REORDERING_TOLERANCE = 1e-4
"""The largest relative output change accepted from inductor, the channels-last layout or direct convolutions (they reorder floating-point sums)."""

AUTOTUNE_REPEATS = 11
"""Timed runs per candidate when :func:`lower` autotunes (the median counts), after :data:`AUTOTUNE_WARMUP`."""

AUTOTUNE_WARMUP = 2
"""Unmeasured runs per candidate before :func:`lower` times it when it autotunes."""

KERNELS_PATH = "lowered"
"""Where the kernel modules live in a graph lowered with pattern lowerings (``lowered.<node>``; ``lowered_1.<node>``,
``lowered_2.<node>``… when the model already has an attribute of that name)."""


@dataclass
class LoweringResult:
    """The outcome of :func:`lower`: the model to run (in eval mode) and what was done to it."""

    module: nn.Module
    report: LoweringReport


def _example_inputs(gm: fx.GraphModule) -> tuple[torch.Tensor, ...]:
    """Random inputs shaped like the ones ``gm`` was annotated with."""
    inputs = []
    for node in gm.graph.find_nodes(op="placeholder"):
        spec = node_info(node).output if INFO in node.meta else None
        if not isinstance(spec, TensorSpec):
            raise LoweringError(
                f"input '{node.name}' of the graph has no recorded shape; pass example_inputs to fxcomp.lower"
            )
        generator = torch.Generator().manual_seed(len(inputs))
        if spec.dtype.is_floating_point:
            inputs.append(torch.randn(spec.shape, generator=generator).to(spec.dtype))
        else:
            inputs.append(torch.zeros(spec.shape, dtype=spec.dtype))
    return tuple(inputs)


def _copies(inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Copies of ``inputs`` for one run: a model that modifies its inputs in place changes neither the caller's
    tensors nor what the next run sees."""
    return tuple(tensor.clone() for tensor in inputs)


def _backend_lowerings(backend: str, plugins: Plugins) -> dict[str, Lowering]:
    lowerings = {name: entry.value for (owner, name), entry in plugins.registry.lowerings.items() if owner == backend}
    if backend in BUILT_IN_BACKENDS or lowerings:
        return lowerings
    known = ", ".join(plugins.registry.backends())
    hint = " (install the triton extra: pip install 'fxcomp[triton]')" if backend == "triton" else ""
    raise LoweringError(f"unknown lowering backend {backend!r}; available: {known}{hint}")


def lower(
    gm: fx.GraphModule,
    backend: str = "eager",
    *,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    plugins: Plugins | None = None,
    mode: str | None = None,
    channels_last: bool = False,
    direct_convs: bool = False,
    autotune: bool = False,
) -> LoweringResult:
    """Lower a copy of ``gm`` to ``backend`` for inference; ``gm`` is never modified.

    Args:
        gm: a ``GraphModule`` (e.g. ``fxcomp.compress(...).model``).
        backend: ``"eager"``, ``"inductor"`` or a backend plugins registered lowerings for
            (``"triton"``: the built-in Triton kernels).
        example_inputs: inputs to check the lowered model with; by default random ones shaped
            like those ``gm`` was traced with. Each run gets copies, so a model that modifies
            its inputs in place leaves them unchanged.
        plugins: the plugins to take lowerings from; loaded from entry points when omitted.
        mode: ``torch.compile``'s mode, for ``inductor`` only.
        channels_last: for ``eager`` and ``inductor``: store the 4-D weights channels-last and run
            on channels-last values (the inputs are converted on entry, 4-D outputs converted back),
            which CPU convolutions usually run faster.
        direct_convs: for ``eager`` and ``inductor``: compute plain zero-padded ``nn.Conv2d``
            layers (depthwise, 1×1 and ``groups=1``) as slices and matrix products of NHWC
            values (:class:`fxcomp.lowering.direct.DirectConv2d`), which inductor fuses with
            their neighbours; small convolutions often run faster so, large ones slower.
        autotune: for ``eager`` and ``inductor``: lower with each combination of
            ``channels_last`` and ``direct_convs`` that changes something, time them on the
            example inputs (interleaved, median of :data:`AUTOTUNE_REPEATS`, the current thread
            count) and keep the fastest; the report lists the times. The choice holds for the
            example inputs' shapes: lower once per input shape you deploy.

    The lowered model's outputs are compared with ``gm``'s; with pattern lowerings each
    replaced value is compared too, against the lowering's tolerance. Raises
    :class:`fxcomp.LoweringError` for an unknown backend, weights on the meta device, options the backend does not take
    (or ``autotune`` with ``channels_last`` / ``direct_convs``, or with inputs not on the CPU),
    a graph that fails to run or changes its outputs beyond 1e-4 in the asked layout or
    under inductor, kernels that cannot run on this machine, or a kernel whose output
    disagrees with what it replaces.
    """
    if isinstance(gm, EarlyExitModel):
        raise LoweringError("an early-exit model cannot be lowered yet; lower a model without exits")
    if not isinstance(gm, fx.GraphModule):
        raise LoweringError(
            f"fxcomp.lower takes a torch.fx GraphModule, got {type(gm).__name__}; "
            "trace the model with fxcomp.trace or lower fxcomp.compress(...).model"
        )
    if not isinstance(backend, str):
        raise LoweringError(
            f"the backend must be a name (eager, inductor, triton, ...), got a {type(backend).__name__}; "
            "pass example inputs as example_inputs=..."
        )
    if any(tensor.is_meta for tensor in itertools.chain(gm.parameters(), gm.buffers())):
        raise LoweringError(
            "the model's weights are on the meta device, so nothing can run or be checked; "
            "give it real weights (e.g. to_empty(device='cpu') and load_state_dict) before lowering"
        )
    if mode is not None and (backend != "inductor" or mode not in INDUCTOR_MODES):
        raise LoweringError(f"mode {mode!r} needs backend 'inductor' and one of {', '.join(INDUCTOR_MODES)}")
    layout_options = {"channels_last": channels_last, "direct_convs": direct_convs, "autotune": autotune}
    for name, value in layout_options.items():
        if value and backend not in BUILT_IN_BACKENDS:
            raise LoweringError(f"{name} applies to backends {' and '.join(BUILT_IN_BACKENDS)}, not {backend!r}; drop it")
    if autotune and (channels_last or direct_convs):
        raise LoweringError("autotune chooses channels_last and direct_convs itself; drop them or drop autotune")
    plugins = plugins if plugins is not None else load_plugins()
    lowerings = _backend_lowerings(backend, plugins)
    inputs = as_input_tuple(example_inputs) if example_inputs is not None else _example_inputs(gm)
    if autotune and any(tensor.device.type != "cpu" for tensor in inputs):
        raise LoweringError("autotune times the candidates on the CPU; pass CPU example_inputs, or choose channels_last / direct_convs yourself")
    working = copy.deepcopy(gm).eval()
    try:
        reference = run_graph(working, _copies(inputs))
    except RuntimeError as error:
        raise LoweringError(f"the graph fails to run on the example inputs before lowering: {error}") from error
    if autotune:
        return _autotuned(working, backend, inputs, reference, mode)
    if backend in BUILT_IN_BACKENDS:
        return _built_in(working, backend, inputs, reference, mode, channels_last, direct_convs)
    return _with_lowerings(working, backend, lowerings, inputs, reference, plugins)


def _reordering_error(outputs: Any, reference: Any, whose: str, instead: str) -> float:
    """The relative change of ``outputs`` from ``reference``; a LoweringError beyond :data:`REORDERING_TOLERANCE`."""
    error, _ = relative_error(outputs, reference)
    tolerance, dtype = precision_tolerance(REORDERING_TOLERANCE, reference)
    if not error <= tolerance:
        raise LoweringError(
            f"{whose} outputs differ from the graph's by {error:.2e} (relative), "
            f"more than {promised(tolerance, dtype)}; {instead}"
        )
    return error


def _layout_words(channels_last: bool, direct_convs: bool) -> tuple[str, str]:
    """How a layout is described in messages, and the options to drop to avoid it."""
    names = layout_options(channels_last, direct_convs)
    words = {"channels_last": "in channels-last layout", "direct_convs": "with direct convolutions"}
    return " and ".join(words[name] for name in names), " and ".join(names)


def _built_in(
    working: fx.GraphModule, backend: str, inputs: tuple[torch.Tensor, ...], reference: Any, mode: str | None,
    channels_last: bool, direct_convs: bool,
) -> LoweringResult:
    """``working`` in the chosen layout, as it is (``eager``) or compiled (``inductor``), its outputs checked."""
    how, options = _layout_words(channels_last, direct_convs)
    try:  # the layout's shape propagation is its first run
        converted, kept = to_layout(working, _copies(inputs), channels_last=channels_last, direct_convs=direct_convs)
        outputs = run_graph(working, _copies(inputs)) if backend == "eager" and options else None
    except Exception as failure:  # noqa: BLE001 - whatever breaks the layout, the fix is to drop it
        raise LoweringError(f"{how} the graph fails to run: {first_line(failure)}; lower without {options}") from failure
    layout = {"channels_last": channels_last, "direct_convs": converted, "kept_convs": kept}
    if backend == "inductor":
        return _inductor(working, inputs, reference, mode, layout, f" (or without {options})" if options else "")
    error = _reordering_error(outputs, reference, f"{how} the model's", f"lower without {options}") if options else 0.0
    return LoweringResult(working, LoweringReport(backend, error=error, **layout))


def _inductor(
    working: fx.GraphModule, inputs: tuple[torch.Tensor, ...], reference: Any, mode: str | None, layout: dict[str, Any],
    or_without: str,
) -> LoweringResult:
    compiled = torch.compile(working, backend="inductor", mode=mode)
    try:
        with torch.no_grad():
            outputs = compiled(*_copies(inputs))
    except Exception as error:  # noqa: BLE001 - any compiler failure means: use another backend
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise LoweringError(f"inductor failed to compile the graph ({type(error).__name__}: {first}); "
                            f"lower with backend 'eager' instead{or_without}") from error
    error = _reordering_error(outputs, reference, "the inductor-compiled model's", f"lower with backend 'eager' instead{or_without}")
    return LoweringResult(compiled, LoweringReport("inductor", error=error, **layout))


def _autotuned(
    working: fx.GraphModule, backend: str, inputs: tuple[torch.Tensor, ...], reference: Any, mode: str | None
) -> LoweringResult:
    """The fastest of ``working`` lowered with each combination of channels_last and direct_convs."""
    four_d_weights = any(tensor.dim() == 4 for tensor in (*working.parameters(), *working.buffers()))
    propagate(working, _copies(inputs))
    direct = can_write_directly(working)
    results: dict[str, LoweringResult] = {}
    failed: list[dict[str, Any]] = []
    for channels_last in (False, True) if four_d_weights else (False,):
        for direct_convs in (False, True) if direct else (False,):
            layout = {"channels_last": channels_last, "direct_convs": direct_convs}
            try:
                result = _built_in(copy.deepcopy(working), backend, inputs, reference, mode, **layout)
            except LoweringError as error:
                if not (channels_last or direct_convs):
                    raise
                failed.append({"candidate": layout_name(**layout), **layout, "ms": None, "failed": str(error)})
                continue
            results[result.report.layout] = result
    medians = interleaved_latency(
        {key: functools.partial(result.module, *_copies(inputs)) for key, result in results.items()},
        repeats=AUTOTUNE_REPEATS, warmup=AUTOTUNE_WARMUP,
    )
    chosen = results[min(medians, key=medians.__getitem__)]
    chosen.report.autotune = [
        {"candidate": result.report.layout, "channels_last": result.report.channels_last,
         "direct_convs": bool(result.report.direct_convs), "ms": 1e3 * medians[key], "failed": None}
        for key, result in results.items()
    ] + failed
    return chosen


@dataclass
class _Plan:
    name: str
    lowering: Lowering
    nodes: list[fx.Node]


def _external_inputs(nodes: Sequence[fx.Node]) -> list[fx.Node]:
    """The nodes outside ``nodes`` whose values they read, in order of first reading."""
    inside, seen = set(nodes), {}
    for node in nodes:
        for value in node.all_input_nodes:
            if value not in inside:
                seen.setdefault(value, None)
    return list(seen)


def _why_not(nodes: Sequence[fx.Node], first: fx.Node, claimed: set[fx.Node]) -> str | None:
    """Why the node list a lowering returned cannot be replaced as one kernel, if it cannot."""
    if not all(isinstance(node, fx.Node) and node.graph is first.graph for node in nodes):
        return "the lowering returned a match whose nodes are not all nodes of the graph it was offered"
    if not nodes or nodes[0] is not first:
        return "the lowering returned a match that does not start at the node it was offered"
    order = {node: index for index, node in enumerate(first.graph.nodes)}
    if any(order[a] >= order[b] for a, b in zip(nodes, nodes[1:])):
        return "the lowering returned nodes out of graph order"
    if claimed.intersection(nodes):
        return "it overlaps a pattern already lowered"
    inside = set(nodes)
    for node in nodes[:-1]:
        outside = [user for user in node.users if user not in inside]
        if outside:
            return f"'{qualname(node)}' is also used by '{qualname(outside[0])}'"
    return None


def _blame(plugins: Plugins, backend: str, name: str) -> str:
    """What to do about lowering ``name``'s misbehaviour: report it to its plugin or block the plugin."""
    plugin = plugins.registry.lowerings[(backend, name)].plugin
    return f"report it to plugin '{plugin}' or block it with {DISABLE_ENV}={plugin}"


def _answer(lowering: Lowering, name: str, backend: str, plugins: Plugins, gm: fx.GraphModule, node: fx.Node) -> Matched | Declined | None:
    """The lowering's ``match`` at ``node``, held to its contract (the messages are built only when it breaks it)."""
    try:
        answer = lowering.match(gm, node)
    except FxcompError:  # the plugin's own message
        raise
    except Exception as error:  # noqa: BLE001 - a failing plugin is reported with its lowering
        problem = f"failed matching at '{qualname(node)}' ({type(error).__name__}: {first_line(error)})"
        raise LoweringError(f"lowering '{name}' of backend '{backend}' {problem}; {_blame(plugins, backend, name)}") from error
    if answer is None:
        return None
    if not isinstance(answer, (Matched, Declined)):
        problem = f"returned {type(answer).__name__}, not a Matched, a Declined or None"
    elif not isinstance(answer.nodes, (list, tuple)):
        problem = f"returned {type(answer).__name__} whose nodes are a {type(answer.nodes).__name__}, not a list"
    elif isinstance(answer, Declined) and not isinstance(answer.reason, str):
        problem = f"declined with a {type(answer.reason).__name__} as the reason, not a string"
    else:
        return answer
    raise LoweringError(f"lowering '{name}' of backend '{backend}''s match {problem}; {_blame(plugins, backend, name)}")


def _plans(
    gm: fx.GraphModule, lowerings: dict[str, Lowering], backend: str, plugins: Plugins
) -> tuple[list[_Plan], list[dict[str, Any]]]:
    """The occurrences to lower (at each node, the longest match; ties by pattern name) and the declined ones."""
    plans: list[_Plan] = []
    declined: list[dict[str, Any]] = []
    claimed: set[fx.Node] = set()
    for node in list(gm.graph.nodes):
        if node in claimed or node.op in ("placeholder", "get_attr", "output"):
            continue
        best: _Plan | None = None
        reasons: list[dict[str, Any]] = []
        for name in sorted(lowerings):
            answer = _answer(lowerings[name], name, backend, plugins, gm, node)
            if answer is None:
                continue
            reason = answer.reason if isinstance(answer, Declined) else _why_not(answer.nodes, node, claimed)
            if reason is not None:
                names = [qualname(n) if isinstance(n, fx.Node) else repr(n) for n in answer.nodes]
                reasons.append({"pattern": name, "nodes": names, "reason": reason})
            elif best is None or len(answer.nodes) > len(best.nodes):
                best = _Plan(name, lowerings[name], list(answer.nodes))
        if best is not None:
            plans.append(best)
            claimed.update(best.nodes)
            for reason in reasons:
                reason["reason"] += f" (lowered as '{best.name}' instead)"
        declined.extend(reasons)
    return plans, declined


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps the values of chosen nodes."""

    def __init__(self, gm: fx.GraphModule, wanted: Iterable[fx.Node]) -> None:
        super().__init__(gm)
        self.wanted, self.values = set(wanted), {}

    def run_node(self, node: fx.Node) -> Any:
        value = super().run_node(node)
        if node in self.wanted:  # copied: a later in-place op must not change what was recorded
            self.values[node] = pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, value)
        return value


def _annotate(call: fx.Node, nodes: Sequence[fx.Node], path: str) -> None:
    """Give the kernel's node the shapes and costs of the nodes it replaces (when they are annotated)."""
    call.meta[QUALNAME] = path
    if all(INFO in node.meta for node in nodes):
        infos = [node_info(node) for node in nodes]
        inputs = tuple(node_info(value).output for value in call.all_input_nodes if INFO in value.meta)
        call.meta[INFO] = NodeInfo(
            path, infos[-1].output, inputs, sum(info.macs for info in infos), sum(info.params for info in infos)
        )


def _kernels_root(gm: fx.GraphModule) -> str:
    """The first of ``lowered``, ``lowered_1``, ``lowered_2``… that names no attribute of ``gm``."""
    root, count = KERNELS_PATH, 0
    while hasattr(gm, root):
        count += 1
        root = f"{KERNELS_PATH}_{count}"
    return root


def _replace(gm: fx.GraphModule, nodes: Sequence[fx.Node], kernel: nn.Module, inputs: list[fx.Node], root: str) -> str:
    """Put ``kernel`` in place of ``nodes`` (a call of it before the last node) under ``root``; return its module path."""
    base = f"{root}.{qualname(nodes[0]).replace('.', '_')}"
    path, count = base, 1
    while _exists(gm, path):
        count += 1
        path = f"{base}_{count}"
    gm.add_submodule(path, kernel)
    last = nodes[-1]
    with gm.graph.inserting_before(last):
        call = gm.graph.call_module(path, tuple(inputs))
    _annotate(call, nodes, path)
    last.replace_all_uses_with(call)
    targets = {str(node.target) for node in nodes if node.op == "call_module"}
    for node in reversed(nodes):
        gm.graph.erase_node(node)
    still_used = {str(node.target) for node in gm.graph.nodes if node.op in ("call_module", "get_attr")}
    for target in sorted(targets - still_used):
        # keep a module a remaining call reaches through it (its child) or that it belongs to (its parent)
        if not any(used.startswith(target + ".") or target.startswith(used + ".") for used in still_used):
            gm.delete_submodule(target)
    return path


def _exists(gm: fx.GraphModule, path: str) -> bool:
    try:
        gm.get_submodule(path)
    except AttributeError:
        return False
    return True


def _with_lowerings(
    working: fx.GraphModule,
    backend: str,
    lowerings: dict[str, Lowering],
    inputs: tuple[torch.Tensor, ...],
    reference: Any,
    plugins: Plugins,
) -> LoweringResult:
    for name, lowering in sorted(lowerings.items()):
        if not is_real(lowering.tolerance) or lowering.tolerance < 0:
            raise LoweringError(
                f"lowering '{name}' of backend '{backend}' has tolerance {lowering.tolerance!r}, not a finite number >= 0; "
                f"{_blame(plugins, backend, name)}"
            )
        problem = lowering.unavailable()
        if problem is not None:
            raise LoweringError(f"backend '{backend}' cannot run here (lowering '{name}'): {problem}")
    plans, declined = _plans(working, lowerings, backend, plugins)
    externals = [_external_inputs(plan.nodes) for plan in plans]
    recorder = _Recorder(working, [node for plan, nodes in zip(plans, externals) for node in (*nodes, plan.nodes[-1])])
    with torch.no_grad():  # working is in eval mode
        recorder.run(*_copies(inputs))
    # Read each match's values now: replacing one match rewires the inputs of the next.
    values = [([recorder.values[n] for n in nodes], recorder.values[plan.nodes[-1]]) for plan, nodes in zip(plans, externals)]
    lowered: list[dict[str, Any]] = []
    paths: list[str] = []
    root = _kernels_root(working)
    for plan, (arguments, expected) in zip(plans, values):
        nodes = [qualname(node) for node in plan.nodes]
        where = f"lowering '{plan.name}' of backend '{backend}' (nodes {', '.join(nodes)})"
        blame = _blame(plugins, backend, plan.name)
        try:
            kernel = plan.lowering.build(working, plan.nodes)
        except FxcompError:  # the plugin's own message
            raise
        except Exception as error:  # noqa: BLE001 - a failing plugin is reported with its lowering
            raise LoweringError(f"{where} failed building its kernel ({type(error).__name__}: {first_line(error)}); {blame}") from error
        if not isinstance(kernel, nn.Module):
            raise LoweringError(f"{where} built a {type(kernel).__name__}, not a torch.nn.Module; {blame}")
        kernel.eval()
        with torch.no_grad():
            try:
                value = kernel(*arguments)
            except Exception as error:  # noqa: BLE001 - a failing kernel is reported with its lowering
                raise LoweringError(f"{where} built a kernel that fails ({type(error).__name__}: {error}); {blame}") from error
        mismatch = output_mismatch(value, expected)
        if mismatch is not None:
            what = "has the structure" if mismatch.index is None else "is"
            raise LoweringError(f"{where} built a kernel whose output {what} {mismatch.got} instead of {mismatch.want}; {blame}")
        error, _ = relative_error(value, expected)
        tolerance, dtype = precision_tolerance(plan.lowering.tolerance, expected, list(kernel.parameters()))
        if not error <= tolerance:
            raise LoweringError(
                f"{where} changed the value by {error:.2e} (relative), more than its tolerance "
                f"{promised(tolerance, dtype)}; {blame}"
            )
        path = _replace(working, plan.nodes, kernel, _external_inputs(plan.nodes), root)
        paths.append(path)
        lowered.append({"pattern": plan.name, "nodes": nodes, "kernel": f"{path} ({type(kernel).__name__})", "error": error})
    working.graph.lint()
    working.recompile()
    try:
        outputs = run_graph(working, _copies(inputs))
    except RuntimeError as error:
        raise LoweringError(f"the lowered graph fails to run: {error}; lower with backend 'eager' instead") from error
    error, _ = relative_error(outputs, reference)
    allowed, dtype = precision_tolerance(sum(plan.lowering.tolerance for plan in plans), reference, list(working.parameters()))
    if not error <= allowed:
        raise LoweringError(
            f"the lowered model's outputs differ from the graph's by {error:.2e} (relative), more than the "
            f"{promised(allowed, dtype)} its {len(plans)} kernel(s) allow; lower with backend 'eager' instead"
        )
    report = LoweringReport(backend, lowered, declined, _unlowered(working, paths), error)
    return LoweringResult(working, report)


def _storage(module: nn.Module) -> str:
    """How ``module``'s parametrized tensors are computed, e.g. ``weight: Mask, WeightQuant(scheme=int8)``."""
    if not parametrize.is_parametrized(module):
        return ""
    parts = []
    for name, chain in module.parametrizations.items():
        steps = [type(step).__name__ + (f"({step.extra_repr()})" if step.extra_repr() else "") for step in chain]
        parts.append(f"{name}: {', '.join(steps)}")
    return f" [{'; '.join(parts)}]"


def _unlowered(gm: fx.GraphModule, kernels: Iterable[str]) -> list[dict[str, Any]]:
    """The layers with weights left as they are, grouped by kind."""
    kernels = set(kernels)
    groups: dict[str, list[str]] = {}
    for node in gm.graph.find_nodes(op="call_module"):
        if str(node.target) in kernels:
            continue
        module = gm.get_submodule(str(node.target))
        if not any(True for _ in module.parameters()):
            continue
        kind = class_before_parametrizations(module).__name__ + _storage(module)
        groups.setdefault(kind, []).append(qualname(node))
    return [{"kind": kind, "nodes": names} for kind, names in groups.items()]
