"""Weight fake-quantization: error bounds per scheme, straight-through gradients, QAT, the quantize pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxcomp
from fxcomp import RecipeError
from fxcomp.passes import (
    ActivationQuant,
    PackedWeight,
    WeightQuant,
    fake_quantize,
    integer_forward,
    pack_int4,
    qdq_model,
    quantize_parameter,
    quantize_weight,
    unpack_int4,
)
from tests.conftest import SmallCNN


@pytest.fixture
def weight() -> torch.Tensor:
    return torch.randn(6, 12, generator=torch.Generator().manual_seed(0))


def test_int8_is_per_channel_symmetric_within_half_a_step(weight) -> None:
    integers, scales = quantize_weight(weight, "int8")
    assert scales.shape == (6, 1)
    torch.testing.assert_close(scales.squeeze(1), weight.abs().amax(1) / 127)
    assert integers.abs().max() <= 127 and torch.equal(integers, integers.round())
    error = (fake_quantize(weight, "int8") - weight).abs()
    assert (error <= scales / 2 + 1e-7).all()


def test_int4_groups_pad_the_last_group_and_stay_within_half_a_step(weight) -> None:
    integers, scales = quantize_weight(weight, "int4", group_size=5)  # 12 inputs: groups of 5, 5 and 2
    assert scales.shape == (6 * 3, 1) and integers.abs().max() <= 7
    dequantized = fake_quantize(weight, "int4", group_size=5)
    step = scales.reshape(6, 3).repeat_interleave(5, dim=1)[:, :12]
    assert ((dequantized - weight).abs() <= step / 2 + 1e-7).all()
    for row in range(6):
        for start in (0, 5, 10):
            assert dequantized[row, start : start + 5].unique().numel() <= 15


def test_binary_is_the_mean_magnitude_times_the_sign(weight) -> None:
    binary = fake_quantize(weight, "binary")
    alpha = weight.abs().mean(1, keepdim=True)
    torch.testing.assert_close(binary, alpha * torch.where(weight >= 0, 1.0, -1.0))


def test_ternary_zeroes_small_weights_and_scales_the_rest(weight) -> None:
    ternary = fake_quantize(weight, "ternary")
    delta = 0.7 * weight.abs().mean(1, keepdim=True)
    kept = weight.abs() > delta
    assert torch.equal(ternary == 0, ~kept)
    alpha = (weight.abs() * kept).sum(1, keepdim=True) / kept.sum(1, keepdim=True)
    torch.testing.assert_close(ternary, alpha * torch.sign(weight) * kept)


def test_gradients_pass_the_rounding_unchanged(weight) -> None:
    layer = nn.Linear(12, 6)
    with torch.no_grad():
        layer.weight.copy_(weight)
    quantize_parameter(layer, "weight", "int4", group_size=4)
    upstream = torch.randn(6, 12)
    (layer.weight * upstream).sum().backward()
    torch.testing.assert_close(layer.parametrizations.weight.original.grad, upstream)


def test_zero_weights_stay_zero_under_a_mask() -> None:
    x = torch.randn(2, 3, 8, 8)
    recipe = {"passes": [{"pass": "sparsify", "sparsity": 0.7}, {"pass": "quantize", "scheme": "int8_weight_only"}]}
    model = fxcomp.compress(SmallCNN().eval(), x, recipe).model
    assert fxcomp.sparsity(model)["conv2.weight"] == pytest.approx(0.7, abs=0.01)


@pytest.mark.parametrize("scheme", ["int8_weight_only", "int4_weight_only", "binary", "ternary"])
def test_quantize_pass_plans_applies_and_round_trips(scheme, tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    groups = {"group_size": 16} if scheme == "int4_weight_only" else {}
    result = fxcomp.compress(SmallCNN().eval(), x, {"passes": [{"pass": "quantize", "scheme": scheme, **groups}]})
    plan = {entry["layer"]: entry for entry in result.plan[0]["plan"]["layers"]}
    assert set(plan) == {"conv1", "conv2", "fc"}
    if scheme == "int4_weight_only":
        assert plan["conv2"]["scales"] == 32 * 9  # 144 inputs per channel in groups of 16
    errors = result.plan[0]["stats"]["relative_error"]
    assert all(0 < error < (0.02 if scheme.startswith("int8") else 1.0) for error in errors.values())
    path = tmp_path / "q.fxc"
    fxcomp.save(result.model, path)
    loaded = fxcomp.load(path)
    assert isinstance(loaded.conv2.parametrizations.weight[0], WeightQuant)
    assert torch.equal(loaded(x), result.model(x))


def test_quantization_aware_training_keeps_weights_on_the_grid() -> None:
    torch.manual_seed(0)
    data = [(torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))) for _ in range(4)]
    x = data[0][0]
    model = fxcomp.compress(SmallCNN(), x, {"passes": [{"pass": "quantize", "scheme": "ternary"}]}).model
    result = fxcomp.recover(model, data, epochs=3, lr=0.05, progress=False)
    history = result.history
    assert history[-1].train_loss < history[0].train_loss
    weight = result.model.conv2.weight.detach().reshape(32, -1)
    assert all(row.unique().numel() <= 3 for row in weight)  # −α, 0, α per output channel
    assert not torch.equal(result.model.conv2.parametrizations.weight.original, model.conv2.parametrizations.weight.original)


def test_quantize_options_and_skips() -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(RecipeError, match="scheme"):
        fxcomp.compress(SmallCNN(), x, {"passes": [{"pass": "quantize", "scheme": "int3"}]})
    with pytest.raises(RecipeError, match=r"^passes\[0\] \(quantize\): observer applies to scheme int8; drop it with scheme int8_weight_only, which keeps inputs in float$"):
        fxcomp.compress(SmallCNN(), x, {"passes": [{"pass": "quantize", "observer": "percentile"}]})
    with pytest.raises(RecipeError, match=r"^passes\[0\] \(quantize\): group_size applies to scheme int4_weight_only; drop it with scheme binary$"):
        fxcomp.compress(SmallCNN(), x, {"passes": [{"pass": "quantize", "scheme": "binary", "group_size": 8}]})
    twice = {"passes": [{"pass": "quantize"}, {"pass": "quantize", "include": ["fc"]}]}
    result = fxcomp.compress(SmallCNN(), x, twice)
    assert result.plan[1]["plan"]["skipped"] == [{"layer": "fc", "reason": "its weight is already quantized"}]
    baked = fxcomp.strip_masks(result.model)
    assert type(baked.fc) is nn.Linear and baked.fc.weight.requires_grad


class Tied(nn.Module):
    """Two linear layers sharing one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_quantize_and_convert_skip_a_weight_tied_to_another_module() -> None:
    recipe = {"passes": [{"pass": "quantize", "scheme": "binary"}, {"pass": "convert"}]}
    result = fxcomp.compress(Tied(), torch.randn(4, 8), recipe)
    reason = "its weight is shared with another module"
    assert result.plan[0]["plan"] == {"layers": [], "skipped": [{"layer": "a", "reason": reason}, {"layer": "b", "reason": reason}]}
    assert result.plan[1]["stats"] == {"tensors": 0, "integer_bytes": 0}
    assert type(result.model.a) is nn.Linear and result.model.a.weight is result.model.b.weight


