"""Prune options beyond the basics: global scope, iterative steps, and the data-driven criteria."""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn as nn
import torchvision

import fxcomp
from tests.conftest import randomize_batchnorm
from tests.test_prune import zeroed_reference


class _TwoLayers(nn.Module):
    """conv a (2→4) → relu → conv b (4→4) → relu → head (4→1): two prunable groups, 'a' and 'b'."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def _fixed_scores(scores: dict[str, list[float]]) -> fxcomp.Plugins:
    """Plugins with an extra criterion 'fixed' that returns the given scores per producer."""

    def fixed(groups, gm, context):
        return [torch.tensor(scores[group.producers[0]], dtype=torch.float64) for group in groups]

    plugin = types.SimpleNamespace(fxcomp_register_importance=fxcomp.hookimpl(lambda register: register("fixed", fixed)))
    return fxcomp.load_plugins(disable=(), extra={"fixed_scores": plugin})


def _removed(result: fxcomp.CompressionResult) -> dict[str, list[int]]:
    return {group["producers"][0]: group["removed"] for group in result.plan[0]["plan"]["groups"]}


def test_global_scope_ranks_channels_of_all_groups_together() -> None:
    # After dividing by each group's mean, a's channels all score 1 while b's three small ones score 0.004:
    # removing 3 of the 8 channels globally takes all of them from b; locally it takes 1-2 from each.
    plugins = _fixed_scores({"a": [1.0, 1.0, 1.0, 1.0], "b": [0.01, 10.0, 0.01, 0.01]})
    model, x = _TwoLayers().eval(), torch.randn(1, 2, 3, 3)
    glob = fxcomp.compress(model, x, {"passes": [{"pass": "prune", "ratio": 0.375, "importance": "fixed", "scope": "global"}]}, plugins=plugins)
    assert _removed(glob) == {"b": [0, 2, 3]}
    local = fxcomp.compress(model, x, {"passes": [{"pass": "prune", "ratio": 0.375, "importance": "fixed"}]}, plugins=plugins)
    assert _removed(local) == {"a": [0], "b": [0]}


def test_global_scope_respects_max_ratio_per_group() -> None:
    plugins = _fixed_scores({"a": [1.0, 1.0, 1.0, 1.0], "b": [0.01, 10.0, 0.01, 0.01]})
    recipe = {"passes": [{"pass": "prune", "ratio": 0.375, "importance": "fixed", "scope": "global", "max_ratio_per_group": 0.5}]}
    result = fxcomp.compress(_TwoLayers().eval(), torch.randn(1, 2, 3, 3), recipe, plugins=plugins)
    assert _removed(result) == {"b": [0, 2]}


def test_global_scope_reaches_target_macs_and_stays_exact() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    result = fxcomp.compress(model, x, {"passes": [{"pass": "prune", "target_macs": 0.5, "scope": "global"}]})
    before, after = result.report.before_totals.macs, result.report.after_totals.macs
    assert abs(after / before / 0.5 - 1) <= 0.02
    removed = [len(g["removed"]) / g["channels"] for g in result.plan[0]["plan"]["groups"]]
    assert max(removed) - min(removed) > 0.2  # global ranking prunes groups unevenly
    with torch.no_grad():
        expected = zeroed_reference(model, result.plan[0]["plan"])(x)
    assert ((result.model(x) - expected).abs().max() / expected.abs().max()).item() < 1e-4


def test_a_criterion_returning_wrong_shapes_is_reported() -> None:
    def broken(groups, gm, context):
        return [torch.zeros(1)]

    plugin = types.SimpleNamespace(fxcomp_register_importance=fxcomp.hookimpl(lambda register: register("broken", broken)))
    plugins = fxcomp.load_plugins(disable=(), extra={"broken_plugin": plugin})
    with pytest.raises(fxcomp.PluginError, match="^importance criterion 'broken' must return one 1-D tensor"):
        fxcomp.compress(_TwoLayers(), torch.randn(1, 2, 3, 3), {"passes": [{"pass": "prune", "ratio": 0.5, "importance": "broken"}]}, plugins=plugins)


@pytest.mark.parametrize("write", ["in place", "replaced", "buffer"])
def test_a_criterion_that_writes_to_the_model_is_reported(write: str) -> None:
    def careless(groups, gm, context):
        with torch.no_grad():
            if write == "in place":
                gm.get_submodule("0").weight.abs_()  # a "score" computed in place
            elif write == "replaced":
                gm.get_submodule("0").weight = torch.nn.Parameter(torch.zeros_like(gm.get_submodule("0").weight))
            else:
                gm.get_submodule("1").running_mean.zero_()
        return [torch.ones(group.channels) for group in groups]

    plugin = types.SimpleNamespace(fxcomp_register_importance=fxcomp.hookimpl(lambda register: register("careless", careless)))
    plugins = fxcomp.load_plugins(disable=(), extra={"careless_plugin": plugin})
    name = "1.running_mean" if write == "buffer" else "0.weight"
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1)).eval()
    with pytest.raises(fxcomp.PluginError, match=f"^importance criterion 'careless' changed the model's '{name}' while scoring"):
        fxcomp.compress(model, torch.randn(1, 2, 3, 3), {"passes": [{"pass": "prune", "ratio": 0.5, "importance": "careless"}]}, plugins=plugins)


@pytest.mark.parametrize("goal", [{"ratio": 0.5}, {"target_macs": 0.4}])
def test_iterative_steps_compose_into_one_replayable_plan(goal: dict) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    result = fxcomp.compress(model, x, {"passes": [{"pass": "prune", "iterative_steps": 3, **goal}]})
    plan = result.plan[0]["plan"]
    assert sorted({group["step"] for group in plan["groups"]}) == [1, 2, 3]
    if "ratio" in goal:
        assert len(plan["kept"]["conv1.weight"]["0"]) == 32  # 64 channels → half kept after three steps
    else:
        before, after = result.report.before_totals.macs, result.report.after_totals.macs
        assert abs(after / before / 0.4 - 1) <= 0.02
    state, original = result.model.state_dict(), model.state_dict()
    for name, axes in plan["kept"].items():
        replayed = original[name]
        for axis, indices in axes.items():
            replayed = replayed.index_select(int(axis), torch.tensor(indices))
        assert torch.equal(replayed, state[name]), name
    with torch.no_grad():
        expected = zeroed_reference(model, plan)(x)
    assert ((result.model(x) - expected).abs().max() / expected.abs().max()).item() < 1e-4


def test_iterative_steps_rescore_the_pruned_model_between_steps() -> None:
    seen: list[dict[str, int]] = []

    def recording(groups, gm, context):
        seen.append({group.producers[0]: gm.get_submodule(group.producers[0]).out_channels for group in groups})
        return [torch.arange(group.channels, dtype=torch.float64) for group in groups]

    plugin = types.SimpleNamespace(fxcomp_register_importance=fxcomp.hookimpl(lambda register: register("rec", recording)))
    plugins = fxcomp.load_plugins(disable=(), extra={"recording": plugin})
    model = nn.Sequential(nn.Conv2d(2, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 1, 1))
    recipe = {"passes": [{"pass": "prune", "ratio": 0.5, "importance": "rec", "iterative_steps": 2}]}
    result = fxcomp.compress(model, torch.randn(1, 2, 3, 3), recipe, plugins=plugins)
    assert seen == [{"0": 8, "2": 8}, {"0": 6, "2": 6}]  # step 1 removes 2 of 8, step 2 two more of the 6 left
    # Scores rank channels by position in the current model: step 1 drops 0 and 1, step 2 the first two left.
    assert result.plan[0]["plan"]["kept"]["0.weight"]["0"] == [4, 5, 6, 7]


def _digits_batches(count: int = 4, size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(size, 2, 3, 3, generator=generator) for _ in range(count)]


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.a(x)).mean((2, 3)))


def test_activation_importance_removes_dead_channels() -> None:
    torch.manual_seed(0)
    model = _Classifier().eval()
    with torch.no_grad():
        model.a.bias.copy_(torch.tensor([5.0, -100.0, 5.0, -100.0]))  # channels 1 and 3 never fire after relu
    result = fxcomp.compress(
        model, torch.randn(1, 2, 3, 3), {"passes": [{"pass": "prune", "ratio": 0.5, "importance": "activation"}]},
        calib_data=_digits_batches(),
    )
    assert _removed(result) == {"a": [1, 3]}


def test_activation_importance_reads_the_channels_of_an_unbatched_convolution() -> None:
    """An unbatched conv input (C×H×W, here H = C) holds its channels on axis 0, not 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([5.0, -100.0, 5.0, -100.0]))  # channels 1 and 3 never fire after relu
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 4, 5, generator=generator) for _ in range(3)]
    result = fxcomp.compress(
        model, batches[0], {"passes": [{"pass": "prune", "ratio": 0.5, "importance": "activation"}]}, calib_data=batches
    )
    assert _removed(result) == {"0": [1, 3]}


