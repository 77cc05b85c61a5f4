"""Recovery: distillation losses' known properties, the recover loop, schemes and the recover pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import fxcomp
from fxcomp import DataError, RecipeError
from fxcomp.cli import main
from fxcomp.data import digits
from fxcomp.demo import DigitsNet
from fxcomp.errors import UsageError
from fxcomp.recovery import (
    AttentionTransferLoss,
    HintLoss,
    KDLoss,
    RelationalKDLoss,
    SimilarityPreservingLoss,
    attention_map,
    born_again,
    evaluate,
    mutual_learning,
    mutual_loss,
    recover,
    teacher_assistant_chain,
    with_features,
)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def trained(data):
    return recover(DigitsNet(), data, epochs=4, lr=0.05, batch_size=32, progress=False).model


# --- losses ----------------------------------------------------------------------------------


def test_kd_is_zero_for_identical_logits_and_reaches_only_the_student() -> None:
    logits = torch.randn(6, 10)
    student, teacher = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = KDLoss(temperature=4.0)(student, teacher)
    assert abs(loss.item()) < 1e-6
    KDLoss()(student, teacher + torch.randn(6, 10), torch.arange(6)).backward()
    assert student.grad is not None and teacher.grad is None


def test_kd_mixes_soft_and_hard_terms_with_alpha() -> None:
    student, teacher, target = torch.randn(5, 7), torch.randn(5, 7), torch.arange(5)
    soft = KDLoss(2.0, alpha=1.0)(student, teacher)
    expected = 4.0 * (F.softmax(teacher / 2, 1) * (F.log_softmax(teacher / 2, 1) - F.log_softmax(student / 2, 1))).sum(1).mean()
    assert torch.allclose(soft, expected, atol=1e-6)
    assert torch.allclose(KDLoss(2.0, alpha=0.0)(student, teacher, target), F.cross_entropy(student, target))
    mixed = KDLoss(2.0, alpha=0.3)(student, teacher, target)
    assert torch.allclose(mixed, 0.3 * soft + 0.7 * F.cross_entropy(student, target), atol=1e-6)


def test_kd_gradient_keeps_its_scale_at_high_temperature() -> None:
    # With T² scaling the gradient tends to (z_s − z_t) / (N·B) for zero-mean logits as T grows (Hinton et al.).
    student = (torch.randn(4, 10) * 0.5).requires_grad_()
    teacher = torch.randn(4, 10) * 0.5
    student.data -= student.data.mean(1, keepdim=True)
    teacher -= teacher.mean(1, keepdim=True)
    KDLoss(temperature=100.0)(student, teacher).backward()
    assert torch.allclose(student.grad, (student.detach() - teacher) / (10 * 4), rtol=5e-2, atol=3e-4)


def test_hint_adapter_trains_and_teacher_gets_no_gradient() -> None:
    hint = HintLoss(4, 6)
    student, teacher = torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 6, 4, 4, requires_grad=True)
    hint(student, teacher).backward()  # the student map is pooled to the teacher's 4×4
    assert student.grad is not None and hint.adapter.weight.grad is not None and teacher.grad is None
    linear = HintLoss(3, 5, spatial=False)
    assert linear(torch.randn(2, 3), torch.randn(2, 5)).dim() == 0


def test_attention_transfer_compares_spatial_maps_whatever_the_channels() -> None:
    feature = torch.randn(3, 4, 5, 5)
    assert torch.allclose(attention_map(torch.cat([feature, feature], 1)), attention_map(feature))
    assert AttentionTransferLoss()(torch.cat([feature, -feature], 1), feature).item() < 1e-10
    assert AttentionTransferLoss()(torch.randn(3, 8, 5, 5), feature).item() > 0


def test_relational_and_similarity_losses_ignore_scale_and_vanish_on_equal_relations() -> None:
    feature = torch.randn(6, 12)
    for loss in (RelationalKDLoss(), SimilarityPreservingLoss()):
        assert loss(feature, feature).item() < 1e-8
        assert loss(3.0 * feature, feature).item() < 1e-6  # relations, not magnitudes
        assert loss(torch.randn(6, 12), feature).item() > 1e-4
    assert mutual_loss(feature, [feature.clone()]).item() < 1e-7


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_normalizing_losses_compute_half_precision_features_in_float32(dtype) -> None:
    torch.manual_seed(0)
    maps, vectors = torch.relu(torch.randn(2, 4, 3, 4, 4)).to(dtype), torch.randn(2, 8, 16).to(dtype)
    maps[0, 0] = 0  # one example's map all zero (a dead ReLU): its norm is below float16's smallest number
    for loss, (student, teacher) in (
        (AttentionTransferLoss(), maps), (SimilarityPreservingLoss(), maps), (RelationalKDLoss(), vectors),  # angles: zero differences
    ):
        student = student.clone().requires_grad_()
        value = loss(student, teacher)
        value.backward()
        assert value.item() == loss(student.detach().float(), teacher.float()).item(), loss
        assert student.grad.abs().max() < 1 and student.grad.dtype == dtype, loss  # SP's all-zero row: no 1/1e-12 factor


def test_relational_kd_terms_are_zero_on_batches_too_small_for_them() -> None:
    # the last batch of an epoch may hold one example: no distance to compare (two), no angle (three)
    assert RelationalKDLoss()(torch.randn(1, 8), torch.randn(1, 8)).item() == 0.0
    student = torch.randn(2, 8, requires_grad=True)
    loss = RelationalKDLoss()(student, torch.randn(2, 8))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(student.grad).all()


# --- the loop --------------------------------------------------------------------------------


def test_recover_learns_quickly_and_leaves_the_input_model_alone(data) -> None:
    model = DigitsNet()
    before = copy.deepcopy(model.state_dict())
    result = recover(model, data, epochs=3, lr=0.05, batch_size=32, progress=False)
    assert evaluate(result.model, data.test)[1] > 0.8  # ten classes: chance is 0.1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [r.epoch for r in result.history] == [1, 2, 3]


def test_the_best_validation_epoch_is_restored(data) -> None:
    result = recover(DigitsNet(), data, epochs=3, lr=0.5, batch_size=32, progress=False)  # a large rate: epochs differ a lot
    best = max(result.history, key=lambda r: (r.val_accuracy, -r.val_loss))
    assert result.best_epoch == best.epoch
    assert evaluate(result.model, data.val) == pytest.approx((best.val_loss, best.val_accuracy))


def test_early_stopping_ends_when_validation_stops_improving(data) -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # no BatchNorm: a negligible rate changes nothing
    result = recover(mlp, data, epochs=10, lr=1e-30, patience=2, batch_size=32, progress=False)
    assert len(result.history) == 3 and result.best_epoch == 1


def test_progress_lines_go_to_stderr(data, capsys) -> None:
    recover(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, epochs=2, lr=0.1, batch_size=32)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: train loss") and "val loss" in lines[0]


def test_kd_from_a_teacher_beats_chance_and_feature_terms_train_adapters(data, trained) -> None:
    spec = [{"kind": "kd", "T": 4, "alpha": 0.5}, {"kind": "fitnet", "student": "bn2", "teacher": "bn2"}]
    torch.manual_seed(0)
    result = recover(DigitsNet(width=8), data, teacher=trained, distill=spec, epochs=3, lr=0.05, batch_size=32, progress=False)
    assert evaluate(result.model, data.test)[1] > 0.6
    feature_terms = (
        {"kind": "attention", "student": ["bn1"], "teacher": ["bn1"]},
        {"kind": "rkd", "student": "flatten", "teacher": "flatten"},
        {"kind": "sp", "student": "flatten", "teacher": "flatten", "weight": 300},  # 3000 slows 2 epochs on digits a lot
    )
    for spec in feature_terms:
        torch.manual_seed(0)  # the student's initial weights: independent of the tests run before
        result = recover(DigitsNet(width=8), data, teacher=trained, distill=spec, epochs=2, lr=0.05, batch_size=32, progress=False)
        assert evaluate(result.model, data.test)[1] > 0.3, spec


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_fitnet_trains_models_of_any_float_dtype(dtype) -> None:
    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).to(dtype)

    torch.manual_seed(0)
    student, x, y = net(), torch.randn(32, 1, 8, 8, dtype=dtype), torch.randint(0, 10, (32,))
    spec = {"kind": "fitnet", "student": "1", "teacher": "1"}  # the adapter is built in the student's dtype
    result = recover(student, [(x, y)], teacher=net(), distill=spec, epochs=1, progress=False)
    assert result.model[0].weight.dtype == dtype and not torch.equal(result.model[0].weight, student[0].weight)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"distill": {"kind": "kd"}}, UsageError, "distillation needs a teacher"),
        ({"distill": {"kind": "nope"}, "teacher": DigitsNet()}, RecipeError, "one of kd, fitnet"),
        ({"distill": {"kind": "kd", "tau": 3}, "teacher": DigitsNet()}, RecipeError, "unknown option"),
        ({"distill": {"kind": ["kd"]}, "teacher": DigitsNet()}, RecipeError, "one of kd, fitnet"),
        ({"distill": {"kind": "kd", "T": None}, "teacher": DigitsNet()}, RecipeError, r"distill kd.T: expected a number, got None"),
        ({"distill": {"kind": "kd", "T": 0}, "teacher": DigitsNet()}, RecipeError, r"KDLoss needs T \(temperature\) > 0 .* got T=0.0"),
        ({"distill": {"kind": "attention", "student": "conv2", "teacher": "conv2", "weight": "high"}, "teacher": DigitsNet()},
         RecipeError, r"distill attention.weight: expected a number in \[0, inf\], got 'high'"),
        ({"distill": {"kind": "rkd", "student": "fc", "teacher": "fc", "angle_weight": [1]}, "teacher": DigitsNet()},
         RecipeError, r"distill rkd.angle_weight: expected a number in \[0, inf\], got \[1\]"),
        ({"distill": {"kind": "fitnet", "student": "conv9", "teacher": "conv2"}, "teacher": DigitsNet()}, UsageError, "did you mean 'conv3'"),
        ({"optimizer": "lbfgs"}, UsageError, "not one of: sgd, adam"),
        ({"lr": 0}, UsageError, r"recovery needs lr > 0 \(a finite number\), got 0"),
        ({"lr": "0.01"}, UsageError, r"recovery needs lr > 0 \(a finite number\), got '0.01'"),
        ({"lr": float("inf")}, UsageError, r"recovery needs lr > 0 \(a finite number\), got inf"),
        ({"patience": "2"}, UsageError, r"recovery needs patience >= 1 \(a whole number\) or None, got '2'"),
        ({"patience": 0}, UsageError, r"recovery needs patience >= 1 \(a whole number\) or None, got 0"),
        ({"seed": "1"}, UsageError, "recovery needs a whole-number seed, got '1'"),
        ({"distill": {"kind": "kd", "T": float("inf")}, "teacher": DigitsNet()}, RecipeError, "distill kd.T: expected a number, got inf"),
        ({"distill": {"kind": "fitnet", "student": "conv2", "teacher": "conv2", "weight": -1}, "teacher": DigitsNet()},
         RecipeError, r"distill fitnet.weight: expected a number in \[0, inf\], got -1"),
        ({"distill": {"kind": "kd"}, "teacher": nn.Sequential(nn.Flatten(), nn.Linear(64, 5))}, fxcomp.TrainingError,
         r"^distill kd: the student's output: 2×10 against 2×5; distill from a teacher with the same outputs$"),
        ({"distill": {"kind": "fitnet", "student": "conv2", "teacher": "fc"}, "teacher": DigitsNet()}, fxcomp.TrainingError,
         r"^distill fitnet: the student's 'conv2' and the teacher's 'fc': 2×64×8×8 against 2×10; FitNet pairs two feature maps"),
        ({"distill": {"kind": "attention", "student": "fc", "teacher": "conv3"}, "teacher": DigitsNet()}, fxcomp.TrainingError,
         "attention transfer pairs two feature maps"),
        ({"momentum": -0.5}, UsageError, r"momentum in \[0, 1\] and weight_decay >= 0, got -0.5 and 0.0"),
        ({"momentum": 0.5, "optimizer": "adam"}, UsageError, r"^momentum applies to optimizer sgd; drop it with adam"),
        ({"weight_decay": -1e-4}, UsageError, r"weight_decay >= 0, got 0.9 and -0.0001"),
        ({"batch_size": 0}, UsageError, "batch_size must be a whole number >= 1, got 0"),
    ],
)
def test_recover_errors_say_what_to_change(data, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        recover(DigitsNet(), data, epochs=1, progress=False, **kwargs)
    for epochs in (0, 2.5, True):
        with pytest.raises(fxcomp.UsageError, match=rf"recovery needs epochs >= 1 \(a whole number\), got {epochs!r}"):
            recover(DigitsNet(), data, epochs=epochs, progress=False)
    with pytest.raises(DataError, match=r"\(inputs, target\)"):
        recover(DigitsNet(), [torch.randn(4, 1, 8, 8)], epochs=1, batch_size=32, progress=False)


def test_data_that_does_not_fit_the_model_is_named_before_training(data) -> None:
    images, labels = data.train.tensors
    cases = [
        (TensorDataset(images[:0], labels[:0]), DataError, "^the training data holds no examples$"),
        (TensorDataset(images.flatten(1), labels), DataError, r"^the model fails on the training inputs \(128×64\): .*; give inputs shaped like the model expects$"),
        (TensorDataset(images, labels + 10), fxcomp.TrainingError,
         r"^the training targets do not fit a classifier: the model gives 128×10 float32 and the targets are 128 int64 in \[1\d, 1\d\]; "
         r"give one integer label in \[0, 10\) per example$"),
        (TensorDataset(images, F.one_hot(labels, 10)), fxcomp.TrainingError, "the targets are 128×10 int64"),
    ]
    for train, error, message in cases:
        with pytest.raises(error, match=message):
            recover(DigitsNet(), train, epochs=1, progress=False)


def test_a_label_out_of_range_in_a_later_training_batch_is_named(data) -> None:
    images, labels = data.train.tensors
    batches = [(images[:32], labels[:32]), (images[32:64], labels[32:64] + 10)]  # only the second batch is off
    with pytest.raises(
        fxcomp.TrainingError,
        match=r"^the training batch 2 targets do not fit a classifier: the model gives 32×10 float32 and the targets are 32 int64 in \[1\d, 1\d\]; ",
    ):
        recover(DigitsNet(), batches, epochs=1, progress=False)
    peers = [nn.Sequential(nn.Flatten(), nn.Linear(64, 10)) for _ in range(2)]
    with pytest.raises(fxcomp.TrainingError, match="^the training batch 2 targets do not fit a classifier"):
        mutual_learning(peers, batches, epochs=1, progress=False)


def test_integer_labels_of_any_width_train_and_evaluate_like_int64_ones(data) -> None:
    images, labels = data.train.tensors[0][:256], data.train.tensors[1][:256]
    runs = {}
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        batches = [(images[:128], labels[:128].to(dtype)), (images[128:], labels[128:].to(dtype))]
        torch.manual_seed(0)
        result = recover(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), batches, val_data=batches, epochs=1, lr=0.1, progress=False)
        runs[dtype] = (result.history[0].train_loss, result.history[0].val_accuracy, evaluate(result.model, batches))
    assert len(set(runs.values())) == 1, runs


def test_a_one_example_leftover_batch_is_skipped_and_a_lone_one_is_named(data) -> None:
    images, labels = data.train.tensors

    def batchnormed() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))

    batches = [(images[:8], labels[:8]), (images[8:9], labels[8:9])]  # BatchNorm cannot train on the second
    result = recover(batchnormed(), batches, epochs=2, progress=False)
    assert [r.epoch for r in result.history] == [1, 2] and result.history[0].train_accuracy * 8 % 1 == 0  # of 8 examples
    assert len(mutual_learning([batchnormed(), batchnormed()], batches, epochs=1, progress=False)) == 2
    with pytest.raises(DataError, match=r"^the model fails on the training batch 1 inputs \(1×1×8×8\): .*; train on batches of two "
                                        r"examples or more \(BatchNorm needs them\): raise batch_size or merge the batch$"):
        recover(batchnormed(), batches[1:], epochs=1, progress=False)


def test_a_model_returning_a_tuple_in_training_mode_is_named(data) -> None:
    class WithAuxiliary(nn.Module):
        """Auxiliary logits in training mode, as torchvision's GoogLeNet gives."""

        def __init__(self) -> None:
            super().__init__()
            self.fc, self.aux = nn.Linear(64, 10), nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
            x = x.flatten(1)
            return (self.fc(x), self.aux(x)) if self.training else self.fc(x)

    message = r"^the model returns a tuple in training mode, but training needs one tensor of logits; make its forward return the logits alone"
    with pytest.raises(fxcomp.TrainingError, match=message):
        recover(WithAuxiliary(), data, epochs=1, progress=False)
    with pytest.raises(fxcomp.TrainingError, match=message):
        mutual_learning([nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), WithAuxiliary()], data, epochs=1, progress=False)


