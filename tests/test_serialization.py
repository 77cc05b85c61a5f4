"""fxcomp.save / fxcomp.load: exact round trips, and refusal of anything that could run code."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import types
import zipfile

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torchvision

import fxcomp
from tests.conftest import SmallCNN, randomize_batchnorm


def _reload(gm, tmp_path, **kwargs):
    path = tmp_path / "model.fxc"
    fxcomp.save(gm, path, **kwargs)
    return fxcomp.load(path, **kwargs)


def _narrow_conv1(gm: torch.fx.GraphModule, keep: list[int]) -> None:
    """Shrink conv1 of a traced SmallCNN to the ``keep`` channels, with its BN and conv2's inputs."""
    index = torch.tensor(keep)
    with torch.no_grad():
        gm.conv1 = nn.Conv2d(3, len(keep), 3, padding=1)
        gm.conv1.weight.copy_(torch.randn(len(keep), 3, 3, 3))
        bn = nn.BatchNorm2d(len(keep))
        old_bn = gm.bn1
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(getattr(old_bn, name)[index])
        gm.bn1 = bn.eval()
        conv2 = nn.Conv2d(len(keep), 32, 3, padding=1)
        conv2.weight.copy_(gm.conv2.weight[:, index])
        conv2.bias.copy_(gm.conv2.bias)
        gm.conv2 = conv2
    gm.recompile()


def test_round_trip_of_a_graph_whose_shapes_changed(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    gm = fxcomp.trace(randomize_batchnorm(SmallCNN()).eval(), x)
    _narrow_conv1(gm, keep=[0, 2, 5, 7, 8, 11, 12, 15])
    fxcomp.propagate(gm, (x,))
    loaded = _reload(gm, tmp_path)
    assert loaded.conv1.weight.shape == (8, 3, 3, 3) and loaded.bn1.num_features == 8
    other = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(other), gm(other))
    original = {fxcomp.qualname(n): fxcomp.node_info(n) for n in gm.graph.nodes}
    restored = {fxcomp.qualname(n): fxcomp.node_info(n) for n in loaded.graph.nodes}
    assert restored == original
    assert fxcomp.node_info(next(n for n in loaded.graph.nodes if n.target == "conv1")).output.shape == (2, 8, 16, 16)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in gm.state_dict().items()}


@pytest.mark.parametrize(
    "factory",
    [
        lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
        lambda: torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
        ),
        lambda: torchvision.models.squeezenet1_1(num_classes=10),
    ],
    ids=["mobilenet_v3_small", "tiny_vit", "squeezenet"],
)
def test_torchvision_models_round_trip_exactly(factory, tmp_path) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(2, 3, 32, 32)
    loaded = _reload(fxcomp.trace(model, x), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_compressed_resnet_round_trips(tmp_path) -> None:
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    result = fxcomp.compress(model, x, "passes: [{pass: fold_bn}]")
    loaded = _reload(result.model, tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())


def test_traced_sequential_round_trips(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.randn(2, 3, 8, 8)
    loaded = _reload(fxcomp.trace(model, x), tmp_path)
    assert isinstance(loaded.get_submodule("3"), nn.Linear)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.norm = nn.BatchNorm1d(4)
        self.a.bias.requires_grad_(False)

    def forward(self, x):
        return self.norm(self.b(self.a(x)))


def test_tied_weights_flags_and_buffers_survive(tmp_path) -> None:
    model = _Tied()
    with torch.no_grad():
        model.norm(torch.randn(8, 4))  # move the running statistics, count a batch
    gm = fxcomp.trace(model.eval(), torch.randn(2, 4))
    gm.norm.train()
    loaded = _reload(gm, tmp_path)
    assert loaded.a.weight is loaded.b.weight
    assert loaded.a.bias.requires_grad is False and loaded.a.weight.requires_grad is True
    assert loaded.norm.training is True and loaded.a.training is False
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(loaded.norm, name), getattr(model.norm, name))
    assert int(loaded.norm.num_batches_tracked) == 1


def test_concrete_args_graph_round_trips(tmp_path) -> None:
    class Flagged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x, double=False):
            return self.fc(x) * 2 if double else self.fc(x)

    model = Flagged().eval()
    x = torch.randn(2, 3)
    gm = fxcomp.trace(model, x, concrete_args={"double": True})
    loaded = _reload(gm, tmp_path)
    assert torch.equal(loaded(x), model(x, True))
    # Shapes and MACs survive too (they were lost when one input was specialized).
    assert fxcomp.node_info(next(iter(loaded.graph.nodes))).output.shape == (2, 3)
    macs = [[fxcomp.node_info(n).macs for n in g.graph.nodes] for g in (loaded, gm)]
    assert macs[0] == macs[1] and sum(macs[0]) > 0


