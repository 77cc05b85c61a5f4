"""interleaved_latency: interleaving, warm-up and thread handling (no timing assertions)."""

from __future__ import annotations

import pytest
import torch

from fxcomp.timing import interleaved_latency, torch_threads


def test_runs_interleaved_with_warmup_and_restores_threads() -> None:
    calls: list[str] = []
    threads_seen: list[int] = []

    def run(name: str):
        def call() -> None:
            calls.append(name)
            threads_seen.append(torch.get_num_threads())
            assert torch.is_inference_mode_enabled()

        return call

    before = torch.get_num_threads()
    medians = interleaved_latency({"a": run("a"), "b": run("b")}, repeats=5, warmup=2, threads=1)
    assert calls == ["a", "b"] * 7
    assert set(threads_seen) == {1}
    assert torch.get_num_threads() == before
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


def test_inference_mode_can_be_turned_off() -> None:
    seen: list[bool] = []
    interleaved_latency({"a": lambda: seen.append(torch.is_grad_enabled())}, repeats=2, warmup=0, inference=False)
    assert seen == [True, True]


def test_the_thread_count_is_restored_when_a_run_fails() -> None:
    before = torch.get_num_threads()

    def fail() -> None:
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        interleaved_latency({"a": fail}, repeats=1, warmup=0, threads=1)
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
