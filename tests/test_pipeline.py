"""compress(): the user's model is never touched, every pass is verified, failures name the pass and node."""

from __future__ import annotations

import copy
import json
import math
import types

import pytest
import torch
import torch.nn as nn

import fxcomp
from fxcomp.passes import Option, Pass, PassResult, number


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_bitwise_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    assert current.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(current[key], value), key


class _Vandal(Pass):
    """Scales every parameter in place, then fails: the user's model must not see either."""

    name = "vandal"

    def plan(self, gm, context):
        return {}

    def apply(self, gm, plan, context):
        with torch.no_grad():
            for parameter in gm.parameters():
                parameter.mul_(0)
        raise RuntimeError("vandal gives up")


class _ShrinkHead(Pass):
    """Replaces the classifier with a smaller one: the output shape changes, verification must object."""

    name = "shrink_head"

    def plan(self, gm, context):
        return {"layer": "fc"}

    def apply(self, gm, plan, context):
        gm.fc = nn.Linear(32, 5)
        return PassResult(gm, modified=True)


class _Breaker(Pass):
    """Inserts a matmul with the wrong inner size after conv2: the graph no longer runs."""

    name = "breaker"

    def plan(self, gm, context):
        return {}

    def apply(self, gm, plan, context):
        conv2 = next(n for n in gm.graph.nodes if n.target == "conv2")
        with gm.graph.inserting_after(conv2):
            bad = gm.graph.call_function(torch.matmul, (conv2, torch.ones(3, 3)))
        conv2.replace_all_uses_with(bad, delete_user_cb=lambda user: user is not bad)
        return PassResult(gm, modified=True)


class _Liar(Pass):
    """Claims exactness but perturbs a weight."""

    name = "liar"
    tolerance = 1e-5

    def plan(self, gm, context):
        return {}

    def apply(self, gm, plan, context):
        with torch.no_grad():
            gm.fc.bias.add_(1.0)
        return PassResult(gm, modified=True)


class _Unserializable(Pass):
    name = "unserializable"

    def plan(self, gm, context):
        return {"module": gm.fc}

    def apply(self, gm, plan, context):
        return PassResult(gm, modified=False)


class _Ratio(Pass):
    """Only plans: used to test option validation paths."""

    name = "ratio_pass"
    schema = {"ratio": Option(number(0, 1, high_open=True), default=0.5)}

    def plan(self, gm, context):
        return {"ratio": self.options["ratio"]}

    def apply(self, gm, plan, context):
        return PassResult(gm, modified=False)


class _Nudge(Pass):
    """Adds 1e-6 to the second output's bias, within its promise of 1e-3 for the scores."""

    name = "nudge"
    tolerance = 1e-3

    def plan(self, gm, context):
        return {}

    def apply(self, gm, plan, context):
        with torch.no_grad():
            gm.get_submodule("0").bias[1] += 1e-6
        return PassResult(gm, modified=True)


class _ScoresAndClass(nn.Sequential):
    def forward(self, x):
        scores = super().forward(x)
        return scores, scores.argmax(1)


@pytest.fixture
def plugins() -> fxcomp.Plugins:
    test_passes = [_Vandal, _ShrinkHead, _Breaker, _Liar, _Unserializable, _Ratio, _Nudge]
    plugin = types.SimpleNamespace(
        fxcomp_register_passes=fxcomp.hookimpl(specname="fxcomp_register_passes")(
            lambda register: [register(p) for p in test_passes]
        )
    )
    return fxcomp.load_plugins(extra={"test_passes": plugin}, disable=())


def test_fold_bn_result_is_independent_of_the_users_model(small_cnn, image, plugins) -> None:
    state = _state(small_cnn)
    result = fxcomp.compress(small_cnn, image, "passes: [{pass: fold_bn}]", plugins=plugins)
    _assert_bitwise_equal(small_cnn, state)
    assert isinstance(small_cnn.bn1, nn.BatchNorm2d)
    user_storage = {p.data_ptr() for p in small_cnn.parameters()}
    assert not user_storage & {p.data_ptr() for p in result.model.parameters()}
    with torch.no_grad():
        result.model.conv1.weight.zero_()
    _assert_bitwise_equal(small_cnn, state)


def test_users_model_is_untouched_when_a_pass_raises(small_cnn, image, plugins) -> None:
    state = _state(small_cnn)
    with pytest.raises(fxcomp.PassError, match=r"pass 'vandal' \(passes\[1\]\) raised RuntimeError: vandal gives up"):
        fxcomp.compress(small_cnn, image, "passes: [{pass: fold_bn}, {pass: vandal}]", plugins=plugins)
    _assert_bitwise_equal(small_cnn, state)