def test_a_model_on_the_meta_device_prunes_by_random_importance_only() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.empty(1, 3, 8, 8, device="meta")
    with pytest.raises(fxcomp.UsageError, match=r"^prune\.importance: 'l1' needs the weights' values, .*use importance: random$"):
        fxcomp.compress(model, x, "passes: [{pass: prune, ratio: 0.5}]")
    result = fxcomp.compress(model, x, "passes: [{pass: prune, ratio: 0.5, importance: random}]")
    conv = result.model.get_submodule("0")
    assert conv.out_channels == 4 and conv.weight.is_meta


def test_random_importance_draws_other_scores_for_groups_of_one_shape() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    removed = lambda: [g["removed"] for g in fxcomp.compress(model, x, "passes: [{pass: prune, ratio: 0.5, importance: random}]").plan[0]["plan"]["groups"]]  # noqa: E731
    first = removed()
    assert len(first) == 2 and first[0] != first[1]  # both groups lost the same channels
    assert removed() == first  # still seeded


def test_taylor_importance_matches_hand_computed_first_order_terms() -> None:
    torch.manual_seed(0)
    model = _Classifier().eval()
    batches = [(x, torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))) for x in _digits_batches()]
    reference = _Classifier()
    reference.load_state_dict(model.state_dict())
    for x, y in batches:
        nn.functional.cross_entropy(reference(x), y).backward()
    # Channel c of a: a.weight[c], a.bias[c] and fc.weight[:, c] are removed together.
    terms = (
        (reference.a.weight * reference.a.weight.grad).sum((1, 2, 3))
        + reference.a.bias * reference.a.bias.grad
        + (reference.fc.weight * reference.fc.weight.grad).sum(0)
    ).abs()
    expected = sorted(torch.argsort(terms)[:2].tolist())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = fxcomp.compress(
        model, torch.randn(1, 2, 3, 3), {"passes": [{"pass": "prune", "ratio": 0.5, "importance": "taylor"}]},
        calib_data=batches,
    )
    assert _removed(result) == {"a": expected}
    assert all(p.grad is None for p in model.parameters())  # the user's model is untouched
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_taylor_without_labels_uses_the_model_predictions() -> None:
    result = fxcomp.compress(
        _Classifier().eval(), torch.randn(1, 2, 3, 3), {"passes": [{"pass": "prune", "ratio": 0.5, "importance": "taylor"}]},
        calib_data=_digits_batches(),
    )
    assert len(_removed(result)["a"]) == 2


