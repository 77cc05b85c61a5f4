"""The early_exit pass, EarlyExitModel routing, exit training, calibration, save/load and export."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import fxcomp
from fxcomp import EarlyExitModel, ExitError, PassError, RecipeError, TraceError
from fxcomp.cli import main
from fxcomp.data import digits
from fxcomp.dynamic import add_exits, cut_problems
from fxcomp.dynamic.stages import split_stages
from fxcomp.recovery import evaluate_outputs


class Block(nn.Module):
    """A residual block: the block input is still needed by the addition."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = Block(width)
        self.layer2 = Block(width)
        self.layer3 = Block(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def trained(data) -> nn.Module:
    torch.manual_seed(0)
    result = fxcomp.recover(TinyResNet(), data, epochs=6, lr=0.003, optimizer="adam", progress=False)
    return result.model.eval()


@pytest.fixture(scope="module")
def example(data) -> torch.Tensor:
    return data.test.tensors[0][:8]


def _exits(model: nn.Module, example: torch.Tensor, **options) -> fxcomp.CompressionResult:
    return fxcomp.compress(model, example, {"passes": [{"pass": "early_exit", **options}]})


@pytest.fixture(scope="module")
def with_heads(trained, data, example) -> EarlyExitModel:
    """The trained model with two exits whose heads were trained (backbone frozen)."""
    recipe = {
        "passes": [
            {"pass": "early_exit", "at": ["layer1", "layer2"]},
            {"pass": "recover", "epochs": 8, "lr": 0.03, "optimizer": "adam", "exits": {"train": "heads"}},
        ]
    }
    return fxcomp.compress(trained, example, recipe, train_data=data.train, val_data=data.val).model


class Counter:
    """Counts the samples a module sees."""

    def __init__(self, module: nn.Module) -> None:
        self.samples = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.samples += args[0].shape[0]


# -- placing exits ---------------------------------------------------------------------------------


def test_cut_points_are_block_boundaries_never_inside_a_residual_block(trained, example) -> None:
    gm = fxcomp.trace(trained, example)
    valid = {fxcomp.qualname(node) for node, problem in cut_problems(gm).items() if problem is None}
    assert {"stem.0", "stem.2", "layer1.relu_1", "layer2.add", "layer3.relu_1", "flatten"} <= valid
    problems = {fxcomp.qualname(node): problem for node, problem in cut_problems(gm).items()}
    assert "'stem.2' is still needed after it (by 'layer1.add')" in problems["layer1.conv2"]
    assert problems["fc"] == "it is the model's output"


def test_exit_inside_a_residual_block_is_rejected_with_the_reason(trained, example) -> None:
    with pytest.raises(ExitError, match=r"cannot place an exit at 'layer2.conv1'.*'layer1.relu_1' is still needed"):
        _exits(trained, example, at=["layer2.conv1"])
    gm = fxcomp.trace(trained, example)
    with pytest.raises(ExitError, match="residual connection"):
        add_exits(gm, ["layer2.bn1"], [nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))])


def test_auto_places_exits_at_even_fractions_of_the_macs_and_reports_rejections(trained, example) -> None:
    result = _exits(trained, example, at="auto", num_exits=2)
    plan = result.plan[0]["plan"]
    assert [e["at"] for e in plan["exits"]] == ["layer1.relu_1", "layer2.relu_1"]  # after the block's activation
    assert [round(e["macs_fraction"], 2) for e in plan["exits"]] == [0.34, 0.67]
    assert plan["exits"][0]["head"] == "AdaptiveAvgPool2d → Flatten → Linear"
    assert all("still needed" in r["reason"] for r in plan["rejected"])
    assert isinstance(result.model, EarlyExitModel) and result.model.exit_names == ["layer1.relu_1", "layer2.relu_1"]
    assert result.plan[0]["stats"] == {"exits": 2, "head_params": 2 * (16 * 10 + 10)}


