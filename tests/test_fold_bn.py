"""The fold_bn built-in plugin: exact folding where it is valid, a stated reason where it is not."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

import fxcomp
from tests.conftest import randomize_batchnorm


def _fold(model: nn.Module, x: torch.Tensor, recipe: str = "passes: [{pass: fold_bn}]"):
    model = randomize_batchnorm(model).eval()
    result = fxcomp.compress(model, x, recipe)
    with torch.no_grad():
        expected, actual = model(x), result.model(x)
    return result, expected, actual


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


LAYER_CASES = [
    ("conv1d", nn.Sequential(nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6)), torch.randn(3, 4, 10)),
    ("conv2d_no_bias", nn.Sequential(nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6)), torch.randn(3, 4, 9, 9)),
    ("conv2d_grouped", nn.Sequential(nn.Conv2d(4, 8, 3, groups=2, stride=2), nn.BatchNorm2d(8)), torch.randn(3, 4, 9, 9)),
    ("conv2d_depthwise", nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4)), torch.randn(3, 4, 9, 9)),
    ("conv3d", nn.Sequential(nn.Conv3d(2, 3, 3), nn.BatchNorm3d(3)), torch.randn(2, 2, 5, 5, 5)),
    ("conv_transpose2d", nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2), nn.BatchNorm2d(6)), torch.randn(3, 4, 5, 5)),
    ("linear", nn.Sequential(nn.Linear(7, 5), nn.BatchNorm1d(5)), torch.randn(4, 7)),
    ("non_affine_bn", nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6, affine=False)), torch.randn(3, 4, 5, 5)),
]


@pytest.mark.parametrize(("case", "model", "x"), LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_folding_is_exact_and_removes_the_batchnorm(case, model, x) -> None:
    torch.manual_seed(0)
    result, expected, actual = _fold(model, x)
    assert _relative_error(actual, expected) < 1e-5
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in result.model.modules())
    assert result.plan[0]["plan"] == {"folds": [{"layer": "0", "batchnorm": "1"}], "skipped": [], "renamed": {"1": "0"}}
    assert result.model.get_submodule("0").bias is not None
    assert result.plan[0]["stats"] == {"folded": 1, "skipped": 0}


def test_resnet18_folds_every_batchnorm_exactly() -> None:
    torch.manual_seed(0)
    result, expected, actual = _fold(torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 64, 64))
    assert result.plan[0]["stats"] == {"folded": 20, "skipped": 0}
    assert _relative_error(actual, expected) < 1e-5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in result.model.modules()) == 0


class _SharedOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _AfterReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(torch.relu(self.conv(x)))


class _CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.conv(self.bn(self.conv(x)))


class _SequenceLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x):
        return self.bn(self.fc(x))


class _KeywordInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(input=self.conv(x))


class _WeightReadAgain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) + nn.functional.conv2d(x, self.conv.weight, padding=1)


class _ScaledConv(nn.Conv2d):
    def forward(self, x):
        return 10 * super().forward(x)


class _TiedConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
        self.b.weight = self.a.weight
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.a(x)) + self.b(x)


def _hooked() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[0].register_forward_hook(lambda module, inputs, output: output.clamp(-0.1, 0.1))
    return model


def test_a_batchnorm_called_with_input_by_keyword_folds() -> None:
    result, expected, actual = _fold(_KeywordInput(), torch.randn(2, 3, 8, 8))
    assert result.plan[0]["plan"]["folds"] == [{"layer": "conv", "batchnorm": "bn"}]
    assert _relative_error(actual, expected) < 1e-5


def test_a_float16_model_folds_within_its_precision() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 8, 3)))
    with torch.no_grad():
        model[1].weight.uniform_(-2, 2)
    model, x = model.eval().half(), torch.randn(2, 16, 12, 12).half()
    result = fxcomp.compress(model, x, "passes: [{pass: fold_bn}]")  # float32's 1e-5 is below float16 rounding
    assert result.plan[0]["plan"]["folds"] == [{"layer": "0", "batchnorm": "1"}]
    with torch.no_grad():
        assert _relative_error(result.model(x).float(), model(x).float()) < 16 * torch.finfo(torch.float16).eps


SKIP_CASES = [
    (_WeightReadAgain(), torch.randn(2, 3, 8, 8), "the graph also reads 'conv.weight' directly"),
    (nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4)), torch.randn(2, 3, 8, 8),
     "its weight is computed by _WeightNorm"),
    (nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4)), torch.randn(2, 3, 8, 8),
     "its weight is computed by _SpectralNorm"),
    (nn.Sequential(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6)), torch.randn(3, 8), "the layer's input is unbatched"),
    (_hooked(), torch.randn(2, 3, 8, 8), "'0' has forward hooks"),
    (_TiedConvs(), torch.randn(2, 3, 4, 4), "the weight of 'a' is shared with another module"),
    (_SharedOutput(), torch.randn(2, 3, 4, 4), "the output of 'conv' is also read elsewhere"),
    (_AfterReLU(), torch.randn(2, 3, 4, 4), "its input comes from 'relu', not from a conv or linear layer"),
    (_CalledTwice(), torch.randn(2, 4, 4, 4), "called more than once"),
    (_SequenceLinear(), torch.randn(2, 5, 6), "more than 2-D output"),
    (
        nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)),
        torch.randn(2, 3, 4, 4),
        "track_running_stats=False",
    ),
]


@pytest.mark.parametrize(
    ("model", "x", "reason"),
    SKIP_CASES,
    ids=["read_again", "weight_norm", "spectral_norm", "unbatched", "hooked", "tied", "shared", "relu", "twice", "seq_linear", "no_stats"],
)
def test_unfoldable_batchnorms_are_kept_with_a_reason(model, x, reason) -> None:
    torch.manual_seed(0)
    result, expected, actual = _fold(model, x)
    (skipped,) = result.plan[0]["plan"]["skipped"]
    assert reason in skipped["reason"]
    assert result.plan[0]["plan"]["folds"] == []
    assert result.plan[0]["modified"] is False
    assert torch.equal(actual, expected)


def test_include_and_exclude_globs(small_cnn, image) -> None:
    only_first = fxcomp.compress(small_cnn, image, "passes: [{pass: fold_bn, include: ['bn1']}]")
    assert [f["batchnorm"] for f in only_first.plan[0]["plan"]["folds"]] == ["bn1"]
    assert isinstance(only_first.model.bn2, nn.BatchNorm2d)
    none = fxcomp.compress(small_cnn, image, "passes: [{pass: fold_bn, exclude: 'bn*'}]")
    assert none.plan[0]["plan"]["folds"] == []


def test_folded_model_survives_save_and_load(tmp_path, small_cnn, image) -> None:
    result = fxcomp.compress(small_cnn, image, "passes: [{pass: fold_bn}]")
    fxcomp.save(result.model, tmp_path / "folded.fxc")
    loaded = fxcomp.load(tmp_path / "folded.fxc")
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


def _conv_bn(transposed: bool = False) -> nn.Module:
    conv = nn.ConvTranspose2d(4, 8, 3) if transposed else nn.Conv2d(4, 8, 3)
    model = nn.Sequential(conv, nn.BatchNorm2d(8))
    return randomize_batchnorm(model).eval()


def test_a_layer_subclass_kept_as_a_leaf_is_not_folded() -> None:
    model = nn.Sequential(_ScaledConv(3, 4, 3), nn.BatchNorm2d(4)).eval()
    result = fxcomp.compress(model, torch.randn(2, 3, 8, 8), "passes: [{pass: fold_bn}]", leaf_modules=["0"])
    assert result.plan[0]["plan"]["skipped"] == [{"batchnorm": "1", "reason": "'0' is a _ScaledConv, whose forward folding cannot follow"}]


@pytest.mark.parametrize(
    ("first", "transposed", "reason"),
    [
        ("{pass: cluster}", False, "its weight is stored as SharedWeights; run fold_bn before the pass that added it"),
        ("{pass: quantize, scheme: int8_weight_only}, {pass: convert}", False, "its weight is stored as PackedWeight"),
        ("{pass: quantize, scheme: int8_weight_only}", True, "fake-quantized along another axis than its output channels"),
    ],
)
def test_weights_that_cannot_absorb_the_scale_are_skipped(first, transposed, reason) -> None:
    x = torch.randn(2, 4, 8, 8)
    result = fxcomp.compress(_conv_bn(transposed), x, f"passes: [{first}, {{pass: fold_bn}}]")
    plan = result.plan[-1]["plan"]
    assert plan["folds"] == [] and reason in plan["skipped"][0]["reason"]


def test_fake_quantized_conv_weights_still_fold() -> None:
    x = torch.randn(2, 4, 8, 8)
    result = fxcomp.compress(_conv_bn(), x, "passes: [{pass: quantize, scheme: int8_weight_only}, {pass: fold_bn}]")
    assert result.plan[-1]["plan"]["folds"] == [{"layer": "0", "batchnorm": "1"}]


@pytest.mark.parametrize(
    ("frozen", "weight_trainable", "bias_trainable"),
    [((), True, True), (("0.weight", "0.bias"), False, True), (("0.weight", "0.bias", "1.bias"), False, False)],
)
def test_folded_parameters_keep_what_was_trainable(frozen, weight_trainable, bias_trainable) -> None:
    model = _conv_bn()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)  # e.g. conv frozen, BatchNorm fine-tuned
    result, _, _ = _fold(model, torch.randn(2, 4, 6, 6))
    folded = result.model.get_submodule("0")
    assert (folded.weight.requires_grad, folded.bias.requires_grad) == (weight_trainable, bias_trainable)
