"""The dependency analyzer: coupled channels across residuals, concat, split, flatten, depthwise, shuffle."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import fxcomp
from fxcomp.analysis import ChannelGroup, Member, analyze
from fxcomp.analysis.groups import LabelSets


def _gate(x: torch.Tensor) -> torch.Tensor:
    """A function fx records as one opaque call (wrapped below), like torchvision's stochastic_depth."""
    return x * torch.sigmoid(x)


torch.fx.wrap("_gate")


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
    a, b = _member(groups["a"], "c.weight", 1), _member(groups["b"], "c.weight", 1)
    assert (a.size, a.positions, a.group_channels, a.whole) == (10, range(0, 4), (0, 1, 2, 3), False)
    assert (b.size, b.positions, b.group_channels, b.whole) == (10, range(4, 10), (0, 1, 2, 3, 4, 5), False)
    own = _member(groups["a"], "a.weight", 0)
    assert (own.positions, own.whole) == (range(4), True)


class _Repeated(nn.Module):
    """One producer concatenated twice around another: the reader's entries of its group are not contiguous."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = nn.Conv2d(3, 2, 1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.a(x)
        return self.c(torch.cat([a, self.b(x), a], 1))


def test_a_member_split_between_groups_lists_each_entry_in_exactly_one() -> None:
    groups = _by_producer(_groups(_Repeated(), torch.randn(1, 3, 4, 4)))
    a, b = _member(groups["a"], "c.weight", 1), _member(groups["b"], "c.weight", 1)
    assert (a.positions, a.group_channels) == ((0, 1, 2, 5, 6, 7), (0, 1, 2, 0, 1, 2))
    assert (b.positions, b.group_channels) == (range(3, 5), (0, 1))
    assert a.channels == (0, 1, 2, -1, -1, 0, 1, 2) and b.channels == (-1, -1, -1, 0, 1, -1, -1, -1)


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


class _Shuffle(nn.Module):
    """ShuffleNet's channel shuffle with the sizes read from the tensor (``c // 2``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.b(y)


class _ShuffleOp(_Shuffle):
    """The same shuffle through ``torch.channel_shuffle``."""

    def forward(self, x):
        return self.b(torch.channel_shuffle(self.a(x), 2))


@pytest.mark.parametrize("model", [_Shuffle(), _ShuffleOp()], ids=["view", "channel_shuffle"])
def test_channel_shuffle_ties_the_same_position_of_every_shuffle_group(model) -> None:
    group = _by_producer(_groups(model, torch.randn(1, 3, 2, 2)))["a"]
    # Channel j of shuffle group 0 and 1 (a's channels j and j + 3) must go together: after the
    # shuffle, b's input i is a's channel (i % 2) * 3 + i // 2.
    assert group.prunable and group.channels == 3
    assert _member(group, "a.weight", 0).channels == (0, 1, 2, 0, 1, 2)
    assert _member(group, "b.weight", 1).channels == (0, 0, 1, 1, 2, 2)