def test_module_names_mean_the_module_output_and_conv_heads_are_built(trained, example) -> None:
    model = _exits(trained, example, at=["layer2", "stem"], head_conv=8).model
    assert model.exit_names == ["stem.2", "layer2.relu_1"]
    assert [type(m).__name__ for m in model.heads[0]] == [
        "Conv2d", "BatchNorm2d", "ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear",
    ]  # fmt: skip
    assert model.heads[0][0].out_channels == 8
    mlp = _exits(trained, example, at=["layer1"], head_pool=2, head_hidden=32).model.heads[0]
    assert [type(m).__name__ for m in mlp] == ["AdaptiveAvgPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert (mlp[2].in_features, mlp[2].out_features, mlp[4].in_features) == (16 * 2 * 2, 32, 32)


def test_errors_say_what_to_change(trained, example, data) -> None:
    with pytest.raises(ExitError, match="no node or module named .layer9."):
        _exits(trained, example, at=["layer9"])
    with pytest.raises(RecipeError, match="fewer than 9 distinct cut points"):
        _exits(trained, example, num_exits=9)
    with pytest.raises(RecipeError, match=r"^passes\[0\] \(early_exit\): num_exits spaces automatic exits; with at: \[\.\.\.\] the list gives them"):
        _exits(trained, example, at=["layer1"], num_exits=3)
    with pytest.raises(ExitError, match="has no early exits"):
        EarlyExitModel(fxcomp.trace(trained, example))
    model = _exits(trained, example).model
    for wrong in ([0.5], 0.9, ["high", 0.5], [float("nan"), 0.5], "01", [True, False]):
        with pytest.raises(ExitError, match="thresholds: give a list of 2 numbers"):
            model.thresholds = wrong
    model.thresholds = np.array([0.9, 0.8])
    assert model.thresholds == [0.9, 0.8]
    model.thresholds = None
    for wrong, message in ((True, "got True"), (1.0, "got 1.0"), (3, "exit 3 does not exist")):
        with pytest.raises(ExitError, match=message):
            model.fixed_exit(wrong)
    for options, message in (
        ({"max_accuracy_drop": "0.01"}, r"max_accuracy_drop is a fraction in \[0, 1\), got '0.01'"),
        ({"max_rows": 1}, "max_rows must be a whole number >= 2, got 1"),
        ({"levels": 0}, "levels must be a whole number >= 1, got 0"),
    ):
        with pytest.raises(ExitError, match=message):
            fxcomp.calibrate_exits(model, data.val, **options)
    with pytest.raises(RecipeError, match=r"exits.weights: expected a list of non-negative numbers, got \[1, inf, 1\]"):
        fxcomp.compress(model, example, {"passes": [{"pass": "recover", "exits": {"weights": [1, float("inf"), 1]}}]},
                        train_data=data.train)
    with pytest.raises(TraceError, match=r"layer_table takes a GraphModule .* got EarlyExitModel; pass its .model"):
        fxcomp.layer_table(model)
    plain = fxcomp.trace(trained, example)
    with pytest.raises(ExitError, match=r"calibrate_exits takes an EarlyExitModel, got \w+; add exits first"):
        fxcomp.calibrate_exits(plain, data.val)
    with pytest.raises(ExitError, match=r"the head at 'layer1.relu_1' fails on a 2×16×8×8 tensor \(RuntimeError: .*\); give a head"):
        add_exits(plain, "layer1", [nn.Linear(3, 10)])  # one name, not a list, is one cut point
    with pytest.raises(RecipeError, match="'exits' trains early exits, but the model has none"):
        fxcomp.compress(trained, example, {"passes": [{"pass": "recover", "exits": {}}]}, train_data=data.train)
    with pytest.raises(RecipeError, match="exits.train: expected joint or heads"):
        fxcomp.compress(trained, example, {"passes": [{"pass": "recover", "exits": {"train": "all"}}]})
    with pytest.raises(RecipeError, match="exits.distill.T: expected a number, got '4'"):
        fxcomp.compress(trained, example, {"passes": [{"pass": "recover", "exits": {"distill": {"T": "4"}}}]})
    with pytest.raises(ExitError, match=r"calibrate_exits takes an EarlyExitModel, got a graph with exits; wrap it: EarlyExitModel\(gm\)"):
        fxcomp.calibrate_exits(model.model, data.val)


def test_heads_pair_with_the_points_named_in_any_order(trained, example) -> None:
    gm = fxcomp.trace(trained, example)
    head_2, head_1 = (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)) for _ in range(2))
    nodes = add_exits(gm, ["layer2", "layer1"], [head_2, head_1])
    model = EarlyExitModel(gm)
    assert [n.name for n in nodes] == gm.meta["fxcomp_exits"]["at"] and model.exit_names == ["layer1.relu_1", "layer2.relu_1"]
    assert model.heads[0] is head_1 and model.heads[1] is head_2