@pytest.mark.parametrize(
    ("calib_data", "message"),
    [
        (None, r"^prune.importance: taylor needs calibration data; pass calib_data=\[batch, \.\.\.\] to fxcomp.compress"),
        (torch.randn(2, 2, 3, 3), r"^prune.importance: taylor: calib_data must be an iterable of batches"),
        ([], r"^prune.importance: taylor: calib_data is empty"),
        ([(torch.randn(2, 2, 3, 3), torch.zeros(2), torch.zeros(2))], r"must hold the model's 1 input tensor\(s\), optionally followed by a target; got a tuple of Tensor, Tensor, Tensor$"),
    ],
)
def test_calibration_data_errors(calib_data, message) -> None:
    with pytest.raises(fxcomp.CalibrationError, match=message):
        fxcomp.compress(
            _Classifier(), torch.randn(1, 2, 3, 3), {"passes": [{"pass": "prune", "ratio": 0.5, "importance": "taylor"}]},
            calib_data=calib_data,
        )


@pytest.mark.parametrize("importance", ["taylor", "activation"])
def test_calibration_batches_shaped_unlike_the_example_inputs_are_named(importance) -> None:
    wrong = [(torch.randn(2, 3, 3, 3), torch.zeros(2, dtype=torch.long))]  # 3 channels where the model takes 2
    message = (
        rf"^prune.importance: {importance}: the model fails on a calibration batch of 2×3×3×3 float32 \(RuntimeError: .*\); "
        r"give batches shaped like the example inputs \(1×2×3×3 float32, any batch size\)$"
    )
    with pytest.raises(fxcomp.CalibrationError, match=message):
        fxcomp.compress(
            _Classifier(), torch.randn(1, 2, 3, 3), {"passes": [{"pass": "prune", "ratio": 0.5, "importance": importance}]},
            calib_data=wrong,
        )


