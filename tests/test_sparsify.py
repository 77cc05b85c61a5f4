"""The ``sparsify`` pass and the masks behind it: exact sparsity, masks through training, save/load, report."""

from __future__ import annotations

import copy
import json
import types

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import fxcomp
from fxcomp.cli import main
from fxcomp.passes import Mask, add_mask
from tests.conftest import SmallCNN, randomize_batchnorm

WEIGHTS = {"conv1": 16 * 3 * 3 * 3, "conv2": 32 * 16 * 3 * 3, "fc": 10 * 32}


@pytest.fixture(scope="module")
def plugins() -> fxcomp.Plugins:
    return fxcomp.load_plugins(disable=())


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(SmallCNN()).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _sparsify(model, x, plugins, dry_run=False, **options):
    return fxcomp.compress(model, x, {"passes": [{"pass": "sparsify", **options}]}, plugins=plugins, dry_run=dry_run)


def _weight(gm: nn.Module, layer: str) -> torch.Tensor:
    return gm.get_submodule(layer).weight.detach()


def _train(gm: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    generator = torch.Generator().manual_seed(2)
    gm.train()
    for _ in range(steps):
        inputs = torch.randn(8, 3, 16, 16, generator=generator)
        targets = torch.randint(0, 10, (8,), generator=generator)
        loss = nn.functional.cross_entropy(gm(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_layer_scope_zeroes_the_smallest_weights_of_every_layer(model, x, plugins) -> None:
    result = _sparsify(model, x, plugins, sparsity=0.5)
    assert result.plan[0]["plan"] == {
        "parameters": [
            {"parameter": f"{layer}.weight", "size": size, "zeros_before": 0, "kept": size // 2, "sparsity": 0.5}
            for layer, size in WEIGHTS.items()
        ],
        "skipped": [],
    }
    assert result.plan[0]["stats"] == {"masked": 3, "sparsity": 0.5}
    sparsity = fxcomp.sparsity(result.model)
    for layer, size in WEIGHTS.items():
        assert sparsity[f"{layer}.weight"] == 0.5 and sparsity[f"{layer}.bias"] == 0.0
        original, pruned = getattr(model, layer).weight.detach(), _weight(result.model, layer)
        kept = pruned != 0
        assert int(kept.sum()) == size // 2
        assert torch.equal(pruned[kept], original[kept])  # kept weights are untouched, bit for bit
        assert original[kept].abs().min() > original[~kept].abs().max()  # and they are the largest
        assert torch.equal(getattr(result.model, layer).bias, getattr(model, layer).bias)
    for name in ("bn1", "bn2"):
        for key, value in getattr(model, name).state_dict().items():
            assert torch.equal(getattr(result.model, name).state_dict()[key], value)


def test_global_scope_uses_one_threshold_for_all_layers(model, x, plugins) -> None:
    result = _sparsify(model, x, plugins, sparsity=0.7, scope="global")
    total = sum(WEIGHTS.values())
    pruned = {layer: _weight(result.model, layer) for layer in WEIGHTS}
    zeros = {layer: int((weight == 0).sum()) for layer, weight in pruned.items()}
    assert sum(zeros.values()) == round(total * 0.7)
    assert len(set(zeros.values())) == 3  # the layers end up with different sparsities
    kept = torch.cat([getattr(model, layer).weight.detach()[pruned[layer] != 0] for layer in WEIGHTS])
    removed = torch.cat([getattr(model, layer).weight.detach()[pruned[layer] == 0] for layer in WEIGHTS])
    assert kept.abs().min() > removed.abs().max()
    entries = result.plan[0]["plan"]["parameters"]
    assert [entry["size"] - entry["kept"] for entry in entries] == [zeros[layer] for layer in WEIGHTS]
    assert result.plan[0]["stats"] == {"masked": 3, "sparsity": 0.7}


def test_ties_go_to_the_lower_index_and_existing_zeros_go_first(plugins) -> None:
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 3.0, -1.0, 2.0], [1.0, -4.0, 0.0, 0.5]]))
    result = _sparsify(nn.Sequential(layer), torch.randn(1, 4), plugins, sparsity=0.5)
    assert result.plan[0]["plan"]["parameters"][0]["zeros_before"] == 2
    expected = torch.tensor([[0.0, 3.0, 0.0, 2.0], [1.0, -4.0, 0.0, 0.0]])
    assert torch.equal(_weight(result.model, "0"), expected)