def test_exit_weights_of_the_wrong_length_are_refused_while_planning(trained, example, data) -> None:
    recipe = {"passes": [{"pass": "early_exit", "at": ["layer1"]}, {"pass": "recover", "exits": {"weights": [1, 1, 1]}}]}
    with pytest.raises(RecipeError, match=r"^passes\[1\]\.exits\.weights: give 2 weights \(one per exit, the final output last\), got 3$"):
        fxcomp.compress(trained, example, recipe, train_data=data.train, dry_run=True)


def test_a_width_change_after_the_exits_fails_the_exit_check(trained, example) -> None:
    recipe = {"passes": [{"pass": "early_exit"}, {"pass": "prune", "ratio": 0.5}]}
    with pytest.raises(PassError, match="early exits no longer fit"):
        fxcomp.compress(trained, example, recipe)


class _Rescale(fxcomp.Pass):
    """Doubles the stem conv's weights and its BatchNorm's statistics, which undo the scale: the final
    output stays put within 1e-5 while what an exit at the conv reads doubles."""

    name = "rescale"
    schema = {}
    tolerance = 1e-5

    def plan(self, gm, context):
        return {}

    def apply(self, gm, plan, context):
        with torch.no_grad():
            gm.get_submodule("stem.0").weight.mul_(2)
            gm.get_submodule("stem.1").running_mean.mul_(2)
            gm.get_submodule("stem.1").running_var.mul_(4)
            gm.get_submodule("stem.1").eps *= 4
        return fxcomp.PassResult(gm, modified=True)


def test_a_pass_that_changes_what_an_exit_reads_fails_the_exit_check(trained, example) -> None:
    class Plugin:
        @fxcomp.hookimpl
        def fxcomp_register_passes(self, register):
            register(_Rescale)

    plugins = fxcomp.load_plugins(extra={"rescale": Plugin()})
    at_conv = {"passes": [{"pass": "early_exit", "at": ["stem.0"]}, {"pass": "rescale"}]}
    with pytest.raises(PassError, match=r"pass 'rescale' \(passes\[1\]\) failed check 'early_exits_fit' .*: exit 0's logits changed "
                       r"by [0-9.]+, more than the 1e-05 the pass promises \(it rewrote what the exit at 'stem_0' reads\)"):
        fxcomp.compress(trained, example, at_conv, plugins=plugins)
    after_norm = {"passes": [{"pass": "early_exit", "at": ["stem"]}, {"pass": "rescale"}]}
    fxcomp.compress(trained, example, after_norm, plugins=plugins)  # BatchNorm undid the scale before the exit
    with_exit = _exits(trained, example, at=["stem.0"]).model
    with pytest.raises(PassError, match="exit 0's logits changed"):  # also when the model came with its exits
        fxcomp.compress(with_exit, example, {"passes": [{"pass": "rescale"}]}, plugins=plugins)


def test_fold_bn_keeps_a_batchnorm_whose_input_or_output_an_exit_reads(trained, example) -> None:
    for point in ("stem.0", "stem.1"):
        model = _exits(trained, example, at=[point]).model
        result = fxcomp.compress(model, example, "passes: [{pass: fold_bn}]")
        skipped = {entry["batchnorm"]: entry["reason"] for entry in result.plan[0]["plan"]["skipped"]}
        assert skipped == {"stem.1": f"an early exit reads the output of '{point}'"}
        assert len(result.plan[0]["plan"]["folds"]) == 6
        with torch.no_grad():
            before, after = model.eval().all_exits(example), result.model.all_exits(example)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(before, after))


def test_compress_and_load_return_an_exit_model_in_the_mode_of_the_input(trained, example, tmp_path) -> None:
    model = _exits(trained.eval(), example).model
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(example), trained(example))
    fxcomp.save(model, tmp_path / "ee.fxc")
    assert not fxcomp.load(tmp_path / "ee.fxc").training
    assert _exits(copy.deepcopy(trained).train(), example).model.training


# -- running ---------------------------------------------------------------------------------------


def test_without_thresholds_the_output_is_bitwise_the_original(trained, with_heads, data) -> None:
    x = data.test.tensors[0][:64]
    with torch.no_grad():
        assert torch.equal(with_heads.eval()(x), trained(x))
    assert with_heads.last_exits is None


def test_training_mode_returns_every_exit(with_heads, example) -> None:
    outputs = with_heads.train()(example)
    with_heads.eval()
    assert len(outputs) == 3 and all(out.shape == (8, 10) for out in outputs)


