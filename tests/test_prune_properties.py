"""Property test: random networks built from the coupling blocks prune to the zeroed reference."""

from __future__ import annotations

import torch
import torch.nn as nn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fxcomp
from tests.conftest import randomize_batchnorm
from tests.test_prune import zeroed_reference


class _ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = _ConvBN(channels, channels)

    def forward(self, x):
        return x + self.body(x)


class _Concat(nn.Module):
    def __init__(self, cin: int, extra: int) -> None:
        super().__init__()
        self.branch = _ConvBN(cin, extra)

    def forward(self, x):
        return torch.cat([x, self.branch(x)], dim=1)


class _Split(nn.Module):
    def __init__(self, channels: int, first: int) -> None:
        super().__init__()
        self.first = first
        self.left = nn.Conv2d(first, 4, 1)
        self.right = nn.Conv2d(channels - first, 4, 1)

    def forward(self, x):
        a, b = torch.split(x, [self.first, x.shape[1] - self.first], dim=1)
        return torch.cat([self.left(a), self.right(b)], dim=1)


class _Depthwise(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.dw(x))


class _EinsumGate(nn.Module):
    """A per-channel scale and a self-gate in one einsum."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(channels))

    def forward(self, x):
        return torch.einsum("bchw,c,bchw->bchw", x, self.scale, torch.sigmoid(x))


class _Squeeze(nn.Module):
    """``x.squeeze()``: drops every size-1 axis, the channel axis too if pruning left one channel."""

    def forward(self, x):
        return x.squeeze()


def _block(kind: str, channels: int, draw_size: int) -> tuple[nn.Module, int]:
    if kind == "convbn":
        return _ConvBN(channels, draw_size), draw_size
    if kind == "residual":
        return _Residual(channels), channels
    if kind == "concat":
        return _Concat(channels, draw_size), channels + draw_size
    if kind == "einsum":
        return _EinsumGate(channels), channels
    if kind == "split" and channels >= 2:
        return _Split(channels, max(1, min(channels - 1, draw_size))), 8
    return _Depthwise(channels), channels


@st.composite
def networks(draw):
    channels = draw(st.integers(2, 8))
    layers: list[nn.Module] = [_ConvBN(3, channels)]
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["convbn", "residual", "concat", "split", "depthwise", "einsum"]))
        block, channels = _block(kind, channels, draw(st.integers(2, 8)))
        layers.append(block)
    head = draw(st.sampled_from(["pool", "squeeze", "flatten"]))
    if head == "pool":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 5)]
    elif head == "squeeze":
        layers += [nn.AdaptiveAvgPool2d(1), _Squeeze(), nn.Linear(channels, 5)]
    else:
        layers += [nn.Flatten(), nn.Linear(channels * 4 * 4, 5)]
    ratio = draw(st.sampled_from([0.25, 0.5, 0.75]))
    return nn.Sequential(*layers), ratio


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), st.integers(0, 2**16))
def test_random_networks_prune_exactly(network, seed) -> None:
    model, ratio = network
    torch.manual_seed(seed)
    model = randomize_batchnorm(model, seed).eval()
    x = torch.randn(2, 3, 4, 4)
    result = fxcomp.compress(model, x, {"passes": [{"pass": "prune", "ratio": ratio}]})
    with torch.no_grad():
        expected = zeroed_reference(model, result.plan[0]["plan"])(x)
        actual = result.model(x)
    assert actual.shape == (2, 5)
    assert ((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item() < 1e-4
    assert result.report.after_totals.params <= result.report.before_totals.params
    event("pruned" if result.plan[0]["plan"]["groups"] else "nothing prunable")
