"""Built-in plugin ``quantize``: fake-quantize conv and linear layers.

A recipe step::

    - pass: quantize
      scheme: int8               # int8 | int8_weight_only | int4_weight_only | binary | ternary
      observer: percentile       # int8: minmax | moving_average | percentile
      group_size: 32             # int4: consecutive input weights of an output channel sharing a scale
      exclude: [fc]              # qualified-name globs (binary / ternary nets usually keep the first and last layers)

Each selected weight gets a :class:`fxcomp.passes.WeightQuant` parametrization: the
model computes with the quantized-then-dequantized weight (per-channel symmetric
int8, group-wise symmetric int4, XNOR-Net binary or TWN ternary). ``int8`` also
quantizes every selected layer's input: a :class:`fxcomp.passes.ActivationQuant`
stub (per-tensor affine, 8 bits) is inserted in the graph before the layer, and
its range is calibrated by running ``calib_data`` through the model. Training
through ``recover`` is quantization-aware (straight-through gradients; activation
ranges stay as calibrated). A later ``convert`` step stores each fake-quantized
weight as its integers and scales (int8, or int4 packed two per byte; binary and
ternary as int8), exactly the same weights, so ``fxcomp.save`` files shrink. The plan lists each layer's scheme and scale count;
the statistics give its relative weight error ‖W − Ŵ‖/‖W‖ and, for ``int8``, its
input's calibrated range.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize

from fxcomp import CalibrationError, hookimpl
from fxcomp.passes import (
    OBSERVERS,
    ActivationQuant,
    Option,
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
    quantize_parameter,
    selected_modules,
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


class Quantize(Pass):
    """Fake-quantize the weights of conv and linear layers (weight-only schemes)."""

    name = "quantize"
    schema = {
        "scheme": Option(choice(*_SCHEMES), default="int8_weight_only", doc="how weights are quantized"),
        "group_size": Option(integer(1), default=32, doc="int4: input weights per scale"),
        "observer": Option(choice(*OBSERVERS), default="minmax", doc="int8: how activation ranges are observed"),
        "include": Option(globs(), default=("*",), doc="qualified-name globs of layers to quantize"),
        "exclude": Option(globs(), default=(), doc="qualified-name globs of layers to keep in float"),
    }

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        if self.options["scheme"] == "int8" and context.calib_data is None:
            raise CalibrationError(
                "quantize.scheme: int8 calibrates activation ranges; pass calib_data=[batch, ...] to fxcomp.compress"
            )
        scheme = _SCHEMES[self.options["scheme"]]
        layers, skipped = [], []
        for _node, name, module in selected_modules(gm, _LAYERS, self.options["include"], self.options["exclude"]):
            if has_parametrization(module, "weight", WeightQuant):
                skipped.append({"layer": name, "reason": "its weight is already quantized"})
                continue
            weight = module.weight
            per_channel = weight[0].numel()
            groups = -(-per_channel // self.options["group_size"]) if scheme == "int4" else 1
            layers.append({"layer": name, "scheme": scheme, "scales": weight.shape[0] * groups, "numel": weight.numel()})
        return {"layers": layers, "skipped": skipped}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        selected = {name: (node, module) for node, name, module in selected_modules(gm, _LAYERS, ["*"], [])}
        errors, stubs = {}, {}
        for entry in plan["layers"]:
            node, module = selected[entry["layer"]]
            before = module.weight.detach().double()
            quantize_parameter(module, "weight", entry["scheme"], self.options["group_size"])
            after = module.weight.detach().double()
            errors[entry["layer"]] = round(float(torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before)), 6)
            if self.options["scheme"] == "int8":
                stubs[entry["layer"]] = _insert_input_stub(gm, node, ActivationQuant(self.options["observer"]))
        stats: dict[str, Any] = {"layers": len(errors), "relative_error": errors}
        if stubs:
            gm.recompile()
            _calibrate(gm, list(stubs.values()), context)
            stats["input_range"] = {name: [round(float(s.low), 6), round(float(s.high), 6)] for name, s in stubs.items()}
        return PassResult(gm, modified=bool(plan["layers"]), stats=stats)


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
        layers = [name for _node, name, module in selected_modules(gm, _LAYERS, ["*"], []) if _fake_quantized(module)]
        return {"layers": layers}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        converted = convert(gm)
        stored = {
            name: int(tensor.numel() * tensor.element_size())
            for name, tensor in gm.named_parameters()
            if not tensor.is_floating_point()
        }
        return PassResult(gm, modified=bool(converted), stats={"tensors": len(converted), "integer_bytes": sum(stored.values())})


def _fake_quantized(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and isinstance(module.parametrizations["weight"][-1], WeightQuant)


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``quantize`` and ``convert`` passes."""
    register(Quantize)
    register(Convert)