def test_routing_runs_later_stages_only_for_samples_still_going(with_heads, data) -> None:
    model = copy.deepcopy(with_heads).eval()
    x = data.test.tensors[0][:100]
    with torch.no_grad():
        every = model.all_exits(x)
    first = model.scores(every[0])
    model.thresholds = [float(first.median()), 0.9]
    stage2, stage3 = Counter(model.model.layer2.conv1), Counter(model.model.layer3.conv1)
    with torch.no_grad():
        out = model(x)
    taken = model.last_exits
    assert torch.equal(taken == 0, first >= first.median())
    assert stage2.samples == int((taken > 0).sum()) < 100  # leavers at exit 0 never ran stage 2
    assert stage3.samples == int((taken == 2).sum())
    for exit_index in range(3):
        chosen = taken == exit_index
        torch.testing.assert_close(out[chosen], every[exit_index][chosen], rtol=1e-5, atol=1e-5)


def test_threshold_zero_sends_everything_out_at_the_first_exit(with_heads, data) -> None:
    model = copy.deepcopy(with_heads).eval()
    model.thresholds = [0.0, 0.0]
    later = Counter(model.model.layer2.conv1)
    x = data.test.tensors[0][:32]
    with torch.no_grad():
        out = model(x)
        first = model.heads[0](model.stages[0](x))
    assert torch.equal(model.last_exits, torch.zeros(32, dtype=torch.long)) and later.samples == 0
    assert torch.equal(out, first)


def test_entropy_criterion_and_never_passing_thresholds(with_heads, data) -> None:
    model = copy.deepcopy(with_heads).eval()
    model.criterion = "entropy"
    x = data.test.tensors[0][:16]
    model.thresholds = [float("inf"), float("inf")]  # any entropy passes
    with torch.no_grad():
        model(x)
    assert set(model.last_exits.tolist()) == {0}
    model.thresholds = [-1.0, -1.0]  # no entropy passes: heads are skipped
    skipped = Counter(model.heads[0])
    with torch.no_grad():
        assert torch.equal(model(x), model.model(x))
    assert set(model.last_exits.tolist()) == {2} and skipped.samples == 0
    with pytest.raises(ExitError, match="not one of"):
        model.criterion = "margin"


def test_macs_per_sample_count_stages_and_the_heads_on_the_way(with_heads) -> None:
    macs = with_heads.macs_per_sample()
    total = with_heads.model_macs_per_sample()
    head = 16 * 10  # the linear layer of each head
    conv = 8 * 8 * 16 * 16 * 9  # one 3x3 conv on 8x8 digits
    stem = 8 * 8 * 1 * 16 * 9 + 8 * 8 * 16  # conv + BatchNorm
    block = 2 * conv + 2 * 8 * 8 * 16
    assert total == stem + 3 * block + 16 * 10
    assert macs == [stem + block + head, stem + 2 * block + 2 * head, total + 2 * head]
    assert with_heads.macs_per_sample([0.5, 2.0])[-1] == total + head  # a head no sample can pass is skipped


# -- training and calibration ----------------------------------------------------------------------


def test_training_reduces_every_exits_loss(trained, data, example) -> None:
    untrained = _exits(trained, example).model
    before, _ = evaluate_outputs(untrained, data.val)
    result = fxcomp.recover(untrained, data, epochs=3, lr=0.003, optimizer="adam", progress=False)
    after, accuracies = evaluate_outputs(result.model, data.val)
    assert all(a < b for a, b in zip(after, before))
    assert result.history[-1].val_exit_accuracies == accuracies


def test_heads_only_training_keeps_the_backbone_and_its_statistics(trained, data, example) -> None:
    untrained = _exits(trained, example).model
    result = fxcomp.recover(untrained, data, epochs=1, lr=0.01, exits={"train": "heads"}, progress=False)
    old, new = untrained.model.state_dict(), result.model.model.state_dict()
    backbone = [key for key in old if not key.startswith("exit_heads.")]
    assert all(torch.equal(old[key], new[key]) for key in backbone)  # weights and BatchNorm statistics
    assert not all(torch.equal(old[key], new[key]) for key in old if key.startswith("exit_heads."))
    assert all(p.requires_grad for p in result.model.parameters())  # unfrozen afterwards


def test_heads_only_training_leaves_the_parameters_the_user_froze_frozen(trained, data, example) -> None:
    untrained = _exits(trained, example).model
    untrained.model.layer1.conv1.weight.requires_grad_(False)  # the user's choice, before training
    result = fxcomp.recover(untrained, data, epochs=1, lr=0.01, exits={"train": "heads"}, progress=False)
    frozen = [name for name, p in result.model.named_parameters() if not p.requires_grad]
    assert frozen == ["model.layer1.conv1.weight"]
    model = copy.deepcopy(untrained)
    model.freeze_backbone(True)
    model.freeze_backbone(True)  # freezing twice remembers the first state
    model.freeze_backbone(False)
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == ["model.layer1.conv1.weight"]


