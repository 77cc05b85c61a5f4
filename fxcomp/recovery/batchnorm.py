"""Re-estimating BatchNorm statistics after a rewrite, without training (a cheap accuracy proxy)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from fxcomp.arguments import is_whole
from fxcomp.data.batches import loader, pair
from fxcomp.errors import UsageError
from fxcomp.tracing import eval_mode


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Any, *, batches: int = 10, batch_size: int = 128, seed: int = 0) -> int:
    """Recompute the running mean and variance of every BatchNorm of ``model`` in place.

    Pruning changes the distribution each BatchNorm sees; its old statistics then misjudge
    the pruned network. This resets them and averages the batch statistics of the first
    ``batches`` batches of labelled ``data`` (shuffled with ``seed``), every other module in
    eval mode, nothing trained. Returns the number of batches used: 0 when ``model`` has no
    BatchNorm with running statistics, ``batches`` is 0 or ``data`` holds no batch — the
    statistics are then left as they were. Raises :class:`fxcomp.UsageError` unless ``batches``
    is a whole number >= 0.
    """
    if not is_whole(batches) or batches < 0:
        raise UsageError(f"recalibrate_batchnorm needs batches >= 0 (a whole number), got {batches!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches < 1:
        return 0
    saved = [norm.momentum for norm in norms]
    statistics = [{name: buffer.clone() for name, buffer in norm.named_buffers()} for norm in norms]
    used = 0
    with eval_mode(model):
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches
            norm.train()
        try:
            for batch in loader(data, batch_size, shuffle=True, seed=seed):
                if used == batches:
                    break
                model(pair(batch)[0])
                used += 1
        finally:
            for norm, momentum, before in zip(norms, saved, statistics):
                norm.momentum = momentum
                if used == 0:
                    for name, buffer in norm.named_buffers():
                        buffer.copy_(before[name])
    return used
