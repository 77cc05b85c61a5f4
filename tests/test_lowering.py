"""fxcomp.lower: backends, the built-in Triton patterns (in Triton's interpreter), the report, the hook."""

from __future__ import annotations

import copy
import operator
import sys
from collections import OrderedDict
from collections.abc import Sequence

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxcomp
from fxcomp import Declined, Lowering, LoweringError, Matched, PluginError, RecipeError, hookimpl
from fxcomp.lowering import module_at

pytest.importorskip("triton")


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(40, 64), nn.Linear(64, 48), nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class DepthwiseBlocks(nn.Module):
    """A MobileNet block (dw → BN → ReLU → pw → BN → ReLU) and a plain 3×3 conv for ``separable``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 12, 1)
        self.pw_bn = nn.BatchNorm2d(12)
        self.conv = nn.Conv2d(12, 10, 3, padding=1)
        self.fc = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pw_bn(self.pw(torch.relu(self.dw_bn(self.dw(x))))))
        x = self.conv(x).relu()
        return self.fc(x.mean((2, 3)))


def _model(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_()
                module.bias.normal_()
    return model


@pytest.fixture(scope="module")
def plugins() -> fxcomp.Plugins:
    return fxcomp.load_plugins()


def _lowered(model: nn.Module, inputs: torch.Tensor, passes: list, plugins: fxcomp.Plugins):
    compressed = fxcomp.compress(model, inputs, {"passes": passes}, plugins=plugins).model
    result = fxcomp.lower(compressed, "triton", example_inputs=inputs, plugins=plugins)
    with torch.no_grad():
        expected, got = compressed(inputs), result.module(inputs)
    return compressed, result, expected, got


def _patterns(report: fxcomp.LoweringReport) -> list[str]:
    return [row["pattern"] for row in report.lowered]


def _kernel_classes(gm: fx.GraphModule) -> set[str]:
    return {type(gm.get_submodule(str(n.target))).__name__ for n in gm.graph.find_nodes(op="call_module")}


MLP_CASES = [
    ([{"pass": "lowrank", "rank": 8}], "lowrank_linear", "LowRankLinearKernel"),
    ([{"pass": "quantize", "scheme": "int8_weight_only"}], "int8_weight_linear", "Int8LinearKernel"),
    ([{"pass": "quantize", "scheme": "int8_weight_only"}, {"pass": "convert"}], "int8_weight_linear", "Int8LinearKernel"),
    ([{"pass": "quantize", "scheme": "ternary"}], "int8_weight_linear", "Int8LinearKernel"),
    ([{"pass": "quantize", "scheme": "binary"}, {"pass": "convert"}], "int8_weight_linear", "Int8LinearKernel"),
    ([{"pass": "quantize", "scheme": "int4_weight_only", "group_size": 7}], "int4_weight_linear", "Int4LinearKernel"),
    ([{"pass": "quantize", "scheme": "int4_weight_only", "group_size": 16}, {"pass": "convert"}], "int4_weight_linear", "Int4LinearKernel"),
    ([{"pass": "cluster", "bits": 3}], "codebook_linear", "CodebookLinearKernel"),
    ([{"pass": "sparsify", "sparsity": 0.8}, {"pass": "cluster", "bits": 4}], "codebook_linear", "CodebookLinearKernel"),
    ([{"pass": "sparsify", "sparsity": 0.85}], "sparse_linear", "CSRLinearKernel"),
]


@pytest.mark.parametrize(("passes", "pattern", "kernel"), MLP_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_linear_patterns_lower_to_kernels_with_the_same_outputs(passes, pattern, kernel, plugins) -> None:
    inputs = torch.randn(5, 40, generator=torch.Generator().manual_seed(3))
    compressed, result, expected, got = _lowered(_model(MLP), inputs, passes, plugins)
    assert _patterns(result.report) == [pattern] * 3
    assert kernel in _kernel_classes(result.module)
    assert not any(isinstance(m, nn.Linear) for m in result.module.modules())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert result.report.error <= 1e-4
    assert all(row["error"] <= 1e-4 for row in result.report.lowered)


def test_a_low_rank_pair_whose_first_layer_has_a_bias_folds_it(plugins) -> None:
    model = nn.Sequential(nn.Linear(30, 4), nn.Linear(4, 20)).eval()
    inputs = torch.randn(2, 3, 30)  # three-dimensional: the kernel works on the last dimension
    gm = fxcomp.trace(model, inputs)
    result = fxcomp.lower(gm, "triton", example_inputs=inputs, plugins=plugins)
    assert _patterns(result.report) == ["lowrank_linear"]
    torch.testing.assert_close(result.module(inputs), model(inputs), rtol=1e-4, atol=1e-5)


def test_depthwise_pointwise_blocks_fuse_with_batchnorm_and_relu(plugins) -> None:
    inputs = torch.randn(2, 3, 11, 9, generator=torch.Generator().manual_seed(4))
    passes = [{"pass": "separable", "include": ["conv"], "depth_multiplier": 2, "skip_no_gain": False}]
    _compressed, result, expected, got = _lowered(_model(DepthwiseBlocks), inputs, passes, plugins)
    assert _patterns(result.report) == ["separable_conv", "separable_conv"]
    nodes = [row["nodes"] for row in result.report.lowered]
    assert nodes[0] == ["dw", "dw_bn", "relu_1", "pw", "pw_bn", "relu_2"]
    assert nodes[1][:2] == ["conv.0", "conv.1"] and len(nodes[1]) == 3  # the .relu() call is fused too
    kernels = [m for m in result.module.modules() if type(m).__name__ == "SeparableConvKernel"]
    assert [(k.mid_relu, k.relu) for k in kernels] == [(True, True), (False, True)]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_layers_no_kernel_matches_stay_and_are_reported(plugins) -> None:
    inputs = torch.randn(2, 3, 8, 8)
    model = _model(DepthwiseBlocks)
    passes = [{"pass": "quantize", "scheme": "int8_weight_only", "include": ["stem", "fc"]}]
    _compressed, result, expected, got = _lowered(model, inputs, passes, plugins)
    assert _patterns(result.report) == ["separable_conv", "int8_weight_linear"]
    kinds = {row["kind"]: row["nodes"] for row in result.report.unlowered}
    assert kinds == {"Conv2d [weight: WeightQuant(scheme=int8)]": ["stem"], "Conv2d": ["conv"]}
    assert "left as they are" in str(result.report) and "stem" in str(result.report)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_recognized_pattern_that_cannot_be_lowered_is_declined_with_its_reason(plugins) -> None:
    inputs = torch.randn(4, 40)
    passes = [{"pass": "sparsify", "sparsity": 0.3}]
    _compressed, result, expected, got = _lowered(_model(MLP), inputs, passes, plugins)
    assert result.report.lowered == []
    assert [row["pattern"] for row in result.report.declined] == ["sparse_linear"] * 3
    assert "70% of its weights are nonzero" in result.report.declined[0]["reason"]
    assert torch.equal(got, expected)


def test_a_low_rank_intermediate_used_elsewhere_is_not_fused(plugins) -> None:
    class Tap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v, self.u = nn.Linear(20, 3, bias=False), nn.Linear(3, 20)

        def forward(self, x):
            hidden = self.v(x)
            return self.u(hidden), hidden

    inputs = torch.randn(2, 20)
    result = fxcomp.lower(fxcomp.trace(Tap().eval(), inputs), "triton", example_inputs=inputs, plugins=plugins)
    assert result.report.lowered == []


def test_lowering_leaves_the_given_graph_untouched(plugins) -> None:
    inputs = torch.randn(3, 40)
    compressed = fxcomp.compress(_model(MLP), inputs, {"passes": [{"pass": "lowrank", "rank": 6}]}, plugins=plugins).model
    code, state = compressed.code, {k: v.clone() for k, v in compressed.state_dict().items()}
    fxcomp.lower(compressed, "triton", plugins=plugins)  # example inputs made from the recorded shapes
    assert compressed.code == code
    assert all(torch.equal(v, state[k]) for k, v in compressed.state_dict().items())


def test_eager_returns_the_graph_unchanged_and_inductor_compiles_it(plugins, small_cnn, image) -> None:
    gm = fxcomp.trace(small_cnn, image)
    eager = fxcomp.lower(gm, plugins=plugins)
    assert eager.module is not gm and torch.equal(eager.module(image), gm(image))
    assert eager.report.backend == "eager" and eager.report.lowered == []
    compiled = fxcomp.lower(gm, "inductor", plugins=plugins)
    with torch.no_grad():
        torch.testing.assert_close(compiled.module(image), gm(image), rtol=1e-4, atol=1e-5)
    assert "compiled by torch.compile" in str(compiled.report)


class _Upsampler(nn.Module):
    """Two image inputs (one unused), a 4-D output and a 2-D one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)

    def forward(self, x, unused):
        y = torch.relu(self.bn(self.conv(x)))
        return {"image": nn.functional.interpolate(y, scale_factor=2.0), "pooled": y.mean((2, 3))}


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_channels_last_keeps_the_outputs_and_their_layout(backend, plugins, image) -> None:
    model = _model(_Upsampler)
    inputs = (image, torch.randn(2, 3, 4, 4))
    gm = fxcomp.trace(model, inputs)
    code = gm.code
    result = fxcomp.lower(gm, backend, plugins=plugins, channels_last=True)
    with torch.no_grad():
        got, want = result.module(*inputs), gm(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert got["image"].is_contiguous() and got["image"].shape == (2, 6, 32, 32)
    assert gm.code == code and gm.conv.weight.is_contiguous()  # the given graph is untouched
    assert result.report.channels_last and "channels-last" in str(result.report)
    if backend == "eager":
        assert result.module.conv.weight.is_contiguous(memory_format=torch.channels_last)
        conversions = [n.kwargs["memory_format"] for n in result.module.graph.nodes if n.target == "contiguous"]
        assert conversions == [torch.channels_last, torch.contiguous_format]  # the used input in, the image out
        assert fxcomp.layer_table(result.module)  # the lowered graph stays annotated


class _Views(nn.Module):
    """Views of a conv output, of the input and of a 3-D value; the input returned; a 3-D conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 14 * 14, 5)
        self.head, self.volume = nn.Linear(3 * 16 * 16, 5), nn.Conv3d(1, 2, 3)

    def forward(self, x, v):
        y = self.conv(x)
        flat = self.fc(y.view(y.size(0), -1)) + self.head(x.view(x.size(0), -1))
        return flat, x, y.flatten(2).view_as(torch.zeros(2, 4 * 14 * 14)), self.volume(v)


@pytest.mark.parametrize("option", ["channels_last", "direct_convs"])
def test_a_half_precision_graph_lowers_within_its_precision(option, plugins) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 3))
    x = torch.randn(2, 16, 12, 12).half()
    gm = fxcomp.trace(model.eval().half(), x)
    result = fxcomp.lower(gm, "eager", example_inputs=x, plugins=plugins, **{option: True})  # float16 sums differ by ~1e-4
    assert 1e-4 < result.report.error <= 16 * torch.finfo(torch.float16).eps  # past the float32 limit, within float16's


def test_channels_last_turns_views_into_reshapes_and_leaves_other_ranks(plugins, image) -> None:
    inputs = (image, torch.randn(1, 1, 5, 5, 5))
    gm = fxcomp.trace(_model(_Views), inputs)
    result = fxcomp.lower(gm, "eager", plugins=plugins, channels_last=True)
    got, want = result.module(*inputs), gm(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert got[1].is_contiguous() and torch.equal(got[1], image)
    targets = [n.target for n in result.module.graph.nodes if n.op == "call_method"]
    assert "view" not in targets and "view_as" not in targets and {"reshape", "reshape_as"} <= set(targets)
    assert result.module.volume.weight.is_contiguous()  # 5-D weights keep their layout


def test_unknown_backends_and_misplaced_options_are_refused(plugins, small_cnn, image) -> None:
    gm = fxcomp.trace(small_cnn, image)
    with pytest.raises(LoweringError, match="unknown lowering backend 'tpu'; available: eager, inductor, triton"):
        fxcomp.lower(gm, "tpu", plugins=plugins)
    with pytest.raises(LoweringError, match="mode 'max-autotune' needs backend 'inductor'"):
        fxcomp.lower(gm, "eager", mode="max-autotune", plugins=plugins)
    with pytest.raises(LoweringError, match="channels_last applies to backends eager and inductor, not 'triton'; drop it"):
        fxcomp.lower(gm, "triton", channels_last=True, plugins=plugins)
    with pytest.raises(LoweringError, match="takes a torch.fx GraphModule"):
        fxcomp.lower(small_cnn, plugins=plugins)
    with pytest.raises(LoweringError, match="no recorded shape; pass example_inputs"):
        fxcomp.lower(fx.symbolic_trace(small_cnn), plugins=plugins)
    with pytest.raises(LoweringError, match="the backend must be a name .* got a Tensor; pass example inputs as example_inputs="):
        fxcomp.lower(gm, image, plugins=plugins)
    with pytest.raises(LoweringError, match="weights are on the meta device"):
        fxcomp.lower(fxcomp.trace(copy.deepcopy(small_cnn).to("meta"), image.to("meta")), plugins=plugins)


def test_triton_without_cuda_or_the_interpreter_is_a_clear_error(plugins, monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in [name for name in sys.modules if name.startswith("fxcomp_plugins.triton_kernels.")]:
        if name.rsplit(".", 1)[1] not in ("lowerings", "modules", "runtime"):
            monkeypatch.delitem(sys.modules, name)
    inputs = torch.randn(2, 40)
    gm = fxcomp.trace(_model(MLP), inputs)
    with pytest.raises(LoweringError, match="backend 'triton' cannot run here .*TRITON_INTERPRET=1"):
        fxcomp.lower(gm, "triton", plugins=plugins)


class _ReluKernel(nn.Module):
    """A third party's 'kernel': clamp instead of relu (scaled by ``gain`` to test the checks)."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0) * self.gain


class _ReluLowering(Lowering):
    def __init__(self, gain: float = 1.0) -> None:
        self.gain = gain

    def match(self, gm: fx.GraphModule, node: fx.Node) -> Matched | Declined | None:
        if node.op == "call_function" and node.target is torch.relu:
            return Matched([node])
        if module_at(gm, node, nn.Linear) is not None and node.name == "fc3":
            return Declined([node], "the last layer stays")
        return None

    def build(self, gm: fx.GraphModule, nodes: Sequence[fx.Node]) -> nn.Module:
        return _ReluKernel(self.gain)


def _third_party(lowering: Lowering, backend: str = "mine") -> object:
    class Plugin:
        @hookimpl
        def fxcomp_register_lowerings(self, register):
            register(backend, "relu", lowering)

    return Plugin()


def test_a_third_party_plugin_adds_a_backend_with_its_own_kernels() -> None:
    plugins = fxcomp.load_plugins(extra={"mine": _third_party(_ReluLowering())})
    inputs = torch.randn(3, 40)
    gm = fxcomp.trace(_model(MLP), inputs)
    result = fxcomp.lower(gm, "mine", plugins=plugins)
    assert _patterns(result.report) == ["relu", "relu"]
    assert result.report.declined == [{"pattern": "relu", "nodes": ["fc3"], "reason": "the last layer stays"}]
    assert {row["kind"] for row in result.report.unlowered} == {"Linear"}
    assert torch.equal(result.module(inputs), gm(inputs))


def test_a_kernel_that_changes_the_values_is_refused_naming_its_plugin() -> None:
    plugins = fxcomp.load_plugins(extra={"sloppy": _third_party(_ReluLowering(gain=1.01))})
    gm = fxcomp.trace(_model(MLP), torch.randn(3, 40))
    with pytest.raises(LoweringError, match=r"lowering 'relu' of backend 'mine' \(nodes relu\) changed the value by 1\.00e-02.*plugin 'sloppy'"):
        fxcomp.lower(gm, "mine", plugins=plugins)


@pytest.mark.parametrize(
    ("backend", "lowering", "message"),
    [
        ("inductor", _ReluLowering(), "backend 'inductor', which is built in"),
        ("mine", lambda gm, node: None, "which is not an fxcomp.Lowering instance"),
        ("", _ReluLowering(), "both must be non-empty strings"),
    ],
)
def test_bad_lowering_registrations_are_plugin_errors(backend, lowering, message) -> None:
    with pytest.raises(PluginError, match=message):
        fxcomp.load_plugins(entry_points=False, extra={"bad": _third_party(lowering, backend)})


def test_a_recipe_lower_step_takes_channels_last(plugins, small_cnn, image) -> None:
    recipe = {"passes": [{"pass": "fold_bn"}, {"pass": "lower", "channels_last": True}]}
    result = fxcomp.compress(small_cnn, image, recipe, plugins=plugins)
    assert result.lowered.report.channels_last and not result.model.graph.find_nodes(op="call_method", target="contiguous")
    torch.testing.assert_close(result.lowered.module(image), result.model(image), rtol=1e-4, atol=1e-5)


def test_a_recipe_ends_with_a_lower_step(plugins) -> None:
    inputs = torch.randn(4, 40)
    recipe = {"passes": [{"pass": "lowrank", "rank": 8}, {"pass": "lower", "backend": "triton"}]}
    result = fxcomp.compress(_model(MLP), inputs, recipe, plugins=plugins)
    assert isinstance(result.model, fx.GraphModule) and "LowRankLinearKernel" not in _kernel_classes(result.model)
    assert _patterns(result.lowered.report) == ["lowrank_linear"] * 3
    torch.testing.assert_close(result.lowered.module(inputs), result.model(inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("passes", "message"),
    [
        ([{"pass": "lower"}, {"pass": "fold_bn"}], r"passes\[0\].pass: `lower` must be the last step"),
        ([{"pass": "lower", "backend": "triton", "tiles": 64}], r"passes\[0\].tiles: unknown option of `lower`"),
        ([{"pass": "lower", "backend": 3}], r"passes\[0\].backend: expected a backend name"),
    ],
)
def test_bad_lower_steps_are_recipe_errors(passes, message, plugins, small_cnn, image) -> None:
    with pytest.raises(RecipeError, match=message):
        fxcomp.compress(small_cnn, image, {"passes": passes}, plugins=plugins)


def test_no_plugin_may_register_a_pass_named_lower() -> None:
    class Lower(fxcomp.Pass):
        name = "lower"

        def plan(self, gm, context):
            return {}

        def apply(self, gm, plan, context):
            return fxcomp.PassResult(gm, False)

    class Plugin:
        @hookimpl
        def fxcomp_register_passes(self, register):
            register(Lower)

    with pytest.raises(PluginError, match="named 'lower', which recipes reserve"):
        fxcomp.load_plugins(entry_points=False, extra={"bad": Plugin()})


def test_a_lowered_graph_saves_and_loads_with_its_kernels(plugins, tmp_path) -> None:
    inputs = torch.randn(3, 40)
    passes = [{"pass": "quantize", "scheme": "int4_weight_only", "group_size": 8}, {"pass": "convert"}]
    _compressed, result, expected, got = _lowered(_model(MLP), inputs, passes, plugins)
    path = tmp_path / "lowered.fxcomp"
    fxcomp.save(result.module, path, plugins=plugins)
    loaded = fxcomp.load(path, plugins=plugins)
    assert _kernel_classes(loaded) == {"Int4LinearKernel"}
    assert torch.equal(loaded(inputs), got)


def _sparse_linear(features: int, outputs: int, density: float = 0.1) -> nn.Linear:
    layer = nn.Linear(features, outputs)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(5)) < density)
    return layer