def test_training_flag_is_kept(image, plugins) -> None:
    from tests.conftest import SmallCNN

    model = SmallCNN().train()
    state = _state(model)
    result = fxcomp.compress(model, image, "passes: [{pass: fold_bn}]", plugins=plugins)
    assert result.model.training and model.training
    _assert_bitwise_equal(model, state)  # BatchNorm statistics were not updated by verification runs


def test_changed_output_shape_is_caught(small_cnn, image, plugins) -> None:
    with pytest.raises(fxcomp.PassError, match=r"pass 'shrink_head' \(passes\[0\]\) changed output 0 \(node 'fc'\) from \(2, 10\)"):
        fxcomp.compress(small_cnn, image, "passes: [{pass: shrink_head}]", plugins=plugins)


def test_graph_that_fails_to_run_names_the_node(small_cnn, image, plugins) -> None:
    with pytest.raises(fxcomp.PassError, match=r"pass 'breaker' \(passes\[0\]\) .*node 'matmul'"):
        fxcomp.compress(small_cnn, image, "passes: [{pass: breaker}]", plugins=plugins)


def test_broken_exactness_promise_is_caught(small_cnn, image, plugins) -> None:
    with pytest.raises(
        fxcomp.PassError, match=r"pass 'liar' \(passes\[0\]\) promises outputs within relative error 1e-05 but output 0 \(node 'fc'\)"
    ):
        fxcomp.compress(small_cnn, image, "passes: [{pass: liar}]", plugins=plugins)


def test_a_promise_holds_within_the_precision_of_a_half_precision_model(small_cnn, image, plugins) -> None:
    from fxcomp.passes.verify import PRECISION_EPSILONS, precision_tolerance

    half = torch.zeros(2, dtype=torch.float16)
    assert precision_tolerance(1e-5, torch.zeros(2)) == (1e-5, None)  # float32: the promise as made
    assert precision_tolerance(1e-5, [torch.zeros(2), half]) == (PRECISION_EPSILONS * 2**-10, torch.float16)
    assert precision_tolerance(1e-5, torch.zeros(2, dtype=torch.bfloat16))[0] == PRECISION_EPSILONS * 2**-7
    assert precision_tolerance(0.0, half) == (0.0, None)  # bitwise promises stay bitwise
    assert precision_tolerance(0.5, half) == (0.5, None)
    with pytest.raises(fxcomp.PassError, match=r"promises outputs within relative error 0.015625 \(at float16 precision\) but output 0"):
        fxcomp.compress(copy.deepcopy(small_cnn).half(), image.half(), "passes: [{pass: liar}]", plugins=plugins)


def test_plan_must_be_json_serializable(small_cnn, image, plugins) -> None:
    with pytest.raises(fxcomp.PassError, match=r"pass 'unserializable' \(passes\[0\]\) returned a plan that is not JSON-serializable"):
        fxcomp.compress(small_cnn, image, "passes: [{pass: unserializable}]", plugins=plugins)


def test_dry_run_returns_the_plan_and_the_unrewritten_model(small_cnn, image, plugins) -> None:
    result = fxcomp.compress(small_cnn, image, "passes: [{pass: fold_bn}]", dry_run=True, plugins=plugins)
    assert result.plan == [
        {
            "pass": "fold_bn",
            "options": {"include": ["*"], "exclude": []},
            "plan": {
                "folds": [{"layer": "conv1", "batchnorm": "bn1"}, {"layer": "conv2", "batchnorm": "bn2"}],
                "skipped": [],
                "renamed": {"bn1": "conv1", "bn2": "conv2"},
            },
        }
    ]
    assert isinstance(result.model.bn1, nn.BatchNorm2d)
    assert result.report.before_totals == result.report.after_totals
    json.dumps(result.plan)


def test_plan_report_and_totals(small_cnn, image, plugins) -> None:
    result = fxcomp.compress(small_cnn, image, "passes: [{pass: fold_bn}]", plugins=plugins)
    json.dumps(result.plan)
    json.dumps(result.report.to_dict())
    before, after = result.report.before_totals, result.report.after_totals
    # Folding removes BN's 2×C parameters; the conv biases already existed.
    assert before.params - after.params == 2 * (16 + 32)
    # BN counts one MAC per output element: 2×16×16×16 + 2×32×16×16.
    assert before.macs - after.macs == 2 * 16 * 16 * 16 + 2 * 32 * 16 * 16
    text = str(result.report)
    assert "bn1" in text and "(removed)" in text and "folded=2" in text