def test_non_persistent_buffers_stay_out_of_the_state_dict(tmp_path) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.register_buffer("scale", torch.full((3,), 2.0), persistent=False)
            self.fc.register_buffer("shift", torch.ones(3), persistent=False)

        def forward(self, x):
            return self.fc(x) * self.scale + self.fc.shift

    model = Scaled()
    x = torch.randn(2, 3)
    loaded = _reload(fxcomp.trace(model, x), tmp_path)
    assert set(loaded.state_dict()) == set(model.state_dict()) == {"fc.weight", "fc.bias"}
    assert torch.equal(loaded.scale, model.scale) and torch.equal(loaded(x), model(x))


def test_file_is_a_plain_weights_only_archive(tmp_path, small_cnn, image) -> None:
    path = tmp_path / "m.fxc"
    fxcomp.save(fxcomp.trace(small_cnn, image), path)
    assert zipfile.is_zipfile(path)
    data = torch.load(path, weights_only=True)
    assert data["format"] == "fxcomp-graph" and data["version"] == 1
    graph = json.loads(data["graph"])
    assert graph["modules"]["conv1"]["class"] == "torch.nn.modules.conv.Conv2d"
    assert all(isinstance(t, torch.Tensor) for t in data["tensors"].values())


# --- refusals --------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would run ``_explode``."""

    def __reduce__(self):
        return (_explode, ("pwned",))


EXPLOSIONS: list[str] = []


def _explode(marker: str) -> str:
    EXPLOSIONS.append(marker)
    return marker


def _saved(tmp_path, small_cnn, image) -> tuple[dict, dict]:
    path = tmp_path / "good.fxc"
    fxcomp.save(fxcomp.trace(small_cnn, image), path)
    data = torch.load(path, weights_only=True)
    return data, json.loads(data["graph"])


def _write(tmp_path, data: dict, graph: dict) -> str:
    path = tmp_path / "crafted.fxc"
    torch.save({**data, "graph": json.dumps(graph)}, path)
    return str(path)


def test_malicious_pickle_is_refused_without_running(tmp_path) -> None:
    path = tmp_path / "evil.fxc"
    torch.save({"format": "fxcomp-graph", "version": 1, "graph": "{}", "tensors": {}, "x": _Payload()}, path)
    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump(_Payload(), handle)
    for candidate in (path, tmp_path / "evil.pkl"):
        with pytest.raises(fxcomp.LoadError, match="is not a safe fxcomp model file"):
            fxcomp.load(candidate)
    assert EXPLOSIONS == []


def test_a_graph_calling_a_method_load_refuses_is_not_saved(tmp_path) -> None:
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_method("numpy", (x,)))
    with pytest.raises(fxcomp.SaveError, match="calls the tensor method 'numpy', which fxcomp.load would refuse"):
        fxcomp.save(fx.GraphModule(nn.Module(), graph), tmp_path / "m.fxc")


