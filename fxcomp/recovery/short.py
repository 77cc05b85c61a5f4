"""A short fine-tune: a few hundred steps instead of whole epochs, to compare pruned candidates."""

from __future__ import annotations

import itertools
import numbers
from typing import Any

import torch
import torch.nn as nn

from fxcomp.data.batches import loader
from fxcomp.errors import DataError, UsageError
from fxcomp.recovery.loop import recover


def short_finetune(
    model: nn.Module, train_data: Any, *, steps: int, lr: float = 0.01, batch_size: int = 128, seed: int = 0
) -> nn.Module:
    """A copy of ``model`` trained on ``steps`` shuffled batches of ``train_data``, in eval mode.

    NetAdapt's short-term fine-tune: SGD with Nesterov momentum, the rate decaying to zero
    over the steps (at most one pass over the data). How far a pruned model gets in a few
    steps predicts how well it recovers better than its accuracy right after pruning does.
    The same ``seed`` (and thread count) gives the same model; ``model`` is not modified,
    and neither is the global random state.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise UsageError(f"short_finetune needs steps >= 1 (a whole number), got {steps!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a DataLoader the caller passes shuffles with the global generator
        batches = list(itertools.islice(loader(train_data, batch_size, shuffle=True, seed=seed), steps))
        if not batches:
            raise DataError("the training data holds no examples")
        return recover(model, batches, epochs=1, lr=lr, seed=seed, progress=False).model
