"""Built-in plugin ``quantize``: fake-quantize conv and linear layers.

A recipe step::

    - pass: quantize
      scheme: int8               # int8 | int8_weight_only | int4_weight_only | binary | ternary
      observer: percentile       # int8 only: minmax (default) | moving_average | percentile
      exclude: [fc]              # qualified-name globs (binary / ternary nets usually keep the first and last layers)

Each selected weight gets a :class:`fxcomp.passes.WeightQuant` parametrization: the
model computes with the quantized-then-dequantized weight (per-channel symmetric
int8, symmetric int4 per ``group_size`` consecutive input weights of an output
channel (an option of ``int4_weight_only`` only, default 32), XNOR-Net binary or TWN
ternary). ``int8`` also
quantizes every selected layer's input: a :class:`fxcomp.passes.ActivationQuant`
stub (per-tensor affine, 8 bits) is inserted in the graph before the layer, and
its range is calibrated by running ``calib_data`` through the model. Training
through ``recover`` is quantization-aware (straight-through gradients; activation
ranges stay as calibrated). A later ``convert`` step stores each fake-quantized
weight as its integers and scales (int8, or int4 packed two per byte; binary and
ternary as int8), exactly the same weights, so ``fxcomp.save`` files shrink. The plan
lists each layer's scheme and scale count, and the layers skipped with the reason
(already quantized or converted, shared with another module, empty); the statistics
give each layer's relative weight error ‖W − Ŵ‖/‖W‖ and, for ``int8``, its input's
calibrated range.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp import CalibrationError, RecipeError, hookimpl
from fxcomp.passes import (
    OBSERVERS,
    ActivationQuant,
    Option,
    PackedWeight,
    Pass,
    PassContext,
    PassResult,
    WeightQuant,
    calibration_outputs,
    choice,
    convert,
    globs,
    has_parametrization,
    integer,
    optional,
    parameter_holders,
    quantize_parameter,
    selected_modules,
    weight_skip_reason,
)
from fxcomp.tracing import eval_mode

_SCHEMES = {
    "int8": "int8",
    "int8_weight_only": "int8",
    "int4_weight_only": "int4",
    "binary": "binary",
    "ternary": "ternary",
}
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
_GROUP_SIZE = 32
_OBSERVER = "minmax"


class Quantize(Pass):
    """Fake-quantize the weights of conv and linear layers (weight-only schemes)."""

    name = "quantize"
    schema = {
        "scheme": Option(choice(*_SCHEMES), default="int8_weight_only", doc="how weights are quantized"),
        "group_size": Option(optional(integer(1)), default=None, doc=f"int4: input weights per scale (default {_GROUP_SIZE})"),
        "observer": Option(
            optional(choice(*OBSERVERS)), default=None, doc=f"int8: how activation ranges are observed (default {_OBSERVER})"
        ),
        "include": Option(globs(), default=("*",), doc="qualified-name globs of layers to quantize"),
        "exclude": Option(globs(), default=(), doc="qualified-name globs of layers to keep in float"),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        scheme = self.options["scheme"]
        if self.options["group_size"] is not None and scheme != "int4_weight_only":
            raise RecipeError(f"quantize: group_size applies to scheme int4_weight_only; drop it with scheme {scheme}")
        if self.options["observer"] is not None and scheme != "int8":
            raise RecipeError(f"quantize: observer applies to scheme int8; drop it with scheme {scheme}, which keeps inputs in float")

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        if self.options["scheme"] == "int8" and context.calib_data is None:
            raise CalibrationError(
                "quantize.scheme: int8 calibrates activation ranges; pass calib_data=[batch, ...] to fxcomp.compress"
            )
        scheme = _SCHEMES[self.options["scheme"]]
        layers, skipped = [], []
        holders = parameter_holders(gm)
        for _node, name, module in selected_modules(gm, _LAYERS, self.options["include"], self.options["exclude"]):
            reason = _skip_reason(module, holders)
            if reason is not None:
                skipped.append({"layer": name, "reason": reason})
                continue
            weight = module.weight
            per_channel = weight[0].numel()
            groups = -(-per_channel // self._group_size()) if scheme == "int4" else 1
            layers.append({"layer": name, "scheme": scheme, "scales": weight.shape[0] * groups, "numel": weight.numel()})
        return {"layers": layers, "skipped": skipped}

    def _group_size(self) -> int:
        return self.options["group_size"] or _GROUP_SIZE

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        selected = {name: (node, module) for node, name, module in selected_modules(gm, _LAYERS, ["*"], [])}
        errors, stubs = {}, {}
        for entry in plan["layers"]:
            node, module = selected[entry["layer"]]
            before = module.weight.detach().double()
            quantize_parameter(module, "weight", entry["scheme"], self._group_size())
            after = module.weight.detach().double()
            errors[entry["layer"]] = round(float(torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before)), 6)
            if self.options["scheme"] == "int8":
                stubs[entry["layer"]] = _insert_input_stub(gm, node, ActivationQuant(self.options["observer"] or _OBSERVER))
        stats: dict[str, Any] = {"layers": len(errors), "relative_error": errors}
        if stubs:
            gm.recompile()
            _calibrate(gm, list(stubs.values()), context)
            stats["input_range"] = {name: [round(float(s.low), 6), round(float(s.high), 6)] for name, s in stubs.items()}
        return PassResult(gm, modified=bool(plan["layers"]), stats=stats)


def _skip_reason(module: nn.Module, holders: dict[int, int]) -> str | None:
    """Why the layer ``module`` is not quantized, or None; ``holders`` from :func:`parameter_holders`."""
    if has_parametrization(module, "weight", WeightQuant):
        return "its weight is already quantized"
    if has_parametrization(module, "weight", PackedWeight):
        return "its weight is already converted to integers"
    return weight_skip_reason(module, holders)


def _insert_input_stub(gm: fx.GraphModule, node: fx.Node, stub: ActivationQuant) -> ActivationQuant:
    """Put ``stub`` on the first input of the layer ``node`` calls, as a module of its own beside the layer."""
    path = f"{node.target}_input_quant"
    gm.add_submodule(path, stub)
    with gm.graph.inserting_before(node):
        quantized = gm.graph.call_module(path, (node.args[0],))
    node.args = (quantized, *node.args[1:])
    return stub


@torch.no_grad()
def _calibrate(gm: fx.GraphModule, stubs: list[ActivationQuant], context: PassContext) -> None:
    """Run the calibration batches through ``gm`` (eval mode) with the stubs observing."""
    for stub in stubs:
        stub.calibrating = True
    try:
        with eval_mode(gm):
            for _ in calibration_outputs(gm, context.calib_data, "quantize.scheme: int8"):
                pass
    finally:
        for stub in stubs:
            stub.calibrating = False


class Convert(Pass):
    """Store every fake-quantized weight as integers and scales (int8; int4 packed two per byte)."""

    name = "convert"
    tolerance = 0.0  # the stored integers give back exactly the fake-quantized weights

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        modules = selected_modules(gm, _LAYERS, ["*"], [])
        layers = [name for _node, name, module in modules if has_parametrization(module, "weight", WeightQuant)]
        return {"layers": layers}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        converted = convert(gm)
        stored = {
            name: int(tensor.numel() * tensor.element_size())
            for name, tensor in gm.named_parameters()
            if not tensor.is_floating_point()
        }
        return PassResult(gm, modified=bool(converted), stats={"tensors": len(converted), "integer_bytes": sum(stored.values())})


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``quantize`` and ``convert`` passes."""
    register(Quantize)
    register(Convert)