@pytest.mark.parametrize(
    "recipe",
    [
        "passes:\n  - pass: ratio_pass\n    ratio: 0.25\n",
        {"passes": [{"pass": "ratio_pass", "ratio": 0.25}]},
        [_Ratio(ratio=0.25)],
    ],
)
def test_recipe_forms_agree(recipe, small_cnn, image, plugins) -> None:
    result = fxcomp.compress(small_cnn, image, recipe, plugins=plugins)
    assert result.plan[0]["plan"] == {"ratio": 0.25}


def test_recipe_from_a_yaml_file(tmp_path, small_cnn, image, plugins) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("passes:\n  - pass: fold_bn\n    exclude: bn2\n")
    for recipe in (path, str(path)):
        result = fxcomp.compress(small_cnn, image, recipe, plugins=plugins)
        assert [f["batchnorm"] for f in result.plan[0]["plan"]["folds"]] == ["bn1"]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (
            "passes: [{pass: fold_bn}, {pass: ratio_pass, ratio: 1.5}]",
            r"^passes\[1\]\.ratio: expected a number in \[0, 1\), got 1\.5$",
        ),
        ("passes: [{pass: ratio_pass, ratio: yes}]", r"^passes\[0\]\.ratio: expected a number in \[0, 1\), got True$"),
        ("passes: [{pass: ratio_pass, ratio: -.inf}]", r"^passes\[0\]\.ratio: expected a number in \[0, 1\), got -inf$"),
        ("passes: [{pass: ratio_pass, ratoi: 0.1}]", r"^passes\[0\]\.ratoi: unknown option; this pass takes: ratio$"),
        ("passes: [{pass: fold_bn, include: 3}]", r"^passes\[0\]\.include: expected a glob string or a list"),
        ("passes: [{pass: prune_everything}]", r"^passes\[0\]\.pass: unknown pass 'prune_everything'; registered passes: .*fold_bn"),
        ("passes: [{ratio: 0.5}]", r"^passes\[0\]\.pass: missing"),
        ("passes: [fold_bn]", r"^passes\[0\]: expected a mapping"),
        ("passes: {pass: fold_bn}", r"^passes: expected a list"),
        ({"passes": [], "pases": []}, r"^pases: unknown top-level field"),
        ("passes: [{pass: fold_bn}", r"^recipe is not valid YAML at line 1"),
        ("missing.yaml", r"^recipe file 'missing.yaml' does not exist"),
        ("just words", r"^recipe: expected a mapping"),
        ("passes:\n  - pass: ratio_pass\n    ratio: 0.1\n    ratio: 0.5\n", r"^recipe gives 'ratio' twice in one mapping \(line 4\); keep one of them$"),
        ("passes: [{pass: fold_bn}]\npasses: []\n", r"^recipe gives 'passes' twice in one mapping \(line 2\)"),
    ],
)
def test_recipe_errors_name_the_field(recipe, message, small_cnn, image, plugins) -> None:
    with pytest.raises(fxcomp.RecipeError, match=message) as caught:
        fxcomp.compress(small_cnn, image, recipe, plugins=plugins)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


def test_integer_and_boolean_outputs_must_match_exactly() -> None:
    from fxcomp.passes import relative_error

    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert relative_error((scores, torch.tensor([1, 0])), (scores, torch.tensor([1, 0]))) == (0.0, 0)
    assert relative_error((scores + 1e-3, torch.tensor([1, 0])), (scores, torch.tensor([1, 1])))[1] == 1
    assert relative_error([torch.tensor([True])], [torch.tensor([False])]) == (math.inf, 0)
    assert relative_error([torch.tensor([1, 2])], [torch.tensor([1.0, 2.0])]) == (math.inf, 0)  # a dtype change
    assert relative_error([torch.tensor([1 + 1j])], [torch.tensor([1 + 2j])])[0] == pytest.approx(0.5)
    assert relative_error([3, "a"], [3, "a"]) == (0.0, 0) and relative_error([3], [4]) == (math.inf, 0)


