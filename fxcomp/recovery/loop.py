"""``recover``: fine-tune a (compressed) model, optionally distilling from a teacher.

A small loop: SGD with momentum or Adam, a cosine or constant learning rate, an
evaluation on the validation data after every epoch, the best epoch's weights
restored at the end, early stopping, and a progress line on stderr.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from fxcomp.arguments import is_real, is_whole, working_copy
from fxcomp.data.batches import Batches, check_targets, known_length, labelled_outputs, loader, outputs_on, pair
from fxcomp.data.splits import validation_part
from fxcomp.dynamic.model import EarlyExitModel
from fxcomp.errors import DataError, TrainingError, UsageError
from fxcomp.passes.masks import class_before_parametrizations
from fxcomp.recovery.exits import ExitTraining, exit_training
from fxcomp.recovery.features import as_graph, with_features
from fxcomp.recovery.losses import mutual_loss
from fxcomp.recovery.objective import OUTPUT, Objective, objective
from fxcomp.tracing import eval_mode, in_mode


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training: mean training loss and accuracy, validation loss and accuracy, time.

    For an early-exit model the accuracies and the validation loss are means over its exits,
    and ``val_exit_accuracies`` gives each exit's validation accuracy (the final output last).
    """

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    val_exit_accuracies: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-able dict."""
        return asdict(self)


@dataclass
class RecoveryResult:
    """What :func:`recover` returns: the trained model (best validation epoch restored) and its history."""

    model: nn.Module
    history: list[EpochRecord]
    best_epoch: int | None

    @property
    def best_accuracy(self) -> float | None:
        """The validation accuracy of the restored epoch."""
        if self.best_epoch is None:
            return None
        return self.history[self.best_epoch - 1].val_accuracy


@torch.no_grad()
def evaluate_outputs(
    model: nn.Module, data: Any, *, batch_size: int = 256, what: str = "evaluation"
) -> tuple[list[float], list[float]]:
    """Mean cross-entropy and accuracy (0–1) of each of ``model``'s outputs on labelled ``data``.

    A plain model has one output; an early-exit model has one per exit, the final output last.
    The model runs in eval mode; every submodule's mode is restored afterwards. Inputs the
    model fails on and targets that are not one class index per example raise an error
    naming the ``what`` data.
    """
    run = model.all_exits if isinstance(model, EarlyExitModel) else lambda x: [model(x)]
    total, losses, correct = 0, None, None
    with eval_mode(model):
        for y, outputs in labelled_outputs(data, run, what, batch_size):
            batch_losses = [F.cross_entropy(logits, y, reduction="sum").item() for logits in outputs]
            batch_correct = [int((logits.argmax(1) == y).sum()) for logits in outputs]
            losses = batch_losses if losses is None else [a + b for a, b in zip(losses, batch_losses)]
            correct = batch_correct if correct is None else [a + b for a, b in zip(correct, batch_correct)]
            total += len(y)
    if total == 0 or losses is None or correct is None:
        raise DataError(f"the {what} data holds no examples")
    return [loss / total for loss in losses], [right / total for right in correct]


def evaluate(model: nn.Module, data: Any, *, batch_size: int = 256) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (0–1) of ``model`` on labelled ``data``.

    For an early-exit model, the means over its exits (each sample scored at every exit).
    The model runs in eval mode and gets its modes back.
    """
    losses, accuracies = evaluate_outputs(model, data, batch_size=batch_size)
    return sum(losses) / len(losses), sum(accuracies) / len(accuracies)


class _Progress:
    """A self-rewriting status line while an epoch runs (on a terminal) and one line per epoch."""

    def __init__(self, enabled: bool, epochs: int, stream: TextIO | None = None) -> None:
        self.enabled, self.epochs, self.stream = enabled, epochs, stream or sys.stderr
        self.live = enabled and self.stream.isatty()  # a log file gets the epoch lines only

    def step(self, epoch: int, done: int, total: int | None, loss: float) -> None:
        if not self.live:
            return
        if total:
            filled = int(20 * done / total)
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{total}"
        else:
            bar = f"{done} batches"
        self.stream.write(f"\repoch {epoch}/{self.epochs} {bar} loss {loss:.4f}")
        self.stream.flush()

    def end(self, record: EpochRecord) -> None:
        if not self.enabled:
            return
        val = f", val loss {record.val_loss:.4f} acc {100 * record.val_accuracy:.2f}%" if record.val_accuracy is not None else ""
        restart = "\r" if self.live else ""  # overwrite the live line
        self.stream.write(
            f"{restart}epoch {record.epoch}/{self.epochs}: train loss {record.train_loss:.4f} "
            f"acc {100 * record.train_accuracy:.2f}%{val} ({record.seconds:.1f} s)\n"
        )
        self.stream.flush()