def test_joint_training_with_weights_and_exit_distillation(trained, data, example) -> None:
    untrained = _exits(trained, example).model
    exits = {"weights": [0.5, 0.5, 1.0], "train": "joint", "distill": {"T": 2, "alpha": 0.5}}
    result = fxcomp.recover(untrained, data, epochs=1, lr=0.003, optimizer="adam", exits=exits, progress=False)
    changed = [k for k, v in untrained.model.state_dict().items() if not torch.equal(v, result.model.model.state_dict()[k])]
    assert "layer1.conv1.weight" in changed and "exit_heads.0.2.weight" in changed
    with pytest.raises(RecipeError, match="give 3 weights"):
        fxcomp.recover(untrained, data, epochs=1, exits={"weights": [1.0]}, progress=False)


def test_calibration_keeps_the_accuracy_drop_and_matches_the_real_run(with_heads, data) -> None:
    model = copy.deepcopy(with_heads)
    table = fxcomp.calibrate_exits(model, data.val, max_accuracy_drop=0.01)
    assert model.thresholds == table.thresholds
    assert table.rows[0].thresholds == [float("inf"), float("inf")] and table.rows[0].macs_saving == 0
    assert table.chosen.accuracy >= table.base_accuracy - 0.01
    assert table.chosen.macs_saving > 0.2
    measured = fxcomp.exit_statistics(model, data.val)
    assert measured.accuracy == pytest.approx(table.chosen.accuracy, abs=2 / len(data.val))
    assert np.allclose(measured.shares, table.chosen.shares, atol=2 / len(data.val))
    assert "share per exit %" in str(table) and "fewer MACs per sample" in str(table)
    plain = fxcomp.exit_statistics(EarlyExitModel(copy.deepcopy(with_heads.model)), data.val)
    assert plain.shares == [0.0, 0.0, 1.0] and plain.macs_saving == 0


def test_a_splits_object_is_judged_on_its_validation_part(with_heads, data) -> None:
    model = copy.deepcopy(with_heads)
    on_splits = fxcomp.calibrate_exits(model, data, 0.01)
    on_val = fxcomp.calibrate_exits(copy.deepcopy(with_heads), data.val, 0.01)
    assert on_splits.chosen == on_val.chosen
    assert fxcomp.exit_statistics(model, data) == fxcomp.exit_statistics(model, data.val)
    assert evaluate_outputs(model, data) == evaluate_outputs(model, data.val)


def test_calibration_and_statistics_refuse_data_that_does_not_fit(trained, example, data) -> None:
    model = _exits(trained, example, at=["layer1"]).model
    images, labels = data.val.tensors
    cases = [
        ([(images, labels[:, None])], fxcomp.TrainingError,  # a label column: compared as is it would broadcast to 180×180
         r"^the {} targets do not fit a classifier: the model gives 180×10 float32 and the targets are 180×1 int64 in \[0, 9\]; "
         r"give one integer label in \[0, 10\) per example$"),
        ([(images, labels.float())], fxcomp.TrainingError, "^the {} targets do not fit .* the targets are 180 float32;"),
        ([(images, labels + 1)], fxcomp.TrainingError, r"^the {} targets do not fit .* the targets are 180 int64 in \[1, 10\];"),
        ([(images.repeat(1, 3, 1, 1), labels)], fxcomp.DataError,
         r"^the model fails on the {} inputs \(180×3×8×8\): .*; give inputs shaped like the model expects$"),
    ]
    for val, error, message in cases:
        with pytest.raises(error, match=message.format("calibration")):
            fxcomp.calibrate_exits(model, val)
        with pytest.raises(error, match=message.format("evaluation")):
            fxcomp.exit_statistics(model, val)
    assert model.thresholds is None


def test_a_stricter_budget_saves_less(with_heads, data) -> None:
    loose = fxcomp.calibrate_exits(copy.deepcopy(with_heads), data.val, max_accuracy_drop=0.05)
    strict = fxcomp.calibrate_exits(copy.deepcopy(with_heads), data.val, max_accuracy_drop=0.0)
    assert strict.chosen.accuracy >= strict.base_accuracy
    assert loose.chosen.mean_macs <= strict.chosen.mean_macs


