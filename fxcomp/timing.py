"""Latency measurement that holds up on a noisy machine: interleaved runs, medians, fixed threads."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)`` (``None``: as it is); the count is restored afterwards."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def interleaved_latency(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    inference: bool = True,
) -> dict[str, float]:
    """Median wall time in seconds of each zero-argument callable.

    The callables run in turn (A, B, A, B, …) so that drifts in machine load hit
    them alike; each first runs ``warmup`` times unmeasured. ``threads`` fixes
    ``torch.set_num_threads`` for the measurement (restored afterwards). With
    ``inference`` (the default) they run under ``torch.inference_mode()``.
    """
    with torch_threads(threads), torch.inference_mode() if inference else contextlib.nullcontext():
        for _ in range(warmup):
            for run in candidates.values():
                run()
        samples: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(repeats):
            for name, run in candidates.items():
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}