# -- activations -----------------------------------------------------------------------------------


def _observed(observer: str, *batches: torch.Tensor) -> ActivationQuant:
    stub = ActivationQuant(observer)
    stub.calibrating = True
    for batch in batches:
        assert torch.equal(stub(batch), batch)  # calibrating passes values through
    stub.calibrating = False
    return stub


def test_observers_learn_their_ranges() -> None:
    first, second = torch.tensor([-1.0, 2.0]), torch.tensor([0.5, 3.0])
    minmax = _observed("minmax", first, second)
    assert (float(minmax.low), float(minmax.high)) == (-1.0, 3.0)
    moving = _observed("moving_average", first, second)
    assert float(moving.high) == pytest.approx(2.0 + 0.1 * (3.0 - 2.0))
    outlier = torch.cat([torch.linspace(-1, 1, 100_000), torch.tensor([1000.0])])
    percentile = _observed("percentile", outlier)
    assert float(percentile.high) < 1.01 and float(minmax.high) == 3.0


def test_activation_fake_quantization_is_within_half_a_step_and_exact_at_zero() -> None:
    stub = _observed("minmax", torch.tensor([-1.0, 3.0]))
    scale, zero_point = stub.qparams()
    x = torch.linspace(-1, 3, 1001, requires_grad=True)
    y = stub(x)
    assert ((y - x).abs() <= scale / 2 + 1e-6).all()
    assert float(stub(torch.zeros(1))) == 0.0
    assert float(stub(torch.tensor([10.0]))) == pytest.approx(float((255 - zero_point) * scale))  # clamped
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(1001))  # straight through
    with pytest.raises(fxcomp.CalibrationError, match="never calibrated; run calibration data through it first"):
        ActivationQuant()(x)


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile"])
def test_int8_inserts_calibrated_stubs_before_every_layer(observer, tmp_path) -> None:
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(4, 3, 8, 8)
    calib = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    result = fxcomp.compress(model, x, {"passes": [{"pass": "quantize", "scheme": "int8", "observer": observer}]}, calib_data=calib)
    quantized = result.model
    stubs = [n.target for n in quantized.graph.nodes if n.op == "call_module" and isinstance(quantized.get_submodule(n.target), ActivationQuant)]
    assert stubs == ["conv1_input_quant", "conv2_input_quant", "fc_input_quant"]
    ranges = result.plan[0]["stats"]["input_range"]
    assert ranges["conv2"][0] == 0.0 and ranges["conv2"][1] > 0  # after a ReLU
    with torch.no_grad():
        error = (quantized(x) - model(x)).abs().max() / model(x).abs().max()
    assert 0 < error < 0.02
    path = tmp_path / "int8.fxc"
    fxcomp.save(quantized, path)
    loaded = fxcomp.load(path)
    assert torch.equal(loaded(x), quantized(x))


