"""``compress``: trace a copy of the model, then plan, apply and verify each pass of a recipe."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp.arguments import working_copy
from fxcomp.dynamic.model import EarlyExitModel, has_exits
from fxcomp.errors import FxcompError, LoweringError, PassError, RecipeError, first_line
from fxcomp.export.deep import CodecReport
from fxcomp.export.files import save
from fxcomp.lowering import LoweringResult, lower
from fxcomp.passes.base import Pass, PassContext, PassResult
from fxcomp.passes.recipe import RecipeLike, load_recipe, located
from fxcomp.passes.verify import run_graph, start_checks, verify
from fxcomp.plugin.host import Plugins, load_plugins
from fxcomp.report import CompressionReport, layer_rows, totals
from fxcomp.tracing import as_input_tuple, propagate, trace
from fxcomp.tracing.tracer import LeafSpec


@dataclass
class CompressionResult:
    """The outcome of :func:`compress`.

    Attributes:
        model: the rewritten ``GraphModule`` (with ``dry_run``, the traced, unrewritten one);
            an :class:`fxcomp.EarlyExitModel` over it when the recipe added early exits.
        report: per-layer and total figures before and after; ``str(report)`` renders tables.
        plan: one JSON-serializable record per pass: its name, options, what it decided
            and, unless ``dry_run``, whether it modified the graph and its statistics.
        save_options: the recipe's ``save`` section (e.g. ``{"codec": "deep"}``), used by :meth:`save`.
        lowered: when the recipe ends with a ``lower`` step, :func:`fxcomp.lower`'s result for
            ``model`` (the module to run and its report); ``model`` stays the graph to save and inspect.
    """

    model: fx.GraphModule | EarlyExitModel
    report: CompressionReport
    plan: list[dict[str, Any]]
    save_options: dict[str, Any] = field(default_factory=dict)
    lowered: LoweringResult | None = None

    def save(self, path: str | os.PathLike, *, plugins: Plugins | None = None) -> CodecReport | None:
        """``fxcomp.save`` the model to ``path`` as the recipe's ``save`` section says; its codec report, if any."""
        return save(self.model, path, plugins=plugins, **self.save_options)


def _label(index: int, compression_pass: Pass) -> str:
    """How messages name recipe step ``index``."""
    return f"pass '{compression_pass.name}' (passes[{index}])"


def _run_pass_step(index: int, compression_pass: Pass, step: Callable[..., Any], *args: Any) -> Any:
    """``step(*args)`` of recipe step ``index``, ``compression_pass``; its errors name the step."""
    try:
        return step(*args)
    except RecipeError as error:
        raise located(error, index, compression_pass.name) from error
    except FxcompError:
        raise
    except Exception as error:  # noqa: BLE001 - a crashing pass is reported with its name
        raise PassError(f"{_label(index, compression_pass)} raised {type(error).__name__}: {first_line(error)}") from error


def _working_copy(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    leaf_modules: Sequence[LeafSpec],
    concrete_args: dict[str, Any] | None,
) -> fx.GraphModule:
    working = working_copy(model.model if isinstance(model, EarlyExitModel) else model)
    if isinstance(working, fx.GraphModule):
        propagate(working, inputs)
        return working
    return trace(working, inputs, leaf_modules=leaf_modules, concrete_args=concrete_args)


def _check_result(label: str, result: Any) -> None:
    """Refuse what ``apply`` returned unless it is a PassResult with a GraphModule and JSON statistics."""
    if not isinstance(result, PassResult) or not isinstance(result.graph_module, fx.GraphModule):
        got = "a GraphModule" if isinstance(result, fx.GraphModule) else type(result).__name__
        raise PassError(f"{label}: apply returned {got}; return fxcomp.PassResult(graph_module, modified, stats)")
    try:
        if not isinstance(result.stats, dict):
            raise TypeError(f"a {type(result.stats).__name__}")
        json.dumps(result.stats)
    except (TypeError, ValueError) as error:
        raise PassError(f"{label} returned stats that are not a JSON-serializable dict ({error}); fix the pass") from error