def test_validation_data_that_does_not_fit_the_model_is_named_before_training(data, capsys) -> None:
    images, labels = data.val.tensors
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    cases = [
        (TensorDataset(images, labels + 1), fxcomp.TrainingError,  # labelled 1…10
         r"^the validation targets do not fit a classifier: the model gives 180×10 float32 and the targets are 180 int64 in \[1, 10\]; "
         r"give one integer label in \[0, 10\) per example$"),
        (TensorDataset(images[:, :, :4], labels), DataError,
         r"^the model fails on the validation inputs \(180×1×4×8\): .*; give inputs shaped like the model expects$"),
        ([(images, labels[:, None])], fxcomp.TrainingError, "the targets are 180×1 int64 in"),
        ([], DataError, "^the validation data holds no examples$"),
    ]
    for val, error, message in cases:
        with pytest.raises(error, match=message):
            recover(mlp, data.train, val_data=val, epochs=1, lr=0.1)
        assert capsys.readouterr().err == ""  # no epoch ran
    with pytest.raises(fxcomp.TrainingError, match="^the evaluation targets do not fit a classifier: .* the targets are 180×1 int64"):
        evaluate(mlp, [(images, labels[:, None])])


def test_evaluate_runs_in_eval_mode_and_gives_the_modes_back(data) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.Linear(16, 10)).train()
    model[3].eval()
    first = evaluate(model, data.val)
    assert evaluate(model, data.val) == first  # dropout was off
    assert [m.training for m in model.modules()] == [True, True, True, True, False]