def test_a_class_index_output_flipped_within_the_float_promise_is_named(plugins) -> None:
    model = _ScoresAndClass(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[0]
        model[0].bias[1] = model[0].bias[0]  # both scores tie for every input: the class is 0
    message = (
        r"^pass 'nudge' \(passes\[0\]\) changed integer output 1 \(node 'argmax'\) in 3 of 3 entries; integer outputs "
        r"\(class indices, masks\) must match exactly, and rounding within the promised 0.001 can flip an argmax at a "
        r"near-tie: return the scores instead$"
    )
    with pytest.raises(fxcomp.PassError, match=message):
        fxcomp.compress(model, torch.randn(3, 4), "passes: [{pass: nudge}]", plugins=plugins)


def test_exponent_notation_reads_as_a_number(small_cnn, image, plugins) -> None:
    result = fxcomp.compress(small_cnn, image, "passes: [{pass: ratio_pass, ratio: 5e-1}]", dry_run=True, plugins=plugins)
    assert result.plan[0]["options"]["ratio"] == 0.5


def test_yaml_merge_keys_are_not_duplicates(small_cnn, image, plugins) -> None:
    recipe = "passes:\n  - &base {pass: ratio_pass, ratio: 0.25}\n  - <<: *base\n    ratio: 0.75\n"
    result = fxcomp.compress(small_cnn, image, recipe, dry_run=True, plugins=plugins)
    assert [entry["options"]["ratio"] for entry in result.plan] == [0.25, 0.75]  # the explicit key wins over the merged one


def test_pass_options_are_validated_at_construction() -> None:
    with pytest.raises(fxcomp.RecipeError, match=r"^ratio_pass\.ratio: expected a number in \[0, 1\), got -0\.1$"):
        _Ratio(ratio=-0.1)
    assert _Ratio().options == {"ratio": 0.5}
    assert _Ratio(ratio=0.2).config() == {"pass": "ratio_pass", "ratio": 0.2}


def test_a_choices_option_takes_one_or_a_list_of_its_values() -> None:
    from fxcomp.passes import choices

    check = choices("a", "b", "c")
    assert check("b", "p.x") == ("b",)
    assert check(["c", "a", "c"], "p.x") == ("c", "a")
    for wrong in ([], ["a", "d"], 3, [1]):
        with pytest.raises(fxcomp.RecipeError, match=r"^p\.x: expected one or a list of 'a', 'b', 'c', got"):
            check(wrong, "p.x")
    with pytest.raises(fxcomp.PluginError, match=r"write choices\(\.\.\.\)"):
        Option(choices)


def test_an_integer_option_takes_numpy_integers_and_gives_a_python_int() -> None:
    import numpy as np

    from fxcomp.passes import integer

    check = integer(1, 8)
    value = check(np.int64(4), "p.bits")
    assert value == 4 and type(value) is int
    for wrong in (True, 4.0, "4", np.float32(4.0), 0, 9):
        with pytest.raises(fxcomp.RecipeError, match=r"^p\.bits: expected an integer in \[1, 8\], got"):
            check(wrong, "p.bits")


def test_a_graph_module_can_be_compressed_again(small_cnn, image, plugins) -> None:
    first = fxcomp.compress(small_cnn, image, "passes: [{pass: fold_bn, include: bn1}]", plugins=plugins)
    second = fxcomp.compress(first.model, image, "passes: [{pass: fold_bn}]", plugins=plugins)
    assert [f["batchnorm"] for f in second.plan[0]["plan"]["folds"]] == ["bn2"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in second.model.modules())
    assert isinstance(first.model.bn2, nn.BatchNorm2d)  # the first result is not mutated


def test_outputs_appearing_or_vanishing_on_the_meta_device_are_an_infinite_error() -> None:
    from fxcomp.passes.verify import relative_error

    meta, real = torch.empty(3, device="meta"), torch.randn(3)
    assert relative_error(meta, real)[0] == float("inf")
    assert relative_error(real, meta)[0] == float("inf")
    assert relative_error(meta, torch.empty(3, device="meta")) == (0.0, 0)
    assert relative_error(meta, torch.empty(4, device="meta"))[0] == float("inf")


def test_recipe_errors_a_pass_raises_name_the_step(small_cnn, image) -> None:
    recipe = {"passes": [{"pass": "prune", "ratio": 0.25}, {"pass": "prune", "ratio": 0.25, "importance": "nosuch"}]}
    with pytest.raises(fxcomp.RecipeError, match=r"^passes\[1\]\.importance: no criterion 'nosuch' is registered"):
        fxcomp.compress(small_cnn, image, recipe)  # it said prune.importance: which of the two?
    recipe = {"passes": [{"pass": "fold_bn"}, {"pass": "lowrank", "rank": 2, "energy": 0.5}]}
    with pytest.raises(fxcomp.RecipeError, match=r"^passes\[1\] \(lowrank\): give one of rank, ratio or energy, not rank and energy$"):
        fxcomp.compress(small_cnn, image, recipe)