class _Heads(nn.Module):
    """Self-attention written with functional ops: qkv projection, head split, q·kᵀ, softmax, ·v, merge."""

    def __init__(self, sdpa: bool = False) -> None:
        super().__init__()
        self.sdpa = sdpa
        self.qkv = nn.Linear(6, 3 * 8)
        self.proj = nn.Linear(8, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        if self.sdpa:
            mixed = F.scaled_dot_product_attention(q, k, v)
        else:
            mixed = (q @ k.transpose(-2, -1) * 0.5).softmax(-1) @ v
        return self.head(x + self.proj(mixed.transpose(1, 2).reshape(b, n, 8)))


class _SdpaHeads(_Heads):
    def __init__(self) -> None:
        super().__init__(sdpa=True)


class _EinsumHeads(_Heads):
    """The same attention written with einsum, as timm and MaxViT write it (spaced, upper-case letters too)."""

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        scores = torch.einsum("B H I D, B H J D -> B H I J", q, k) * 0.5
        mixed = torch.einsum("...ij,...jd->...id", scores.softmax(-1), v)
        return self.head(x + self.proj(mixed.transpose(1, 2).reshape(b, n, 8)))


@pytest.mark.parametrize("model", [_Heads(), _SdpaHeads(), _EinsumHeads()], ids=["matmul", "sdpa", "einsum"])
def test_functional_attention_ties_q_to_k_and_shares_positions_across_heads(model) -> None:
    group = _by_producer(_groups(model, torch.randn(2, 5, 6)))["qkv"]
    # The head split ties the same position of q, k and v in every head: pruning removes it from all.
    assert group.prunable and group.channels == 4
    assert group.producers == ["qkv"]
    assert _member(group, "qkv.weight", 0).channels == (0, 1, 2, 3) * 6
    assert _member(group, "proj.weight", 1).channels == (0, 1, 2, 3) * 2
    assert _member(group, "reshape", 4).channels == (0, 1, 2, 3)  # the head width written in the graph


class _PixelShuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.shuffle = nn.PixelShuffle(2)
        self.head = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.head(self.shuffle(self.conv(x)))


def test_pixel_shuffle_moves_blocks_of_channels_together() -> None:
    group = _by_producer(_groups(_PixelShuffle(), torch.randn(1, 3, 2, 2)))["conv"]
    assert group.prunable and group.channels == 2
    assert _member(group, "conv.weight", 0).channels == (0, 0, 0, 0, 1, 1, 1, 1)
    assert _member(group, "head.weight", 1).channels == (0, 1)


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
        ("return self.head(self.conv(x).sum(1, keepdim=True) * self.conv(x))", "'sum' reduces over the channel axis"),
        ("return self.head(torch.einsum('bchw->bhw', self.conv(x)).unsqueeze(1) * self.conv(x))", "'einsum' reduces over the channel axis"),
        (
            "return self.head(torch.einsum('bchw,bdhw->bcdhw', self.conv(x), self.conv(x)).flatten(1, 2)[:, :4])",
            "'einsum' combines channels in a way pruning cannot follow",
        ),
        (
            "return self.head(torch.einsum('bchw,bchw->bchw', self.conv(x), x.repeat(1, 2, 1, 1)))",
            "'einsum' contracts channels with a tensor that cannot be pruned",
        ),
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


def test_reductions_over_other_axes_keep_the_channels() -> None:
    class MeanHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3))) + self.fc(self.conv(x).amax(dim=-1, keepdim=True).sum(-2)[..., 0])

    group = _by_producer(_groups(MeanHead(), torch.randn(1, 2, 3, 3)))["conv"]
    assert group.prunable and _member(group, "fc.weight", 1).channels == (0, 1, 2, 3)


def test_ignored_producers_pin_their_group() -> None:
    groups = analyze(fxcomp.trace(_Depthwise().eval(), torch.randn(1, 3, 5, 5)), ignore=["exp*"])
    assert _by_producer(groups)["expand"].pinned == ["ignored by the user"]


class _Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 8, 3, groups=4)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(self.g(self.a(x)))


def test_grouped_convolution_ties_input_positions_and_keeps_output_segments() -> None:
    groups = _by_producer(_groups(_Grouped(), torch.randn(1, 3, 5, 5)))
    # g's weight column j reads input j of every group: a's filters j, j+2, j+4, j+6 form one channel.
    assert groups["a"].prunable and groups["a"].channels == 2
    assert _member(groups["a"], "a.weight", 0).channels == (0, 1) * 4
    assert _member(groups["a"], "g.weight", 1).channels == (0, 1)
    assert groups["g"].segments == 4 and groups["g"].prunable


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(_gate(self.conv(x)))