def test_a_loader_without_a_length_trains_and_a_one_shot_iterator_is_refused(data) -> None:
    images, labels = data.train.tensors

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(images, labels))

    stream = DataLoader(Stream(), batch_size=256)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert [r.epoch for r in recover(mlp, stream, epochs=2, lr=0.1, progress=False).history] == [1, 2]
    result = fxcomp.compress(mlp, data.example_inputs(), {"passes": [{"pass": "recover", "epochs": 1}]}, train_data=stream)
    assert result.plan[0]["plan"]["train_batches_or_examples"] is None
    batches = ((images[i : i + 256], labels[i : i + 256]) for i in range(0, len(labels), 256))
    for kwargs in ({"train_data": batches}, {"train_data": data.train, "val_data": iter([(images, labels)])}):
        what = "training" if "val_data" not in kwargs else "validation"
        with pytest.raises(DataError, match=rf"^the {what} data is a one-shot iterator \(a generator\?\), but training reads it every epoch; "
                                            "pass a DataLoader, a Dataset or a list of"):
            recover(mlp, epochs=2, progress=False, **kwargs)


def test_a_model_that_cannot_be_copied_is_a_usage_error_as_in_compress(data) -> None:
    def uncopyable() -> nn.Module:
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        with pytest.warns(FutureWarning):
            nn.utils.weight_norm(model[1])  # the deprecated hook keeps a computed weight deepcopy refuses
        return model

    message = r"^cannot copy the model to work on \(.*\); remove torch\.nn\.utils\.weight_norm hooks"
    with pytest.raises(UsageError, match=message):
        recover(uncopyable(), data, epochs=1, progress=False)
    with pytest.raises(UsageError, match=message):
        mutual_learning([uncopyable(), uncopyable()], data, epochs=1, progress=False)