SGD_MOMENTUM = 0.9
"""The momentum SGD trains with when none is given."""


def _optimizer(name: str, parameters: list[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    raise UsageError(f"optimizer '{name}' is not one of: sgd, adam")


class _Cosine:
    """The rate decaying from its start to zero along a half cosine over ``steps`` optimizer steps.

    With ``steps`` unknown (data without a length) the rate holds until :meth:`count`, at the end
    of the first epoch, takes that epoch's steps for every epoch; the decay then goes on as if
    the length had been known.
    """

    def __init__(self, optim: torch.optim.Optimizer, steps: int | None) -> None:
        self.steps = steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optim, self.factor)

    def factor(self, step: int) -> float:
        """The rate at ``step`` as a fraction of the starting rate."""
        if self.steps is None:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step, self.steps) / self.steps))

    def step(self) -> None:
        """One optimizer step done."""
        self.scheduler.step()

    def count(self, epochs: int) -> None:
        """After an epoch: if the steps were unknown, the ``epochs`` epochs take as many as this one did."""
        if self.steps is not None:
            return
        done = self.scheduler.last_epoch
        self.steps = epochs * done
        for group, start in zip(self.scheduler.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = start * self.factor(done)


def _fit(
    students: Sequence[nn.Module],
    extra: list[nn.Parameter],
    step_loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[Any]]],
    train: Batches,
    val: Batches | None,
    *,
    epochs: int,
    lr: float,
    optimizer: str,
    momentum: float | None,
    weight_decay: float,
    schedule: str,
    patience: int | None,
    progress: bool,
) -> list[tuple[list[EpochRecord], int | None]]:
    """Train ``students`` together on ``step_loss``; per student its history and restored best epoch.

    ``step_loss`` returns the batch's loss and, per student, its logits (a list of them for an
    early-exit model, whose training accuracy is the mean over its exits). A batch of one example
    after larger ones in an epoch is skipped (BatchNorm cannot train on it).
    """
    if not is_whole(epochs) or epochs < 1:
        raise UsageError(f"recovery needs epochs >= 1 (a whole number), got {epochs!r}")
    if not is_real(lr) or not lr > 0:
        raise UsageError(f"recovery needs lr > 0 (a finite number), got {lr!r}")
    if momentum is not None and optimizer == "adam":
        raise UsageError("momentum applies to optimizer sgd; drop it with adam, which keeps its own moment estimates")
    given = SGD_MOMENTUM if momentum is None else momentum
    if not is_real(given) or not is_real(weight_decay) or not 0 <= given <= 1 or not weight_decay >= 0:
        raise UsageError(f"recovery needs momentum in [0, 1] and weight_decay >= 0, got {given!r} and {weight_decay!r}")
    if patience is not None and (not is_whole(patience) or patience < 1):
        raise UsageError(f"recovery needs patience >= 1 (a whole number) or None, got {patience!r}")
    if patience is not None and val is None:
        raise UsageError("patience counts epochs without a better validation result; pass val_data= or drop patience")
    if schedule not in ("cosine", "constant"):
        raise UsageError(f"schedule '{schedule}' is not one of: cosine, constant")
    parameters = [p for s in students for p in s.parameters() if p.requires_grad] + extra
    optim = _optimizer(optimizer, parameters, lr, given, weight_decay)
    if val is not None:
        _first_batch(val, students[0], "validation")
    total = known_length(train)
    scheduler = _Cosine(optim, epochs * total if total else None) if schedule == "cosine" else None
    bar = _Progress(progress, epochs)
    histories: list[list[EpochRecord]] = [[] for _ in students]
    best: list[tuple[float, float, int, dict[str, torch.Tensor]] | None] = [None] * len(students)
    stale = 0
    for epoch in range(1, epochs + 1):
        start, seen, loss_sum = time.perf_counter(), 0, 0.0
        correct = [0.0] * len(students)
        current_lr = optim.param_groups[0]["lr"]
        for s in students:
            s.train()
        for index, batch in enumerate(train, 1):
            x, y = pair(batch)
            if len(y) == 1 and seen:  # a Dataset's one-example leftover: BatchNorm cannot train on it
                continue
            try:
                loss, logits = step_loss(x, y)
            except Exception:  # say what does not fit rather than cross_entropy's IndexError or TypeError
                _explain_failed_step(students, x, y, f"training batch {index}")
                raise
            if not torch.isfinite(loss.detach()):
                raise TrainingError(
                    f"the training loss became {loss.item()} at epoch {epoch}, batch {index}; lower lr, "
                    "or look for non-finite values in the data or the distillation settings"
                )
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if scheduler is not None:
                scheduler.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            for i, out in enumerate(logits):
                outs = out if isinstance(out, list) else [out]
                correct[i] += sum(int((o.detach().argmax(1) == y).sum()) for o in outs) / len(outs)
            bar.step(epoch, index, total, loss_sum / seen)
        if seen == 0:
            raise DataError("the training data holds no examples")
        if scheduler is not None:
            scheduler.count(epochs)
        improved = False
        for i, s in enumerate(students):
            val_loss = val_accuracy = exit_accuracies = None
            if val is not None:
                losses, accuracies = evaluate_outputs(s, val, what="validation")
                val_loss, val_accuracy = sum(losses) / len(losses), sum(accuracies) / len(accuracies)
                exit_accuracies = accuracies if isinstance(s, EarlyExitModel) else None
            record = EpochRecord(
                epoch, current_lr, loss_sum / seen, correct[i] / seen, val_loss, val_accuracy,
                time.perf_counter() - start, exit_accuracies,
            )  # fmt: skip
            histories[i].append(record)
            if i == 0:
                bar.end(record)
            if val_accuracy is not None and (best[i] is None or (val_accuracy, -val_loss) > best[i][:2]):
                best[i] = (val_accuracy, -val_loss, epoch, copy.deepcopy(s.state_dict()))
                improved = True
        stale = 0 if improved else stale + 1
        if patience is not None and stale >= patience:
            break
    results = []
    for s, history, kept in zip(students, histories, best):
        if kept is not None:
            s.load_state_dict(kept[3])
        s.eval()
        results.append((history, kept[2] if kept is not None else None))
    return results