def test_channel_rules_from_plugins_teach_unknown_ops() -> None:
    gm = fxcomp.trace(_Gated().eval(), torch.randn(1, 2, 3, 3))
    bare = fxcomp.load_plugins(entry_points=False)
    assert _by_producer(analyze(gm, plugins=bare))["conv"].pinned == [
        "'_gate' is a call to _gate, which the analyzer does not know"
    ]
    plugin = types.SimpleNamespace(
        fxcomp_register_channel_rules=fxcomp.hookimpl(lambda register: register(_gate, "elementwise"))
    )
    taught = fxcomp.load_plugins(entry_points=False, extra={"gates": plugin})
    group = _by_producer(analyze(gm, plugins=taught))["conv"]
    assert group.prunable and _member(group, "head.weight", 1).channels == (0, 1, 2, 3)


def test_a_channel_rule_of_unknown_kind_is_refused() -> None:
    plugin = types.SimpleNamespace(
        fxcomp_register_channel_rules=fxcomp.hookimpl(lambda register: register(_gate, "magic"))
    )
    with pytest.raises(fxcomp.PluginError, match=r"registered channel_rules with '.*_gate' bound to rule 'magic', which is not one of: elementwise, spatial, movement$"):
        fxcomp.load_plugins(entry_points=False, extra={"bad_rules": plugin})


def test_torchvision_stochastic_depth_is_taught_by_the_builtin_plugin() -> None:
    groups = _groups(torchvision.models.convnext_tiny(num_classes=10), torch.randn(1, 3, 64, 64))
    stem = _by_producer(groups)["features.0.0"]
    assert stem.prunable  # the residual stream through stochastic_depth, layer scale and layer_norm
    assert any(m.name == "features.1.0.layer_scale" for m in stem.members)
    assert sum(not g.prunable for g in groups) == 1  # only the classifier output


def test_grouped_resnext_and_regnet_prune_everything_but_the_output() -> None:
    for name in ("resnext50_32x4d", "regnet_x_400mf"):
        groups = _groups(torchvision.models.get_model(name, num_classes=10), torch.randn(1, 3, 64, 64))
        assert [g.pinned for g in groups if not g.prunable] == [["the model returns these channels"]], name


def test_meta_device_weights_and_inference_mode() -> None:
    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=10)
    on_meta = _groups(model, torch.randn(1, 3, 64, 64, device="meta"))
    with torch.inference_mode():
        real = _groups(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 64, 64))
    assert [(g.producers, g.channels, g.members, g.pinned) for g in on_meta] == [
        (g.producers, g.channels, g.members, g.pinned) for g in real
    ]


class _Attention(nn.Module):
    """Token embedding → self-attention with a residual → a linear head (heads: 2 of width 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        mixed, _ = self.attention(h, h, h, need_weights=False)
        return self.head(h + mixed)


def test_multihead_attention_ties_embedding_to_projections_with_heads_as_segments() -> None:
    group = _by_producer(_groups(_Attention(), torch.randn(2, 5, 6)))["embed"]
    assert group.prunable and group.segments == 2 and group.channels == 8
    identity = tuple(range(8))
    assert _member(group, "attention.in_proj_weight", 1).channels == identity
    assert _member(group, "attention.in_proj_weight", 0).channels == identity * 3  # q, k and v rows
    assert _member(group, "attention.out_proj.weight", 0).channels == identity
    assert _member(group, "head.weight", 1).channels == identity


class _ReshapeLiteral(nn.Module):
    """A patch embedding flattened with its width written as a literal, as torchvision's ViT does."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        n = x.shape[0]
        tokens = self.patch(x).reshape(n, 8, -1).permute(0, 2, 1)
        return self.head(tokens)


def test_literal_sizes_of_reshapes_are_members() -> None:
    group = _by_producer(_groups(_ReshapeLiteral(), torch.randn(1, 3, 4, 4)))["patch"]
    assert group.prunable and _member(group, "reshape", 1).kind == "shape"