def test_a_cosine_rate_decays_on_data_without_a_length_as_on_data_with_one(data) -> None:
    examples = list(zip(*(t[:256] for t in data.train.tensors)))

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(examples)

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    for train in (DataLoader(Stream(), batch_size=64), DataLoader(examples, batch_size=64)):  # without and with len()
        history = recover(mlp, train, epochs=4, lr=0.1, progress=False).history
        assert [r.lr for r in history] == pytest.approx([0.1, 0.1 * (1 + 2**-0.5) / 2, 0.05, 0.1 * (1 - 2**-0.5) / 2])


def test_patience_without_validation_data_is_refused(data) -> None:
    message = r"^patience counts epochs without a better validation result; pass val_data= or drop patience$"
    with pytest.raises(UsageError, match=message):
        recover(DigitsNet(), data.train, epochs=3, patience=1, progress=False)
    with pytest.raises(UsageError, match=message):
        mutual_learning([DigitsNet(width=8), DigitsNet(width=8)], data.train, epochs=3, patience=1, progress=False)
    recipe = {"passes": [{"pass": "fold_bn"}, {"pass": "recover", "patience": 1}]}
    with pytest.raises(RecipeError, match=r"^passes\[1\]\.patience: counts epochs without a better validation result, but there is no "
                                          "validation data; pass val_data= to fxcomp.compress or drop patience$"):
        fxcomp.compress(DigitsNet(), data.example_inputs(), recipe, train_data=data.train)


