"""A per-layer latency lookup table, measured on this machine once and cached in a JSON file.

A model's latency is estimated as the sum of its convolution and linear layers' latencies
(each looked up by its configuration: kind, channels, kernel, stride, padding, dilation,
groups, input shape) plus the rest of the model, measured once at full width and held
fixed. A configuration not in the table is measured (median of interleaved runs after
warm-up, inference mode, fixed threads) and added; the table is written back, so a later
search — of any model with the same layers — measures nothing twice. Entries are keyed by
the thread count and torch version too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from fxcomp import RecipeError, TensorSpec, interleaved_latency, node_info

_REPEATS = 7
_WARMUP = 5


def _layer_key(module: nn.Module, spec: TensorSpec, threads: int) -> str | None:
    """The table key of a conv or linear layer applied to an input of ``spec``, or None for other modules."""
    shape = "x".join(map(str, spec.shape))
    base = f"torch {torch.__version__}|threads {threads}|input {shape}"
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        geometry = f"k{module.kernel_size} s{module.stride} p{module.padding} d{module.dilation} g{module.groups}"
        return f"{base}|{type(module).__name__} {module.in_channels}->{module.out_channels} {geometry} bias {module.bias is not None}"
    if isinstance(module, nn.Linear):
        return f"{base}|Linear {module.in_features}->{module.out_features} bias {module.bias is not None}"
    return None


def _time(run: Any, threads: int, repeats: int = _REPEATS) -> float:
    """Median seconds of ``repeats`` runs of ``run()`` under inference mode with ``threads`` threads."""
    return interleaved_latency({"run": run}, repeats=repeats, warmup=_WARMUP, threads=threads)["run"]


class LatencyTable:
    """Layer latencies in milliseconds by configuration, backed by a JSON file (or only memory)."""

    def __init__(self, path: str | None, threads: int) -> None:
        self.path, self.threads = (Path(path) if path else None), threads
        self.entries: dict[str, float] = self._read() if self.path and self.path.exists() else {}
        self.measured = 0

    def _read(self) -> dict[str, float]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            entries, reason = None, f" ({type(error).__name__}: {error})"
        else:
            reason = ""
        if not isinstance(entries, dict) or not all(isinstance(v, (int, float)) for v in entries.values()):
            raise RecipeError(f"search.latency_table: '{self.path}' is not a latency table{reason}; delete it to rebuild it")
        return entries

    def layer_ms(self, module: nn.Module, spec: TensorSpec) -> float | None:
        """The latency of ``module`` on an input of ``spec`` (measured when new), None if it is no conv / linear."""
        key = _layer_key(module, spec, self.threads)
        if key is None:
            return None
        if key not in self.entries:
            x = torch.randn(spec.shape)
            self.entries[key] = 1e3 * _time(lambda: module(x), self.threads)
            self.measured += 1
        return self.entries[key]

    def layers_ms(self, gm: fx.GraphModule) -> float:
        """The summed table latency of ``gm``'s conv and linear layers."""
        total = 0.0
        for node in gm.graph.find_nodes(op="call_module"):
            spec = node_info(node).inputs[0] if node_info(node).inputs else None
            if isinstance(spec, TensorSpec):
                total += self.layer_ms(gm.get_submodule(str(node.target)), spec) or 0.0
        return total

    def save(self) -> None:
        """Write the table back to its file (when it has one)."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.entries, indent=1, sort_keys=True))


def model_ms(gm: fx.GraphModule, threads: int) -> float:
    """The measured latency of the whole model on its traced example input shapes."""
    inputs = [torch.randn(node_info(node).output.shape) for node in gm.graph.find_nodes(op="placeholder")]
    with torch.no_grad():
        return 1e3 * _time(lambda: gm(*inputs), threads, repeats=3 * _REPEATS)
