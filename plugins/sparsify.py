"""Built-in plugin ``sparsify``: unstructured magnitude pruning.

The pass sets the entries of smallest magnitude of the selected weights (by
default the ``weight`` of every convolution and linear layer; biases and
normalization layers stay as they are) to zero, and holds them there with a
:class:`fxcomp.passes.Mask`, so the model can be fine-tuned with any optimizer
and the zeros stay exact. ``scope: layer`` gives every selected weight the same
sparsity; ``scope: global`` ranks the entries of all selected weights together
against one magnitude threshold, so layers end up with different sparsities.

Entries that are already zero (from an earlier ``sparsify``) are removed first,
and a weight that already has a mask gets the two masks combined: sparsifying
again keeps the old zeros and only adds new ones. The plan records, per weight,
its size, its zeros before the pass, how many entries stay and the resulting
sparsity; ``apply`` removes the entries of smallest magnitude (ties go to the
lower flat index), so the same plan on the same weights gives the same mask.
Shapes and MACs do not change: the zeros pay off with sparse kernels or a
sparse file format, and :func:`fxcomp.strip_masks` bakes them into plain weights.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp import hookimpl, qualname
from fxcomp.passes import (
    Option,
    Pass,
    PassContext,
    PassResult,
    add_mask,
    choice,
    globs,
    integer,
    number,
    parameter_holders,
    selected_modules,
    weight_skip_reason,
)

_SPARSIFIABLE = (nn.modules.conv._ConvNd, nn.Linear)


def _lowest(magnitudes: torch.Tensor, count: int) -> torch.Tensor:
    """Which ``count`` entries of the 1-D ``magnitudes`` are smallest; ties go to the lower index."""
    if count == 0:
        return torch.zeros_like(magnitudes, dtype=torch.bool)
    threshold = magnitudes.kthvalue(count).values
    lowest = magnitudes < threshold
    ties = (magnitudes == threshold).nonzero().flatten()
    lowest[ties[: count - int(lowest.count_nonzero())]] = True
    return lowest


class Sparsify(Pass):
    """Set the smallest-magnitude entries of conv and linear weights to zero, and keep them there."""

    name = "sparsify"
    schema = {
        "sparsity": Option(number(0, 1, high_open=True), doc="fraction of the selected weights' entries to set to zero"),
        "scope": Option(
            choice("layer", "global"),
            default="layer",
            doc="layer: every selected weight gets that sparsity; global: one magnitude threshold for all of them",
        ),
        "include": Option(globs(), default=("*",), doc="qualified-name globs of conv/linear layers to sparsify"),
        "exclude": Option(globs(), default=(), doc="qualified-name globs of conv/linear layers to leave dense"),
        "min_params": Option(integer(0), default=0, doc="leave layers whose weight has fewer entries than this"),
    }

    def _selected(self, gm: fx.GraphModule) -> tuple[list[tuple[str, torch.Tensor]], list[dict[str, Any]]]:
        """The weights to sparsify as (parameter name, value), and the skipped ones with a reason."""
        holders = parameter_holders(gm)
        selected: list[tuple[str, torch.Tensor]] = []
        skipped: list[dict[str, Any]] = []
        for _, layer, module in selected_modules(gm, _SPARSIFIABLE, self.options["include"], self.options["exclude"]):
            parameter = f"{layer}.weight"
            weight = module.weight.detach()
            if weight.numel() < self.options["min_params"]:
                reason = f"{weight.numel()} entries, fewer than min_params={self.options['min_params']}"
            else:
                reason = weight_skip_reason(module, holders)
            if reason is not None:
                skipped.append({"parameter": parameter, "reason": reason})
            else:
                selected.append((parameter, weight))
        return selected, skipped

    def _removed(self, weights: list[torch.Tensor]) -> list[int]:
        """How many entries of each weight end up zero: its zeros first, then the smallest magnitudes."""
        sparsity = self.options["sparsity"]
        zeros = [weight.numel() - int(weight.count_nonzero()) for weight in weights]
        if self.options["scope"] == "layer" or not weights:
            return [max(round(w.numel() * sparsity), z) for w, z in zip(weights, zeros)]
        dtype = functools.reduce(torch.promote_types, [weight.dtype for weight in weights])
        magnitudes = torch.cat([weight.abs().flatten().to("cpu", dtype) for weight in weights])
        lowest = _lowest(magnitudes, max(round(magnitudes.numel() * sparsity), sum(zeros)))
        return [int(part.count_nonzero()) for part in lowest.split([weight.numel() for weight in weights])]

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        selected, skipped = self._selected(gm)
        weights = [weight for _, weight in selected]
        parameters = [
            {
                "parameter": name,
                "size": weight.numel(),
                "zeros_before": weight.numel() - int(weight.count_nonzero()),
                "kept": weight.numel() - removed,
                "sparsity": round(removed / weight.numel(), 4),
            }
            for (name, weight), removed in zip(selected, self._removed(weights))
        ]
        return {"parameters": parameters, "skipped": skipped}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        targets = {qualname(node): node.target for node in gm.graph.nodes if node.op == "call_module"}
        masked = 0
        for entry in plan["parameters"]:
            layer, _, attribute = entry["parameter"].rpartition(".")
            module = gm.get_submodule(targets[layer])
            weight = getattr(module, attribute).detach()
            removed = weight.numel() - entry["kept"]
            if removed == 0:
                continue
            add_mask(module, attribute, ~_lowest(weight.abs().flatten(), removed).reshape(weight.shape))
            masked += 1
        size = sum(entry["size"] for entry in plan["parameters"])
        kept = sum(entry["kept"] for entry in plan["parameters"])
        stats = {"masked": masked, "sparsity": round(1 - kept / size, 4) if size else 0.0}
        return PassResult(gm, modified=masked > 0, stats=stats)


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``sparsify`` pass."""
    register(Sparsify)