def test_scope_and_steps_are_validated(small_cnn, image) -> None:
    with pytest.raises(fxcomp.RecipeError, match=r"^passes\[0\]\.scope: expected one of 'local', 'global', got 'everywhere'$"):
        fxcomp.compress(small_cnn, image, {"passes": [{"pass": "prune", "ratio": 0.5, "scope": "everywhere"}]})
    with pytest.raises(fxcomp.RecipeError, match=r"^passes\[0\]\.iterative_steps: "):
        fxcomp.compress(small_cnn, image, {"passes": [{"pass": "prune", "ratio": 0.5, "iterative_steps": 0}]})


def test_prune_after_sparsify_shrinks_weights_and_their_masks() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    sparse = fxcomp.compress(model, x, "passes: [{pass: sparsify, sparsity: 0.6}]").model
    result = fxcomp.compress(sparse, x, "passes: [{pass: prune, ratio: 0.5}]")
    pruned = result.model
    conv = pruned.get_submodule("layer1.0.conv1")
    assert conv.weight.shape == (32, 32, 3, 3)
    assert conv.parametrizations.weight[0].mask.shape == (32, 32, 3, 3)
    assert torch.equal(conv.weight == 0, ~conv.parametrizations.weight[0].mask | (conv.parametrizations.weight.original == 0))
    with torch.no_grad():
        expected = zeroed_reference(fxcomp.strip_masks(copy.deepcopy(sparse)), result.plan[0]["plan"])(x)
    assert ((pruned(x) - expected).abs().max() / expected.abs().max()).item() < 1e-4


def test_group_ratios_prune_each_named_group_by_its_own_ratio() -> None:
    plugins = _fixed_scores({"a": [4.0, 1.0, 3.0, 2.0], "b": [1.0, 2.0, 3.0, 4.0]})
    x = torch.randn(1, 2, 3, 3)
    per_group = {"pass": "prune", "importance": "fixed", "group_ratios": {"a": 0.5}}
    assert _removed(fxcomp.compress(_TwoLayers(), x, {"passes": [per_group]}, plugins=plugins)) == {"a": [1, 3]}
    with_default = {**per_group, "ratio": 0.25}
    result = fxcomp.compress(_TwoLayers(), x, {"passes": [with_default]}, plugins=plugins)
    assert _removed(result) == {"a": [1, 3], "b": [0]}
    assert (result.model.a.out_channels, result.model.b.out_channels) == (2, 3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group_ratios": {"c": 0.5}}, r"passes\[0\].group_ratios.c: no prunable group starts at this layer; .*: a, b"),
        ({"group_ratios": {"a": 0.5}, "target_macs": 0.5}, "group_ratios works with scope local"),
        ({"group_ratios": {"a": 0.5}, "scope": "global"}, "group_ratios works with scope local"),
        ({"group_ratios": {"a": 1.5}}, r"passes\[0\].group_ratios.a: expected a ratio in \[0, 1\)"),
    ],
)
def test_bad_group_ratios_are_recipe_errors(options, message) -> None:
    with pytest.raises(fxcomp.RecipeError, match=message):
        fxcomp.compress(_TwoLayers(), torch.randn(1, 2, 3, 3), {"passes": [{"pass": "prune", **options}]})


def _chain(width: int, layers: int) -> nn.Sequential:
    """3 → width conv, then ``layers - 1`` width → width convs (relu between), and a 1×1 head to 2: ``layers`` groups."""
    torch.manual_seed(0)
    convs = [nn.Conv2d(3, width, 3, padding=1), *(nn.Conv2d(width, width, 3, padding=1) for _ in range(layers - 1))]
    return nn.Sequential(*(part for conv in convs for part in (conv, nn.ReLU())), nn.Conv2d(width, 2, 1)).eval()