def compress(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    recipe: RecipeLike,
    *,
    calib_data: Any = None,
    train_data: Any = None,
    val_data: Any = None,
    dry_run: bool = False,
    plugins: Plugins | None = None,
    leaf_modules: Sequence[LeafSpec] = (),
    concrete_args: dict[str, Any] | None = None,
) -> CompressionResult:
    """Compress a copy of ``model`` with the passes of ``recipe``.

    Args:
        model: an ``nn.Module`` (traced with :func:`fxcomp.trace`) or an annotated ``GraphModule``.
            It is never modified, also when a pass fails.
        example_inputs: a tensor or a tuple of tensors used for tracing and verification.
        recipe: a YAML file path, a YAML string, a dict ``{"passes": [...]}`` or a list of passes.
        calib_data: data for data-driven passes (an iterable of input batches).
        train_data, val_data: labelled data for passes that train (``recover``): a Dataset,
            a DataLoader or a list of ``(inputs, target)`` batches.
        dry_run: plan every pass (applying each to a scratch copy so later plans see
            earlier rewrites) but return the unrewritten model; a ``lower`` step is not run.
        plugins: the plugins to take passes from; loaded from entry points when omitted.
        leaf_modules, concrete_args: as in :func:`fxcomp.trace`.

    After each pass the graph is linted, recompiled, re-annotated and run; its output
    structure and shapes must be unchanged, and outputs must stay within the pass's
    promised tolerance. Any failure raises :class:`fxcomp.PassError` naming the pass.
    """
    plugins = plugins if plugins is not None else load_plugins()
    loaded = load_recipe(recipe, plugins)
    passes: list[Pass] = loaded.passes
    inputs = as_input_tuple(example_inputs)
    gm = _working_copy(model, inputs, leaf_modules, concrete_args)
    unrewritten = copy.deepcopy(gm) if dry_run else None
    before_rows, before_totals = layer_rows(gm), totals(gm)
    try:
        baseline = run_graph(gm, inputs)
    except RuntimeError as error:
        raise PassError(f"the traced model fails to run on example_inputs before any pass: {error}") from error

    outputs = baseline
    states = start_checks(gm, inputs, baseline, plugins.registry.checks)
    original = copy.deepcopy(gm) if any(p.uses_original for p in passes) else None
    records: list[dict[str, Any]] = []
    for index, compression_pass in enumerate(passes):
        label = _label(index, compression_pass)
        # Copies of what the caller owns, of the original model and of earlier records, so a pass cannot change them.
        teacher = copy.deepcopy(original) if compression_pass.uses_original else None
        context = PassContext(
            tuple(t.clone() for t in inputs), calib_data, plugins, train_data, val_data, teacher, copy.deepcopy(records)
        )
        plan = _run_pass_step(index, compression_pass, compression_pass.plan, gm, context)
        try:
            json.dumps(plan)
        except (TypeError, ValueError) as error:
            raise PassError(f"{label} returned a plan that is not JSON-serializable: {error}") from error
        options = {k: v for k, v in compression_pass.config().items() if k != "pass"}
        record: dict[str, Any] = {"pass": compression_pass.name, "options": options, "plan": plan}
        records.append(record)
        if dry_run and index == len(passes) - 1:
            break
        result: PassResult = _run_pass_step(index, compression_pass, compression_pass.apply, gm, plan, context)
        _check_result(label, result)
        gm = result.graph_module
        outputs = verify(gm, compression_pass, label, inputs, outputs, baseline, plugins.registry.checks, states)
        record.update(modified=bool(result.modified), stats=result.stats)

    if unrewritten is not None:
        gm = unrewritten
    model = EarlyExitModel(gm) if has_exits(gm) else gm
    report = CompressionReport(
        before=before_rows,
        after=layer_rows(gm),
        before_totals=before_totals,
        after_totals=totals(gm),
        passes=records,
        exits=model.exit_plan() if isinstance(model, EarlyExitModel) else None,
    )
    lowered = None
    if loaded.lower is not None and not dry_run:
        if isinstance(model, EarlyExitModel):
            raise LoweringError("an early-exit model cannot be lowered yet; drop the recipe's `lower` step")
        lowered = lower(gm, example_inputs=inputs, plugins=plugins, **loaded.lower)
    return CompressionResult(model=model, report=report, plan=records, save_options=loaded.save, lowered=lowered)
