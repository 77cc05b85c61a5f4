"""The joint loss that trains an early-exit model's exits.

An ``exits`` spec (a dict, every key optional)::

    exits:
      weights: [0.3, 0.6, 1.0]   # one per exit, the final output last (default: all 1)
      train: joint               # joint: backbone and heads; heads: backbone frozen (SDN-style)
      distill: {T: 3, alpha: 0.5}  # each early exit also learns from the final output's logits

The loss is ``Σ weights[i] · loss_i``: the final output's loss is the recover objective
(cross-entropy, or KD from the teacher), an early exit's is its cross-entropy, or with
``distill`` the KD loss towards the (detached) final logits.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fxcomp.errors import RecipeError
from fxcomp.passes.options import number
from fxcomp.recovery.losses import KDLoss

_OPTIONS = ("weights", "train", "distill")
_DISTILL = {"T": 3.0, "alpha": 0.5}


@dataclass(frozen=True)
class ExitTraining:
    """How to train the exits: per-exit loss weights, heads only or jointly, self-distillation."""

    weights: tuple[float, ...] | None = None
    heads_only: bool = False
    distill: KDLoss | None = None

    def check_outputs(self, count: int) -> None:
        """Raise :class:`RecipeError` unless the weights, when given, number ``count`` (the exits and the final output)."""
        if self.weights is not None and len(self.weights) != count:
            raise RecipeError(
                f"exits.weights: give {count} weights (one per exit, the final output last), got {len(self.weights)}"
            )

    def loss(self, outputs: Sequence[torch.Tensor], final_loss: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted joint loss of all exits' ``outputs`` (final last) given the final output's loss."""
        weights = self.weights or (1.0,) * len(outputs)
        total = weights[-1] * final_loss
        final = outputs[-1].detach()
        for weight, logits in zip(weights[:-1], outputs[:-1]):
            term = self.distill(logits, final, target) if self.distill is not None else F.cross_entropy(logits, target)
            total = total + weight * term
        return total


def exit_training(spec: Any) -> ExitTraining:
    """Build :class:`ExitTraining` from an ``exits`` spec (None: the defaults)."""
    if spec is None:
        return ExitTraining()
    if not isinstance(spec, dict) or set(spec) - set(_OPTIONS):
        raise RecipeError(f"exits: expected a mapping with keys among {', '.join(_OPTIONS)}; got {spec!r}")
    weights = spec.get("weights")
    if weights is not None:
        if not isinstance(weights, (list, tuple)) or not weights or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < math.inf for w in weights
        ):
            raise RecipeError(f"exits.weights: expected a list of non-negative numbers, got {weights!r}")
        weights = tuple(float(w) for w in weights)
    train = spec.get("train", "joint")
    if train not in ("joint", "heads"):
        raise RecipeError(f"exits.train: expected joint or heads, got {train!r}")
    distill = spec.get("distill")
    loss = None
    if distill is not None:
        if not isinstance(distill, dict) or set(distill) - set(_DISTILL):
            raise RecipeError(f"exits.distill: expected a mapping with keys among T, alpha; got {distill!r}")
        options = {**_DISTILL, **distill}
        temperature, alpha = (number()(options[key], f"exits.distill.{key}") for key in ("T", "alpha"))
        try:
            loss = KDLoss(temperature, alpha)
        except RecipeError as error:
            raise RecipeError(f"exits.distill: {error}") from None
    return ExitTraining(weights, train == "heads", loss)