def test_int8_needs_calibration_data() -> None:
    with pytest.raises(fxcomp.CalibrationError, match="pass calib_data"):
        fxcomp.compress(SmallCNN(), torch.randn(1, 3, 8, 8), {"passes": [{"pass": "quantize", "scheme": "int8"}]})


def test_int8_calibration_batches_must_fit_the_model() -> None:
    recipe = {"passes": [{"pass": "quantize", "scheme": "int8"}]}
    with pytest.raises(fxcomp.CalibrationError, match=r"^quantize.scheme: int8: the model fails on a calibration batch of 4×1×8×8 float32 .*"
                       r"give batches shaped like the example inputs \(1×3×8×8 float32, any batch size\)$"):
        fxcomp.compress(SmallCNN(), torch.randn(1, 3, 8, 8), recipe, calib_data=[torch.randn(4, 1, 8, 8)])
    # Another batch size fits: calibration runs on it.
    result = fxcomp.compress(SmallCNN(), torch.randn(1, 3, 8, 8), recipe, calib_data=[torch.randn(4, 3, 8, 8)])
    assert all(high > low for low, high in result.plan[0]["stats"]["input_range"].values())


# -- integer storage -------------------------------------------------------------------------------


def test_int4_packs_two_per_byte_and_unpacks_exactly() -> None:
    values = torch.arange(-8, 8).repeat(3)[:-1]  # an odd count
    packed = pack_int4(values)
    assert packed.dtype == torch.uint8 and packed.numel() == (values.numel() + 1) // 2
    assert torch.equal(unpack_int4(packed, values.numel()).long(), values)


