"""Weight fake-quantization: a parametrization rounding a weight to a low-bit grid, trainable through it.

:class:`WeightQuant` is a ``torch.nn.utils.parametrize`` parametrization like
:class:`fxcomp.passes.Mask`: the module keeps its float weight and computes the
quantized-then-dequantized one on every access, from scales taken from the
current weight, so the model computes what an integer kernel would. Gradients
pass the rounding unchanged (the straight-through estimator), which is
quantization-aware training when ``recover`` trains the model. Schemes:

* ``int8``: symmetric per output channel, ``scale = max|w| / 127``, integers in [−127, 127];
* ``int4``: symmetric per group of ``group_size`` consecutive input weights of an output
  channel, ``scale = max|w| / 7``, integers in [−7, 7];
* ``binary`` (XNOR-Net): ``α · sign(w)`` per output channel, ``α = mean|w|``;
* ``ternary`` (TWN): ``α · sign(w)`` where ``|w| > Δ``, else 0, per output channel, with
  ``Δ = 0.7 · mean|w|`` and ``α`` the mean of the ``|w|`` above ``Δ``.

Zeros stay zero under ``int8``, ``int4`` and ``ternary``; ``binary`` has no zero.

:class:`ActivationQuant` is a module (a quantize/dequantize stub in the graph) that
fake-quantizes a tensor per-tensor affine to unsigned 8 bits, with a range its
observer learnt while calibrating: ``minmax`` (the extremes seen),
``moving_average`` (an exponential average of each batch's extremes) or
``percentile`` (the average of each batch's 0.01 and 99.99 percentiles, so rare
outliers do not stretch the grid). The range always includes zero, so zero is
exact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from fxcomp.errors import CalibrationError, UsageError
from fxcomp.passes.masks import Mask, give_own_class, strip_masks

SCHEMES = ("int8", "int4", "binary", "ternary")
OBSERVERS = ("minmax", "moving_average", "percentile")
_PERCENTILE_SAMPLE = 1 << 20  # values per batch the percentile observer looks at
_LEVELS = {"int8": 127, "int4": 7}


def _padding(per_channel: int, group_size: int | None) -> int:
    """Zeros that complete the last group of an output channel's ``per_channel`` weights (0 without groups)."""
    return 0 if group_size is None else -per_channel % group_size


def _per_row(weight: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, int]:
    """``weight`` as rows (one per output channel, or per group) zero-padded to full groups; the padding."""
    rows = weight.reshape(weight.shape[0], -1)
    if group_size is None:
        return rows, 0
    padding = _padding(rows.shape[1], group_size)
    if padding:
        rows = torch.nn.functional.pad(rows, (0, padding))
    return rows.reshape(-1, group_size), padding


def _from_rows(rows: torch.Tensor, padding: int, weight: torch.Tensor) -> torch.Tensor:
    rows = rows.reshape(weight.shape[0], -1)
    if padding:
        rows = rows[:, : rows.shape[1] - padding]
    return rows.reshape(weight.shape)


