"""The lowrank built-in plugin: exact at full rank, the rank rules, MACs accounting and skips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import fxcomp
from fxcomp.recovery import rename_through
from fxcomp_plugins.lowrank import keep_rank


def _run(model: nn.Module, x: torch.Tensor, **options):
    return fxcomp.compress(model.eval(), x, {"passes": [{"pass": "lowrank", **options}]})


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _linear_with_singular_values(values: list[float], rows: int, columns: int) -> nn.Linear:
    """A Linear layer whose weight has exactly these singular values."""
    generator = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(rows, len(values), generator=generator, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(columns, len(values), generator=generator, dtype=torch.float64))[0]
    layer = nn.Linear(columns, rows)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T)
    return layer


EXACT_CASES = [
    ("linear_3d_input", nn.Linear(12, 7), (3, 5, 12), "tucker2"),
    ("linear_no_bias", nn.Linear(9, 11, bias=False), (4, 9), "tucker2"),
    ("conv1x1_stride_padding_groups", nn.Conv2d(6, 8, 1, stride=2, padding=1, groups=2), (2, 6, 9, 9), "tucker2"),
    ("tucker2_stride_groups_bias", nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2), (2, 6, 11, 13), "tucker2"),
    ("tucker2_dilation_no_bias", nn.Conv2d(6, 8, (3, 5), (2, 1), (2, 1), (1, 2), bias=False), (2, 6, 11, 13), "tucker2"),
    ("tucker2_same_reflect", nn.Conv2d(6, 8, 3, padding="same", padding_mode="reflect"), (2, 6, 9, 9), "tucker2"),
    ("tucker2_conv1d", nn.Conv1d(6, 8, 5, stride=2, padding=2, groups=2), (2, 6, 20), "tucker2"),
    ("tucker2_conv3d", nn.Conv3d(4, 6, 3, padding=1), (1, 4, 5, 6, 7), "tucker2"),
    ("spatial_stride_groups_bias", nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2), (2, 6, 11, 13), "spatial_svd"),
    ("spatial_dilation_no_bias", nn.Conv2d(6, 8, (3, 5), (2, 1), (2, 1), (1, 2), bias=False), (2, 6, 11, 13), "spatial_svd"),
    ("spatial_circular_groups", nn.Conv2d(6, 9, 3, padding=1, padding_mode="circular", groups=3), (2, 6, 9, 9), "spatial_svd"),
    ("spatial_same_reflect", nn.Conv2d(6, 8, 3, padding="same", padding_mode="reflect"), (2, 6, 9, 9), "spatial_svd"),
]


@pytest.mark.parametrize(("case", "layer", "shape", "method"), EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_full_rank_is_exact_for_every_layer_option(case, layer, shape, method) -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(layer), torch.randn(shape)
    result = _run(model, x, ratio=1.0, method=method, skip_no_gain=False)
    (entry,) = result.plan[0]["plan"]["layers"]
    assert entry["error"] < 1e-12
    assert _relative(result.model(x), model(x)) < 1e-5
    replaced = result.model.get_submodule("0")
    assert isinstance(replaced, nn.Sequential) and all(type(m) is type(layer) for m in replaced)


def test_tucker2_splits_a_conv_into_project_core_restore() -> None:
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    result = _run(nn.Sequential(conv), torch.randn(1, 16, 12, 12), rank=4)
    project, core, restore = result.model.get_submodule("0")
    assert (project.kernel_size, project.in_channels, project.out_channels) == ((1, 1), 16, 4)
    assert (core.kernel_size, core.stride, core.padding, core.out_channels) == ((3, 3), (2, 2), (1, 1), 4)
    assert (restore.kernel_size, restore.out_channels, restore.bias is not None) == ((1, 1), 24, True)
    assert result.plan[0]["plan"]["layers"][0]["ranks"] == [4, 4]


def test_spatial_svd_splits_a_kernel_into_a_column_and_a_row() -> None:
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
    result = _run(nn.Sequential(conv), torch.randn(1, 8, 12, 12), rank=5, method="spatial_svd")
    vertical, horizontal = result.model.get_submodule("0")
    assert (vertical.kernel_size, vertical.stride, vertical.padding, vertical.out_channels) == ((3, 1), (2, 1), (1, 0), 5)
    assert (horizontal.kernel_size, horizontal.stride, horizontal.padding) == ((1, 3), (1, 2), (0, 1))


@pytest.mark.parametrize(
    ("options", "rank"),
    [({"energy": 0.8}, 2), ({"energy": 0.5}, 1), ({"energy": 1.0}, 4), ({"ratio": 0.5}, 2), ({"ratio": 0.3}, 2), ({"rank": 3}, 3), ({}, 3)],
)
def test_rank_rules_keep_energy_ratio_or_count(options, rank) -> None:
    # Squared singular values 16, 9, 4, 1 (total 30): 53%, 83%, 97%, 100% of the energy.
    layer = _linear_with_singular_values([4.0, 3.0, 2.0, 1.0], rows=4, columns=50)
    result = _run(nn.Sequential(layer), torch.randn(2, 50), skip_no_gain=False, **options)
    (entry,) = result.plan[0]["plan"]["layers"]
    assert entry["ranks"] == [rank]
    left_out = sum([16.0, 9.0, 4.0, 1.0][rank:])
    assert entry["error"] == pytest.approx(math.sqrt(left_out / 30.0), abs=1e-6)


def test_plan_macs_and_params_match_the_report() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 8 * 8, 64))
    result = _run(model, torch.randn(2, 16, 8, 8), rank=6)
    layers = result.plan[0]["plan"]["layers"]
    assert [entry["layer"] for entry in layers] == ["0", "3"]
    after = {row.name: row for row in result.report.after}
    for entry in layers:
        parts = [row for name, row in after.items() if name.startswith(entry["layer"] + ".")]
        assert sum(row.macs for row in parts) == entry["macs_after"]
        assert sum(row.params for row in parts) == entry["params_after"]
    saved = sum(entry["macs_before"] - entry["macs_after"] for entry in layers)
    assert result.report.before_totals.macs - result.report.after_totals.macs == saved
    assert result.plan[0]["stats"]["macs_saved"] == saved
    # A linear layer at rank K costs (M + N)·K weights: here (64 + 2048)·6 plus the bias.
    assert layers[1]["params_after"] == (64 + 2048) * 6 + 64


def test_a_layer_whose_factors_cost_more_is_skipped_with_the_reason() -> None:
    model, x = nn.Sequential(nn.Linear(64, 8)), torch.randn(2, 64)
    result = _run(model, x, ratio=1.0)  # (64 + 8)·8 ≥ 64·8, plus the bias on both sides
    assert result.plan[0]["plan"]["layers"] == []
    (skip,) = result.plan[0]["plan"]["skipped"]
    assert skip["layer"] == "0" and skip["reason"].endswith("584 parameters against the layer's 1,024 and 520: no gain")
    assert isinstance(result.model.get_submodule("0"), nn.Linear) and not result.plan[0]["modified"]


def test_include_exclude_shared_and_unsupported_layers() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.shared = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)
            self.line = nn.Conv1d(32, 32, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.shared(self.b(self.a(x)))
            return self.shared(self.line(x.unsqueeze(2).expand(-1, -1, 4)).mean(2))

    result = _run(Net(), torch.randn(2, 32), rank=2, method="spatial_svd", exclude=["b"])
    plan = result.plan[0]["plan"]
    assert [entry["layer"] for entry in plan["layers"]] == ["a"]
    reasons = {skip["layer"]: skip["reason"] for skip in plan["skipped"]}
    assert "called more than once" in reasons["shared"] and len(plan["skipped"]) == 2  # the shared layer once
    assert "2-D convolution" in reasons["line"]
    assert plan["renamed"] == {"a": "a.1"}
    assert rename_through(["a", "b"], result.plan) == ["a.1", "b"]


def test_a_layer_whose_weight_the_graph_also_reads_is_skipped() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(32, 32), nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.fc(x) + 0.1 * torch.nn.functional.linear(x, self.fc.weight))

    x = torch.randn(2, 32)
    result = _run(Net(), x, ratio=0.25)
    skipped = {skip["layer"]: skip["reason"] for skip in result.plan[0]["plan"]["skipped"]}
    assert skipped["fc"] == "the graph also reads its 'fc.weight' directly"
    assert type(result.model.fc) is nn.Linear


class _ScaledConv(nn.Conv2d):
    def forward(self, x):
        return 10 * super().forward(x)


@pytest.mark.parametrize("pass_", ["lowrank", "separable"])
def test_layer_subclasses_hooked_layers_and_meta_weights_are_skipped_with_the_reason(pass_) -> None:
    x = torch.randn(2, 16, 6, 6)
    options = {"pass": pass_, "skip_no_gain": False, **({"ratio": 0.5} if pass_ == "lowrank" else {})}
    subclass = fxcomp.compress(nn.Sequential(_ScaledConv(16, 32, 3)).eval(), x, {"passes": [options]}, leaf_modules=["0"])
    assert subclass.plan[0]["plan"]["skipped"] == [{"layer": "0", "reason": "it is a _ScaledConv, whose forward the replacement would not keep"}]
    hooked = nn.Sequential(nn.Conv2d(16, 32, 3)).eval()
    hooked[0].register_forward_hook(lambda module, inputs, output: output.clamp(-0.1, 0.1))
    plan = fxcomp.compress(hooked, x, {"passes": [options]}).plan[0]["plan"]
    assert plan["skipped"] == [{"layer": "0", "reason": "it has forward hooks, which the replacement would not keep"}]
    with torch.device("meta"):
        meta, meta_x = nn.Sequential(nn.Conv2d(16, 32, 3)).eval(), torch.randn(2, 16, 6, 6)
    plan = fxcomp.compress(meta, meta_x, {"passes": [options]}).plan[0]["plan"]
    assert plan["skipped"] == [{"layer": "0", "reason": "its weight is on the meta device (no values to factor); load real weights first"}]


def test_an_all_zero_group_does_not_force_full_rank_on_the_others() -> None:
    torch.manual_seed(0)
    conv, x = nn.Conv2d(8, 8, 1, groups=2), torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        conv.weight[:4].zero_()
    result = _run(nn.Sequential(conv), x, energy=0.5, skip_no_gain=False)
    singular = torch.linalg.svdvals(conv.weight[4:].detach().double().flatten(1))
    assert result.plan[0]["plan"]["layers"][0]["ranks"] == [keep_rank(singular, None, None, 0.5)] != [4]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rank": 2, "energy": 0.5}, "give one of rank, ratio or energy, not rank and energy"),
        ({"ratio": 0}, "ratio"),
        ({"energy": 1.5}, "energy"),
        ({"method": "cp"}, "method"),
    ],
)
def test_bad_options_are_recipe_errors(options, message) -> None:
    with pytest.raises(fxcomp.RecipeError, match=message):
        _run(nn.Sequential(nn.Linear(4, 4)), torch.randn(1, 4), **options)


def test_masked_layers_are_skipped_until_masks_are_stripped() -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), torch.randn(2, 64)
    sparse = fxcomp.compress(model, x, "passes: [{pass: sparsify, sparsity: 0.5}]").model
    result = fxcomp.compress(sparse, x, "passes: [{pass: lowrank, rank: 4}]")
    assert all("strip_masks" in skip["reason"] for skip in result.plan[0]["plan"]["skipped"])
    stripped = fxcomp.compress(fxcomp.strip_masks(sparse), x, "passes: [{pass: lowrank, rank: 4}]")
    assert [entry["layer"] for entry in stripped.plan[0]["plan"]["layers"]] == ["0", "2"]


def test_factored_model_saves_loads_and_still_trains(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(16 * 36, 10))
    x = torch.randn(2, 8, 8, 8)
    result = _run(model, x, energy=0.8)
    path = tmp_path / "lowrank.fxc"
    fxcomp.save(result.model, path)
    loaded = fxcomp.load(path)
    assert torch.equal(loaded(x), result.model(x))
    loss = loaded(x).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in loaded.parameters())


def test_float64_layers_factor_exactly_at_full_rank() -> None:
    model = nn.Sequential(nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 25, 5)).double().eval()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    result = fxcomp.compress(model, x, "passes: [{pass: lowrank, ratio: 1.0, skip_no_gain: false}]")
    assert len(result.plan[0]["plan"]["layers"]) == 2
    assert torch.allclose(result.model(x), model(x), rtol=1e-9, atol=1e-12)


class _TiedLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("recipe", ["{pass: lowrank, rank: 4}", "{pass: prune, ratio: 0.5}"])
def test_tied_weights_are_kept_tied(recipe) -> None:
    x = torch.randn(3, 16)
    result = fxcomp.compress(_TiedLinears().eval(), x, f"passes: [{recipe}]")
    assert result.model.a.weight is result.model.b.weight
    if "lowrank" in recipe:
        skipped = result.plan[0]["plan"]["skipped"]
        assert skipped == [{"layer": name, "reason": "its weight is shared with another module"} for name in ("a", "b")]
