"""Operations pruning cannot follow are pinned, never pruned wrongly; the ones it can follow prune exactly."""

from __future__ import annotations

import warnings

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


class _CalledTwice(nn.Module):
    """One conv applied twice in a chain: its input and output channels are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.c(torch.relu(self.c(self.a(x)))))


class _SharedScale(nn.Module):
    """One per-channel scale multiplies two branches: entry i serves channel i of both."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.g, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(16, 4, 1)
        self.scale = nn.Parameter(torch.linspace(0.5, 2, 8).reshape(1, 8, 1, 1))

    def forward(self, x):
        return self.b(torch.cat([self.a(x) * self.scale, self.g(x) * self.scale], 1))


@pytest.mark.parametrize("factory", [_CalledTwice, _SharedScale])
def test_a_tensor_used_twice_ties_the_channels_of_both_uses(factory) -> None:
    x = torch.randn(2, 3, 4, 4)
    first, second = ("a", "c") if factory is _CalledTwice else ("a", "g")
    group = _group(factory(), x, first)
    assert second in group.producers and group.prunable
    result, error = _prune_and_compare(factory(), x)
    assert error < 1e-4 and result.report.after_totals.macs < result.report.before_totals.macs


class _TiedEmbedding(nn.Module):
    """The output layer reuses the embedding's weight, which the analyzer does not follow into nn.Embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.hidden = nn.Embedding(10, 8), nn.Linear(8, 8)

    def forward(self, tokens):
        return nn.functional.linear(torch.relu(self.hidden(self.embed(tokens))), self.embed.weight)


def test_a_weight_an_unknown_module_also_uses_is_pinned() -> None:
    tokens = torch.randint(0, 10, (2, 5))
    group = _group(_TiedEmbedding(), tokens, "hidden")
    assert "'embed.weight' is also used by 'embed', which the analyzer does not know" in group.pinned
    result = fxcomp.compress(_TiedEmbedding().eval(), tokens, "passes: [{pass: prune, ratio: 0.5}]")
    assert result.model(tokens).shape == (2, 5, 10)


class _Unflatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.a(x).unflatten(1, (2, 4)).transpose(1, 2).flatten(1, 2))


class _HalfByComputedSize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y[:, : y.shape[1] // 2])


@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        (_Unflatten, "'unflatten' splits the channel axis into sizes written in the graph"),
        (_HalfByComputedSize, "'getitem_1' selects channels by positions written in the graph, which pruning would shift"),
    ],
)
def test_channel_axes_split_or_sliced_by_sizes_in_the_graph_are_pinned(factory, reason) -> None:
    x = torch.randn(2, 3, 4, 4)
    assert reason in _group(factory(), x, "a").pinned
    assert _prune_and_compare(factory(), x)[1] < 1e-4


class _TiedHeadFirst(nn.Module):
    """The output layer owns the weight and the embedding reuses it (the tie seen from the other side)."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.embed, self.hidden = nn.Linear(8, 10), nn.Embedding(10, 8), nn.Linear(8, 8)
        self.embed.weight = self.head.weight

    def forward(self, tokens):
        return self.head(torch.relu(self.hidden(self.embed(tokens))))


class _TiedConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.out(self.b(torch.relu(self.a(self.stem(x)))))


@pytest.mark.parametrize(("factory", "x"), [(_TiedHeadFirst, torch.randint(0, 10, (2, 5))), (_TiedConvs, torch.randn(1, 3, 4, 4))])
def test_a_weight_held_by_two_modules_is_never_untied(factory, x) -> None:
    groups = fxcomp.analyze(fxcomp.trace(factory().eval(), x))
    assert any("is one tensor held by several modules (tied weights)" in reason for g in groups for reason in g.pinned)
    model = factory().eval()
    result = fxcomp.compress(model, x, "passes: [{pass: prune, ratio: 0.5}]")
    tied = ("head", "embed") if factory is _TiedHeadFirst else ("a", "b")
    assert getattr(result.model, tied[0]).weight is getattr(result.model, tied[1]).weight
    assert torch.allclose(result.model(x), model(x))


class _SliceAtTheInputBoundary(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.cat([self.a(x), x], 1)[:, :8])


