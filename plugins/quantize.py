"""Built-in plugin ``quantize``: fake-quantize conv and linear weights (weight-only schemes).

A recipe step::

    - pass: quantize
      scheme: int4_weight_only   # int8_weight_only | int4_weight_only | binary | ternary
      group_size: 32             # int4: consecutive input weights of an output channel sharing a scale
      exclude: [fc]              # qualified-name globs (binary / ternary nets usually keep the first and last layers)

Each selected weight gets a :class:`fxcomp.passes.WeightQuant` parametrization: the
model computes with the quantized-then-dequantized weight (per-channel symmetric
int8, group-wise symmetric int4, XNOR-Net binary or TWN ternary), and training
through ``recover`` is quantization-aware (straight-through gradients). The plan
lists each layer's scheme and scale count; the statistics its relative weight
error ‖W − Ŵ‖/‖W‖.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp import hookimpl
from fxcomp.passes import (
    Option,
    Pass,
    PassContext,
    PassResult,
    WeightQuant,
    choice,
    globs,
    has_parametrization,
    integer,
    quantize_parameter,
    selected_modules,
)

_SCHEMES = {"int8_weight_only": "int8", "int4_weight_only": "int4", "binary": "binary", "ternary": "ternary"}
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


class Quantize(Pass):
    """Fake-quantize the weights of conv and linear layers (weight-only schemes)."""

    name = "quantize"
    schema = {
        "scheme": Option(choice(*_SCHEMES), default="int8_weight_only", doc="how weights are quantized"),
        "group_size": Option(integer(1), default=32, doc="int4: input weights per scale"),
        "include": Option(globs(), default=("*",), doc="qualified-name globs of layers to quantize"),
        "exclude": Option(globs(), default=(), doc="qualified-name globs of layers to keep in float"),
    }

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
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
        modules = {name: module for _node, name, module in selected_modules(gm, _LAYERS, ["*"], [])}
        errors = {}
        for entry in plan["layers"]:
            module = modules[entry["layer"]]
            before = module.weight.detach().double()
            quantize_parameter(module, "weight", entry["scheme"], self.options["group_size"])
            after = module.weight.detach().double()
            errors[entry["layer"]] = round(float(torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before)), 6)
        return PassResult(gm, modified=bool(plan["layers"]), stats={"layers": len(errors), "relative_error": errors})


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``quantize`` pass."""
    register(Quantize)