def _widths(model: nn.Module, layers: int) -> list[int]:
    return [model.get_submodule(str(2 * i)).out_channels for i in range(layers)]


@pytest.mark.parametrize(
    ("goal", "widths"),
    [({"ratio": 0.6, "scope": "global"}, [16, 16, 16]), ({"target_macs": 0.3, "scope": "global"}, [16, 18, 17])],
)
def test_max_ratio_per_group_caps_the_original_channels_over_iterative_steps(goal: dict, widths: list[int]) -> None:
    # Each step capped half of the channels left, so three steps removed up to 1 - 0.5**3 of a group (72%).
    recipe = {"passes": [{"pass": "prune", "max_ratio_per_group": 0.5, "iterative_steps": 3, **goal}]}
    result = fxcomp.compress(_chain(32, 3), torch.randn(1, 3, 8, 8), recipe)
    assert _widths(result.model, 3) == widths


def test_target_macs_out_of_reach_under_the_cap_stays_out_of_reach_over_iterative_steps() -> None:
    model, x = _chain(32, 3), torch.randn(1, 3, 8, 8)
    message = r"^passes\[0\].target_macs: 0.15 is out of reach; pruning every unpinned group by max_ratio_per_group=0.5 keeps 0.262 of the MACs"
    for steps in (1, 3):  # three steps reached 0.15 by removing 62% of every group
        recipe = {"passes": [{"pass": "prune", "target_macs": 0.15, "max_ratio_per_group": 0.5, "iterative_steps": steps}]}
        with pytest.raises(fxcomp.RecipeError, match=message):
            fxcomp.compress(model, x, recipe)


@pytest.mark.parametrize("steps", [1, 3, 40])
def test_global_scope_over_iterative_steps_removes_the_ratio_of_the_channels(steps: int) -> None:
    # Each step took its share of the channels left after the nominal (not the actual) earlier steps,
    # and rounded down: 15 of 32 with three steps, none with forty.
    recipe = {"passes": [{"pass": "prune", "ratio": 0.5, "scope": "global", "iterative_steps": steps}]}
    result = fxcomp.compress(_chain(16, 2), torch.randn(1, 3, 8, 8), recipe)
    assert sum(_widths(result.model, 2)) == 16


def test_a_generator_of_calibration_batches_serves_every_iterative_step() -> None:
    # Step 1 used to exhaust the generator; step 2 then said "calib_data is empty; give at least one batch".
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 1, 1)).eval()
    recipe = {"passes": [{"pass": "prune", "ratio": 0.5, "importance": "activation", "iterative_steps": 2}]}
    batches = _digits_batches(3)
    from_list = fxcomp.compress(model, batches[0][:1], recipe, calib_data=batches)
    from_generator = fxcomp.compress(model, batches[0][:1], recipe, calib_data=(batch for batch in batches))
    assert from_generator.plan[0]["plan"]["kept"] == from_list.plan[0]["plan"]["kept"]
    assert len(from_generator.plan[0]["plan"]["kept"]["0.weight"]["0"]) == 4


def test_ignore_keeps_the_channels_of_any_layer_it_names() -> None:
    # Only a group's producers were matched: ignoring the BatchNorm (or a name matching nothing) pruned anyway.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1))
    x = torch.randn(1, 3, 8, 8)

    def widths(ignore: list[str]) -> tuple[int, int, int]:
        pruned = fxcomp.compress(model.eval(), x, {"passes": [{"pass": "prune", "ratio": 0.5, "ignore": ignore}]}).model
        return pruned.get_submodule("0").out_channels, pruned.get_submodule("1").num_features, pruned.get_submodule("3").out_channels

    assert widths(["1"]) == (8, 8, 4)
    assert widths(["3"]) == (4, 4, 8)  # a consumer keeps its own output channels, not its input's
    with pytest.raises(fxcomp.RecipeError, match=r"^passes\[0\].ignore: 'no_such_layer' matches no layer of the model; globs match qualified names like 0, 3, 5$"):
        widths(["0", "no_such_layer"])