def test_the_same_plan_on_the_same_weights_gives_the_same_mask(model, x, plugins) -> None:
    result = _sparsify(model, x, plugins, sparsity=0.6, scope="global", dry_run=True)
    sparsify = plugins.registry.passes["sparsify"].value(sparsity=0.6, scope="global")
    applied = _sparsify(model, x, plugins, sparsity=0.6, scope="global").model
    masks = [[applied.get_submodule(layer).parametrizations.weight[0].mask for layer in WEIGHTS]]
    for _ in range(2):
        gm = copy.deepcopy(result.model)
        sparsify.apply(gm, result.plan[0]["plan"], None)
        masks.append([gm.get_submodule(layer).parametrizations.weight[0].mask for layer in WEIGHTS])
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(*masks))


def test_users_model_is_unchanged(model, x, plugins) -> None:
    before = {key: value.clone() for key, value in model.state_dict().items()}
    result = _sparsify(model, x, plugins, sparsity=0.9)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())
    assert not any(parametrize.is_parametrized(module) for module in model.modules())
    assert all(parametrize.is_parametrized(result.model.get_submodule(layer), "weight") for layer in WEIGHTS)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3),
    ],
    ids=["sgd_momentum_weight_decay", "adam"],
)
def test_masked_weights_stay_exactly_zero_through_training(make_optimizer, model, x, plugins) -> None:
    gm = _sparsify(model, x, plugins, sparsity=0.5).model
    before = {layer: _weight(gm, layer).clone() for layer in WEIGHTS}
    _train(gm, make_optimizer(gm.parameters()))
    for layer, old in before.items():
        new, kept = _weight(gm, layer), old != 0
        assert torch.all(new[~kept] == 0)
        assert torch.all(new[kept] != old[kept])
    assert fxcomp.sparsity(gm)["conv2.weight"] == 0.5