def test_a_slice_dropping_unlabelled_entries_pins_the_channels_it_keeps() -> None:
    x = torch.randn(2, 3, 4, 4)
    reason = "'getitem' selects channels by positions written in the graph, which pruning would shift"
    assert _group(_SliceAtTheInputBoundary(), x, "a").pinned == [reason]
    assert _prune_and_compare(_SliceAtTheInputBoundary(), x)[1] < 1e-4


class _Pair(nn.Module):
    """Two layers ``a`` and ``c`` on the input, and ``b`` after them; ``combine`` says how they meet."""

    def __init__(self, combine, linear: bool = False, inputs: int = 3, width: int = 8) -> None:
        super().__init__()
        self.combine = combine
        layer = nn.Linear if linear else (lambda i, o: nn.Conv2d(i, o, 1))
        self.a, self.c, self.b = layer(inputs, width), layer(inputs, width), layer(width, 4)
        self.s = nn.Parameter(torch.randn(1, width, 1, 1))
        self.g = nn.Parameter(torch.randn(1, 1, 1, 1))

    def forward(self, x):
        return self.b(self.combine(self, x))


def _linear(combine, **options):
    return lambda: _Pair(combine, linear=True, inputs=6, **options)


# Each couples or moves the channels in a way the analyzer follows: pruned, and exact.
FOLLOWED = {
    "add_keyword": (lambda m, x: torch.add(m.a(x), other=m.c(x)), (2, 3, 4, 4)),
    "add_method_keyword": (lambda m, x: m.a(x).add(other=m.c(x)), (2, 3, 4, 4)),
    "mul_keyword": (lambda m, x: torch.mul(m.a(x), other=torch.sigmoid(m.c(x))), (2, 3, 4, 4)),
    "where_keyword": (lambda m, x: torch.where(x[:, :1] > 0, m.a(x), other=m.c(x)), (2, 3, 4, 4)),
    "chunk_keywords": (lambda m, x: torch.cat(m.a(x).chunk(chunks=2, dim=1)[::-1], 1) + m.c(x), (2, 3, 4, 4)),
    "scalar_expanded": (lambda m, x: m.a(x) * m.g.expand_as(m.a(x)), (2, 3, 4, 4)),
}
FOLLOWED_LINEAR = {
    "double_transpose": (lambda m, x: m.a(x) + m.c(x).T.T, (4, 6)),
    "data": (lambda m, x: m.a(x) + m.c(x).data, (4, 6)),
    "matrix_transpose": (lambda m, x: m.a(x) + m.c(x).mT.mT, (2, 4, 6)),
}


@pytest.mark.parametrize("name", [*FOLLOWED, *FOLLOWED_LINEAR])
def test_couplings_written_unusually_prune_exactly(name) -> None:
    combine, shape = FOLLOWED.get(name) or FOLLOWED_LINEAR[name]
    model = _Pair(combine) if name in FOLLOWED else _linear(combine)()
    result, error = _prune_and_compare(model, torch.randn(*shape))
    assert error < 1e-4
    assert result.model.a.weight.shape[0] == 4 and result.report.after_totals.macs < result.report.before_totals.macs


def _attention_scaled_by_width(m, x):  # the textbook scores / sqrt(d): d read from the pruned tensor
    q, k = m.a(x), m.c(x)
    return torch.softmax(q @ k.transpose(-2, -1) * q.size(-1) ** -0.5, -1) @ q