def test_an_in_place_op_after_a_match_does_not_spoil_the_check(plugins) -> None:
    model = nn.Sequential(_sparse_linear(16, 16), nn.ReLU(inplace=True), nn.Linear(16, 4)).eval()
    inputs = torch.randn(3, 16)
    result = fxcomp.lower(fxcomp.trace(model, inputs), "triton", example_inputs=inputs, plugins=plugins)
    assert _patterns(result.report) == ["sparse_linear"]
    torch.testing.assert_close(result.module(inputs), model(inputs), rtol=1e-4, atol=1e-5)


def test_layers_that_are_not_float32_are_declined(plugins) -> None:
    model = nn.Sequential(_sparse_linear(16, 16), nn.ReLU(), _sparse_linear(16, 4)).double().eval()
    inputs = torch.randn(3, 16, dtype=torch.float64)
    result = fxcomp.lower(fxcomp.trace(model, inputs), "triton", example_inputs=inputs, plugins=plugins)
    assert result.report.lowered == []
    assert {row["reason"] for row in result.report.declined} == {"its weights are torch.float64, the kernel computes in float32"}
    assert result.module(inputs).dtype == torch.float64


def test_declines_of_the_built_in_patterns_give_their_reasons(plugins) -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v, self.u = nn.Linear(400, 300, bias=False), nn.Linear(300, 400)  # rank 300 > 256
            self.dw = nn.Conv2d(4, 4, 3, padding="same", groups=4)
            self.pw = nn.Conv2d(4, 6, 1)
            self.dw2 = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect", groups=6)
            self.pw2 = nn.Conv2d(6, 2, 1)
            self.bn = nn.BatchNorm2d(2, track_running_stats=False)

        def forward(self, x, image):
            return self.u(self.v(x)), self.bn(self.pw2(self.dw2(self.pw(self.dw(image)))))

    inputs = (torch.randn(2, 400), torch.randn(1, 4, 6, 6))
    result = fxcomp.lower(fxcomp.trace(Model().eval(), inputs), "triton", example_inputs=inputs, plugins=plugins)
    reasons = {(row["pattern"], row["nodes"][0]): row["reason"] for row in result.report.declined}
    assert reasons == {
        ("lowrank_linear", "v"): "rank 300 is above the 256 the kernel keeps on-chip",
        ("separable_conv", "dw"): "'dw' has padding='same'; the kernel takes the padding as numbers",
        ("separable_conv", "dw2"): "'dw2' pads with 'reflect'; the kernel pads with zeros",
    }
    assert result.report.lowered == []


