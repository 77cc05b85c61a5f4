"""What :func:`fxcomp.lower` did: the patterns it lowered, the ones it declined, the layers it left."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tabulate import tabulate


_WHOLE_GRAPH = {"eager": "the graph as it is", "inductor": "the whole graph compiled by torch.compile"}


@dataclass
class LoweringReport:
    """The outcome of lowering a graph to one backend.

    Attributes:
        backend: the backend's name.
        lowered: one record per replaced pattern occurrence: ``pattern``, ``nodes`` (qualified
            names of the nodes replaced), ``kernel`` (the kernel module's path in the lowered
            graph and its class) and ``error`` (the relative change of the replaced value on
            the example inputs).
        declined: occurrences a lowering recognized but did not lower: ``pattern``, ``nodes``, ``reason``.
        unlowered: layers with weights that no lowering replaced, grouped by ``kind`` (class and
            weight storage) with their ``nodes``: they run as they are.
        error: the relative change of the model's outputs on the example inputs.
        channels_last: whether the 4-D weights and values are stored channels-last.
    """

    backend: str
    lowered: list[dict[str, Any]] = field(default_factory=list)
    declined: list[dict[str, Any]] = field(default_factory=list)
    unlowered: list[dict[str, Any]] = field(default_factory=list)
    error: float = 0.0
    channels_last: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serializable data."""
        return asdict(self)

    def __str__(self) -> str:
        what = _WHOLE_GRAPH.get(self.backend, f"{len(self.lowered)} pattern occurrence(s) replaced by kernels")
        layout = ", channels-last" if self.channels_last else ""
        lines = [f"lowered to backend '{self.backend}': {what}{layout}, output change {self.error:.2e} (relative)"]
        if self.lowered:
            rows = [(r["pattern"], ", ".join(r["nodes"]), r["kernel"], f"{r['error']:.1e}") for r in self.lowered]
            lines.append(tabulate(rows, headers=("pattern", "nodes", "kernel", "error"), tablefmt="simple"))
        if self.declined:
            rows = [(r["pattern"], ", ".join(r["nodes"]), r["reason"]) for r in self.declined]
            lines.append("recognized but not lowered:")
            lines.append(tabulate(rows, headers=("pattern", "nodes", "reason"), tablefmt="simple"))
        if self.unlowered:
            rows = [(r["kind"], len(r["nodes"]), _shortened(r["nodes"])) for r in self.unlowered]
            lines.append("left as they are (no lowering matches them):")
            lines.append(tabulate(rows, headers=("layer kind", "count", "nodes"), tablefmt="simple"))
        return "\n".join(lines)


def _shortened(names: list[str], shown: int = 4) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f", … (+{more})" if more > 0 else "")
