"""What :func:`fxcomp.lower` did: the patterns it lowered, the ones it declined, the layers it left."""

from __future__ import annotations

from collections import Counter
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
        direct_convs: the convolutions computed directly on NHWC values (``node``, and ``form``:
            ``depthwise``, ``pointwise`` or ``dense``).
        kept_convs: with direct convolutions asked for, the ``Conv2d`` layers left as they are
            (``node``, ``reason``).
        autotune: when autotuned, one record per candidate lowering: ``candidate`` (its
            :attr:`layout`), ``channels_last``, ``direct_convs`` (booleans), ``ms`` (median latency on the example inputs, ``None``
            when it failed) and ``failed`` (the error, or ``None``); the report's own
            ``channels_last`` and ``direct_convs`` say which one was kept.
    """

    backend: str
    lowered: list[dict[str, Any]] = field(default_factory=list)
    declined: list[dict[str, Any]] = field(default_factory=list)
    unlowered: list[dict[str, Any]] = field(default_factory=list)
    error: float = 0.0
    channels_last: bool = False
    direct_convs: list[dict[str, str]] = field(default_factory=list)
    kept_convs: list[dict[str, str]] = field(default_factory=list)
    autotune: list[dict[str, Any]] = field(default_factory=list)

    @property
    def layout(self) -> str:
        """The options the model was lowered with: ``as is``, ``channels_last``, ``direct_convs`` or both."""
        return layout_name(self.channels_last, bool(self.direct_convs))

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serializable data (with its :attr:`layout`)."""
        return asdict(self) | {"layout": self.layout}

    def __str__(self) -> str:
        what = _WHOLE_GRAPH.get(self.backend, f"{len(self.lowered)} pattern occurrence(s) replaced by kernels")
        layout = ", channels-last" if self.channels_last else ""
        if self.direct_convs:
            forms = Counter(record["form"] for record in self.direct_convs)
            layout += f", {len(self.direct_convs)} direct convolution(s) ({', '.join(f'{n} {form}' for form, n in sorted(forms.items()))})"
        lines = [f"lowered to backend '{self.backend}': {what}{layout}, output change {self.error:.2e} (relative)"]
        if self.kept_convs:
            lines.append("convolutions left as they are:")
            lines.append(tabulate([(r["node"], r["reason"]) for r in self.kept_convs], headers=("node", "reason"), tablefmt="simple"))
        if self.autotune:
            rows = [
                (r["candidate"], "failed: " + r["failed"] if r["failed"] else f"{r['ms']:.3f}",
                 "kept" if r["candidate"] == self.layout and not r["failed"] else "")
                for r in self.autotune
            ]
            lines.append("autotuned on the example inputs:")
            lines.append(tabulate(rows, headers=("candidate", "median ms", ""), tablefmt="simple"))
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


def layout_options(channels_last: bool, direct_convs: bool) -> list[str]:
    """The names of the layout options that are on, in their fixed order."""
    return [name for name, on in (("channels_last", channels_last), ("direct_convs", direct_convs)) if on]


def layout_name(channels_last: bool, direct_convs: bool) -> str:
    """How a lowering's layout options are named in reports: ``as is``, ``channels_last``, ``direct_convs`` or both."""
    return " + ".join(layout_options(channels_last, direct_convs)) or "as is"


def _shortened(names: list[str], shown: int = 4) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f", … (+{more})" if more > 0 else "")