def test_an_unbatched_image_is_declined_by_the_conv_kernel(plugins) -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 5, 1)).eval()
    image = torch.randn(4, 7, 7)
    result = fxcomp.lower(fxcomp.trace(model, image), "triton", example_inputs=image, plugins=plugins)
    assert result.report.declined == [
        {"pattern": "separable_conv", "nodes": ["0", "1"], "reason": "its input has 3 dimensions, the kernel takes 4"}
    ]


def test_a_pattern_lowered_one_way_still_reports_why_not_another(plugins) -> None:
    model = nn.Sequential(_sparse_linear(400, 300), nn.Linear(300, 400)).eval()
    inputs = torch.randn(2, 400)
    result = fxcomp.lower(fxcomp.trace(model, inputs), "triton", example_inputs=inputs, plugins=plugins)
    assert _patterns(result.report) == ["sparse_linear"]
    assert result.report.declined[0]["reason"] == (
        "rank 300 is above the 256 the kernel keeps on-chip (lowered as 'sparse_linear' instead)"
    )


def test_a_module_called_inside_a_leaf_and_on_its_own_survives_lowering(plugins) -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = _sparse_linear(16, 16)

        def forward(self, x):
            return torch.relu(self.fc(x))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x) + self.block.fc(x)

    inputs = torch.randn(2, 16)
    model = Model().eval()
    gm = fxcomp.trace(model, inputs, leaf_modules=[Block])
    result = fxcomp.lower(gm, "triton", example_inputs=inputs, plugins=plugins)
    assert _patterns(result.report) == ["sparse_linear"]
    torch.testing.assert_close(result.module(inputs), model(inputs), rtol=1e-4, atol=1e-5)