_ONE_EXAMPLE = "train on batches of two examples or more (BatchNorm needs them): raise batch_size or merge the batch"


def _explain_failed_step(students: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """After a training step failed on the ``what`` batch, raise what the user can change: a
    :class:`TrainingError` if its labels do not fit the model or a model gives no single logits
    tensor in training mode, a :class:`DataError` if a model fails on it in training mode (a lone
    example under BatchNorm); else return, and the step's own error stands."""
    with torch.no_grad():
        with eval_mode(students[0]):
            check_targets(outputs_on(students[0], x, what), y, what)
        for student in students:
            if isinstance(student, EarlyExitModel):  # its training forward gives every exit's logits
                continue
            with in_mode(student, training=True):
                output = outputs_on(student, x, what, fix=_ONE_EXAMPLE if len(x) == 1 else "")
            if not isinstance(output, torch.Tensor):
                raise TrainingError(
                    f"the model returns a {type(output).__name__} in training mode, but training needs one tensor of "
                    "logits; make its forward return the logits alone (e.g. drop auxiliary outputs)"
                )


def _features(
    model: nn.Module, names: list[str], example: torch.Tensor, *, training: bool
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """A function giving ``model``'s output and the values of the nodes ``names``, keyed by name.

    A model that is not yet a graph is traced in the mode it will run in (``training``), so
    that what its forward decides by ``self.training`` (functional dropout) stays right.
    """
    if not names:
        return lambda x: {OUTPUT: model(x)}
    with in_mode(model, training=training):
        graph = as_graph(model, example)
    tapped = with_features(graph, names)

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        output, values = tapped(x)
        return {OUTPUT: output, **dict(zip(names, values))}

    return run


def _train_and_val(train_data: Any, val_data: Any, batch_size: int, seed: int) -> tuple[Batches, Batches | None]:
    """Shuffled training batches and validation batches; a :class:`Splits` holding validation
    examples supplies missing validation data (see :func:`validation_part`).

    Both are read once per epoch, so a one-shot iterator (a generator) is refused.
    """
    val_data = validation_part(train_data, val_data)
    for what, data in (("training", train_data), ("validation", val_data)):
        if isinstance(data, Iterator):
            raise DataError(
                f"the {what} data is a one-shot iterator (a generator?), but training reads it every epoch; "
                "pass a DataLoader, a Dataset or a list of (inputs, target) batches"
            )
    train = loader(train_data, batch_size, shuffle=True, seed=seed)
    return train, loader(val_data, 256, shuffle=False, split="val") if val_data is not None else None


def _first_batch(data: Batches, model: nn.Module, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two examples of the first batch of the ``what`` data, after checking that batch against ``model``:
    it runs on the inputs and the targets are class indices within its outputs."""
    for batch in data:
        x, y = pair(batch)
        break
    else:
        raise DataError(f"the {what} data holds no examples")
    if len(x) == 0:
        raise DataError(f"the first {what} batch holds no examples")
    with torch.no_grad(), eval_mode(model):
        check_targets(outputs_on(model, x, what), y, what)
    return x[:2], y[:2]


_Run = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _step_loss(
    goal: Objective, joint: ExitTraining | None, student_run: _Run, teacher_run: _Run | None
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[Any]]]:
    """The batch loss of :func:`recover` and the student's logits (every exit's, for an early-exit model)."""

    def step_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        values, taught = student_run(x), None
        if teacher_run is not None:
            with torch.no_grad():
                taught = teacher_run(x)
        if joint is None:
            return goal(values, taught, y), [values[OUTPUT]]
        outputs = values[OUTPUT]  # every exit's logits, the final output last
        return joint.loss(outputs, goal({OUTPUT: outputs[-1]}, taught, y), y), [outputs]

    return step_loss


def recover(
    model: nn.Module,
    train_data: Any,
    *,
    val_data: Any = None,
    teacher: nn.Module | None = None,
    epochs: int = 3,
    lr: float = 0.01,
    distill: Any = None,
    exits: Any = None,
    optimizer: str = "sgd",
    momentum: float | None = None,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    batch_size: int = 128,
    patience: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> RecoveryResult:
    """Fine-tune a copy of ``model`` on labelled data, optionally distilling from ``teacher``.

    Args:
        model: the model to train (an ``nn.Module`` or a compressed ``GraphModule``); not modified.
        train_data: a Dataset, a DataLoader or a list of ``(inputs, target)`` batches (read once
            per epoch, so not a generator); a :class:`fxcomp.data.Splits` gives its train part
            (and its validation part, unless it holds no examples, when ``val_data`` is omitted).
            Its first batch is checked against the model before training.
        val_data: labelled data evaluated after every epoch (its first batch is checked before
            training); the best epoch (accuracy, then loss) is restored at the end. Without it
            the last epoch is kept.
        teacher: the model to distill from (run in eval mode, never trained; its mode is restored).
        distill: a spec (see :mod:`fxcomp.recovery.objective`), e.g. ``{"kind": "kd", "T": 4,
            "alpha": 0.9}``; None trains on cross-entropy alone.
        exits: for an :class:`fxcomp.EarlyExitModel`, how to train its exits (see
            :mod:`fxcomp.recovery.exits`): ``{"weights": [...], "train": "joint" | "heads",
            "distill": {"T": 3, "alpha": 0.5}}``. Every exit is trained, by default jointly with
            equal weights; ``distill`` (teacher) then applies to the final output only.
        optimizer, momentum, weight_decay, schedule: ``sgd`` (Nesterov momentum, 0.9 unless
            ``momentum`` is given) or ``adam`` (no ``momentum``); ``cosine`` decays the rate to
            zero over all steps (for data without a length, such as a DataLoader over an
            ``IterableDataset``, the first epoch counts them at the starting rate), ``constant``
            keeps it.
        batch_size: used when the data is a Dataset. A training batch of one example after larger
            ones (the leftover of a Dataset one longer than a multiple of it) is skipped:
            BatchNorm cannot train on one example.
        patience: stop after this many epochs without a better validation result (needs validation data).
        seed: seeds the weights' random state and the shuffling.
        progress: print a progress line per epoch on stderr.
    """
    if not is_whole(seed):
        raise UsageError(f"recovery needs a whole-number seed, got {seed!r}")
    torch.manual_seed(seed)
    student = working_copy(model)
    train, val = _train_and_val(train_data, val_data, batch_size, seed)
    goal: Objective = objective(distill)
    if goal.needs_teacher and teacher is None:
        raise UsageError("distillation needs a teacher: pass teacher= (a recipe's recover step uses the original model)")
    staged = isinstance(student, EarlyExitModel)
    if exits is not None and not staged:
        raise UsageError("exits= trains the exits of an early-exit model; this model has none (run the early_exit pass)")
    if staged and (goal.feature_names("student") or goal.feature_names("teacher")):
        raise UsageError("feature distillation does not apply to early-exit models; use kind: kd or exits.distill")
    joint = exit_training(exits) if staged else None
    if joint is not None:
        joint.check_outputs(student.num_exits + 1)
    if joint is not None and joint.heads_only:
        student.freeze_backbone(True)
    example, _ = _first_batch(train, student, "training")
    student_run = _features(student, goal.feature_names("student"), example, training=True)
    with contextlib.ExitStack() as stack:
        teacher_run = None
        if goal.needs_teacher:
            stack.enter_context(eval_mode(teacher))  # the caller's teacher gets its modes back, whatever happens
            teacher_run = _features(teacher, goal.feature_names("teacher"), example, training=False)
            with torch.no_grad(), eval_mode(student):
                fix = "give a teacher that takes the student's inputs"
                goal.build(student_run(example), outputs_on(teacher_run, example, "training", model="teacher", fix=fix))
        ((history, best_epoch),) = _fit(
            [student], goal.parameters(), _step_loss(goal, joint, student_run, teacher_run), train, val,
            epochs=epochs, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
            schedule=schedule, patience=patience, progress=progress,
        )  # fmt: skip
    if joint is not None and joint.heads_only:
        student.freeze_backbone(False)
    return RecoveryResult(student, history, best_epoch)


_TRAINING_OPTIONS = ("epochs", "lr", "optimizer", "momentum", "weight_decay", "schedule", "patience", "progress")


def _training_defaults() -> dict[str, Any]:
    """:func:`recover`'s defaults for the options the training loop takes, for schemes built on the loop."""
    parameters = inspect.signature(recover).parameters
    return {name: parameters[name].default for name in _TRAINING_OPTIONS}


def _check_options(scheme: str, options: dict[str, Any], known: Sequence[str]) -> None:
    """Raise :class:`UsageError` naming the options of ``options`` that ``scheme`` does not take."""
    unknown = set(options) - set(known)
    if unknown:
        raise UsageError(f"{scheme} got unknown option(s) {', '.join(sorted(unknown))}; it takes {', '.join(known)}")


def _recover_options(scheme: str, options: dict[str, Any]) -> None:
    """Check the options a scheme passes on to :func:`recover` (which it gives ``teacher`` and ``distill`` itself)."""
    parameters = inspect.signature(recover).parameters.values()
    known = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in ("teacher", "distill")]
    _check_options(scheme, options, known)


def mutual_learning(peers: Sequence[nn.Module], train_data: Any, *, val_data: Any = None, **options: Any) -> list[RecoveryResult]:
    """Deep mutual learning (Zhang et al., 2018): peers trained together, each also matching the others.

    Every peer's loss is its cross-entropy plus the mean KL divergence from the other peers'
    (detached) predictions. Takes :func:`recover`'s training options except ``teacher`` and
    ``distill``; returns one result per peer.
    """
    if len(peers) < 2:
        raise UsageError("mutual learning needs at least two peers")
    _check_options("mutual_learning", options, (*_TRAINING_OPTIONS, "seed", "batch_size"))
    seed, batch_size = options.pop("seed", 0), options.pop("batch_size", 128)
    if not is_whole(seed):
        raise UsageError(f"mutual learning needs a whole-number seed, got {seed!r}")
    torch.manual_seed(seed)
    students = [working_copy(p) for p in peers]
    train, val = _train_and_val(train_data, val_data, batch_size, seed)

    def step_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = [s(x) for s in students]
        loss = sum(
            F.cross_entropy(out, y) + mutual_loss(out, logits[:i] + logits[i + 1 :]) for i, out in enumerate(logits)
        )
        return loss, logits

    fitted = _fit(students, [], step_loss, train, val, **{**_training_defaults(), **options})
    return [RecoveryResult(s, history, best) for s, (history, best) in zip(students, fitted)]


def teacher_assistant_chain(
    teacher: nn.Module, chain: Sequence[nn.Module], train_data: Any, *, distill: Any = None, **options: Any
) -> list[RecoveryResult]:
    """TAKD (Mirzadeh et al., 2020): distill ``teacher`` into ``chain[0]``, that into ``chain[1]``, and so on.

    ``chain`` runs from the largest assistant to the final student; ``distill`` defaults to
    KD (T = 4, α = 0.9). Other options go to :func:`recover`. Returns one result per link.
    """
    _recover_options("teacher_assistant_chain", options)
    results, current = [], teacher
    for model in chain:
        result = recover(model, train_data, teacher=current, distill=distill or {"kind": "kd"}, **options)
        results.append(result)
        current = result.model
    return results


def _reinitialized(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` whose modules' ``reset_parameters`` drew new weights from ``seed``,
    also for tensors a parametrization computes (see :func:`_reset`)."""
    fresh = working_copy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in fresh.named_modules():
            if hasattr(module, "reset_parameters") and module is not fresh:
                _reset(module, name)
    return fresh


def _check_redrawable(module: nn.Module, name: str) -> None:
    """Raise :class:`UsageError` if a parametrized tensor of ``module`` (named ``name``) cannot take
    new values: its stored tensor is frozen (a codebook's) or integers."""
    for tensor, steps in module.parametrizations.items():
        stored = [*steps.parameters(recurse=False), *steps.buffers(recurse=False)]
        if any(getattr(step, "freezes_original", False) for step in steps) or not all(t.is_floating_point() for t in stored):
            raise UsageError(
                f"born_again cannot draw new weights for '{name}.{tensor}': they come from a fixed codebook or "
                "integers (cluster, quantize's convert); pass factory= returning a freshly initialized model"
            )


def _reset(module: nn.Module, name: str) -> None:
    """``module.reset_parameters()``, reaching its parametrized tensors too.

    ``reset_parameters`` writes into the tensor a parametrization computes, never into the one
    it stores; so it runs on a plain twin of the module, whose new values are assigned back
    (through the parametrizations: a pruning mask keeps its zeros, fake quantization its scheme).
    """
    if not parametrize.is_parametrized(module):
        module.reset_parameters()
        return
    _check_redrawable(module, name)
    plain = copy.deepcopy(module)
    plain.__class__ = class_before_parametrizations(module)
    del plain.parametrizations
    for tensor in module.parametrizations:
        plain.register_parameter(tensor, nn.Parameter(getattr(module, tensor).detach().clone()))
    plain.reset_parameters()
    with torch.no_grad():
        for tensor, value in [*plain.named_parameters(recurse=False), *plain.named_buffers(recurse=False)]:
            if parametrize.is_parametrized(module, tensor):
                setattr(module, tensor, value.detach())  # a Parameter would be registered, not assigned
            else:
                getattr(module, tensor).copy_(value)


def born_again(
    model: nn.Module,
    train_data: Any,
    *,
    generations: int = 2,
    factory: Callable[[], nn.Module] | None = None,
    distill: Any = None,
    **options: Any,
) -> list[RecoveryResult]:
    """Born-again networks (Furlanello et al., 2018): each generation, same architecture, learns from the last.

    ``model`` is the trained generation 0. Each new generation starts from ``factory()``
    (default: ``model``'s architecture with its layers' ``reset_parameters`` drawing new weights,
    from ``seed`` plus the generation's number; parameters of modules without that method keep
    their values, so give ``factory`` for such models) and is trained with ``distill`` (default
    KD) from the previous one. Returns one result per new generation.

    A compressed ``model`` keeps its compression: a weight under a pruning mask (``sparsify``)
    gets new values where the mask keeps entries and stays zero elsewhere, and a
    fake-quantized one stays fake-quantized. Weights shared from a codebook (``cluster``) or
    stored as integers cannot be drawn anew: that is a :class:`UsageError` asking for
    ``factory`` (a fresh, uncompressed model, for instance).
    """
    if not is_whole(generations) or generations < 1:
        raise UsageError(f"born_again needs generations >= 1 (a whole number), got {generations!r}")
    _recover_options("born_again", options)
    seed = options.get("seed", 0)
    if not is_whole(seed):
        raise UsageError(f"born_again needs a whole-number seed, got {seed!r}")
    results, current = [], model
    for generation in range(1, generations + 1):
        fresh = factory() if factory is not None else _reinitialized(model, seed + generation)
        result = recover(fresh, train_data, teacher=current, distill=distill or {"kind": "kd"}, **options)
        results.append(result)
        current = result.model
    return results