def _mutations():
    def function(graph, target):
        node = next(n for n in graph["nodes"] if n["op"] == "call_function")
        node["target"] = target

    def add_node(graph, node):
        graph["nodes"].insert(-1, node)

    return [
        ("os.system", lambda g: function(g, "os.system"), "calls 'os.system', which is not on fxcomp's allow-list"),
        ("eval", lambda g: function(g, "builtins.eval"), "calls 'builtins.eval'"),
        ("operator.call", lambda g: function(g, "operator.call"), "calls 'operator.call'"),
        (
            "popen",
            lambda g: g["modules"]["conv1"].__setitem__("class", "subprocess.Popen"),
            "asks for module class 'subprocess.Popen' at 'conv1'",
        ),
        (
            "private_getattr",
            lambda g: add_node(
                g,
                {"name": "cls", "op": "call_function", "target": "builtins.getattr", "args": {"tuple": [{"node": "x"}, "__class__"]}, "kwargs": {"dict": {}}},
            ),
            "reads a private attribute",
        ),
        (
            "dunder_method",
            lambda g: add_node(
                g,
                {"name": "r", "op": "call_method", "target": "__reduce_ex__", "args": {"tuple": [{"node": "x"}, 2]}, "kwargs": {"dict": {}}},
            ),
            "which fxcomp files may not call (only public tensor methods that take no callable and stay in torch)",
        ),
        (
            # numpy() then getattr(array, "tofile") then handle_torch_function(tofile, ...) wrote any file
            "callable_caller",
            lambda g: function(g, "torch.nn.functional.handle_torch_function"),
            "calls 'torch.nn.functional.handle_torch_function', which is not on fxcomp's allow-list",
        ),
        (
            "numpy_method",
            lambda g: add_node(
                g,
                {"name": "a", "op": "call_method", "target": "numpy", "args": {"tuple": [{"node": "x"}]}, "kwargs": {"dict": {}}},
            ),
            "calls tensor method 'numpy', which fxcomp files may not call",
        ),
        (
            "apply_method",
            lambda g: add_node(
                g,
                {"name": "a", "op": "call_method", "target": "apply_", "args": {"tuple": [{"node": "x"}, {"node": "x"}]}, "kwargs": {"dict": {}}},
            ),
            "calls tensor method 'apply_'",
        ),
        (
            "injected_name",
            lambda g: g["nodes"][1].__setitem__("name", "x; import os"),
            "malformed",
        ),
        (
            "forward_reference",
            lambda g: g["nodes"][1].__setitem__("args", {"tuple": [{"node": "relu_1"}]}),
            "before its definition",
        ),
        ("unknown_kind", lambda g: g["nodes"][1].__setitem__("args", {"tuple": [{"lambda": "x"}]}), "unknown kind 'lambda'"),
        (
            # Python folds ｃ into c in identifiers, so the generated code would reach __class__.
            "non_ascii_dunder_target",
            lambda g: g["nodes"][1].__setitem__("target", "__ｃlass__.__ｉnit__"),
            "malformed",
        ),
        ("missing_tensor", lambda g: g["modules"]["conv1"]["parameters"]["weight"].__setitem__("tensor", "t999"), "missing tensor"),
        # The three below raised a raw TypeError or OverflowError, or allocated the inputs as real zeros.
        ("unhashable_tensor_id", lambda g: g["modules"]["conv1"]["parameters"]["weight"].__setitem__("tensor", {"a": 1}), "missing tensor"),
        ("unhashable_function", lambda g: function(g, {"a": 1}), "calls {'a': 1}, which is not on fxcomp's allow-list"),
        ("unhashable_node", lambda g: g["nodes"][1].__setitem__("args", {"tuple": [{"node": ["x"]}]}), "before its definition"),
        ("unhashable_float", lambda g: g["nodes"][1].__setitem__("args", {"tuple": [{"float": []}]}), "unknown float"),
        ("unhashable_class", lambda g: g["modules"]["conv1"].__setitem__("class", ["torch.nn.Conv2d"]), "asks for module class"),
        ("garbage_tree_spec", lambda g: g.__setitem__("pytree_info", {"orig_args": ["x"], "in_spec": "[0, {}]", "out_spec": None}), "in_spec"),
        ("huge_input", lambda g: g["inputs"][0].__setitem__("shape", [2**40 - 1, 3, 2**20, 2**20]), "input shape"),
        ("large_misfit_input", lambda g: g["inputs"][0].__setitem__("shape", [2**10, 5, 2**20, 2**20]), "input shapes do not fit"),
    ]