@pytest.mark.parametrize(("scheme", "stored_dtype"), [("int8_weight_only", torch.int8), ("int4_weight_only", torch.uint8), ("ternary", torch.int8)])
def test_convert_stores_integers_exactly_and_shrinks_the_file(scheme, stored_dtype, tmp_path) -> None:
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(4, 3, 8, 8)
    groups = {"group_size": 16} if scheme == "int4_weight_only" else {}
    recipe = {"passes": [{"pass": "sparsify", "sparsity": 0.5}, {"pass": "quantize", "scheme": scheme, **groups}]}
    fake = fxcomp.compress(model, x, recipe).model
    converted = fxcomp.compress(fake, x, {"passes": [{"pass": "convert"}]})  # the pipeline holds it to exactness
    integer = converted.model
    stored = integer.conv2.parametrizations.weight.original
    assert stored.dtype == stored_dtype and not stored.requires_grad
    assert stored.numel() == (32 * 16 * 9 // 2 if scheme.startswith("int4") else 32 * 16 * 9)
    assert torch.equal(integer(x), fake(x))
    assert converted.plan[0]["stats"]["integer_bytes"] == sum(
        p.numel() * p.element_size() for p in integer.parameters() if not p.is_floating_point()
    )
    floats, packed = tmp_path / "fake.fxc", tmp_path / "int.fxc"
    fxcomp.save(fake, floats)
    fxcomp.save(integer, packed)
    assert packed.stat().st_size < floats.stat().st_size - 32 * 16 * 9 * 2
    assert torch.equal(fxcomp.load(packed)(x), fake(x))


def test_integer_reference_matches_the_fake_quantized_int8_model() -> None:
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(4, 3, 8, 8)
    calib = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    recipe = {"passes": [{"pass": "quantize", "scheme": "int8"}, {"pass": "convert"}]}
    integer = fxcomp.compress(model, x, recipe, calib_data=calib).model
    output, layers = integer_forward(integer, x)
    assert layers == ["conv1", "conv2", "fc"]
    with torch.no_grad():
        fake = integer(x)
    torch.testing.assert_close(output, fake, rtol=1e-5, atol=1e-6)
    assert not torch.equal(output, model(x))  # it is the quantized model, not the float one


@pytest.mark.parametrize("converted", [False, True])
def test_int8_model_exports_to_onnx_with_quantize_dequantize_nodes(converted, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(4, 3, 8, 8)
    calib = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    passes = [{"pass": "quantize", "scheme": "int8"}, *([{"pass": "convert"}] if converted else [])]
    quantized = fxcomp.compress(model, x, {"passes": passes}, calib_data=calib).model
    export = qdq_model(quantized)
    with torch.no_grad():
        expected = quantized(x)
        assert torch.equal(export(x), expected)
    path = tmp_path / "int8.onnx"
    torch.onnx.export(export, (x,), str(path), dynamo=True)
    operators = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert operators.count("QuantizeLinear") == operators.count("DequantizeLinear") == 6  # 3 inputs, 3 weights
    session = onnxruntime.InferenceSession(str(path))
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(output, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert isinstance(quantized.conv1.parametrizations.weight[-1], WeightQuant if not converted else PackedWeight)


def test_transposed_convs_export_with_qdq_and_stay_float_in_the_integer_reference() -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 6, 2, stride=2)).eval(), torch.randn(2, 3, 8, 8)
    quantize = {"pass": "quantize", "scheme": "int8"}
    fake = fxcomp.compress(model, x, {"passes": [quantize]}, calib_data=[x]).model
    with torch.no_grad():
        assert torch.equal(qdq_model(fake)(x), fake(x))
    integer = fxcomp.compress(model, x, {"passes": [quantize, {"pass": "convert"}]}, calib_data=[x]).model
    output, layers = integer_forward(integer, x)
    assert layers == ["0"]  # the transposed conv's scales are per input channel: it runs in float
    with torch.no_grad():
        torch.testing.assert_close(output, integer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("quantize", [{"scheme": "int8_weight_only"}, {"scheme": "int4_weight_only", "group_size": 16}, {"scheme": "binary"}])
def test_convert_after_sparsify_stores_the_masked_integers(quantize) -> None:
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(4, 3, 8, 8)
    fake = fxcomp.compress(model, x, {"passes": [{"pass": "quantize", **quantize}, {"pass": "sparsify", "sparsity": 0.5}]}).model
    converted = fxcomp.compress(fake, x, {"passes": [{"pass": "convert"}]})  # the pipeline holds it to exactness
    assert converted.plan[0]["plan"] == {"layers": ["conv1", "conv2", "fc"]}
    assert converted.plan[0]["stats"]["tensors"] == 3
    integer = converted.model
    assert [type(step) for step in integer.conv2.parametrizations.weight] == [PackedWeight]
    assert torch.equal(integer.conv2.weight, fake.conv2.weight)
    assert fxcomp.sparsity(integer)["conv2.weight"] == 0.5


def test_convert_refuses_a_quantized_weight_clustered_afterwards() -> None:
    x = torch.randn(1, 3, 8, 8)
    fake = fxcomp.compress(SmallCNN(), x, {"passes": [{"pass": "quantize"}, {"pass": "cluster", "bits": 2}]}).model
    with pytest.raises(fxcomp.UsageError, match=r"^'conv1.weight' is parametrized by SharedWeights after its quantization; quantize after that step, not before$"):
        fxcomp.compress(fake, x, {"passes": [{"pass": "convert"}]})


def test_quantize_after_convert_skips_the_converted_layers() -> None:
    x = torch.randn(4, 3, 8, 8)
    recipe = {"passes": [{"pass": "quantize", "scheme": "int8"}, {"pass": "convert"}, {"pass": "quantize", "scheme": "int8"}]}
    result = fxcomp.compress(SmallCNN().eval(), x, recipe, calib_data=[x])
    reason = "its weight is already converted to integers"
    assert result.plan[2]["plan"] == {"layers": [], "skipped": [{"layer": name, "reason": reason} for name in ("conv1", "conv2", "fc")]}
    assert not result.plan[2]["modified"]
    quantized = result.model
    stubs = [n.target for n in quantized.graph.nodes if n.op == "call_module" and isinstance(quantized.get_submodule(n.target), ActivationQuant)]
    assert stubs == ["conv1_input_quant", "conv2_input_quant", "fc_input_quant"]


@pytest.mark.parametrize("scheme", ["int8_weight_only", "int4_weight_only", "ternary"])
def test_quantized_zeros_are_positive_and_the_deep_codec_drops_them(scheme, tmp_path) -> None:
    model = nn.Sequential(nn.Linear(6, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-1e-3, 1e-3, -1.0, 0.5, -0.0, 0.0]]))
    quantized = fxcomp.compress(model, torch.randn(2, 6), {"passes": [{"pass": "quantize", "scheme": scheme}]}).model
    weight = quantized.get_submodule("0").weight.detach()
    assert not torch.signbit(weight[weight == 0]).any()
    report = fxcomp.save(quantized, tmp_path / "q.fxc", codec="deep")
    assert [layer.nonzero for layer in report.layers] == [2]


class EmptyLayer(nn.Module):
    """A linear layer with an empty weight (no inputs or no outputs) before an ordinary one."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(inputs, outputs), nn.Linear(max(outputs, 1), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(x).sum(-1, keepdim=True).expand(-1, self.out.in_features))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
@pytest.mark.parametrize(
    "step",
    [
        {"pass": "sparsify", "sparsity": 0.5},
        {"pass": "quantize", "scheme": "int8"},
        {"pass": "quantize", "scheme": "int4_weight_only", "group_size": 2},
        {"pass": "quantize", "scheme": "ternary"},
    ],
)
def test_empty_weights_are_skipped(shape, step) -> None:
    model, x = EmptyLayer(*shape), torch.randn(2, shape[0])
    result = fxcomp.compress(model, x, {"passes": [step, {"pass": "convert"}]}, calib_data=[x])
    skipped = {"parameter": "fc.weight"} if step["pass"] == "sparsify" else {"layer": "fc"}
    assert result.plan[0]["plan"]["skipped"] == [{**skipped, "reason": "its weight is empty"}]
    assert result.model(x).shape == (2, 2)