def test_a_splits_without_validation_examples_trains_without_validation(data) -> None:
    no_val, mlp = digits(val=0), nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    result = recover(mlp, no_val, epochs=1, lr=0.1, progress=False)
    assert result.best_epoch is None and result.history[0].val_accuracy is None
    with pytest.raises(UsageError, match="^patience counts epochs without a better validation result"):
        recover(mlp, no_val, epochs=2, patience=1, progress=False)
    with pytest.raises(RecipeError, match=r"^passes\[0\]\.patience: counts epochs without a better validation result"):
        fxcomp.compress(mlp, data.example_inputs(), {"passes": [{"pass": "recover", "patience": 1}]}, train_data=no_val)
    for train, validated in ((no_val, False), (data, True)):
        result = fxcomp.compress(mlp, data.example_inputs(), {"passes": [{"pass": "recover", "epochs": 1}]}, train_data=train)
        assert result.plan[0]["plan"]["validation"] is validated
        assert result.plan[0]["stats"]["best_epoch"] == (1 if validated else None)


def test_a_diverging_loss_stops_training_with_what_to_change(data) -> None:
    with pytest.raises(fxcomp.TrainingError, match=r"^the training loss became (nan|inf) at epoch 1, batch \d+; lower lr"):
        recover(DigitsNet(), data, epochs=1, lr=1e30, progress=False)


