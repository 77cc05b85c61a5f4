"""The contract of a lowering: find one graph pattern, build the kernel module that replaces it.

Plugins register lowerings per backend through the ``fxcomp_register_lowerings``
hook: ``register("triton", "lowrank_linear", LowRankLinearLowering())``.
:func:`fxcomp.lower` offers every node of the graph, in order, to every lowering
of the backend; a lowering answers with the nodes of its pattern starting there
(a :class:`Matched`), with a :class:`Declined` when it recognizes its pattern
but cannot lower this occurrence, or with ``None``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx as fx
import torch.nn as nn


@dataclass
class Matched:
    """An occurrence of a pattern: the nodes the kernel replaces, in graph order.

    The kernel module built for it is called with the values the nodes read from
    outside the match (in the order the nodes first read them) and must return
    the last node's value. Every other node's value may be used only inside the match.
    """

    nodes: list[fx.Node]


@dataclass
class Declined:
    """An occurrence of a lowering's pattern that it will not lower, and why (shown in the report)."""

    nodes: list[fx.Node]
    reason: str


class Lowering(abc.ABC):
    """Replaces one graph pattern by a kernel module.

    Subclasses implement :meth:`match` and :meth:`build`, and may set:

    * ``tolerance``: the largest relative change of the replaced value the kernel may
      introduce (summation order, lower-precision operands). :func:`fxcomp.lower`
      checks every replacement against it on the example inputs;
    * :meth:`unavailable`: why the kernels cannot run on this machine, if they cannot.
    """

    tolerance: float = 1e-4

    def unavailable(self) -> str | None:
        """``None`` when the kernel can run here, else a one-line message saying what to change."""
        return None

    @abc.abstractmethod
    def match(self, gm: fx.GraphModule, node: fx.Node) -> Matched | Declined | None:
        """The occurrence of the pattern whose first node is ``node``, if there is one.

        Decide only; do not change ``gm``.
        """

    @abc.abstractmethod
    def build(self, gm: fx.GraphModule, nodes: Sequence[fx.Node]) -> nn.Module:
        """The kernel module computing what the matched ``nodes`` compute (see :class:`Matched`)."""


def module_at(gm: fx.GraphModule, node: fx.Node, kinds: type | tuple[type, ...]) -> nn.Module | None:
    """The module ``node`` calls when it is a ``call_module`` node of one of ``kinds``, else ``None``."""
    if node.op != "call_module":
        return None
    module = gm.get_submodule(str(node.target))
    return module if isinstance(module, kinds) else None


def sole_user(node: fx.Node) -> fx.Node | None:
    """The only node using ``node``'s value, when exactly one node uses it once."""
    users = list(node.users)
    if len(users) != 1:
        return None
    user = users[0]
    uses = sum(arg is node for arg in (*user.args, *user.kwargs.values()))
    return user if uses == 1 else None