def quantize_weight(weight: torch.Tensor, scheme: str, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(integers, scales)`` of ``weight`` under ``scheme``; ``integers * scales`` (per row) dequantizes.

    The integers are a float tensor of whole numbers shaped like the weight's rows
    (per output channel; per group for ``int4``); binary and ternary give −1/0/1. Their
    zeros are ``+0.0`` (rounding a small negative weight gives ``-0.0``, which a sparse
    file format would keep as an entry).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    rows, _ = _per_row(weight, group_size if scheme == "int4" else None)
    magnitude = rows.abs()
    if scheme in _LEVELS:
        levels = _LEVELS[scheme]
        scales = magnitude.amax(1, keepdim=True) / levels
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        return _positive_zeros(torch.clamp(torch.round(rows / scales), -levels, levels)), scales
    if scheme == "binary":
        signs = torch.where(rows >= 0, 1.0, -1.0).to(rows.dtype)
        return signs, magnitude.mean(1, keepdim=True)
    threshold = 0.7 * magnitude.mean(1, keepdim=True)
    kept = magnitude > threshold
    count = kept.sum(1, keepdim=True).clamp(min=1)
    scales = (magnitude * kept).sum(1, keepdim=True) / count
    return _positive_zeros(torch.sign(rows) * kept), scales


def _positive_zeros(integers: torch.Tensor) -> torch.Tensor:
    """``integers`` with every ``-0.0`` made ``+0.0`` (in IEEE arithmetic, −0 + 0 = +0)."""
    return integers + 0.0


class _StraightThrough(torch.autograd.Function):
    """Returns ``rounded`` exactly; the gradient goes to ``value`` unchanged."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
        return rounded

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(value: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """``rounded`` (bitwise) in the forward pass, the identity for ``value`` in the backward pass."""
    return _StraightThrough.apply(value, rounded.detach())


def fake_quantize(weight: torch.Tensor, scheme: str, group_size: int | None = None) -> torch.Tensor:
    """``weight`` quantized and dequantized under ``scheme``, with straight-through gradients."""
    padding = _padding(weight[0].numel(), group_size if scheme == "int4" else None)
    integers, scales = quantize_weight(weight.detach(), scheme, group_size)
    return straight_through(weight, _from_rows(integers * scales, padding, weight))


class WeightQuant(nn.Module):
    """A parametrization returning its input fake-quantized under ``scheme`` (see the module docstring)."""

    fxcomp_parametrization = True  # fxcomp.strip_masks bakes it

    def __init__(self, scheme: str, group_size: int | None = None) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
        if scheme == "int4" and (group_size is None or group_size < 1):
            raise ValueError("int4 needs a group_size of at least 1")
        self.scheme = scheme
        self.group_size = group_size if scheme == "int4" else None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weight, self.scheme, self.group_size)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """What to store when the weight is assigned: the float value."""
        return weight

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}" + (f", group_size={self.group_size}" if self.group_size else "")


def quantize_parameter(module: nn.Module, name: str, scheme: str, group_size: int | None = None) -> None:
    """Fake-quantize ``module``'s tensor ``name`` (a weight) under ``scheme`` from now on, masks kept."""
    give_own_class(module)
    parametrize.register_parametrization(module, name, WeightQuant(scheme, group_size))


class ActivationQuant(nn.Module):
    """Fake-quantizes its input per tensor to 8-bit affine integers, with a range learnt by an observer.

    While :attr:`calibrating` it observes its inputs and passes them through unchanged;
    afterwards it returns ``(clamp(round(x / scale) + zero_point, 0, 255) − zero_point) · scale``
    with straight-through gradients. Running it uncalibrated is an error.
    """

    def __init__(self, observer: str = "minmax", *, momentum: float = 0.1, percentile: float = 99.99) -> None:
        super().__init__()
        if observer not in OBSERVERS:
            raise ValueError(f"observer {observer!r} is not one of {', '.join(OBSERVERS)}")
        self.observer, self.momentum, self.percentile = observer, momentum, percentile
        self.calibrating = False
        self.calibrated = False
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the range with one batch ``x``."""
        values = x.detach().float().reshape(-1)
        if self.observer == "percentile":
            if values.numel() > _PERCENTILE_SAMPLE:
                values = values[torch.linspace(0, values.numel() - 1, _PERCENTILE_SAMPLE).long()]
            low, high = torch.quantile(values, torch.tensor([1 - self.percentile / 100, self.percentile / 100]))
        else:
            low, high = values.min(), values.max()
        count = int(self.batches)
        if count == 0:
            self.low.fill_(low), self.high.fill_(high)
        elif self.observer == "minmax":
            self.low.fill_(torch.minimum(self.low, low)), self.high.fill_(torch.maximum(self.high, high))
        elif self.observer == "moving_average":
            self.low.lerp_(low, self.momentum), self.high.lerp_(high, self.momentum)
        else:  # percentile: the running mean of the batches' percentiles
            self.low.add_((low - self.low) / (count + 1)), self.high.add_((high - self.high) / (count + 1))
        self.batches.add_(1)
        self.calibrated = True

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` of the observed range widened to include zero."""
        low, high = torch.clamp(self.low, max=0), torch.clamp(self.high, min=0)
        scale = torch.clamp((high - low) / 255, min=torch.finfo(torch.float32).tiny)
        zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
        return scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        if not self.calibrated:
            raise CalibrationError("this activation quantizer was never calibrated; run calibration data through it first")
        scale, zero_point = self.qparams()
        integers = torch.clamp(torch.round(x.detach() / scale) + zero_point, 0, 255)
        return straight_through(x, (integers - zero_point) * scale)

    def extra_repr(self) -> str:
        return f"observer={self.observer}, range=[{float(self.low):.4g}, {float(self.high):.4g}]"


def pack_int4(integers: torch.Tensor) -> torch.Tensor:
    """Whole numbers in [−8, 7] packed two per byte (uint8, low nibble first), flattened."""
    nibbles = (integers.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` whole numbers :func:`pack_int4` packed, as int8."""
    nibbles = torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1)[:count]
    return nibbles.to(torch.int8) - 8


class PackedWeight(nn.Module):
    """A parametrization whose stored tensor is the quantized weight's integers: int8, or int4 packed two
    per byte (uint8). It returns ``integers · scales``, bitwise the weight :class:`WeightQuant` computed."""

    fxcomp_parametrization = True

    def __init__(self, scheme: str, group_size: int | None, shape: torch.Size, scales: torch.Tensor) -> None:
        super().__init__()
        self.scheme, self.group_size, self.shape = scheme, group_size, list(shape)
        self.register_buffer("scales", scales.detach().clone())

    def _rows(self) -> tuple[int, int, int]:
        """Rows, columns (per row) and padding of the weight's integer matrix."""
        channels, per_channel = self.shape[0], max(1, int(torch.Size(self.shape)[1:].numel()))
        if self.group_size is None:
            return channels, per_channel, 0
        padding = _padding(per_channel, self.group_size)
        return channels * (per_channel + padding) // self.group_size, self.group_size, padding

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        rows, columns, padding = self._rows()
        integers = unpack_int4(stored, rows * columns) if self.scheme == "int4" else stored
        dequantized = integers.to(self.scales.dtype).reshape(rows, columns) * self.scales
        return _from_rows(dequantized, padding, torch.empty(self.shape, device="meta"))

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The integers to store for a float ``weight`` (stored integers are kept as they are)."""
        if not weight.is_floating_point():
            return weight
        return self.pack(quantize_weight(weight, self.scheme, self.group_size)[0])

    def pack(self, integers: torch.Tensor) -> torch.Tensor:
        """The tensor storing ``integers`` (whole numbers laid out as :func:`quantize_weight` gives them)."""
        return pack_int4(integers) if self.scheme == "int4" else integers.to(torch.int8)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, shape={tuple(self.shape)}" + (f", group_size={self.group_size}" if self.group_size else "")


@torch.no_grad()
def _quantizer_input(chain: parametrize.ParametrizationList) -> torch.Tensor:
    """The float weight the :class:`WeightQuant` of ``chain`` quantizes: the stored tensor through the steps before it."""
    value = chain.original
    for step in chain:
        if isinstance(step, WeightQuant):
            break
        value = step(value)
    return value.detach().clone()


def _kept_after_quantizer(after: list[nn.Module], where: str) -> torch.Tensor | None:
    """Which entries the masks ``after`` (the steps after the :class:`WeightQuant` of ``where``) keep; None without any.

    Raises :class:`fxcomp.UsageError` when a step there is not a mask.
    """
    others = sorted({type(step).__name__ for step in after if not isinstance(step, Mask)})
    if others:
        raise UsageError(f"'{where}' is parametrized by {', '.join(others)} after its quantization; quantize after that step, not before")
    if not after:
        return None
    return torch.stack([step.mask for step in after]).all(0)


def convert(module: nn.Module) -> list[str]:
    """Store every fake-quantized weight of ``module`` as integers and scales (:class:`PackedWeight`), in place.

    A weight parametrized by a :class:`WeightQuant` (masks may come before and after it)
    is replaced by the integers it quantizes to, zero where a later mask zeroes it; the
    module computes exactly the same weight, training no longer changes it, and
    ``fxcomp.save`` stores one byte per int8 weight, half a byte per int4 one. Returns
    the converted tensors' names. Raises :class:`fxcomp.UsageError` when a parametrization
    other than a mask follows the quantization (clustering a quantized weight, say).
    """
    converted = []
    for path, owner in list(module.named_modules()):
        if not parametrize.is_parametrized(owner):
            continue
        for name, chain in list(owner.parametrizations.items()):
            steps = list(chain)
            position = next((i for i, step in enumerate(steps) if isinstance(step, WeightQuant)), None)
            if position is None:
                continue
            quant, where = steps[position], f"{path}.{name}" if path else name
            kept = _kept_after_quantizer(steps[position + 1 :], where)
            value = _quantizer_input(chain)
            integers, scales = quantize_weight(value, quant.scheme, quant.group_size)
            if kept is not None:
                integers = integers * _per_row(kept.to(integers.dtype), quant.group_size)[0]
            packed = PackedWeight(quant.scheme, quant.group_size, value.shape, scales)
            # Swap the chain's contents in place: torch's remove_parametrizations would edit the
            # generated class that copies of the module share.
            chain._parameters["original"] = nn.Parameter(packed.pack(integers), requires_grad=False)
            for index in reversed(range(len(chain))):
                del chain[index]
            chain.append(packed)
            chain.unsafe = True
            converted.append(where)
    return converted


@dataclass(frozen=True)
class IntegerWeight:
    """The whole numbers and scales a quantized weight is computed from.

    ``integers`` (int8) has one row per output channel, ``weight[0].numel()`` columns;
    ``scales`` has one row per output channel and one column per group of ``group_size``
    columns (a single column without groups). The weight is ``integers · scales`` with
    each entry taking its group's scale, bitwise as the module computes it.
    """

    scheme: str
    group_size: int | None
    integers: torch.Tensor
    scales: torch.Tensor


@torch.no_grad()
def integer_weight(module: nn.Module, name: str = "weight") -> IntegerWeight | None:
    """The :class:`IntegerWeight` of ``module``'s tensor ``name`` when it is quantized.

    That is when its last parametrization is a :class:`WeightQuant` (fake-quantized)
    or a :class:`PackedWeight` (after :func:`convert`); ``None`` otherwise.
    """
    if not parametrize.is_parametrized(module, name):
        return None
    chain = module.parametrizations[name]
    last = chain[-1]
    if isinstance(last, PackedWeight):
        rows, columns, _ = last._rows()
        stored = chain.original
        integers = unpack_int4(stored, rows * columns) if last.scheme == "int4" else stored
        integers, scales, shape = integers.reshape(rows, columns), last.scales, torch.Size(last.shape)
    elif isinstance(last, WeightQuant):
        value = _quantizer_input(chain)
        integers, scales = quantize_weight(value, last.scheme, last.group_size)
        shape = value.shape
    else:
        return None
    channels, per_channel = shape[0], max(1, shape[1:].numel())
    integers = integers.reshape(channels, -1)[:, :per_channel].to(torch.int8)
    return IntegerWeight(last.scheme, last.group_size, integers, scales.reshape(channels, -1).clone())


class IntegerReference(fx.Interpreter):
    """Runs a converted ``int8`` graph with integer arithmetic where the integers allow it.

    A conv or linear layer whose weight is stored as int8 (:func:`convert`) and whose
    input comes through an :class:`ActivationQuant` stub is computed as an integer
    kernel would: ``acc = Σ (x_q − zero_point) · w_q`` accumulated exactly (in float64,
    whose 53-bit mantissa holds every int8 × uint8 sum of such layers exactly), then
    ``acc · scale_x · scale_w + bias``. Every other node runs as usual, transposed convs
    too (their scales are per input channel, see :func:`_integer_layer`). The output
    matches the fake-quantized model up to float32 rounding. :attr:`integer_layers`
    lists the layers computed in integers.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)  # a layer reads its stub's input
        self.integer_layers: list[str] = []

    def run_node(self, node: fx.Node) -> Any:
        if node.op == "call_module":
            layer = self.module.get_submodule(node.target)
            source = node.args[0] if node.args else None
            if _integer_layer(layer) and isinstance(source, fx.Node) and source.op == "call_module":
                stub = self.module.get_submodule(source.target)
                if isinstance(stub, ActivationQuant):
                    self.integer_layers.append(str(node.target))
                    return _integer_layer_output(layer, stub, self.env[source.args[0]])
        return super().run_node(node)


def _integer_layer(layer: nn.Module) -> bool:
    """Whether ``layer`` is computed in integers: a linear or (not transposed) conv layer with a converted int8 weight.

    A transposed conv's int8 scales are per input channel (its weight's first axis), which
    an integer kernel cannot apply after summing over the input channels.
    """
    if not isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)) or not parametrize.is_parametrized(layer, "weight"):
        return False
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return False
    chain = layer.parametrizations["weight"]
    return len(chain) == 1 and isinstance(chain[0], PackedWeight) and chain[0].scheme == "int8"


def _integer_layer_output(layer: nn.Module, stub: ActivationQuant, x: torch.Tensor) -> torch.Tensor:
    scale, zero_point = stub.qparams()
    x_q = torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point
    packed = layer.parametrizations["weight"][0]
    w_q = layer.parametrizations["weight"].original.to(torch.float64).reshape(packed.shape)
    if isinstance(layer, nn.Linear):
        acc = torch.nn.functional.linear(x_q.double(), w_q)
        channel_axis = -1
    else:
        if layer.padding_mode != "zeros":
            raise UsageError(f"the integer reference computes zero-padded convolutions only, not padding_mode '{layer.padding_mode}'")
        conv = getattr(torch.nn.functional, f"conv{len(layer.kernel_size)}d")
        acc = conv(x_q.double(), w_q, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        channel_axis = 1
    shape = [1] * acc.dim()
    shape[channel_axis] = -1
    output = acc * (scale.double() * packed.scales.double().reshape(shape))
    if layer.bias is not None:
        output = output + layer.bias.double().reshape(shape)
    return output.to(x.dtype)


def integer_forward(gm: fx.GraphModule, *inputs: torch.Tensor) -> tuple[Any, list[str]]:
    """Run ``gm`` with :class:`IntegerReference`; its output and the layers computed in integers."""
    reference = IntegerReference(gm)
    with torch.no_grad():
        return reference.run(*inputs), reference.integer_layers


class QDQActivation(nn.Module):
    """An :class:`ActivationQuant` for export: ``torch.fake_quantize_per_tensor_affine`` with its frozen range,
    which exporters turn into ONNX QuantizeLinear / DequantizeLinear."""

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.scale, self.zero_point = scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 255)


class QDQLayer(nn.Module):
    """A conv / linear layer with int8 per-channel weights for export: its weight goes through
    ``torch.fake_quantize_per_channel_affine`` (ONNX QuantizeLinear / DequantizeLinear)."""

    def __init__(self, layer: nn.Module, scales: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("scales", scales.reshape(-1).float())
        self.register_buffer("zero_points", torch.zeros(self.scales.numel(), dtype=torch.int32))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The layer's own forward with its weight fake-quantized (scales along the weight's first axis)."""
        weight = torch.fake_quantize_per_channel_affine(self.layer.weight, self.scales, self.zero_points, 0, -128, 127)
        return functional_call(self.layer, {"weight": weight}, args, kwargs)


def _int8_scales(layer: nn.Module) -> torch.Tensor | None:
    """The per-channel scales of ``layer``'s weight when it is int8-quantized (fake or converted), else None."""
    if not isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)) or not parametrize.is_parametrized(layer, "weight"):
        return None
    last = layer.parametrizations["weight"][-1]
    if isinstance(last, PackedWeight) and last.scheme == "int8":
        return last.scales
    if isinstance(last, WeightQuant) and last.scheme == "int8":
        return quantize_weight(_quantizer_input(layer.parametrizations["weight"]), "int8")[1]
    return None


def qdq_model(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of the quantized ``gm`` for ONNX export, computing the same outputs with QDQ operators.

    Activation stubs become ``fake_quantize_per_tensor_affine`` and int8 weights
    ``fake_quantize_per_channel_affine`` (exported as QuantizeLinear / DequantizeLinear);
    weights of other schemes are baked to their dequantized floats. ``gm`` is not changed.
    """
    copy_ = copy.deepcopy(gm)
    for node in copy_.graph.nodes:
        if node.op != "call_module":
            continue
        module = copy_.get_submodule(node.target)
        if isinstance(module, ActivationQuant):
            scale, zero_point = module.qparams()
            replacement: nn.Module = QDQActivation(float(scale), int(zero_point))
        else:
            scales = _int8_scales(module)
            if scales is None:
                continue
            replacement = QDQLayer(strip_masks(module), scales.detach().clone())
        parent, _, name = str(node.target).rpartition(".")
        setattr(copy_.get_submodule(parent) if parent else copy_, name, replacement)
    strip_masks(copy_)
    copy_.recompile()
    return copy_