def test_sparsifying_again_keeps_the_old_zeros_and_adds_new_ones(model, x, plugins) -> None:
    first = _sparsify(model, x, plugins, sparsity=0.5).model
    _train(first, torch.optim.SGD(first.parameters(), lr=0.1, momentum=0.9))
    second = _sparsify(first.eval(), x, plugins, sparsity=0.75)
    entries = second.plan[0]["plan"]["parameters"]
    assert [entry["zeros_before"] for entry in entries] == [size // 2 for size in WEIGHTS.values()]
    assert [entry["kept"] for entry in entries] == [size // 4 for size in WEIGHTS.values()]
    for layer in WEIGHTS:
        old, new = _weight(first, layer), _weight(second.model, layer)
        assert torch.all(new[old == 0] == 0)
        assert fxcomp.sparsity(second.model)[f"{layer}.weight"] == 0.75
        chain = second.model.get_submodule(layer).parametrizations.weight
        assert len(chain) == 1 and isinstance(chain[0], Mask)  # combined, not stacked
    # Asking for less sparsity than the model has removes nothing more and restores nothing.
    third = _sparsify(second.model, x, plugins, sparsity=0.3)
    assert [entry["kept"] for entry in third.plan[0]["plan"]["parameters"]] == [s // 4 for s in WEIGHTS.values()]
    assert third.plan[0]["modified"] is True and third.plan[0]["stats"]["sparsity"] == 0.75


def test_include_exclude_and_min_params_select_the_layers(model, x, plugins) -> None:
    result = _sparsify(model, x, plugins, sparsity=0.5, include="conv*", exclude=["conv2"])
    assert [entry["parameter"] for entry in result.plan[0]["plan"]["parameters"]] == ["conv1.weight"]
    sparsity = fxcomp.sparsity(result.model)
    assert (sparsity["conv1.weight"], sparsity["conv2.weight"], sparsity["fc.weight"]) == (0.5, 0.0, 0.0)
    assert not parametrize.is_parametrized(result.model.conv2)

    result = _sparsify(model, x, plugins, sparsity=0.5, min_params=400)
    plan = result.plan[0]["plan"]
    assert [entry["parameter"] for entry in plan["parameters"]] == ["conv1.weight", "conv2.weight"]
    assert plan["skipped"] == [{"parameter": "fc.weight", "reason": "320 entries, fewer than min_params=400"}]


def test_shared_weights_are_skipped(plugins) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    result = _sparsify(Tied(), torch.randn(2, 4), plugins, sparsity=0.5)
    reason = "its weight is shared with another module"
    assert result.plan[0]["plan"] == {
        "parameters": [],
        "skipped": [{"parameter": "a.weight", "reason": reason}, {"parameter": "b.weight", "reason": reason}],
    }
    assert result.model.a.weight is result.model.b.weight


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sparsity": 1.0}, r"passes\[0\]\.sparsity: expected a number in \[0, 1\), got 1\.0"),
        ({"sparsity": -0.1}, r"passes\[0\]\.sparsity: expected a number in \[0, 1\), got -0\.1"),
        ({"sparsity": "half"}, r"passes\[0\]\.sparsity: expected a number in \[0, 1\), got 'half'"),
        ({}, r"passes\[0\]\.sparsity: required option is missing"),
        ({"sparsity": 0.5, "scope": "local"}, r"passes\[0\]\.scope: expected one of 'layer', 'global', got 'local'"),
        ({"sparsity": 0.5, "min_params": -1}, r"passes\[0\]\.min_params: expected an integer >= 0, got -1"),
        ({"sparsity": 0.5, "include": 3}, r"passes\[0\]\.include: expected a glob string or a list of glob"),
        ({"sparsity": 0.5, "ratio": 0.5}, r"passes\[0\]\.ratio: unknown option; this pass takes: exclude, include"),
    ],
)
def test_invalid_options_are_recipe_errors(options, message, model, x, plugins) -> None:
    with pytest.raises(fxcomp.RecipeError, match=message):
        _sparsify(model, x, plugins, **options)


def test_report_shows_per_layer_sparsity(model, x, plugins) -> None:
    result = _sparsify(model, x, plugins, sparsity=0.5, exclude="fc")
    lines = str(result.report).splitlines()
    assert lines[0].split()[-3:] == ["sparsity", "→", "sparsity"]
    rows = {line.split()[0]: line.split() for line in lines[2:] if line.strip()}
    assert rows["conv1"][-2:] == ["0.0%", "50.0%"] and rows["conv2"][-2:] == ["0.0%", "50.0%"]
    assert "fc" not in rows and "bn1" not in rows  # unchanged layers are not listed
    nonzero = result.report.after_totals.nonzero
    assert result.report.before_totals.nonzero - nonzero == (WEIGHTS["conv1"] + WEIGHTS["conv2"]) // 2
    assert rows["nonzero"][1:3] == ["params", "5.51k"]
    assert result.report.after[0].sparsity == 0.5 and result.report.after_totals.sparsity == 2520 / 5360
    json.dumps(result.report.to_dict())

    table = fxcomp.layer_table(result.model).splitlines()
    assert table[0].split()[-1] == "sparsity"
    table_rows = {line.split()[0]: line.split() for line in table[2:]}
    assert table_rows["conv1"][-1] == "50.0%" and table_rows["fc"][-1] == "0.0%" and table_rows["bn1"][-1] == "-"
    assert table_rows["total"][-1] == "47.0%"

    # A dense model, even with the odd exact zero a random init can draw, shows no sparsity column.
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = 0.0
    dense = fxcomp.compress(model, x, "passes: [{pass: fold_bn}]", plugins=plugins)
    assert "sparsity" not in str(dense.report) and "nonzero" not in str(dense.report)
    assert "sparsity" not in fxcomp.layer_table(dense.model)


def test_save_and_load_keep_the_masks(model, x, plugins, tmp_path) -> None:
    gm = _sparsify(model, x, plugins, sparsity=0.5).model
    path = tmp_path / "sparse.fxc"
    fxcomp.save(gm, path, plugins=plugins)
    loaded = fxcomp.load(path, plugins=plugins)
    assert loaded.state_dict().keys() == gm.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in gm.state_dict().items())
    assert type(loaded.conv1).__name__ == "ParametrizedConv2d" and isinstance(loaded.conv1, nn.Conv2d)
    assert loaded.conv1.parametrizations.weight[0].mask.dtype == torch.bool
    with torch.no_grad():
        assert torch.equal(loaded(x), gm(x))
    graph = json.loads(torch.load(path, weights_only=True)["graph"])
    conv1 = graph["modules"]["conv1"]
    assert conv1["class"] == "torch.nn.modules.conv.Conv2d"
    assert [step["class"] for step in conv1["parametrizations"]["weight"]["chain"]] == ["fxcomp.passes.masks.Mask"]

    zeros = {layer: _weight(loaded, layer) == 0 for layer in WEIGHTS}
    _train(loaded, torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3))
    for layer, zero in zeros.items():
        assert torch.all(_weight(loaded, layer)[zero] == 0)
        assert fxcomp.sparsity(loaded)[f"{layer}.weight"] == 0.5


