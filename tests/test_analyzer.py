"""The dependency analyzer: coupled channels across residuals, concat, split, flatten, depthwise, shuffle."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

import fxcomp
from fxcomp.analysis import ChannelGroup, Member, analyze


def _groups(model: nn.Module, x: torch.Tensor) -> list[ChannelGroup]:
    return analyze(fxcomp.trace(model.eval(), x))


def _by_producer(groups: list[ChannelGroup]) -> dict[str, ChannelGroup]:
    return {producer: group for group in groups for producer in group.producers}


def _member(group: ChannelGroup, name: str, axis: int) -> Member:
    (member,) = [m for m in group.members if m.name == name and m.axis == axis]
    return member


def test_resnet_residual_chain_is_one_group() -> None:
    groups = _groups(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 64, 64))
    stem = _by_producer(groups)["conv1"]
    assert stem.producers == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    assert stem.channels == 64 and stem.prunable
    identity = tuple(range(64))
    for name, axis in [
        ("conv1.weight", 0),
        ("bn1.weight", 0),
        ("bn1.running_var", 0),
        ("layer1.0.conv1.weight", 1),
        ("layer1.0.conv2.weight", 0),
        ("layer1.1.bn2.bias", 0),
        ("layer2.0.downsample.0.weight", 1),
    ]:
        assert _member(stem, name, axis).channels == identity
    inner = _by_producer(groups)["layer1.0.conv1"]
    assert inner.producers == ["layer1.0.conv1"] and inner.prunable
    assert {(m.name, m.axis) for m in inner.members} == {
        ("layer1.0.conv1.weight", 0),
        ("layer1.0.bn1.weight", 0),
        ("layer1.0.bn1.bias", 0),
        ("layer1.0.bn1.running_mean", 0),
        ("layer1.0.bn1.running_var", 0),
        ("layer1.0.conv2.weight", 1),
    }
    head = _by_producer(groups)["fc"]
    assert head.pinned == ["the model returns these channels"]
    assert sum(g.prunable for g in groups) == len(groups) - 1


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 5, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


def test_concat_maps_each_input_to_its_offset() -> None:
    groups = _by_producer(_groups(_Concat(), torch.randn(1, 3, 4, 4)))
    assert _member(groups["a"], "c.weight", 1).channels == (0, 1, 2, 3) + (-1,) * 6
    assert _member(groups["b"], "c.weight", 1).channels == (-1,) * 4 + (0, 1, 2, 3, 4, 5)


class _Split(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.left = nn.Conv2d(3, 2, 1)
        self.right = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        first, second = torch.split(self.a(x), [3, 5], dim=1)
        return self.left(first) + self.right(second)


def test_split_sends_channels_to_their_consumers() -> None:
    groups = _by_producer(_groups(_Split(), torch.randn(1, 3, 4, 4)))
    a = groups["a"]
    assert _member(a, "left.weight", 1).channels == (0, 1, 2)
    assert _member(a, "right.weight", 1).channels == (3, 4, 5, 6, 7)
    split = _member(a, "split", 1)
    assert (split.kind, split.channels) == ("split", tuple(range(8)))
    # left and right are added: their output channels are one (pinned, returned) group.
    assert groups["left"] is groups["right"] and groups["left"].pinned


class _FlattenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 2 * 3, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def test_flatten_expands_each_channel_into_its_features() -> None:
    group = _by_producer(_groups(_FlattenHead(), torch.randn(1, 3, 4, 5)))["conv"]
    assert _member(group, "fc.weight", 1).channels == tuple(c for c in range(4) for _ in range(6))


class _Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.depthwise = nn.Conv2d(8, 16, 3, groups=8)
        self.project = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.project(self.depthwise(self.expand(x)))


def test_depthwise_conv_ties_outputs_to_inputs() -> None:
    groups = _by_producer(_groups(_Depthwise(), torch.randn(1, 3, 5, 5)))
    group = groups["expand"]
    assert "depthwise" not in groups  # the depthwise conv produces no channels of its own
    assert _member(group, "depthwise.weight", 0).channels == tuple(c for c in range(8) for _ in range(2))
    assert _member(group, "project.weight", 1).channels == tuple(c for c in range(8) for _ in range(2))


def test_channel_shuffle_permutes_the_mapping() -> None:
    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            y = self.a(x)
            n, c, h, w = y.shape
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            return self.b(y)

    group = _by_producer(_groups(Shuffle(), torch.randn(1, 3, 2, 2)))["a"]
    # After shuffling with 2 groups, input channel i of b is channel (i % 2) * 3 + i // 2 of a.
    assert _member(group, "b.weight", 1).channels == (0, 3, 1, 4, 2, 5)


def test_parameters_read_elementwise_are_members() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.conv(x) * self.scale)

    group = _by_producer(_groups(Scaled(), torch.randn(1, 3, 2, 2)))["conv"]
    assert _member(group, "scale", 1).channels == (0, 1, 2, 3)
    assert group.prunable


@pytest.mark.parametrize(
    ("forward_body", "reason"),
    [
        ("return self.head(torch.cumsum(self.conv(x), 1))", "'cumsum' is a call to cumsum, which the analyzer does not know"),
        ("return self.head(self.conv(x) + x.repeat(1, 2, 1, 1)[:, :4])", "'add' combines the channels with a tensor that cannot be pruned"),
    ],
)
def test_unknown_ops_and_rigid_operands_pin_with_a_reason(forward_body, reason) -> None:
    namespace: dict = {"torch": torch, "nn": nn}
    exec(
        "class Model(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(2, 4, 1)\n"
        "        self.head = nn.Conv2d(4, 2, 1)\n"
        f"    def forward(self, x):\n        {forward_body}\n",
        namespace,
    )
    group = _by_producer(_groups(namespace["Model"](), torch.randn(1, 2, 3, 3)))["conv"]
    assert group.pinned == [reason]


def test_ignored_producers_pin_their_group() -> None:
    groups = analyze(fxcomp.trace(_Depthwise().eval(), torch.randn(1, 3, 5, 5)), ignore=["exp*"])
    assert _by_producer(groups)["expand"].pinned == ["ignored by the user"]


def test_grouped_convolution_keeps_segments() -> None:
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.g = nn.Conv2d(8, 8, 3, groups=4)
            self.b = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.g(self.a(x)))

    groups = _by_producer(_groups(Grouped(), torch.randn(1, 3, 5, 5)))
    assert groups["a"].pinned == ["'g' is a grouped convolution (groups=4) whose input channels are not pruned yet"]
    assert groups["g"].segments == 4 and groups["g"].prunable