def test_kernel_paths_never_collide(plugins) -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Module()
            self.a.b_c = _sparse_linear(8, 8)
            self.a_b = nn.Module()
            self.a_b.c = _sparse_linear(8, 8)

        def forward(self, x):
            return self.a.b_c(x) - self.a_b.c(x)

    inputs = torch.randn(2, 8)
    model = Model().eval()
    result = fxcomp.lower(fxcomp.trace(model, inputs), "triton", example_inputs=inputs, plugins=plugins)
    assert [row["kernel"].split()[0] for row in result.report.lowered] == ["lowered.a_b_c", "lowered.a_b_c_2"]
    torch.testing.assert_close(result.module(inputs), model(inputs), rtol=1e-4, atol=1e-5)


class _BadKernel(nn.Module):
    def __init__(self, result: str) -> None:
        super().__init__()
        self.result = result

    def forward(self, x):
        return torch.full_like(x, float("nan")) if self.result == "nan" else x[:, :1].relu()


class _BadLowering(_ReluLowering):
    def build(self, gm, nodes):
        return _BadKernel(self.gain)


@pytest.mark.parametrize(
    ("result", "message"),
    [("nan", r"changed the value by inf \(relative\)"), ("narrow", r"whose output is \(3, 1\) torch.float32 instead of \(3, 64\)")],
)
def test_kernels_returning_nan_or_the_wrong_shape_are_refused(result, message) -> None:
    plugins = fxcomp.load_plugins(extra={"broken": _third_party(_BadLowering(gain=result))})
    gm = fxcomp.trace(_model(MLP), torch.randn(3, 40))
    with pytest.raises(LoweringError, match=message + ".*plugin 'broken'"):
        fxcomp.lower(gm, "mine", plugins=plugins)


