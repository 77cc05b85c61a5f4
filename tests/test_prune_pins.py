"""Operations pruning cannot follow are pinned, never pruned wrongly; the ones it can follow prune exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxcomp
from tests.test_prune import _prune_and_compare


def _group(model: nn.Module, x: torch.Tensor, producer: str) -> fxcomp.ChannelGroup:
    groups = fxcomp.analyze(fxcomp.trace(model.eval(), x))
    return next(group for group in groups if producer in group.producers)


class _Softmax(nn.Module):
    """Softmax over the channels of ``a`` (pinned) or over the pixels (channels kept)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a, self.softmax, self.b = nn.Conv2d(3, 8, 1), nn.Softmax(dim=dim), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.softmax(self.a(x)))


class _SoftmaxFunctions(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim, self.a, self.b = dim, nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(torch.log_softmax(y, self.dim) + y.softmax(dim=self.dim))


@pytest.mark.parametrize("factory", [_Softmax, _SoftmaxFunctions])
def test_softmax_over_channels_pins_them_and_over_pixels_keeps_them(factory) -> None:
    x = torch.randn(2, 3, 4, 4)
    names = ["softmax"] if factory is _Softmax else ["log_softmax", "softmax"]
    assert _group(factory(1), x, "a").pinned == [f"'{name}' normalizes over the channel axis" for name in names]
    assert _group(factory(-1), x, "a").prunable
    result, error = _prune_and_compare(factory(-1), x)
    assert error < 1e-4 and result.model.a.out_channels == 4


class _Rotate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(torch.cat([y[:, 4:], y[:, :4]], 1))


class _ChannelGate(nn.Module):
    """One fixed channel of ``g`` gates all of ``a``'s."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.g, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.a(x) * torch.sigmoid(self.g(x).narrow(1, 3, 1)))


class _EveryOtherPixel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.a(x)[:, :, ::2, 1:])


def test_channels_selected_by_fixed_positions_are_pinned() -> None:
    x = torch.randn(2, 3, 4, 4)
    reason = "selects channels by positions written in the graph, which pruning would shift"
    assert _group(_Rotate(), x, "a").pinned == [f"'getitem' {reason}", f"'getitem_1' {reason}"]
    # g's channel 3 multiplies every channel of a: one group, pinned by the fixed position.
    gate = _group(_ChannelGate(), x, "g")
    assert gate.producers == ["a", "g"] and gate.pinned == [f"'narrow' {reason}"]
    result, error = _prune_and_compare(_ChannelGate(), x)
    assert error < 1e-4 and result.model.a.out_channels == 8


def test_selecting_pixels_keeps_the_channels_prunable() -> None:
    result, error = _prune_and_compare(_EveryOtherPixel(), torch.randn(2, 3, 4, 4))
    assert error < 1e-4 and result.model.a.out_channels == 4


class _PixelHeads(nn.Module):
    """Attention over pixels whose head width is computed from the block input (``C // heads``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.qkv, self.proj = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 24, 1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, 3, 2, channels // 2, height * width).unbind(1)
        attention = (q.transpose(-1, -2) @ k).softmax(-1)
        out = (v @ attention.transpose(-1, -2)).reshape(batch, -1, height, width)
        return self.fc((x + self.proj(out)).mean((2, 3)))


@pytest.mark.parametrize("recipe", ["{pass: prune, group_ratios: {stem: 0.5}}", "{pass: prune, ratio: 0.5}"])
def test_a_size_computed_from_a_pruned_group_keeps_sizing_an_unpruned_one(recipe) -> None:
    result, error = _prune_and_compare(_PixelHeads(), torch.randn(2, 3, 4, 4), f"passes: [{recipe}]")
    assert error < 1e-4 and result.model.stem.out_channels == 4


class _GroupedTransposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.up, self.b = nn.Conv2d(3, 8, 1), nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.up(self.a(x)))


def test_grouped_transposed_convolutions_are_pinned() -> None:
    x = torch.randn(2, 3, 4, 4)
    assert _group(_GroupedTransposed(), x, "up").pinned == [
        "'up' is a grouped transposed convolution, whose outputs it cannot prune"
    ]
    result, error = _prune_and_compare(_GroupedTransposed(), x)
    assert error < 1e-4 and result.model.up.out_channels == 8


class _PerChannelPReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Conv2d(3, 8, 1), nn.PReLU(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def test_per_channel_prelu_slopes_are_pruned_with_their_channels() -> None:
    model = _PerChannelPReLU()
    with torch.no_grad():
        model.act.weight.copy_(torch.linspace(-1, 1, 8))
    result, error = _prune_and_compare(model, torch.randn(2, 3, 4, 4))
    assert error < 1e-4 and result.model.act.weight.shape == (4,)