class _Halve(nn.Module):
    """A parametrization with a right_inverse: stores twice the value it gives."""

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor / 2

    def right_inverse(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * 2


def test_other_parametrizations_need_the_allow_list(plugins, tmp_path) -> None:
    gm = fxcomp.trace(nn.Sequential(nn.Linear(3, 3)), torch.randn(2, 3))
    parametrize.register_parametrization(gm.get_submodule("0"), "weight", _Halve())
    with pytest.raises(fxcomp.SaveError, match="module '0.parametrizations.weight.0' is a _Halve"):
        fxcomp.save(gm, tmp_path / "refused.fxc", plugins=plugins)

    plugin = types.SimpleNamespace(
        fxcomp_register_serializables=fxcomp.hookimpl(specname="fxcomp_register_serializables")(
            lambda register: register(_Halve)
        )
    )
    extended = fxcomp.load_plugins(entry_points=False, extra={"halve": plugin})
    fxcomp.save(gm, tmp_path / "halve.fxc", plugins=extended)
    loaded = fxcomp.load(tmp_path / "halve.fxc", plugins=extended)
    stored = gm.get_submodule("0").parametrizations.weight.original
    assert torch.equal(loaded.get_submodule("0").parametrizations.weight.original, stored)  # not doubled again
    assert torch.equal(loaded.get_submodule("0").weight, gm.get_submodule("0").weight)


def test_unknown_or_malformed_parametrizations_are_refused(model, x, plugins, tmp_path) -> None:
    path = tmp_path / "sparse.fxc"
    fxcomp.save(_sparsify(model, x, plugins, sparsity=0.5).model, path, plugins=plugins)
    data = torch.load(path, weights_only=True)

    def crafted(mutate) -> str:
        graph = json.loads(data["graph"])
        mutate(graph["modules"]["conv1"]["parametrizations"]["weight"])
        target = tmp_path / "crafted.fxc"
        torch.save({**data, "graph": json.dumps(graph)}, target)
        return str(target)

    evil = crafted(lambda spec: spec["chain"][0].__setitem__("class", "subprocess.Popen"))
    with pytest.raises(fxcomp.LoadError, match="asks for module class 'subprocess.Popen' at 'conv1.weight"):
        fxcomp.load(evil, plugins=plugins)
    mask_key = json.loads(data["graph"])["modules"]["fc"]["parametrizations"]["weight"]["chain"][0]["buffers"]["mask"]
    misfit = crafted(lambda spec: spec["chain"][0]["buffers"].__setitem__("mask", mask_key))
    with pytest.raises(fxcomp.LoadError, match="the parametrization of 'conv1.weight' does not fit it"):
        fxcomp.load(misfit, plugins=plugins)
    empty = crafted(lambda spec: spec.__setitem__("chain", []))
    with pytest.raises(fxcomp.LoadError, match="empty parametrization of 'conv1.weight'"):
        fxcomp.load(empty, plugins=plugins)


def test_strip_masks_leaves_plain_modules_with_the_zeros(model, x, plugins, tmp_path) -> None:
    gm = _sparsify(model, x, plugins, sparsity=0.5).model
    masked = {layer: _weight(gm, layer).clone() for layer in WEIGHTS}
    with torch.no_grad():
        expected = gm(x)
    assert fxcomp.strip_masks(gm) is gm
    for layer, weight in masked.items():
        module = gm.get_submodule(layer)
        assert type(module) in (nn.Conv2d, nn.Linear) and isinstance(module.weight, nn.Parameter)
        assert torch.equal(module.weight, weight)
    assert not any(isinstance(module, Mask) for module in gm.modules())
    assert fxcomp.sparsity(gm)["conv2.weight"] == 0.5
    with torch.no_grad():
        assert torch.equal(gm(x), expected)
    fxcomp.save(gm, tmp_path / "plain.fxc", plugins=plugins)  # no mask class needed any more

    other = fxcomp.trace(nn.Sequential(nn.Linear(3, 3)), torch.randn(2, 3))
    add_mask(other.get_submodule("0"), "weight", torch.rand(3, 3) > 0.5)
    parametrize.register_parametrization(other.get_submodule("0"), "weight", _Halve())
    with pytest.raises(fxcomp.SaveError, match=r"'0\.weight' is also parametrized by _Halve"):
        fxcomp.strip_masks(other)


def test_sparsify_then_fold_bn_keeps_the_zeros(model, x, plugins) -> None:
    result = fxcomp.compress(
        model, x, "passes: [{pass: sparsify, sparsity: 0.5}, {pass: fold_bn}]", plugins=plugins
    )
    assert result.plan[1]["stats"] == {"folded": 2, "skipped": 0}
    assert all(fxcomp.sparsity(result.model)[f"{layer}.weight"] == 0.5 for layer in WEIGHTS)
    assert all(isinstance(result.model.get_submodule(layer).parametrizations.weight[0], Mask) for layer in WEIGHTS)
    assert all(parameter.requires_grad for parameter in result.model.parameters())


def test_compress_command_with_a_sparsify_recipe(tmp_path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("passes:\n  - pass: sparsify\n    sparsity: 0.5\n    scope: global\n")
    out = tmp_path / "model.fxc"
    argv = ["compress", "tests.conftest:SmallCNN", "--recipe", str(recipe), "--input-shape", "1,3,8,8"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "→ sparsity" in printed and "nonzero params" in printed and "masked=3, sparsity=0.5" in printed
    loaded = fxcomp.load(out)
    weights = [loaded.get_submodule(layer).weight for layer in WEIGHTS]
    assert sum(int((w == 0).sum()) for w in weights) == sum(WEIGHTS.values()) // 2


def test_strip_masks_on_a_copy_leaves_the_original_masked() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    sparse = fxcomp.compress(model, torch.randn(1, 3, 5, 5), "passes: [{pass: sparsify, sparsity: 0.5}]").model
    stripped = fxcomp.strip_masks(copy.deepcopy(sparse))
    assert type(stripped.get_submodule("0")) is nn.Conv2d
    assert torch.equal(stripped.get_submodule("0").weight, sparse.get_submodule("0").weight)
    assert parametrize.is_parametrized(sparse.get_submodule("0"), "weight")


def test_masking_a_second_tensor_of_a_copy_leaves_the_original_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    sparse = fxcomp.compress(model, torch.randn(1, 3, 5, 5), "passes: [{pass: sparsify, sparsity: 0.5}]").model
    copied = copy.deepcopy(sparse)
    add_mask(copied.get_submodule("0"), "bias", torch.tensor([True, False, True, False]))
    assert copied.get_submodule("0").bias[1] == 0
    assert not parametrize.is_parametrized(sparse.get_submodule("0"), "bias")
    assert sparse.get_submodule("0").bias.shape == (4,)
    fxcomp.strip_masks(copied)
    assert type(copied.get_submodule("0")) is nn.Conv2d and copied.get_submodule("0").bias[1] == 0
