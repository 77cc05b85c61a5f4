"""Shape propagation: the meta fast path, its closed-form rules, and the fallbacks to fake and real runs."""

from __future__ import annotations

import copy
import operator
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import fxcomp
from fxcomp.tracing.shape_rules import FUNCTION_RULES, METHOD_RULES, module_rule
from fxcomp.tracing.shapes import INFO, _MetaPropagator, _Propagator

ZOO = torchvision.models.list_models(module=torchvision.models)


def _zoo_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    size = 299 if name == "inception_v3" else 224
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return torchvision.models.get_model(name).eval(), torch.empty(1, 3, size, size, device="meta")
        except NotImplementedError:  # regnet's constructor needs real tensors
            return torchvision.models.get_model(name).eval(), torch.zeros(1, 3, size, size)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_traces_and_the_meta_path_agrees_with_fake_tensors(name: str) -> None:
    model, x = _zoo_model(name)
    gm = fxcomp.trace(model, x)
    output = next(node for node in gm.graph.nodes if node.op == "output")
    assert fxcomp.node_info(output).output == fxcomp.TensorSpec((1, 1000), torch.float32)
    # Parameters of the modules the graph calls (eval-mode googlenet and inception skip their aux heads).
    assert sum(fxcomp.node_info(n).params for n in gm.graph.nodes) == sum(p.numel() for p in gm.parameters())
    assert sum(fxcomp.node_info(n).macs for n in gm.graph.nodes) > 1e7
    with torch.no_grad():
        _MetaPropagator(gm).run(x)  # the fast path handles every zoo model, no fallback
        meta = {node.name: node.meta[INFO] for node in gm.graph.nodes}
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        with mode:
            _Propagator(gm).run(mode.from_tensor(x))
    fake = {node.name: node.meta[INFO] for node in gm.graph.nodes}
    assert meta == fake


def _real_and_rule(rule_output: torch.Tensor | None, real: torch.Tensor) -> None:
    assert rule_output is not None
    assert rule_output.device.type == "meta"
    assert (tuple(rule_output.shape), rule_output.dtype) == (tuple(real.shape), real.dtype)


shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4)
dtypes = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool])


@settings(max_examples=200, deadline=None)
@given(left=shapes, drop=st.integers(0, 4), ones=st.lists(st.booleans(), max_size=4), left_dtype=dtypes, right_dtype=dtypes)
def test_broadcast_rule_matches_real_arithmetic(left, drop, ones, left_dtype, right_dtype) -> None:
    # The right operand: a suffix of the left shape with some sizes set to 1, so it broadcasts.
    right = [1 if one else size for size, one in zip(left[drop:], ones + [False] * 4)]
    a, b = torch.zeros(left, dtype=left_dtype), torch.zeros(right, dtype=right_dtype)
    if torch.bool in (left_dtype, right_dtype):  # boolean arithmetic has rules of its own: the real kernel decides
        assert FUNCTION_RULES[operator.add]((a.to("meta"), b.to("meta")), {}) is None
        return
    for target in (operator.add, operator.mul, torch.sub):
        real = target(a, b)
        rule = FUNCTION_RULES[target]((a.to("meta"), b.to("meta")), {})
        _real_and_rule(rule, real)
    _real_and_rule(FUNCTION_RULES[operator.add]((a.to("meta"), 2.5), {}), a + 2.5)


@pytest.mark.parametrize(
    ("function", "args", "kwargs"),
    [
        (F.relu, (torch.randn(2, 3, 4),), {}),
        (F.gelu, (torch.randn(2, 5),), {"approximate": "tanh"}),
        (F.dropout, (torch.randn(2, 5), 0.5, False), {}),
        (F.layer_norm, (torch.randn(2, 5), (5,)), {}),
        (F.batch_norm, (torch.randn(2, 3, 4), torch.zeros(3), torch.ones(3)), {}),
        (F.adaptive_avg_pool2d, (torch.randn(2, 3, 9, 7), (None, 2)), {}),
        (F.adaptive_avg_pool2d, (torch.randn(3, 9, 7), 1), {}),
    ],
)
def test_function_rules_match_real_calls(function, args, kwargs) -> None:
    meta_args = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    _real_and_rule(FUNCTION_RULES[function](meta_args, kwargs), function(*args, **kwargs))