def test_feature_distillation_trains_the_student_as_in_training_mode(data, trained) -> None:
    class DropsAll(DigitsNet):
        """Dropout of every feature before the classifier, written with the functional form."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = torch.flatten(F.adaptive_avg_pool2d(self.conv3(self.conv2(self.conv1(x))), 1), 1)
            return self.fc(F.dropout(features, p=1.0, training=self.training))

    torch.manual_seed(0)
    student = DropsAll().eval()  # traced for the feature taps: in training mode, not in the mode it came in
    result = recover(student, data, teacher=trained, distill={"kind": "fitnet", "student": "conv2", "teacher": "conv2"},
                     epochs=1, lr=0.05, progress=False)
    assert torch.equal(result.model.fc.weight, student.fc.weight)  # the dropped features gave fc no gradient
    assert not torch.equal(result.model.conv2.weight, student.conv2.weight)


def test_numpy_numbers_work_as_plain_ones(data, trained) -> None:
    torch.manual_seed(0)
    result = recover(DigitsNet(width=8), data, teacher=trained, distill={"kind": "kd", "T": np.float32(4), "alpha": np.float64(0.5)},
                     epochs=np.int64(1), batch_size=np.int32(64), progress=False)
    assert len(result.history) == 1


def test_features_are_read_by_node_name_sharing_the_parameters(trained) -> None:
    gm = fxcomp.trace(trained, torch.randn(1, 1, 8, 8))
    tapped = with_features(gm, ["conv2", "fc"])
    x = torch.randn(3, 1, 8, 8)
    output, (conv2, fc) = tapped(x)
    assert torch.equal(output, fc) and torch.allclose(output, trained(x)) and conv2.shape == (3, 64, 8, 8)
    assert tapped.get_submodule("conv2").weight is trained.conv2.weight


# --- schemes ---------------------------------------------------------------------------------


def test_mutual_learning_trains_both_peers(data) -> None:
    results = mutual_learning([DigitsNet(width=8), DigitsNet(width=16)], data, epochs=2, lr=0.05, batch_size=32, progress=False)
    assert len(results) == 2 and all(evaluate(r.model, data.test)[1] > 0.5 for r in results)
    assert results[0].model is not results[1].model


def test_teacher_assistant_chain_and_born_again_produce_one_model_per_step(data, trained) -> None:
    chain = teacher_assistant_chain(trained, [DigitsNet(width=16), DigitsNet(width=8)], data, epochs=2, lr=0.05, batch_size=32, progress=False)
    assert [r.model.conv1.out_channels for r in chain] == [16, 8]
    generations = born_again(trained, data, generations=2, epochs=2, lr=0.05, batch_size=32, progress=False)
    assert len(generations) == 2 and all(evaluate(g.model, data.test)[1] > 0.5 for g in generations)
    assert not torch.equal(generations[0].model.conv1.weight, trained.conv1.weight)


def test_born_again_redraws_masked_weights_and_refuses_shared_ones(data) -> None:
    torch.manual_seed(0)
    mlp, x = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), data.example_inputs(2)
    batches = [data.train[:64]]
    sparse = fxcomp.compress(mlp, x, {"passes": [{"pass": "sparsify", "sparsity": 0.5}]}).model
    before = copy.deepcopy(sparse.state_dict())
    start = born_again(sparse, batches, generations=1, epochs=1, lr=1e-30, progress=False)[0].model  # lr ~0: the start point
    for name in ("1", "3"):
        old, new = sparse.get_submodule(name).weight, start.get_submodule(name).weight
        assert torch.equal(new == 0, old == 0) and not (new == old)[old != 0].any(), name  # new values, the same zeros
    assert all(torch.equal(before[k], v) for k, v in sparse.state_dict().items())
    shared = fxcomp.compress(mlp, x, {"passes": [{"pass": "cluster", "bits": 2}]}).model
    with pytest.raises(UsageError, match=r"^born_again cannot draw new weights for '1\.weight': they come from a fixed codebook or integers "
                                        r"\(cluster, quantize's convert\); pass factory= returning a freshly initialized model$"):
        born_again(shared, batches, generations=1, epochs=1, progress=False)


def test_scheme_options_are_checked_and_born_again_is_seeded(data, trained) -> None:
    with pytest.raises(UsageError, match="mutual_learning got unknown option\\(s\\) distill; it takes epochs, lr"):
        mutual_learning([DigitsNet(width=8), DigitsNet(width=8)], data, distill={"kind": "kd"})
    with pytest.raises(UsageError, match=r"born_again needs generations >= 1 \(a whole number\), got '2'"):
        born_again(trained, data, generations="2")
    with pytest.raises(UsageError, match="^born_again got unknown option\\(s\\) epoch; it takes val_data, epochs, lr, exits, optimizer"):
        born_again(trained, data, generations=1, epoch=1)
    with pytest.raises(UsageError, match="^teacher_assistant_chain got unknown option\\(s\\) steps; it takes val_data, epochs"):
        teacher_assistant_chain(trained, [DigitsNet(width=8)], data, steps=10)
    runs = []
    for state in (1, 2):  # the global random state before the call does not matter, the seed does
        torch.manual_seed(state)
        runs.append(born_again(trained, data, generations=1, epochs=1, lr=0.05, seed=3, progress=False)[0].model)
    assert all(torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values()))


def test_the_teacher_is_left_as_it_was(data) -> None:
    torch.manual_seed(0)
    teacher = DigitsNet().train()
    before = copy.deepcopy(teacher.state_dict())
    recover(DigitsNet(width=8), data, teacher=teacher, distill={"kind": "kd"}, epochs=1, batch_size=64, progress=False)
    assert teacher.training and all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(UsageError, match="no node named 'conv9'"):  # setup fails after the teacher went to eval mode
        recover(DigitsNet(width=8), data, teacher=teacher, distill={"kind": "fitnet", "student": "conv2", "teacher": "conv9"},
                epochs=1, progress=False)
    assert all(module.training for module in teacher.modules())


def test_a_teacher_that_fails_on_the_training_inputs_is_named(data) -> None:
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(32, 10)).train()  # digits have 64 features
    with pytest.raises(DataError, match=r"^the teacher fails on the training inputs \(2×1×8×8\): .*; give a teacher that takes the student's inputs$"):
        recover(DigitsNet(width=8), data, teacher=teacher, distill={"kind": "kd"}, epochs=1, progress=False)
    assert teacher.training


# --- recipes ---------------------------------------------------------------------------------


def test_recover_after_prune_in_a_recipe_beats_prune_alone(data, trained) -> None:
    x = data.example_inputs()
    pruned = fxcomp.compress(trained, x, {"passes": [{"pass": "prune", "ratio": 0.6}]})
    recipe = {
        "passes": [
            {"pass": "fold_bn"},
            {"pass": "prune", "ratio": 0.6},
            # bn2 was folded into conv2: the student's feature is found through fold_bn's plan.
            {"pass": "recover", "epochs": 2, "lr": 0.02, "distill": [{"kind": "kd"}, {"kind": "fitnet", "student": "bn2", "teacher": "bn2"}]},
        ]
    }
    recovered = fxcomp.compress(trained, x, recipe, train_data=data.train, val_data=data.val)
    assert evaluate(recovered.model, data.test)[1] > evaluate(pruned.model, data.test)[1] + 0.05
    stats = recovered.plan[-1]["stats"]
    assert len(stats["history"]) == 2 and stats["best_epoch"] in (1, 2)
    with pytest.raises(DataError, match="recover needs labelled training data"):
        fxcomp.compress(trained, x, {"passes": [{"pass": "recover"}]})
    with pytest.raises(RecipeError, match=r"passes\[0\].distill: distill fitnet: 'student' must name a node"):
        fxcomp.compress(trained, x, {"passes": [{"pass": "recover", "distill": {"kind": "fitnet"}}]})
    with pytest.raises(RecipeError, match=r"passes\[0\] \(recover\): momentum applies to optimizer sgd; drop it with adam"):
        fxcomp.compress(trained, x, {"passes": [{"pass": "recover", "optimizer": "adam", "momentum": 0.9}]}, train_data=data.train)


def test_cli_compress_trains_on_named_data(tmp_path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("passes:\n  - pass: recover\n    epochs: 1\n")
    code = main(["compress", "fxcomp.demo:DigitsNet", "--recipe", str(recipe), "--input-shape", "1,1,8,8", "--train-data", "digits"])
    assert code == 0 and "recover" in capsys.readouterr().out
    assert main(["compress", "fxcomp.demo:DigitsNet", "--recipe", str(recipe), "--input-shape", "1,1,8,8", "--train-data", "cifar"]) == 2
    assert "is not one of: digits" in capsys.readouterr().err