# Each meets channels in a way pruning cannot follow: the channels named are pinned, and the
# result is still exact.
PINNED = {
    "size_as_value": (lambda m, x: m.a(x) / m.a(x).size(1) ** 0.5, (2, 3, 4, 4), "a",
                      "'truediv' computes with the number of channels, which pruning would change"),
    "attention_scaled_by_width": (_attention_scaled_by_width, (2, 5, 6), "a",
                                  "'mul' computes with the number of channels, which pruning would change"),
    "pool_over_features": (lambda m, x: torch.nn.functional.max_pool1d(m.a(x), 3, 1, 1), (4, 6), "a",
                           "'max_pool1d' pools over labelled axes"),
    "adaptive_pool_over_features": (lambda m, x: nn.functional.adaptive_avg_pool1d(m.a(x), 8), (4, 6), "a",
                                    "'adaptive_avg_pool1d' pools over labelled axes"),
    "roll_by_cat_and_slice": (lambda m, x: (lambda y: torch.cat([y, y], 1)[:, 4:12])(m.a(x)), (2, 3, 4, 4), "a",
                              "'getitem' selects channels by positions written in the graph, which pruning would shift"),
    "index_list": (lambda m, x: m.a(x)[:, [7, 6, 5, 4, 3, 2, 1, 0]], (2, 3, 4, 4), "a",
                   "'getitem' selects channels by positions written in the graph, which pruning would shift"),
    "narrow_all": (lambda m, x: torch.narrow(m.a(x), 1, 0, 8), (2, 3, 4, 4), "a",
                   "'narrow' selects channels by positions written in the graph, which pruning would shift"),
    "partly_unprunable_add": (lambda m, x: torch.cat([m.a(x)[:, :5], x], 1) + m.c(x), (2, 3, 4, 4), "c",
                              "'add' combines channels with entries that cannot be pruned"),
    "scale_also_on_input": (lambda m, x: m.a(x) * m.s + (x.mean(1, keepdim=True) * m.s).mean(), (2, 3, 4, 4), "a",
                            "'s' also serves entries that belong to no prunable channel"),
}


@pytest.mark.parametrize("name", PINNED)
def test_couplings_pruning_cannot_follow_are_pinned(name) -> None:
    combine, shape, producer, reason = PINNED[name]
    x = torch.randn(*shape)
    model = (_linear(combine) if len(shape) < 4 else lambda: _Pair(combine))()
    assert reason in _group(model, x, producer).pinned
    result, error = _prune_and_compare(model, x)
    assert error < 1e-4 and getattr(result.model, producer).weight.shape[0] == 8


class _DepthwiseOnInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.d, self.b = nn.Conv2d(3, 12, 3, padding=1, groups=3), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.d(x)))


class _PoolIndices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.pool, self.unpool, self.b = nn.Conv2d(3, 8, 1), nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        pooled, indices = self.pool(self.a(x))
        return self.b(self.unpool(pooled, indices))


def test_modules_whose_outputs_pruning_cannot_follow_are_pinned() -> None:
    x = torch.randn(2, 3, 4, 4)
    assert "'d' is a depthwise convolution on channels it cannot prune" in _group(_DepthwiseOnInput(), x, "d").pinned
    assert "'unpool' is a MaxUnpool2d module, which the analyzer does not know" in _group(_PoolIndices(), x, "a").pinned
    for factory in (_DepthwiseOnInput, _PoolIndices):
        assert _prune_and_compare(factory(), x)[1] < 1e-4


