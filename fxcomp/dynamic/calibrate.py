"""Choosing exit thresholds on validation data, and measuring what thresholds do.

:func:`calibrate_exits` runs every exit on every validation sample once, then
searches the thresholds on those figures: starting with no sample leaving early,
it lowers one exit's threshold a notch at a time, each time taking the move that
saves the most MACs per accuracy point lost, as long as the accuracy stays within
``max_accuracy_drop`` of the final exit's. The steps it took form the trade-off
table it returns. :func:`exit_statistics` runs the model as configured and
reports what actually happened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from tabulate import tabulate

from fxcomp.arguments import is_real, is_whole
from fxcomp.data.batches import labelled_outputs
from fxcomp.dynamic.model import EarlyExitModel, has_exits
from fxcomp.errors import ExitError
from fxcomp.tracing import eval_mode


@dataclass(frozen=True)
class ExitStatistics:
    """How a setting of thresholds behaves on some data.

    Attributes:
        thresholds: one per early exit (None: every sample runs the whole model).
        accuracy: top-1 accuracy of the answers given (0–1).
        shares: the fraction of samples leaving at each exit, the final output last.
        mean_macs: mean MACs per sample, heads included.
        model_macs: MACs per sample of the original model.
    """

    thresholds: list[float] | None
    accuracy: float
    shares: list[float]
    mean_macs: float
    model_macs: float

    @property
    def macs_saving(self) -> float:
        """The fraction of the original model's MACs a sample saves on average."""
        return 1 - self.mean_macs / self.model_macs

    def row(self) -> list[str]:
        """The statistics as one row of the exit table (thresholds, accuracy, exit shares, MACs, saving)."""
        thresholds = "none" if self.thresholds is None else ", ".join(_threshold(t) for t in self.thresholds)
        shares = " / ".join(f"{100 * s:.1f}" for s in self.shares)
        return [thresholds, f"{100 * self.accuracy:.2f}", shares, f"{self.mean_macs:,.0f}", f"{100 * self.macs_saving:.1f}%"]


HEADERS = ["thresholds", "accuracy %", "share per exit %", "mean MACs", "MACs saved"]


def _threshold(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.4f}"


@dataclass(frozen=True)
class ExitCalibration:
    """What :func:`calibrate_exits` found: the chosen thresholds and the trade-off it walked through.

    ``rows`` go from no early exit (first) to the chosen setting (last), on the validation data.
    """

    thresholds: list[float]
    base_accuracy: float
    max_accuracy_drop: float
    rows: list[ExitStatistics]

    @property
    def chosen(self) -> ExitStatistics:
        """The statistics of the thresholds that were picked (the last row)."""
        return self.rows[-1]

    def __str__(self) -> str:
        table = tabulate([row.row() for row in self.rows], headers=HEADERS)
        return (
            f"{table}\n\nchosen thresholds {[_threshold(t) for t in self.thresholds]}: accuracy "
            f"{100 * self.chosen.accuracy:.2f}% (final exit {100 * self.base_accuracy:.2f}%, allowed drop "
            f"{100 * self.max_accuracy_drop:.2f} pp), {100 * self.chosen.macs_saving:.1f}% fewer MACs per sample"
        )


def _require_exits(model: Any, caller: str) -> None:
    if isinstance(model, EarlyExitModel):
        return
    if isinstance(model, fx.GraphModule) and has_exits(model):
        raise ExitError(f"{caller} takes an EarlyExitModel, got a graph with exits; wrap it: EarlyExitModel(gm)")
    raise ExitError(
        f"{caller} takes an EarlyExitModel, got {type(model).__name__}; add exits first "
        "(the early_exit pass, or fxcomp.dynamic.add_exits and EarlyExitModel)"
    )


