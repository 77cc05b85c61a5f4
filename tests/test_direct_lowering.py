"""fxcomp.lower's direct convolutions (``direct_convs``) and its choice among layouts (``autotune``)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import fxcomp
from fxcomp import LoweringError, RecipeError
from fxcomp.lowering.direct import DirectConv2d


@pytest.fixture(scope="module")
def plugins() -> fxcomp.Plugins:
    return fxcomp.load_plugins()


@pytest.mark.parametrize(
    ("conv", "form"),
    [
        (nn.Conv2d(6, 6, 3, padding=1, groups=6), "depthwise"),
        (nn.Conv2d(6, 6, (3, 5), stride=(2, 1), padding=(0, 2), dilation=(1, 2), groups=6, bias=False), "depthwise"),
        (nn.Conv2d(6, 6, 5, padding="same", dilation=2, groups=6), "depthwise"),
        (nn.Conv2d(6, 6, 4, padding="same", groups=6), "depthwise"),
        (nn.Conv2d(6, 18, 3, stride=2, padding=1, groups=6), "depthwise"),
        (nn.Conv2d(6, 9, 1), "pointwise"),
        (nn.Conv2d(6, 9, 1, stride=2, bias=False), "pointwise"),
        (nn.Conv2d(6, 9, 1, padding=1), "dense"),
        (nn.Conv2d(6, 9, 3, stride=2, padding=1), "dense"),
        (nn.Conv2d(6, 9, (2, 3), padding="valid", dilation=(2, 1)), "dense"),
        (nn.Conv2d(6, 9, (4, 3), padding="same", dilation=(1, 2), bias=False), "dense"),
        (nn.Conv2d(1, 4, 3, padding=1), "dense"),
    ],
)
def test_a_direct_convolution_computes_what_the_convolution_does(conv, form) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, conv.in_channels, 11, 13)
    direct = DirectConv2d(conv)
    assert direct.form == form
    with torch.no_grad():
        got, want = direct(x), conv(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class _Convs(nn.Module):
    """Every direct form, a grouped conv that stays, a conv inside a called module, a view of a conv output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding="same", groups=8, bias=False)
        self.pw = nn.Conv2d(8, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.block = nn.Sequential(nn.Conv2d(16, 4, 3), nn.ReLU())
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.pw(torch.relu(self.dw(torch.relu(self.stem(x)))))
        y = self.grouped(y)
        z = self.block(y)
        return self.fc(z.view(z.size(0), -1)), y


def _traced(model: nn.Module, x: torch.Tensor, plugins) -> torch.fx.GraphModule:
    return fxcomp.compress(model, x, {"passes": []}, plugins=plugins, leaf_modules=["block"]).model


@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_direct_convs_keep_the_outputs_and_report_what_they_did(backend, channels_last, plugins) -> None:
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(0)
    gm = _traced(_Convs().eval(), x, plugins)
    code = gm.code
    result = fxcomp.lower(gm, backend, example_inputs=x, plugins=plugins, direct_convs=True, channels_last=channels_last)
    with torch.no_grad():
        got, want = result.module(x), gm(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert got[1].is_contiguous()  # a 4-D output is handed back in the usual layout
    report = result.report
    assert report.direct_convs == [{"node": "stem", "form": "dense"}, {"node": "dw", "form": "depthwise"}, {"node": "pw", "form": "pointwise"}]
    assert report.kept_convs == [{"node": "grouped", "reason": "grouped convolution (groups=4) that is not depthwise"}]
    assert report.channels_last is channels_last
    assert "3 direct convolution(s) (1 dense, 1 depthwise, 1 pointwise)" in str(report) and "grouped" in str(report)
    assert gm.code == code and isinstance(gm.stem, nn.Conv2d)  # the given graph is untouched
    if backend == "eager":
        assert isinstance(result.module.stem, DirectConv2d) and isinstance(result.module.block[0], nn.Conv2d)
        assert "view" not in [n.target for n in result.module.graph.nodes if n.op == "call_method"]


def test_convolutions_that_cannot_be_written_directly_stay_with_their_reason(plugins) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    masked = fxcomp.compress(model, x, {"passes": [{"pass": "sparsify", "sparsity": 0.5, "scope": "layer"}]}, plugins=plugins).model
    result = fxcomp.lower(masked, example_inputs=x, plugins=plugins, direct_convs=True)
    reasons = {record["node"]: record["reason"] for record in result.report.kept_convs}
    assert reasons["0"] == "its weight is parametrized (a mask or quantization), which a direct convolution would drop"
    unbatched = fxcomp.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 2, 1)).eval(), x[0])
    result = fxcomp.lower(unbatched, plugins=plugins, direct_convs=True)
    assert [record["reason"] for record in result.report.kept_convs] == [
        "padding_mode 'reflect' (only zero padding is written directly)",
        "its input is not a batch of images (N, C, H, W)",
    ]
    assert result.report.direct_convs == []