@pytest.mark.parametrize(
    "module",
    [
        nn.BatchNorm2d(3), nn.GroupNorm(1, 3), nn.ReLU(inplace=True), nn.Hardswish(), nn.Identity(),
        nn.AdaptiveAvgPool2d((1, 3)), nn.Conv2d(3, 4, 3), nn.Conv2d(3, 6, (3, 2), stride=(2, 3), padding=(2, 1), dilation=2, groups=3),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Linear(6, 2), nn.MaxPool2d(3, 2, 1),
        nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(3, 2, ceil_mode=True, dilation=1), nn.AvgPool2d(3, 2, 1, ceil_mode=True),
        nn.AvgPool2d(2),
    ],
)  # fmt: skip
def test_module_rules_match_real_calls(module) -> None:
    for shape in [(2, 3, 5, 6), (1, 3, 7, 6), (1, 3, 4, 6), (1, 3, 9, 6)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            _real_and_rule(module_rule(module, (x.to("meta"),), {}), module.eval()(x.clone()))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (([torch.randn(2, 3, 4), torch.randn(2, 5, 4)], 1), {}),
        (([torch.randn(2, 3), torch.randn(4, 3)],), {}),
        (((torch.randn(2, 3, 4), torch.randn(2, 3, 1)),), {"dim": -1}),
        (([torch.randn(1, 2, 2)],), {"dim": 2}),
    ],
)
def test_cat_rule_matches_real_calls(args, kwargs) -> None:
    meta = (type(args[0])(t.to("meta") for t in args[0]), *args[1:])
    for function in (torch.cat, torch.concat):
        _real_and_rule(FUNCTION_RULES[function](meta, kwargs), function(*args, **kwargs))


def test_cat_rule_leaves_what_it_is_not_sure_of_to_the_real_kernel() -> None:
    x = torch.empty(2, 3, device="meta")
    assert FUNCTION_RULES[torch.cat](([x, x.double()], 1), {}) is None
    assert FUNCTION_RULES[torch.cat](([x, x[0]], 0), {}) is None
    assert FUNCTION_RULES[torch.cat](([x, x], 2), {}) is None
    assert FUNCTION_RULES[torch.cat](([x, x], True), {}) is None
    assert FUNCTION_RULES[torch.cat](([x, torch.empty(2, 3)], 0), {}) is None  # two devices
    assert FUNCTION_RULES[torch.cat](([x, x.t().contiguous().t()], 0), {}) is None  # a non-contiguous input


@pytest.mark.parametrize(
    ("module", "shapes", "kwargs"),
    [
        (nn.MultiheadAttention(8, 2), [(5, 3, 8)] * 3, {}),
        (nn.MultiheadAttention(8, 2, batch_first=True), [(3, 5, 8), (3, 7, 8), (3, 7, 8)], {"need_weights": False}),
        (nn.MultiheadAttention(8, 4, batch_first=True), [(3, 5, 8)] * 3, {"average_attn_weights": False}),
        (nn.MultiheadAttention(8, 2, kdim=6, vdim=4), [(5, 3, 8), (7, 3, 6), (7, 3, 4)], {"need_weights": True}),
        (nn.MultiheadAttention(8, 2), [(5, 8), (6, 8), (6, 8)], {"average_attn_weights": False}),
        (nn.MultiheadAttention(8, 2), [(5, 8)] * 3, {}),
        (nn.MultiheadAttention(8, 2, add_bias_kv=True), [(5, 2, 8)] * 3, {}),
        (nn.MultiheadAttention(8, 2, add_zero_attn=True, batch_first=True), [(2, 5, 8)] * 3, {}),
        (nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True), [(5, 8), (4, 8), (4, 8)], {}),
    ],
)
def test_attention_rule_matches_real_calls(module, shapes, kwargs) -> None:
    inputs = [torch.randn(*shape) for shape in shapes]
    with torch.no_grad():
        real = module.eval()(*inputs, **kwargs)
        rule = module_rule(module, [t.to("meta") for t in inputs[:2]], {"value": inputs[2].to("meta"), **kwargs})
        on_meta = copy.deepcopy(module).to("meta")(*(t.to("meta") for t in inputs), **kwargs)
    _real_and_rule(rule[0], real[0])
    assert rule[0].stride() == on_meta[0].stride()  # batch_first: a transposed view, as the module returns
    if real[1] is None:
        assert rule[1] is None
    else:
        _real_and_rule(rule[1], real[1])


def test_attention_rule_leaves_masks_and_mismatches_to_the_real_module() -> None:
    attention = nn.MultiheadAttention(8, 2)
    x = torch.empty(5, 3, 8, device="meta")
    assert module_rule(attention, (x, x, x), {"attn_mask": torch.zeros(5, 5, dtype=torch.bool, device="meta")}) is None
    assert module_rule(attention, (x, x, x), {"is_causal": True}) is None
    assert module_rule(attention, (x, x, x.double()), {}) is None
    assert module_rule(attention, (x, x[:, :2], x[:, :2]), {}) is None  # batch sizes differ
    assert module_rule(attention, (x, x, x[:4]), {}) is None  # key and value lengths differ
    assert module_rule(attention, (x[..., :6],) * 3, {}) is None  # not the embedding width
    assert module_rule(attention, (x, x, x), {"bogus": 1}) is None
    attention.in_proj_weight.data = attention.in_proj_weight.data.double()
    assert module_rule(attention, (x, x, x), {}) is None  # the projections' dtypes differ


def test_rules_only_answer_for_exact_types_and_plain_arguments() -> None:
    class Doubling(nn.ReLU):
        def forward(self, x):
            return torch.cat([x, x], 1)

    x = torch.empty(2, 3, device="meta")
    assert module_rule(Doubling(), (x,), {}) is None
    assert FUNCTION_RULES[operator.add]((1, 2), {}) is None
    assert METHOD_RULES["add"]((x, x), {"out": x}) is None