class _Tokens(nn.Module):
    """A class token expanded with a literal width, then a LayerNorm without parameters (or none)."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.a, self.o = nn.Linear(6, 8), nn.Linear(8, 2)
        self.norm = nn.LayerNorm(8, elementwise_affine=False) if norm else nn.Identity()
        self.cls = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x):
        return self.o(self.norm(torch.cat([self.cls.expand(x.shape[0], 1, 8), self.a(x)], 1)))


def test_literal_sizes_of_an_expanded_token_and_a_parameterless_layer_norm_follow_pruning() -> None:
    x = torch.randn(2, 5, 6)
    result, error = _prune_and_compare(_Tokens(norm=False), x)
    (expand,) = [n for n in result.model.graph.nodes if n.target == "expand"]
    assert error < 1e-5 and expand.args[3] == 4 and result.model.cls.shape == (1, 1, 4)
    model = _Tokens(norm=True).eval()
    result = fxcomp.compress(model, x, "passes: [{pass: prune, ratio: 0.5}]")
    kept = result.plan[0]["plan"]["kept"]["cls"]["2"]
    assert result.model.norm.normalized_shape == (4,)
    tokens = torch.cat([model.cls.expand(2, 1, 8), model.a(x)], 1)[..., kept]  # the norm sees the kept channels only
    expected = nn.functional.linear(nn.functional.layer_norm(tokens, (4,)), model.o.weight[:, kept], model.o.bias)
    torch.testing.assert_close(result.model(x), expected)



class _NormsWithoutTensors(nn.Module):
    """conv a (3→8) → a norm with no parameter or buffer → PReLU(8) → conv h (8→2)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.a, self.norm, self.act, self.h = nn.Conv2d(3, 8, 3), norm, nn.PReLU(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.h(self.act(self.norm(self.a(x))))


@pytest.mark.parametrize(
    ("norm", "attribute"),
    [(nn.InstanceNorm2d(8), "num_features"), (nn.BatchNorm2d(8, affine=False, track_running_stats=False), "num_features"),
     (nn.GroupNorm(2, 8, affine=False), "num_channels")],
)
def test_size_attributes_of_layers_without_shrunk_tensors_follow_pruning(norm: nn.Module, attribute: str) -> None:
    # They kept the original 8: InstanceNorm2d warned on every forward, PReLU.num_parameters disagreed with its weight.
    x = torch.randn(2, 3, 6, 6)
    result, error = _prune_and_compare(_NormsWithoutTensors(norm), x)
    assert result.model.a.out_channels == 4 and getattr(result.model.norm, attribute) == 4
    assert result.model.act.num_parameters == 4
    assert error < 1e-4 or isinstance(norm, nn.GroupNorm)  # GroupNorm mixes channels: zeroing them is no reference
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result.model(x)

class _Squeezed(nn.Module):
    """``a``'s channels pooled to ``B×C×1`` and squeezed (``dim`` None: every size-1 axis) before ``b``."""

    def __init__(self, dim, function: bool) -> None:
        super().__init__()
        self.dim, self.function, self.a, self.b = dim, function, nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

    def forward(self, x):
        pooled = nn.functional.adaptive_avg_pool2d(self.a(x), 1).flatten(2)
        if self.function:
            return self.b(torch.squeeze(pooled) if self.dim is None else torch.squeeze(pooled, self.dim))
        return self.b(pooled.squeeze() if self.dim is None else pooled.squeeze(self.dim))


@pytest.mark.parametrize("function", [False, True])
@pytest.mark.parametrize(("dim", "least"), [(None, 2), ((1, 2), 2), (-1, 1)])
def test_a_squeeze_that_would_drop_a_channel_axis_left_at_one_keeps_two_channels(dim, least, function) -> None:
    x = torch.randn(2, 3, 8, 8)
    assert _group(_Squeezed(dim, function), x, "a").min_channels == least
    result, error = _prune_and_compare(_Squeezed(dim, function), x, "passes: [{pass: prune, ratio: 0.95}]")
    assert result.model.a.out_channels == least and result.model(x).shape == (2, 4) and error < 1e-5


def _normalized(wrap) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0] = wrap(model[0])
    return model.eval()


def test_a_weight_computed_by_a_hook_or_a_parametrization_is_not_pruned() -> None:
    x = torch.randn(2, 4)
    hooked, parametrized = _normalized(nn.utils.spectral_norm), _normalized(nn.utils.parametrizations.weight_norm)
    assert _group(hooked, x, "0").pinned == ["'0' is a Linear module with forward hooks, which the analyzer does not know"]
    reason = "'0.weight' is parametrized by _WeightNorm, which pruning cannot shrink; prune before parametrizing it"
    assert reason in _group(parametrized, x, "0").pinned
    for model in (hooked, parametrized):
        result = fxcomp.compress(model, x, "passes: [{pass: prune, ratio: 0.5}]")
        assert result.model(x).shape == (2, 2) and result.plan[0]["plan"]["groups"] == []


def test_a_model_that_cannot_be_copied_is_a_usage_error() -> None:
    with pytest.warns(FutureWarning):
        model = _normalized(nn.utils.weight_norm)  # the deprecated hook keeps a computed weight deepcopy refuses
    with pytest.raises(fxcomp.UsageError, match=r"^cannot copy the model to work on \(.*\); remove torch\.nn\.utils\.weight_norm hooks"):
        fxcomp.compress(model, torch.randn(2, 4), "passes: [{pass: prune, ratio: 0.5}]")