@torch.no_grad()
def _exit_figures(model: EarlyExitModel, data: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per exit (final last) and sample: the exit's score and whether its answer is right."""
    scores, correct = [], []
    with eval_mode(model):
        for y, outputs in labelled_outputs(data, model.all_exits, "calibration", batch_size):
            scores.append(torch.stack([model.scores(out) for out in outputs]))
            correct.append(torch.stack([out.argmax(1) == y for out in outputs]))
    if not scores:
        raise ExitError("the calibration data holds no examples; give at least one (inputs, target) batch")
    return torch.cat(scores, 1).double().numpy(), torch.cat(correct, 1).numpy()


def _simulate(score: np.ndarray, correct: np.ndarray, cost: np.ndarray, cut: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Accuracy, shares and mean cost when sample n leaves at the first exit i with score ≥ cut[i]."""
    exits, count = len(cut), score.shape[1]
    taken = np.full(count, exits)
    going = np.ones(count, dtype=bool)
    for i in range(exits):
        leave = going & (score[i] >= cut[i])
        taken[leave] = i
        going &= ~leave
    accuracy = float(correct[taken, np.arange(count)].mean())
    shares = np.bincount(taken, minlength=exits + 1) / count
    return accuracy, shares, float(cost[taken].mean())


def calibrate_exits(
    model: EarlyExitModel,
    val_data: Any,
    max_accuracy_drop: float = 0.005,
    *,
    levels: int = 200,
    batch_size: int = 256,
    max_rows: int = 12,
) -> ExitCalibration:
    """Pick per-exit thresholds that save the most MACs within ``max_accuracy_drop`` of the final exit's accuracy.

    Args:
        model: the early-exit model; its :attr:`~EarlyExitModel.thresholds` are set to the result.
        val_data: labelled data (a Dataset, DataLoader or list of ``(inputs, target)`` batches).
        max_accuracy_drop: the accuracy (0–1, so 0.005 is half a point) the exits may cost
            on ``val_data``, against running every sample through the whole model.
        levels: how many candidate thresholds per exit (quantiles of its scores).
        max_rows: at most this many rows of the search path in the returned table.

    The search uses the model's criterion (``confidence`` or ``entropy``).
    """
    if not is_real(max_accuracy_drop) or not 0 <= max_accuracy_drop < 1:
        raise ExitError(f"max_accuracy_drop is a fraction in [0, 1), got {max_accuracy_drop!r}")
    for name, value, least in (("levels", levels, 1), ("max_rows", max_rows, 2), ("batch_size", batch_size, 1)):
        if not is_whole(value) or value < least:
            raise ExitError(f"{name} must be a whole number >= {least}, got {value!r}")
    _require_exits(model, "calibrate_exits")
    score, correct = _exit_figures(model, val_data, batch_size)
    model_macs = model.model_macs_per_sample()
    sign = 1.0 if model.criterion == "confidence" else -1.0
    exits = model.num_exits
    candidates = [np.unique(np.quantile(score[i], np.linspace(0, 1, levels + 1)))[::-1] for i in range(exits)]
    chosen = [-1] * exits  # -1: no sample leaves there

    def cuts(positions: list[int]) -> np.ndarray:
        return np.array([candidates[i][p] if p >= 0 else np.inf for i, p in enumerate(positions)])

    def stats(positions: list[int]) -> ExitStatistics:
        thresholds = [float(sign * c) for c in cuts(positions)]
        cost = np.array(model.macs_per_sample(thresholds))
        accuracy, shares, mean = _simulate(score, correct, cost, cuts(positions))
        return ExitStatistics(thresholds, accuracy, shares.tolist(), mean, model_macs)

    base = float(correct[exits].mean())
    floor = base - max_accuracy_drop - 1e-12
    path = [stats(chosen)]
    while True:
        current, best, best_key = path[-1], None, None
        for i in range(exits):
            if chosen[i] + 1 >= len(candidates[i]):
                continue
            trial = [*chosen[:i], chosen[i] + 1, *chosen[i + 1 :]]
            result = stats(trial)
            if result.accuracy < floor:
                continue
            saved, lost = current.mean_macs - result.mean_macs, current.accuracy - result.accuracy
            key = (1, saved) if lost <= 0 else (0, saved / lost)
            if best_key is None or key > best_key:
                best, best_key = (trial, result), key
        if best is None:
            break
        chosen = best[0]
        same = (best[1].accuracy, best[1].mean_macs) == (current.accuracy, current.mean_macs)
        path[len(path) - same :] = [best[1]]  # a move that changes nothing replaces the last row
    model.thresholds = path[-1].thresholds
    return ExitCalibration(path[-1].thresholds, base, max_accuracy_drop, _thin(path, max_rows))


def _thin(path: list[ExitStatistics], count: int) -> list[ExitStatistics]:
    """At most ``count`` rows, evenly spread, keeping the first and the last."""
    if len(path) <= count:
        return path
    picks = sorted({round(i * (len(path) - 1) / (count - 1)) for i in range(count)})
    return [path[i] for i in picks]


@torch.no_grad()
def exit_statistics(model: EarlyExitModel, data: Any, *, batch_size: int = 256) -> ExitStatistics:
    """Run ``model`` as configured (eval mode, its thresholds) on labelled ``data``; what happened."""
    _require_exits(model, "exit_statistics")
    right = count = 0
    taken_counts = np.zeros(model.num_exits + 1)
    with eval_mode(model):
        for y, (logits,) in labelled_outputs(data, lambda x: [model(x)], "evaluation", batch_size):
            right += int((logits.argmax(1) == y).sum())
            count += len(y)
            taken = model.last_exits if model.last_exits is not None else torch.full((len(y),), model.num_exits)
            taken_counts += np.bincount(taken.numpy(), minlength=model.num_exits + 1)
    if count == 0:
        raise ExitError("the data holds no examples; give at least one (inputs, target) batch")
    shares = taken_counts / count
    thresholds, model_macs = model.thresholds, model.model_macs_per_sample()
    mean = float(np.dot(shares, model.macs_per_sample(thresholds))) if thresholds is not None else model_macs
    return ExitStatistics(thresholds, right / count, shares.tolist(), mean, model_macs)