# -- report, save/load, export ---------------------------------------------------------------------


def test_report_and_inspect_show_the_exit_plan(trained, example, tmp_path, capsys) -> None:
    result = _exits(trained, example)
    text = str(result.report)
    assert "layer1.relu_1" in text and "MACs / sample" in text and "threshold" in text
    assert result.report.to_dict()["exits"][2]["at"] == "output"
    path = tmp_path / "exits.fxc"
    fxcomp.save(result.model, path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "early exits (criterion: confidence)" in out and "layer2.relu_1" in out


def test_save_load_round_trips_heads_thresholds_and_routing(with_heads, data, tmp_path) -> None:
    model = copy.deepcopy(with_heads).eval()
    model.thresholds = [0.9, 0.8]
    model.criterion = "confidence"
    path = tmp_path / "ee.fxc"
    fxcomp.save(model, path)
    loaded = fxcomp.load(path)
    assert isinstance(loaded, EarlyExitModel)
    assert loaded.thresholds == [0.9, 0.8] and loaded.exit_names == model.exit_names
    x = data.test.tensors[0][:64]
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
        assert torch.equal(loaded.last_exits, model.last_exits)
        loaded.thresholds = None
        assert torch.equal(loaded(x), model.model(x))
    state = model.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in loaded.state_dict().items())


def test_fixed_exit_exports_with_torch_export_and_onnx(with_heads, example, tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    model = with_heads.eval()
    with torch.no_grad():
        every = model.all_exits(example)
    for index in (0, 2):
        fixed = model.fixed_exit(index)
        with torch.no_grad():
            assert torch.equal(fixed(example), every[index])
        exported = torch.export.export(fixed, (example,))
        torch.testing.assert_close(exported.module()(example), every[index])
    path = tmp_path / "exit0.onnx"
    torch.onnx.export(model.fixed_exit(0), (example,), str(path), dynamo=True)
    session = onnxruntime.InferenceSession(str(path))
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    np.testing.assert_allclose(onnx_out, every[0].numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ExitError, match="exit 3 does not exist"):
        model.fixed_exit(3)


# -- property: stages compose to the model ---------------------------------------------------------


class Concat(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, channels // 2, 1)
        self.b = nn.Conv2d(channels, channels - channels // 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), torch.relu(self.b(x))], 1)


class Chain(nn.Module):
    def __init__(self, kinds: list[str]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        blocks = {"plain": lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()), "res": lambda: Block(8)}
        blocks["cat"] = lambda: Concat(8)
        self.blocks = nn.Sequential(*[blocks[kind]() for kind in kinds])
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


@settings(max_examples=25, deadline=None)
@given(kinds=st.lists(st.sampled_from(["plain", "res", "cat"]), min_size=1, max_size=5), data=st.data())
def test_any_set_of_cut_points_splits_into_stages_that_compose_bitwise(kinds, data) -> None:
    torch.manual_seed(0)
    model = Chain(kinds).eval()
    x = torch.randn(3, 1, 6, 6)
    gm = fxcomp.trace(model, x)
    problems = cut_problems(gm)
    valid = [node for node, problem in problems.items() if problem is None]
    # every block boundary is a cut point; nothing inside a residual block is
    for index, kind in enumerate(kinds):
        inside = [n for n in problems if fxcomp.qualname(n).startswith(f"blocks.{index}.")]
        if kind == "res":
            assert [n for n in inside if problems[n] is None] == inside[-2:]  # the add and the final relu
        assert problems[inside[-1]] is None
    cuts = sorted(data.draw(st.sets(st.sampled_from(valid), max_size=4)), key=list(gm.graph.nodes).index)
    value: object = x
    with torch.no_grad():
        for index, stage in enumerate(split_stages(gm, cuts)):
            value = stage(value)
        assert torch.equal(value, model(x))


def test_cli_compress_saves_an_early_exit_model(tmp_path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("passes:\n  - pass: early_exit\n    at: [conv1]\n    head_pool: 2\n")
    out = tmp_path / "model.fxc"
    argv = ["compress", "tests.conftest:SmallCNN", "--recipe", str(recipe), "--input-shape", "2,3,8,8", "--out", str(out)]
    assert main(argv) == 0
    assert "conv1" in capsys.readouterr().out
    loaded = fxcomp.load(out)
    assert isinstance(loaded, EarlyExitModel) and loaded.exit_names == ["conv1"]
    assert loaded.heads[0][-1].in_features == 16 * 2 * 2