class _Misbehaving(_ReluLowering):
    """A relu lowering that breaks the contract in one way."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault
        if fault == "tolerance":
            self.tolerance = "1e-4"

    def match(self, gm, node):
        answer = super().match(gm, node)
        if not isinstance(answer, Matched):
            return answer
        if self.fault == "match raises":
            raise KeyError("oops")
        return {"list": answer.nodes, "names": Matched([node.name]), "tuple nodes": Matched(node)}.get(self.fault, answer)

    def build(self, gm, nodes):
        if self.fault == "build raises":
            raise ValueError("no kernel today")
        return (lambda x: x.relu()) if self.fault == "function" else super().build(gm, nodes)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("list", r"lowering 'relu' of backend 'mine''s match returned list, not a Matched, a Declined or None"),
        ("tuple nodes", r"'s match returned Matched whose nodes are a Node, not a list"),
        ("match raises", r"lowering 'relu' of backend 'mine' failed matching at 'relu' \(KeyError: 'oops'\)"),
        ("build raises", r"\(nodes relu\) failed building its kernel \(ValueError: no kernel today\)"),
        ("function", r"\(nodes relu\) built a function, not a torch.nn.Module"),
        ("tolerance", r"lowering 'relu' of backend 'mine' has tolerance '1e-4', not a finite number >= 0"),
    ],
)
def test_a_lowering_breaking_its_contract_is_a_lowering_error_naming_its_plugin(fault, message) -> None:
    plugins = fxcomp.load_plugins(extra={"careless": _third_party(_Misbehaving(fault))})
    gm = fxcomp.trace(_model(MLP), torch.randn(3, 40))
    with pytest.raises(LoweringError, match=message + ".*plugin 'careless'"):
        fxcomp.lower(gm, "mine", plugins=plugins)


def test_a_match_naming_other_than_graph_nodes_is_declined() -> None:
    plugins = fxcomp.load_plugins(extra={"careless": _third_party(_Misbehaving("names"))})
    inputs = torch.randn(3, 40)
    gm = fxcomp.trace(_model(MLP), inputs)
    result = fxcomp.lower(gm, "mine", plugins=plugins)
    assert not result.report.lowered
    assert [entry["nodes"] for entry in result.report.declined if entry["pattern"] == "relu"][:2] == [["'relu'"], ["'relu_1'"]]
    assert "not all nodes of the graph" in result.report.declined[0]["reason"]
    assert torch.equal(result.module(inputs), gm(inputs))


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"pass": "lower", "backend": "tpu"}, r"passes\[1\].backend: unknown backend 'tpu'; available: eager, inductor, triton"),
        ({"pass": "lower", "backend": "triton", "mode": "max-autotune"}, r"passes\[1\].mode: expected one of .* with backend inductor"),
        ({"pass": "lower", "channels_last": "yes"}, r"passes\[1\].channels_last: expected true or false, got 'yes'"),
        ({"pass": "lower", "backend": "triton", "channels_last": True},
         r"passes\[1\].channels_last: applies to backends eager and inductor, not 'triton'"),
    ],
)
def test_a_lower_step_is_checked_before_any_pass_runs(step, message, plugins, small_cnn, image) -> None:
    class Boom(fxcomp.Pass):
        name = "boom"

        def plan(self, gm, context):
            raise AssertionError("the recipe should have been refused before any pass ran")

        def apply(self, gm, plan, context):
            raise AssertionError

    class Plugin:
        @hookimpl
        def fxcomp_register_passes(self, register):
            register(Boom)

    with_boom = fxcomp.load_plugins(extra={"boom": Plugin()})
    with pytest.raises(RecipeError, match=message):
        fxcomp.compress(small_cnn, image, {"passes": [{"pass": "boom"}, step]}, plugins=with_boom)


def test_an_early_exit_model_is_refused_with_a_clear_message(plugins, small_cnn, image) -> None:
    model = fxcomp.compress(small_cnn, image, {"passes": [{"pass": "early_exit", "at": ["bn1"]}]}, plugins=plugins).model
    with pytest.raises(LoweringError, match="an early-exit model cannot be lowered yet"):
        fxcomp.lower(model, plugins=plugins)


def _modify_the_view(y: torch.Tensor) -> torch.Tensor:
    y.view(y.size(0), -1).clamp_(min=0)
    return y


def _modify_the_base_afterwards(y: torch.Tensor) -> torch.Tensor:
    flat = y.view(y.size(0), -1)
    y.mul_(2)
    return flat


def _modify_a_view_of_the_view(y: torch.Tensor) -> torch.Tensor:
    y.view(y.size(0), -1).view(-1).add_(1)
    return y


def _modify_a_transpose_of_the_base(y: torch.Tensor) -> torch.Tensor:
    flat = y.view(y.size(0), -1)
    y.transpose(2, 3)[:, :, 0].zero_()
    return flat


def _relu_inplace_by_keyword(y: torch.Tensor) -> torch.Tensor:
    nn.functional.relu(y.view(y.size(0), -1), inplace=True)
    return y


def _relu_inplace_by_position(y: torch.Tensor) -> torch.Tensor:
    nn.functional.relu(y.view(y.size(0), -1), True)
    return y


def _adds_to_the_view(y: torch.Tensor) -> torch.Tensor:
    y.view(y.size(0), -1) + 1  # fx records `flat += 1` like this; the test below makes it in place
    return y


class _ModifiesAViewedConvOutput(nn.Module):
    def __init__(self, form) -> None:
        super().__init__()
        self.conv, self.act, self.form = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.form is None:  # the in-place module
            self.act(y.view(y.size(0), -1))
            return y
        return self.form(y)


@pytest.mark.parametrize(
    "form",
    [_modify_the_view, _modify_the_base_afterwards, _modify_a_view_of_the_view, _modify_a_transpose_of_the_base,
     _relu_inplace_by_keyword, _relu_inplace_by_position, None],
)
def test_channels_last_keeps_a_view_whose_memory_is_modified_in_place(form, plugins) -> None:
    # A reshape would copy the channels-last value and the modification would miss it; the view
    # cannot take channels-last strides, so this layout is refused rather than changing the outputs.
    x = torch.randn(1, 3, 6, 6)
    gm = fxcomp.trace(_model(lambda: _ModifiesAViewedConvOutput(form)), x)
    with pytest.raises(LoweringError, match=r"in channels-last layout the graph fails to run: node 'view' raised "
                                            r"RuntimeError: view size is not compatible .*; lower without channels_last$"):
        fxcomp.lower(gm, "eager", example_inputs=x, plugins=plugins, channels_last=True)


@pytest.mark.parametrize(("target", "args"), [(operator.iadd, (1.0,)), (operator.setitem, (0, 1.0))])
def test_channels_last_keeps_a_view_an_operator_modifies_in_place(target, args, plugins) -> None:
    x = torch.randn(1, 3, 6, 6)
    gm = fxcomp.trace(_model(lambda: _ModifiesAViewedConvOutput(_adds_to_the_view)), x)
    add = next(node for node in gm.graph.nodes if node.target is operator.add)
    add.target, add.args = target, (add.args[0], *args)  # `flat += 1`, `flat[0] = 1.0` in a graph built otherwise
    gm.recompile()
    with pytest.raises(LoweringError, match="in channels-last layout the graph fails to run: node 'view' raised"):
        fxcomp.lower(gm, "eager", example_inputs=x, plugins=plugins, channels_last=True)


class _ClampsAFlatView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 14 * 14, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        h = self.fc(y.view(y.size(0), -1))
        h.view(-1).clamp_(min=0)
        return h


def test_channels_last_turns_only_the_views_of_unmodified_memory_into_reshapes(plugins, image) -> None:
    gm = fxcomp.trace(_model(_ClampsAFlatView), image)
    result = fxcomp.lower(gm, "eager", plugins=plugins, channels_last=True)
    targets = [n.target for n in result.module.graph.nodes if n.target in ("view", "reshape")]
    assert targets == ["reshape", "view"]
    got = result.module(image)
    torch.testing.assert_close(got, gm(image), rtol=1e-4, atol=1e-5)
    assert got.min() == 0  # the clamp reached the output through its view


class _InPlaceReluThenView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))  # written in place before the view exists
        return self.fc(x.view(x.size(0), -1))


def test_a_write_before_the_view_still_lets_it_become_a_reshape(plugins) -> None:
    image = torch.randn(2, 3, 8, 8)
    gm = fxcomp.trace(_InPlaceReluThenView().eval(), image)
    for layout in ({"channels_last": True}, {"direct_convs": True}):
        result = fxcomp.lower(gm, "eager", example_inputs=image, plugins=plugins, **layout)
        assert [n.target for n in result.module.graph.nodes if n.target in ("view", "reshape")] == ["reshape"]
        torch.testing.assert_close(result.module(image), gm(image), rtol=1e-4, atol=1e-5)


class _HoldsLowered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = _sparse_linear(8, 8)
        self.register_buffer("lowered", torch.full((8,), 2.0))
        self.lowered_1 = nn.Parameter(torch.full((8,), 3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.lowered * self.lowered_1


def test_kernels_go_beside_a_model_attribute_named_lowered(plugins) -> None:
    inputs, model = torch.randn(2, 8), _HoldsLowered().eval()
    result = fxcomp.lower(fxcomp.trace(model, inputs), "triton", example_inputs=inputs, plugins=plugins)
    assert [row["kernel"] for row in result.report.lowered] == ["lowered_2.fc (CSRLinearKernel)"]
    assert torch.equal(result.module.lowered, torch.full((8,), 2.0))
    torch.testing.assert_close(result.module(inputs), model(inputs), rtol=1e-4, atol=1e-5)
    model = nn.Sequential(OrderedDict(fc=_sparse_linear(8, 8), lowered=nn.ReLU())).eval()
    result = fxcomp.lower(fxcomp.trace(model, inputs), "triton", example_inputs=inputs, plugins=plugins)
    assert [row["kernel"].split()[0] for row in result.report.lowered] == ["lowered_1.fc"]
    assert type(result.module.lowered) is nn.ReLU  # the model's own module keeps its name and holds no kernel
    torch.testing.assert_close(result.module(inputs), model(inputs), rtol=1e-4, atol=1e-5)


class _SubtractsInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), _sparse_linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.sub_(0.5)
        return self.fc(self.conv(x).flatten(1))


@pytest.mark.parametrize(
    ("backend", "options"),
    [("eager", {}), ("eager", {"channels_last": True}), ("eager", {"direct_convs": True}),
     ("eager", {"autotune": True}), ("triton", {})],
)
def test_a_model_modifying_its_input_leaves_the_example_inputs_alone(backend, options, plugins) -> None:
    x = torch.randn(1, 3, 6, 6)
    original = x.clone()
    gm = fxcomp.trace(_model(_SubtractsInPlace), x.clone())
    result = fxcomp.lower(gm, backend, example_inputs=x, plugins=plugins, **options)
    assert torch.equal(x, original)
    assert _patterns(result.report) == (["sparse_linear"] if backend == "triton" else [])
    torch.testing.assert_close(result.module(x.clone()), gm(x.clone()), rtol=1e-4, atol=1e-5)


def test_a_low_rank_pair_lowers_and_runs_on_an_empty_batch(plugins) -> None:
    model = nn.Sequential(nn.Linear(16, 3), nn.Linear(3, 16)).eval()
    empty = torch.zeros(0, 16)
    result = fxcomp.lower(fxcomp.trace(model, empty), "triton", plugins=plugins)
    assert _patterns(result.report) == ["lowrank_linear"]
    assert result.module(empty).shape == (0, 16)
    inputs = torch.randn(2, 16)
    torch.testing.assert_close(result.module(inputs), model(inputs), rtol=1e-4, atol=1e-5)
