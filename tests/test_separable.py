"""The separable built-in plugin: closed-form depthwise + pointwise, exact at the full multiplier."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxcomp


def _run(model: nn.Module, x: torch.Tensor, **options):
    return fxcomp.compress(model.eval(), x, {"passes": [{"pass": "separable", **options}]})


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


EXACT_CASES = [
    ("stride_groups_bias", nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2), (2, 6, 11, 13)),
    ("rectangular_dilation_no_bias", nn.Conv2d(6, 8, (3, 5), (2, 1), (2, 1), (1, 2), bias=False), (2, 6, 11, 13)),
    ("same_reflect", nn.Conv2d(6, 8, 3, padding="same", padding_mode="reflect"), (2, 6, 9, 9)),
    ("few_outputs", nn.Conv2d(5, 3, 3, padding=1), (2, 5, 7, 7)),
    ("conv1d_groups", nn.Conv1d(6, 8, 5, stride=2, padding=2, groups=2), (2, 6, 20)),
    ("conv3d", nn.Conv3d(4, 6, 3, padding=1), (1, 4, 5, 6, 7)),
]


@pytest.mark.parametrize(("case", "conv", "shape"), EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_full_multiplier_is_exact_for_every_conv_option(case, conv, shape) -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(conv), torch.randn(shape)
    result = _run(model, x, depth_multiplier=100, skip_no_gain=False)
    (entry,) = result.plan[0]["plan"]["layers"]
    kernel = conv.weight[0, 0].numel()
    assert entry["depth_multiplier"] == min(conv.out_channels // conv.groups, kernel)  # capped at the full multiplier
    assert _relative(result.model(x), model(x)) < 1e-5
    depthwise, pointwise = result.model.get_submodule("0")
    m = entry["depth_multiplier"]
    assert (depthwise.groups, depthwise.out_channels, depthwise.stride, depthwise.dilation) == (
        conv.in_channels,
        conv.in_channels * m,
        conv.stride,
        conv.dilation,
    )
    assert (pointwise.groups, pointwise.out_channels, pointwise.bias is None) == (conv.groups, conv.out_channels, conv.bias is None)


def test_multiplier_one_is_the_best_rank_one_split_of_each_input_channel() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    result = _run(nn.Sequential(conv), torch.randn(1, 4, 8, 8))
    depthwise, pointwise = result.model.get_submodule("0")
    approximation = pointwise.weight[:, :, 0, 0].unsqueeze(2) * depthwise.weight[:, 0].flatten(1).unsqueeze(0)  # (O, I, 9)
    weight = conv.weight.detach().double()
    expected_error = 0.0
    for channel in range(4):
        best = torch.linalg.svd(weight[:, channel].flatten(1))
        expected_error += float(best.S[1:].pow(2).sum())
        rank_one = best.S[0] * torch.outer(best.U[:, 0], best.Vh[0])
        torch.testing.assert_close(approximation[:, channel].detach().double(), rank_one, rtol=1e-5, atol=1e-6)
    (entry,) = result.plan[0]["plan"]["layers"]
    assert entry["error"] == pytest.approx((expected_error / float(weight.pow(2).sum())) ** 0.5, rel=1e-6)


def test_macs_follow_the_depthwise_separable_formula_and_match_the_report() -> None:
    conv = nn.Conv2d(32, 64, 3, stride=2, padding=1)
    result = _run(nn.Sequential(conv), torch.randn(2, 32, 16, 16), depth_multiplier=2)
    (entry,) = result.plan[0]["plan"]["layers"]
    pixels = 2 * 8 * 8
    assert entry["macs_before"] == pixels * 64 * 32 * 9
    assert entry["macs_after"] == pixels * (32 * 2 * 9 + 32 * 2 * 64)
    assert entry["params_after"] == 32 * 2 * 9 + 32 * 2 * 64 + 64
    assert result.report.before_totals.macs - result.report.after_totals.macs == entry["macs_before"] - entry["macs_after"]


def test_max_error_picks_the_smallest_multiplier_within_it() -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1)), torch.randn(1, 16, 8, 8)
    chosen = _run(model, x, max_error=0.6).plan[0]["plan"]["layers"][0]
    below = _run(model, x, depth_multiplier=chosen["depth_multiplier"] - 1).plan[0]["plan"]["layers"][0]
    assert chosen["error"] <= 0.6 < below["error"]


def test_trained_like_low_rank_slices_convert_almost_exactly_at_multiplier_one() -> None:
    # Each input channel's filters share one spatial pattern: rank one per slice, as in a separable net.
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(16, 8, 1, 1) * torch.randn(1, 8, 3, 3))
    model, x = nn.Sequential(conv), torch.randn(2, 8, 10, 10)
    result = _run(model, x)
    assert result.plan[0]["plan"]["layers"][0]["error"] < 1e-6
    assert _relative(result.model(x), model(x)) < 1e-5


def test_skips_say_why() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pointwise = nn.Conv2d(8, 8, 1)
            self.small = nn.Conv2d(8, 1, 3, padding=1)  # 8·9 + 8·1 weights ≥ 8·9

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.small(self.pointwise(self.depthwise(x)))

    plan = _run(Net(), torch.randn(1, 8, 6, 6)).plan[0]["plan"]
    reasons = {skip["layer"]: skip["reason"] for skip in plan["skipped"]}
    assert plan["layers"] == []
    assert "already depthwise" in reasons["depthwise"]
    assert "already pointwise" in reasons["pointwise"]
    assert "no gain" in reasons["small"]


def test_depth_multiplier_and_max_error_together_are_a_recipe_error() -> None:
    with pytest.raises(fxcomp.RecipeError, match="give depth_multiplier or max_error, not both"):
        _run(nn.Sequential(nn.Conv2d(2, 2, 3)), torch.randn(1, 2, 5, 5), depth_multiplier=1, max_error=0.1)