class _NeedsValues(nn.Module):
    def forward(self, x):
        return x * x.abs().max().item()


def test_fallback_to_fake_tensors_when_meta_cannot_run(monkeypatch, small_cnn) -> None:
    from fxcomp.tracing import shapes

    class MetaFails(_MetaPropagator):
        def call_module(self, target, args, kwargs):
            raise NotImplementedError("no meta kernel")

    monkeypatch.setattr(shapes, "_MetaPropagator", MetaFails)
    fake_runs = []
    original = FakeTensorMode.__enter__
    monkeypatch.setattr(FakeTensorMode, "__enter__", lambda mode: fake_runs.append(mode) or original(mode))
    gm = fxcomp.trace(small_cnn, torch.randn(2, 3, 8, 8))
    assert len({id(mode) for mode in fake_runs}) == 1  # one fake-tensor propagation ran
    assert fxcomp.node_info(next(n for n in gm.graph.nodes if n.target == "fc")).output == fxcomp.TensorSpec(
        (2, 10), torch.float32
    )


def test_fallback_to_a_real_run_only_for_real_data() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = _NeedsValues()

        def forward(self, x):
            return self.scale(x)

    gm = fxcomp.trace(Model(), torch.randn(2, 5), leaf_modules=[_NeedsValues])
    assert fxcomp.node_info(next(n for n in gm.graph.nodes if n.op == "call_module")).output.shape == (2, 5)
    with pytest.raises(fxcomp.TraceError, match=r"cannot compute the shapes of node 'scale'"):
        fxcomp.trace(Model(), torch.empty(2, 5, device="meta"), leaf_modules=[_NeedsValues])


class _IntegerActivations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Sigmoid()

    def forward(self, x):
        return self.act(x), torch.tanh(x), x.sigmoid(), x.relu()


def test_activations_of_integers_get_the_dtype_the_real_ones_give() -> None:
    x = torch.arange(6).reshape(2, 3)
    gm = fxcomp.trace(_IntegerActivations(), x)
    output = next(node for node in gm.graph.nodes if node.op == "output")
    real = _IntegerActivations()(x)
    assert fxcomp.node_info(output).output == tuple(fxcomp.TensorSpec(tuple(t.shape), t.dtype) for t in real)


class _InPlace(nn.Module):
    def forward(self, x, y):
        return x.mul_(y)


def test_in_place_arithmetic_keeps_the_left_operand_or_fails_as_it_would() -> None:
    gm = fxcomp.trace(_InPlace(), (torch.randn(3), torch.randn(3, dtype=torch.float64)))
    (node,) = [n for n in gm.graph.nodes if n.target == "mul_"]
    assert fxcomp.node_info(node).output == fxcomp.TensorSpec((3,), torch.float32)
    with pytest.raises(fxcomp.TraceError, match="'mul_'.*doesn't match the broadcast shape"):
        fxcomp.trace(_InPlace(), (torch.randn(3), torch.randn(2, 3)))
    assert FUNCTION_RULES[operator.iadd]((torch.empty(3, dtype=torch.uint8, device="meta"), torch.empty(3, device="meta")), {}) is None


@pytest.mark.parametrize(
    ("model", "x", "message"),
    [
        (torchvision.models.resnet18(), torch.randn(1, 3, 64, 64, dtype=torch.float64), "'conv1'.*float64 but the layer's weight is torch.float32"),
        (nn.Sequential(nn.BatchNorm2d(3)), torch.randn(3, 4, 4), "expected 4D input"),
        (nn.Sequential(nn.LayerNorm(5)), torch.randn(2, 4), "normalized_shape"),
        (nn.Sequential(nn.GroupNorm(2, 4)), torch.randn(1, 6, 2, 2), "channels"),
        (nn.Sequential(nn.Conv2d(1, 1, 1, padding=3, padding_mode="reflect")), torch.randn(1, 1, 2, 2), "[Pp]adding size"),
        (nn.Sequential(nn.MaxPool2d(2, padding=2)), torch.randn(1, 1, 6, 6), "pad should be"),
    ],
)  # fmt: skip
def test_inputs_the_real_model_refuses_are_refused_when_tracing(model, x, message) -> None:
    with pytest.raises(fxcomp.TraceError, match=message):
        fxcomp.trace(model.eval(), x)
    with pytest.raises((RuntimeError, ValueError, NotImplementedError)):
        model.eval()(x)  # as the real model does


def test_rules_leave_inputs_laid_out_otherwise_to_the_real_kernels() -> None:
    x = torch.empty(2, 3, 4, 4, device="meta").to(memory_format=torch.channels_last)
    assert module_rule(nn.Conv2d(3, 4, 1), (x,), {}) is None
    assert FUNCTION_RULES[F.relu]((x,), {}) is None
    assert FUNCTION_RULES[operator.add]((x, x), {}) is None
    assert METHOD_RULES["contiguous"]((x,), {"memory_format": torch.channels_last}) is None
    assert FUNCTION_RULES[operator.add]((x.contiguous(), 1), {"alpha": 2}) is None
