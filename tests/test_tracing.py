"""fxcomp.trace: names, shapes, MACs, parameters, errors, and no mutation of the model."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision
import pytest

import fxcomp
from fxcomp import TensorSpec, node_info


def _node(gm, qualname: str):
    (node,) = [n for n in gm.graph.nodes if fxcomp.qualname(n) == qualname]
    return node


def test_qualified_names_map_back_to_module_paths() -> None:
    gm = fxcomp.trace(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32))
    names = [fxcomp.qualname(n) for n in gm.graph.nodes]
    assert len(names) == len(set(names))
    for name in ("x", "conv1", "layer1.0.conv1", "layer1.0.add", "layer1.0.relu", "layer1.0.relu_1", "flatten", "fc", "output"):
        assert name in names
    assert _node(gm, "layer1.0.relu_1").target == "layer1.0.relu"  # the second call of the same module
    assert node_info(_node(gm, "layer4.1.add")).output == TensorSpec((1, 512, 1, 1), torch.float32)


def test_known_model_figures() -> None:
    gm = fxcomp.trace(torchvision.models.resnet50(), torch.randn(1, 3, 224, 224))
    assert sum(node_info(n).params for n in gm.graph.nodes) == 25_557_032
    assert 4.05e9 < sum(node_info(n).macs for n in gm.graph.nodes) < 4.15e9
    gm18 = fxcomp.trace(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))
    assert 1.80e9 < sum(node_info(n).macs for n in gm18.graph.nodes) < 1.83e9


class _Costly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = self.bn(self.conv(x))  # 2×6×5×5
        z = y.mean((2, 3))  # 2×6
        w = torch.matmul(z.unsqueeze(2), z.unsqueeze(1))  # 2×6×6, K = 1
        return self.fc(z) + w.sum()


def test_macs_and_params_per_node_by_hand() -> None:
    gm = fxcomp.trace(_Costly(), torch.randn(2, 4, 5, 5))
    conv, bn, fc, matmul = (node_info(_node(gm, name)) for name in ("conv", "bn", "fc", "matmul"))
    assert conv.macs == (2 * 6 * 5 * 5) * (4 // 2) * 9
    assert conv.params == 6 * 2 * 9 + 6
    assert bn.macs == 2 * 6 * 5 * 5 and bn.params == 12
    assert fc.macs == 2 * 5 * 6 and fc.params == 6 * 5 + 5
    assert matmul.macs == 2 * 6 * 6 * 1
    assert node_info(_node(gm, "add")).macs == 0
    assert sum(node_info(n).params for n in gm.graph.nodes) == sum(p.numel() for p in _Costly().parameters())


class _TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, a, b):
        return {"sum": self.fc(a) + b, "pair": (a.double(), b[:, :2])}


def test_multiple_inputs_and_structured_outputs() -> None:
    gm = fxcomp.trace(_TwoInTwoOut(), (torch.randn(2, 3), torch.randn(2, 4)))
    output = next(n for n in gm.graph.nodes if n.op == "output")
    assert node_info(output).output == {
        "sum": TensorSpec((2, 4), torch.float32),
        "pair": (TensorSpec((2, 3), torch.float64), TensorSpec((2, 2), torch.float32)),
    }
    assert node_info(_node(gm, "a")).output == TensorSpec((2, 3), torch.float32)


def test_dtype_follows_the_input() -> None:
    gm = fxcomp.trace(nn.Sequential(nn.Linear(3, 2)).double(), torch.randn(1, 3, dtype=torch.float64))
    assert node_info(_node(gm, "0")).output == TensorSpec((1, 2), torch.float64)


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class _HasBranchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(3, 3)
        self.gate = _Branchy()

    def forward(self, x):
        return self.gate(self.pre(x))


def test_untraceable_module_is_named_with_a_fix() -> None:
    with pytest.raises(fxcomp.TraceError) as caught:
        fxcomp.trace(_HasBranchy(), torch.randn(2, 3))
    message = str(caught.value)
    assert "cannot trace module 'gate' (_Branchy, " in message
    assert "test_tracing.py:" in message
    assert "leaf_modules=['gate']" in message and "concrete_args" in message
    assert "\n" not in message
    for leaf in (_Branchy, "gate"):
        gm = fxcomp.trace(_HasBranchy(), torch.randn(2, 3), leaf_modules=[leaf])
        assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["pre", "gate"]


class _Flagged(nn.Module):
    def forward(self, x, double):
        return x * 2 if double else x


def test_concrete_args_specialize_control_flow() -> None:
    with pytest.raises(fxcomp.TraceError, match="the model's own forward"):
        fxcomp.trace(_Flagged(), torch.randn(2))
    gm = fxcomp.trace(_Flagged(), torch.randn(2), concrete_args={"double": True})
    assert torch.equal(gm(torch.ones(2)), torch.full((2,), 2.0))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([1, 2], "example_inputs must be a tensor or a tuple of tensors"),
        ((torch.randn(2, 3), torch.randn(2, 3)), r"needs 1 tensor input\(s\) \(input\) but example_inputs has 2"),
        (torch.randn(2, 7), r"cannot compute the shapes of node '0' \(call_module 0\)"),
    ],
)
def test_bad_example_inputs(inputs, message) -> None:
    with pytest.raises(fxcomp.TraceError, match=message):
        fxcomp.trace(nn.Sequential(nn.Linear(3, 2)), inputs)


def test_a_shape_mismatch_is_one_error_and_nothing_on_stderr(capfd) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(fxcomp.TraceError, match=r"node '2' .*: mat1 and mat2 shapes cannot be multiplied \(1x196 and 144x2\)"):
        fxcomp.trace(model, torch.randn(1, 3, 9, 9))
    assert capfd.readouterr().err == ""  # torch's fake tensors logged a 30-line traceback first


def test_tracing_leaves_the_model_untouched() -> None:
    model = torchvision.models.resnet18(num_classes=10).train()
    model.layer1.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {name: m.training for name, m in model.named_modules()}
    gm = fxcomp.trace(model, torch.randn(2, 3, 32, 32))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # BatchNorm statistics did not move
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert all(type(m.training) is bool for m in model.modules())
    assert gm.training is True


class _FunctionalDropout(nn.Module):
    """The classic MNIST net's dropout: a function given the module's flag, and one always on (MC dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 64), nn.Linear(64, 4)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(4, 4))

    def forward(self, x):
        x = torch.nn.functional.dropout(torch.relu(self.fc1(x)), 0.5, training=self.training)
        return self.head(self.fc2(x)), torch.nn.functional.dropout(x, 0.5, training=True)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_training_flag_given_to_a_function_follows_the_graphs_mode(mode, tmp_path) -> None:
    torch.manual_seed(0)
    model, x = getattr(_FunctionalDropout(), mode)(), torch.randn(16, 8)
    gm = fxcomp.trace(model, x)
    model.eval(), gm.eval()
    assert torch.equal(gm(x)[0], model(x)[0])  # traced in either mode, the eval graph has no dropout
    assert not torch.equal(gm(x)[1], gm(x)[1])  # a literal training=True stays on
    gm.train()
    torch.manual_seed(1)
    dropped = gm(x)[0]
    torch.manual_seed(1)
    assert torch.equal(dropped, model.train()(x)[0]) and not torch.equal(dropped, gm.eval()(x)[0])
    pruned = fxcomp.compress(model.eval(), x, "passes: [{pass: prune, ratio: 0.5}]").model
    fxcomp.save(pruned, tmp_path / "m.fxc")
    for graph in (pruned, fxcomp.load(tmp_path / "m.fxc")):
        assert torch.equal(graph.eval()(x)[0], graph(x)[0])
        assert not torch.equal(graph.train()(x)[0], graph(x)[0])


def test_meta_device_model_needs_no_memory() -> None:
    with torch.device("meta"):
        model = torchvision.models.resnet50()
    gm = fxcomp.trace(model, torch.empty(8, 3, 224, 224, device="meta"))
    assert node_info(_node(gm, "fc")).output == TensorSpec((8, 1000), torch.float32)
    assert all(p.is_meta for p in gm.parameters())


def test_a_keyword_submodule_name_is_a_trace_error() -> None:
    model = nn.Sequential()
    model.add_module("class", nn.Linear(4, 4))
    with pytest.raises(fxcomp.TraceError, match="a submodule or parameter name is a Python keyword"):
        fxcomp.trace(model.eval(), torch.randn(2, 4))


def test_models_on_the_meta_device_compress_and_report_no_values() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
    result = fxcomp.compress(model, torch.empty(1, 3, 8, 8, device="meta"), "passes: [{pass: fold_bn}]")
    assert result.report.after_totals == fxcomp.report.Totals(params=224, nonzero=None, macs=7776, sparsity=None)
    assert "fold_bn" in str(result.report)