class _Functional(nn.Module):
    """Layers written with F.conv2d / F.linear on parameters of the model."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.b1 = nn.Parameter(torch.randn(4))
        self.w2 = nn.Parameter(torch.randn(5, 4))

    def forward(self, x):
        y = torch.relu(nn.functional.conv2d(x, self.w1, self.b1, padding=1))
        return nn.functional.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1), self.w2)


def test_functional_layers_on_parameters_are_producers_and_consumers() -> None:
    group = _by_producer(_groups(_Functional(), torch.randn(1, 3, 4, 4)))["conv2d"]
    assert group.prunable
    assert {(m.name, m.axis) for m in group.members} == {("w1", 0), ("b1", 0), ("w2", 1)}


def test_functional_layers_with_weights_from_the_inputs_pin() -> None:
    class WeightInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x, weight):
            return nn.functional.conv2d(self.conv(x), weight)

    gm = fxcomp.trace(WeightInput(), (torch.randn(1, 3, 4, 4), torch.randn(2, 4, 1, 1)))
    group = _by_producer(analyze(gm))["conv"]
    assert group.pinned == ["'conv2d' uses a weight computed in the graph or passed as an input, which pruning cannot shrink"]


class _Chunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.left = nn.Conv2d(4, 2, 1)
        self.right = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        left, right = self.a(x).chunk(2, dim=1)
        return self.left(left) + self.right(right)


def test_chunk_makes_equal_segments() -> None:
    group = _by_producer(_groups(_Chunk(), torch.randn(1, 3, 4, 4)))["a"]
    assert group.prunable and group.segments == 2
    assert _member(group, "right.weight", 1).channels == (4, 5, 6, 7)


class _SizeFromOther(nn.Module):
    """Sizes read from one tensor shape another: channel counts must then stay equal."""

    def __init__(self, same: bool) -> None:
        super().__init__()
        self.same = same
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        source = a if self.same else b
        flat = a.flatten(2)
        return self.head(flat.reshape(flat.shape[0], source.shape[1], x.shape[2], x.shape[3]))


@pytest.mark.parametrize("same", [True, False])
def test_sizes_read_from_another_tensor_follow_pruning_or_become_literal(same: bool) -> None:
    groups = _by_producer(_groups(_SizeFromOther(same), torch.randn(1, 3, 2, 2)))
    assert groups["a"].prunable and groups["b"].prunable
    rewritten = [(m.name, m.axis) for m in groups["a"].members if m.kind == "shape"]
    # The same channels' count follows pruning by itself; another group's count is replaced by the kept count.
    assert rewritten == ([] if same else [("reshape", 1)])


class _FlatSizeFromOther(nn.Module):
    """A size counting other channels shapes a flattened channel×pixel axis: no literal can stand in for it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        return self.head(a.reshape(x.shape[0], b.shape[1] * x.shape[2] * x.shape[3])) + b.mean()


def test_sizes_counting_other_channels_on_a_flattened_axis_pin_both() -> None:
    groups = _by_producer(_groups(_FlatSizeFromOther(), torch.randn(1, 3, 2, 2)))
    reason = "'reshape' shapes a tensor with sizes computed from pruned channels"
    assert reason in groups["a"].pinned and reason in groups["b"].pinned