@pytest.mark.parametrize(("mutate", "message"), [m[1:] for m in _mutations()], ids=[m[0] for m in _mutations()])
def test_crafted_graphs_are_refused(mutate, message, tmp_path, small_cnn, image) -> None:
    data, graph = _saved(tmp_path, small_cnn, image)
    mutate(graph)
    with pytest.raises(fxcomp.LoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fxcomp.load(_write(tmp_path, data, graph))


def test_foreign_truncated_and_missing_files_are_refused(tmp_path, small_cnn, image) -> None:
    good = tmp_path / "good.fxc"
    fxcomp.save(fxcomp.trace(small_cnn, image), good)
    truncated = tmp_path / "truncated.fxc"
    truncated.write_bytes(good.read_bytes()[:2000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    old = tmp_path / "old.fxc"
    data = torch.load(good, weights_only=True)
    torch.save({**data, "version": 99}, old)
    cases = [
        (truncated, "is not a safe fxcomp model file"),
        (foreign, "is not an fxcomp model file"),
        (old, "has format version 99; this fxcomp reads version 1"),
        (tmp_path / "absent.fxc", "no such file"),
        (io.BytesIO(good.read_bytes()), r"^fxcomp.load takes a file path \(str or os.PathLike\), got BytesIO; save to a file first$"),
        (None, "got NoneType"),
    ]
    for path, message in cases:
        with pytest.raises(fxcomp.LoadError, match=message):
            fxcomp.load(path)


class _Custom(nn.Module):
    """A leaf module that is not a torch.nn layer: saving it needs a plugin's permission."""

    def __init__(self, size: int = 4) -> None:
        super().__init__()
        self.size = size
        self.scale = nn.Parameter(torch.full((size,), 2.0))

    def forward(self, x):
        return x * self.scale


class _UsesCustom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.custom = _Custom()

    def forward(self, x):
        return self.custom(x) + 1


def test_plugins_extend_the_allow_list(tmp_path) -> None:
    gm = fxcomp.trace(_UsesCustom(), torch.randn(2, 4), leaf_modules=[_Custom])
    with pytest.raises(fxcomp.SaveError, match=r"module 'custom' is a _Custom.*fxcomp_register_serializables"):
        fxcomp.save(gm, tmp_path / "refused.fxc")
    plugin = types.SimpleNamespace(
        fxcomp_register_serializables=fxcomp.hookimpl(specname="fxcomp_register_serializables")(
            lambda register: register(_Custom)
        )
    )
    plugins = fxcomp.load_plugins(entry_points=False, extra={"custom_layers": plugin})
    loaded = _reload(gm, tmp_path, plugins=plugins)
    assert isinstance(loaded.custom, _Custom) and loaded.custom.size == 4
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), gm(x))
    with pytest.raises(fxcomp.LoadError, match="tests.test_serialization._Custom"):
        fxcomp.load(tmp_path / "model.fxc", plugins=fxcomp.load_plugins(entry_points=False))


def test_save_takes_only_graph_modules(tmp_path, small_cnn) -> None:
    with pytest.raises(fxcomp.SaveError, match=r"takes a torch.fx.GraphModule, got SmallCNN; trace the model first"):
        fxcomp.save(small_cnn, tmp_path / "x.fxc")


def test_unwritable_paths_fail_before_anything_is_written(tmp_path, small_cnn) -> None:
    gm = fxcomp.trace(small_cnn, torch.randn(1, 3, 8, 8))
    missing = tmp_path / "missing" / "x.fxc"
    with pytest.raises(fxcomp.SaveError, match=rf"cannot write '{missing}': directory '{missing.parent}' does not exist; create it"):
        fxcomp.save(gm, missing)
    with pytest.raises(fxcomp.SaveError, match=rf"cannot write '{tmp_path}': it is a directory; give a file name"):
        fxcomp.to_dot(gm, tmp_path)
    with pytest.raises(fxcomp.TraceError, match="to_dot takes a GraphModule from fxcomp.trace, got SmallCNN; pass fxcomp.trace"):
        fxcomp.to_dot(small_cnn, tmp_path / "x.dot")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(fxcomp.SaveError, match="cannot write to an empty path; give a file name"):
        fxcomp.save(gm, "")
    with pytest.raises(fxcomp.SaveError, match="it is a directory; give a file name"):
        fxcomp.save(gm, f"{tmp_path / 'new'}/")
    existing = tmp_path / "again.fxc"
    for _ in range(2):  # an existing, writable file is overwritten
        fxcomp.save(gm, existing)
    fxcomp.save(gm, os.devnull)  # a writable file in a directory that is not
    buffer = io.BytesIO()  # an open file is the caller's business, as for torch.save
    fxcomp.save(gm, buffer)
    assert buffer.getbuffer().nbytes > 0


def test_submodule_names_with_dashes_round_trip(tmp_path) -> None:
    model = nn.Sequential()
    model.add_module("block1-0", nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    gm = fxcomp.trace(model.eval(), torch.randn(2, 4))
    fxcomp.save(gm, tmp_path / "model.fxc")
    x = torch.randn(2, 4)
    assert torch.equal(fxcomp.load(tmp_path / "model.fxc")(x), gm(x))


@pytest.mark.parametrize("name", ["a b", "blockÄ", "__ｃlass__", "__x"])
def test_a_name_load_would_refuse_is_refused_when_saving(tmp_path, name) -> None:
    model = nn.Sequential()
    model.add_module(name, nn.Linear(4, 4))
    gm = fxcomp.trace(model.eval(), torch.randn(2, 4))
    with pytest.raises(fxcomp.SaveError, match=f"module '{name}' has a name fxcomp.load would refuse"):
        fxcomp.save(gm, tmp_path / "model.fxc")


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(16, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        z, _ = self.gru(y)
        return self.fc(z[:, -1])


def test_recurrent_layers_round_trip_and_train(tmp_path) -> None:
    torch.manual_seed(0)
    model, x = _Recurrent().eval(), torch.randn(3, 5, 8)
    result = fxcomp.compress(model, x, "passes: [{pass: quantize}]")
    fxcomp.save(result.model, tmp_path / "rnn.fxc")
    loaded = fxcomp.load(tmp_path / "rnn.fxc")
    assert torch.equal(loaded(x), result.model(x))
    loaded.train()
    loaded(x).sum().backward()  # the LSTM's flat weights are its loaded parameters, not copies
    assert loaded.lstm.weight_hh_l1_reverse.grad is not None and loaded.gru.weight_ih_l0.grad is not None


def test_an_attribute_the_format_cannot_store_is_named_on_one_line(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    model[0].extra = {1: torch.zeros(5, 5)}
    message = r"^module '0' attribute 'extra' holds a dict \(\{1: tensor\(\[\[0\., 0\., 0\., 0\., 0\.\], \[0\., 0\., 0\., 0\., 0\.\], \[\.\.\.\), which[^\n]*$"
    with pytest.raises(fxcomp.SaveError, match=message):
        fxcomp.save(fxcomp.trace(model, torch.randn(1, 4)), tmp_path / "model.fxc")


@pytest.mark.parametrize("attribute", ["_flat_weights_names", "_flat_weights"])
def test_a_crafted_recurrent_layer_is_refused(attribute, tmp_path) -> None:
    path = tmp_path / "rnn.fxc"
    fxcomp.save(fxcomp.trace(nn.Sequential(nn.GRU(4, 4)).eval(), torch.randn(2, 3, 4)), path)
    data = torch.load(path, weights_only=True)
    graph = json.loads(data["graph"])
    attrs = graph["modules"]["0"]["attrs"]
    if attribute in attrs:
        del attrs[attribute]  # without it the GRU cannot rebuild its weight list
    else:
        attrs[attribute] = {"list": []}  # derived state is never read from a file
    with pytest.raises(fxcomp.LoadError, match="malformed"):
        fxcomp.load(_write(tmp_path, data, graph))


class _BlockWithChild(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.block = nn.Sequential()
        self.block.add_module(name, nn.Conv2d(3, 4, 3))

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("name", ["block1-0", "3x3", "conv"])
def test_children_of_a_module_kept_whole_round_trip_with_any_name_save_accepts(tmp_path, name) -> None:
    x = torch.randn(1, 3, 8, 8)
    gm = fxcomp.trace(_BlockWithChild(name), x, leaf_modules=[nn.Sequential])
    loaded = _reload(gm, tmp_path)
    assert list(loaded.block._modules) == [name]
    assert torch.equal(loaded(x), gm(x))


class _OddMemberNames(nn.Module):
    """A root parameter and buffer read by the graph, and a kept-whole layer's buffer, named with '-' and digits."""

    def __init__(self) -> None:
        super().__init__()
        self.register_parameter("3x3", nn.Parameter(torch.randn(4)))
        self.register_buffer("scale-1", torch.full((4,), 2.0))
        self.fc = nn.Linear(4, 4)
        self.fc.register_buffer("running-1", torch.arange(4.0))

    def forward(self, x):
        return self.fc(x) * getattr(self, "3x3") + getattr(self, "scale-1")


def test_parameter_and_buffer_names_with_dashes_and_digits_round_trip(tmp_path) -> None:
    x = torch.randn(2, 4)
    gm = fxcomp.trace(_OddMemberNames(), x)
    loaded = _reload(gm, tmp_path)
    assert torch.equal(loaded(x), gm(x))
    assert torch.equal(loaded.get_buffer("fc.running-1"), torch.arange(4.0))
    assert torch.equal(getattr(loaded, "3x3"), getattr(gm, "3x3")) and isinstance(getattr(loaded, "3x3"), nn.Parameter)


@pytest.mark.parametrize(("kind", "name"), [("buffer", "a b"), ("buffer", "scaleÄ"), ("parameter", "w\n")])
def test_member_names_load_would_refuse_are_refused_when_saving(tmp_path, kind, name) -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    if kind == "buffer":
        model[0].register_buffer(name, torch.zeros(1))
    else:
        model[0].register_parameter(name, nn.Parameter(torch.zeros(1)))
    message = rf"^module '0' has a {kind} named {re.escape(repr(name))}, which fxcomp.load would refuse; give {kind}s"
    with pytest.raises(fxcomp.SaveError, match=message):
        fxcomp.save(fxcomp.trace(model, torch.randn(2, 4)), tmp_path / "model.fxc")
    model = nn.Sequential(nn.Linear(4, 4))
    setattr(model[0], "extra-option", 1)
    with pytest.raises(fxcomp.SaveError, match=r"^module '0' has an attribute named 'extra-option', which fxcomp.load would"):
        fxcomp.save(fxcomp.trace(model, torch.randn(2, 4)), tmp_path / "model.fxc")


@pytest.mark.parametrize("name", ["__ｃlass__", "__class__", "a b", "conv\n", ""])
def test_crafted_member_names_are_refused(tmp_path, small_cnn, image, name) -> None:
    data, graph = _saved(tmp_path, small_cnn, image)
    parameters = graph["modules"]["conv1"]["parameters"]
    parameters[name] = parameters.pop("weight")
    with pytest.raises(fxcomp.LoadError, match="malformed \\(member name"):
        fxcomp.load(_write(tmp_path, data, graph))


def test_a_meta_device_model_is_refused_with_what_to_do(tmp_path) -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 4, 3))
    gm = fxcomp.trace(model, torch.randn(1, 3, 8, 8, device="meta"))
    message = r"^tensor '0.weight' is on the meta device and holds no values; give the model real weights before saving"
    for codec in (None, "deep"):
        with pytest.raises(fxcomp.SaveError, match=message + r" \(e.g. model.to_empty\(device='cpu'\) then load_state_dict\)$"):
            fxcomp.save(gm, tmp_path / "meta.fxc", codec=codec)
    assert not (tmp_path / "meta.fxc").exists()


def test_models_lowered_with_direct_convolutions_round_trip(tmp_path) -> None:
    from fxcomp.lowering.direct import DirectConv2d

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2),
    ).eval()
    x = torch.randn(2, 4, 9, 9)
    lowered = fxcomp.lower(fxcomp.trace(model, x), backend="eager", direct_convs=True).module
    forms = {m.form for m in lowered.modules() if isinstance(m, DirectConv2d)}
    assert forms == {"depthwise", "pointwise", "dense"}
    for codec in (None, "deep"):
        fxcomp.save(lowered, tmp_path / "lowered.fxc", codec=codec)
        loaded = fxcomp.load(tmp_path / "lowered.fxc")
        direct = [m for m in loaded.modules() if isinstance(m, DirectConv2d)]
        assert len(direct) == 3 and {m.form for m in direct} == forms
        with torch.no_grad():
            assert torch.equal(loaded(x), lowered(x))