def test_a_direct_convolution_refuses_an_input_smaller_than_its_kernel() -> None:
    direct = DirectConv2d(nn.Conv2d(2, 2, 5, dilation=2))
    with pytest.raises(ValueError, match="an input of 6×20 .* is smaller than the dilated kernel 9×9"):
        direct(torch.randn(1, 2, 6, 20))


class _MyConv(nn.Conv2d):
    pass


class _Shared(nn.Module):
    """A conv called on its own and inside a module the trace keeps whole; a Conv2d subclass."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
        self.mine = _MyConv(3, 3, 1)
        self.read, self.hooked, self.by_keyword = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mine(self.block(x) + self.block[0](x))
        y = self.read(y) * self.read.weight.mean()
        return self.by_keyword(input=self.hooked(y))


def test_convs_a_direct_form_would_change_stay_with_their_reason(plugins) -> None:
    x = torch.randn(1, 3, 8, 8)
    torch.manual_seed(0)
    model = _Shared().eval()
    seen = []
    model.hooked.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    gm = fxcomp.compress(model, x, {"passes": []}, plugins=plugins, leaf_modules=["block", _MyConv]).model
    result = fxcomp.lower(gm, example_inputs=x, plugins=plugins, direct_convs=True)
    assert result.report.kept_convs == [
        {"node": "block.0", "reason": "it is also called inside another module"},
        {"node": "mine", "reason": "_MyConv is a subclass of Conv2d, whose forward may differ"},
        {"node": "read", "reason": "the graph also reads its weight or bias, which a direct convolution stores differently"},
        {"node": "hooked", "reason": "it has forward hooks, which a direct convolution would drop"},
    ]
    assert result.report.direct_convs == [{"node": "by_keyword", "form": "pointwise"}]  # called with input=
    assert isinstance(result.module.block[0], nn.Conv2d) and not isinstance(result.module.block[0], DirectConv2d)
    seen.clear()
    torch.testing.assert_close(result.module(x), gm(x), rtol=1e-4, atol=1e-5)
    assert len(seen) == 2  # the hook still runs in the lowered model


class _FlattensInside(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1).sum(1)


def test_a_layout_the_graph_cannot_run_in_is_a_lowering_error_and_autotune_skips_it(plugins) -> None:
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _FlattensInside()).eval()
    gm = fxcomp.compress(model, x, {"passes": []}, plugins=plugins, leaf_modules=[_FlattensInside]).model
    with pytest.raises(LoweringError, match="with direct convolutions the graph fails to run: .*; lower without direct_convs"):
        fxcomp.lower(gm, example_inputs=x, plugins=plugins, direct_convs=True)
    result = fxcomp.lower(gm, example_inputs=x, plugins=plugins, autotune=True)
    failed = {t["candidate"]: t["failed"] for t in result.report.autotune if t["failed"]}
    assert set(failed) == {"direct_convs", "channels_last", "channels_last + direct_convs"}  # NHWC strides break the view
    assert result.report.layout == "as is" and "failed: " in str(result.report)
    torch.testing.assert_close(result.module(x), gm(x))


def test_autotune_takes_cpu_inputs_only(plugins, small_cnn, image) -> None:
    gm = fxcomp.trace(small_cnn, image)
    with pytest.raises(LoweringError, match="autotune times the candidates on the CPU; pass CPU example_inputs"):
        fxcomp.lower(gm, example_inputs=image.to("meta"), plugins=plugins, autotune=True)


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_autotune_keeps_the_fastest_candidate_it_timed(backend, plugins) -> None:
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(0)
    gm = _traced(_Convs().eval(), x, plugins)
    result = fxcomp.lower(gm, backend, example_inputs=x, plugins=plugins, autotune=True)
    trials = result.report.autotune
    assert [(t["channels_last"], t["direct_convs"]) for t in trials] == [(False, False), (False, True), (True, False), (True, True)]
    assert all(t["ms"] > 0 and t["failed"] is None for t in trials)
    assert result.report.layout == min(trials, key=lambda t: t["ms"])["candidate"]
    assert json.loads(json.dumps(result.report.to_dict()))["layout"] == result.report.layout
    assert "autotuned on the example inputs" in str(result.report) and "kept" in str(result.report)
    assert [t["candidate"] for t in trials] == ["as is", "direct_convs", "channels_last", "channels_last + direct_convs"]
    with torch.no_grad():
        torch.testing.assert_close(result.module(x), gm(x), rtol=1e-4, atol=1e-5)


def test_autotune_skips_candidates_that_would_change_nothing(plugins) -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(4, 8)
    result = fxcomp.lower(fxcomp.trace(model, x), plugins=plugins, autotune=True)
    assert [(t["channels_last"], t["direct_convs"]) for t in result.report.autotune] == [(False, False)]


def test_layout_options_are_checked(plugins, small_cnn, image) -> None:
    gm = fxcomp.trace(small_cnn, image)
    with pytest.raises(LoweringError, match="direct_convs applies to backends eager and inductor, not 'triton'; drop it"):
        fxcomp.lower(gm, "triton", direct_convs=True, plugins=plugins)
    with pytest.raises(LoweringError, match="autotune applies to backends eager and inductor, not 'triton'; drop it"):
        fxcomp.lower(gm, "triton", autotune=True, plugins=plugins)
    with pytest.raises(LoweringError, match="autotune chooses channels_last and direct_convs itself; drop them or drop autotune"):
        fxcomp.lower(gm, autotune=True, direct_convs=True, plugins=plugins)


def test_a_recipe_lower_step_takes_direct_convs_and_autotune(plugins, small_cnn, image) -> None:
    recipe = {"passes": [{"pass": "fold_bn"}, {"pass": "lower", "backend": "eager", "direct_convs": True}]}
    result = fxcomp.compress(small_cnn, image, recipe, plugins=plugins)
    assert result.lowered.report.direct_convs and not any(isinstance(m, DirectConv2d) for m in result.model.modules())
    torch.testing.assert_close(result.lowered.module(image), result.model(image), rtol=1e-4, atol=1e-5)
    recipe["passes"][1] = {"pass": "lower", "autotune": True}
    assert fxcomp.compress(small_cnn, image, recipe, plugins=plugins).lowered.report.autotune


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"pass": "lower", "direct_convs": 1}, r"passes\[0\].direct_convs: expected true or false, got 1"),
        ({"pass": "lower", "backend": "triton", "autotune": True}, r"passes\[0\].autotune: applies to backends eager and inductor"),
        ({"pass": "lower", "autotune": True, "channels_last": True}, r"passes\[0\].autotune: it chooses channels_last and direct_convs itself"),
    ],
)
def test_bad_layout_options_in_a_recipe_are_recipe_errors(step, message, plugins, small_cnn, image) -> None:
    with pytest.raises(RecipeError, match=message):
        fxcomp.compress(small_cnn, image, {"passes": [step]}, plugins=plugins)


class _ClampsThroughAView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.view(x.size(0), -1).clamp_(min=0)
        return x


def test_a_view_modified_in_place_stays_a_view_so_direct_convs_are_refused_not_wrong(plugins) -> None:
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)
    gm = fxcomp.trace(nn.Sequential(nn.Conv2d(3, 4, 1), _ClampsThroughAView()).eval(), x)
    with pytest.raises(LoweringError, match=r"with direct convolutions the graph fails to run: .*node '1\.view'.*"
                                            r"view size is not compatible .*; lower without direct_convs$"):
        fxcomp.lower(gm, example_inputs=x, plugins=plugins, direct_convs=True)
    result = fxcomp.lower(gm, example_inputs=x, plugins=plugins, autotune=True)
    assert result.report.layout == "as is" and sorted(t["candidate"] for t in result.report.autotune if t["failed"]) == [
        "channels_last", "channels_last + direct_convs", "direct_convs"]
    torch.testing.assert_close(result.module(x), gm(x))
    assert gm(x).min() == 0