class _MergeHeadsByInputWidth(nn.Module):
    """Attention heads merged back with the width read from the block's input, as MaxViT does."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.qkv = nn.Linear(8, 3 * 8)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.embed(x)
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        mixed = torch.einsum("bhij,bhjd->bhid", (q @ k.transpose(-2, -1) * 0.5).softmax(-1), v)
        return self.head(x + self.proj(mixed.transpose(1, 2).reshape(b, n, d)))


def test_heads_merged_with_the_input_width_keep_both_groups_prunable() -> None:
    groups = _by_producer(_groups(_MergeHeadsByInputWidth(), torch.randn(2, 5, 6)))
    assert groups["embed"].prunable and groups["qkv"].prunable
    assert _member(groups["qkv"], "reshape_1", 2).kind == "shape"


@pytest.mark.parametrize(
    ("equation", "ndims", "expected"),
    [
        ("bhid,bhjd->bhij", [4, 4], (["bhid", "bhjd"], "bhij")),
        ("B H I D, B H J D -> B H I J", [4, 4], (["BHID", "BHJD"], "BHIJ")),
        ("...ij,...jk->...ik", [4, 3], (["ABij", "Bjk"], "ABik")),
        ("ij,jk", [2, 2], (["ij", "jk"], "ik")),
        ("...i->i...", [3], (["ABi"], "iAB")),
        ("ii->i", [2], None),
        ("ij,jk->ik", [3, 2], None),
    ],
)
def test_einsum_equations_are_read_one_letter_per_axis(equation, ndims, expected) -> None:
    from fxcomp.analysis.analyzer import einsum_subscripts

    assert einsum_subscripts(equation, ndims) == expected


class _EinsumLayers(nn.Module):
    """einsum as a layer on a parameter, as a permutation, and as a gate over the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.weight = nn.Parameter(torch.randn(4, 5))
        self.scale = nn.Parameter(torch.randn(4))

    def forward(self, x):
        y = torch.einsum("bchw,c->bchw", self.conv(x), self.scale)
        y = torch.einsum("bchw->bhwc", y)
        return torch.einsum("bhwc,cd->bdhw", y, self.weight)


def test_einsum_on_parameters_makes_members_and_permutes_channels() -> None:
    group = _by_producer(_groups(_EinsumLayers(), torch.randn(1, 3, 2, 2)))["conv"]
    assert group.prunable and group.channels == 4
    assert _member(group, "scale", 0).channels == (0, 1, 2, 3)
    assert _member(group, "weight", 0).channels == (0, 1, 2, 3)


def test_analyze_needs_a_traced_graph(small_cnn) -> None:
    with pytest.raises(fxcomp.TraceError, match=r"analyze takes a GraphModule from fxcomp.trace, got SmallCNN; pass fxcomp.trace\(model"):
        analyze(small_cnn)


def test_members_with_the_same_positions_compare_equal_however_given() -> None:
    as_range = Member("w", 1, 6, range(2, 5), (0, 1, 2))
    assert Member("w", 1, 6, (2, 3, 4), [0, 1, 2]) == as_range
    assert hash(Member("w", 1, 6, [2, 3, 4], (0, 1, 2))) == hash(as_range)
    assert as_range.channels == (-1, -1, 0, 1, 2, -1) and not as_range.whole
    assert Member("w", 1, 6, (0, 2), (1, 0)).positions == (0, 2)
    with pytest.raises(ValueError, match="2 positions but 1 channels"):
        Member("w", 1, 6, (0, 2), (1,))


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    merges=st.lists(st.lists(st.tuples(st.integers(-1, 29), st.integers(-1, 29)), max_size=8), max_size=6),
)
def test_label_sets_agree_with_a_plain_union_find(sizes, merges) -> None:
    labels = LabelSets()
    for size in sizes:
        labels.new(size)
    total = sum(sizes)
    reference = list(range(total))

    def root(label: int) -> int:
        while reference[label] != label:
            label = reference[label]
        return label

    for pairs in merges:
        pairs = [(a, b) for a, b in pairs if a < total and b < total]
        left, right = (torch.tensor([pair[i] for pair in pairs], dtype=torch.int64) for i in (0, 1))
        labels.union(left, right)
        for a, b in pairs:
            if a >= 0 and b >= 0:
                low, high = sorted((root(a), root(b)))
                reference[high] = low
        probe = torch.arange(-1, total)
        assert labels.find(probe).tolist() == [-1] + [root(label) for label in range(total)]
    assert labels.roots().tolist() == [root(label) for label in range(total)]
    with pytest.raises(IndexError, match="never allocated"):
        labels.find(torch.tensor([total]))
