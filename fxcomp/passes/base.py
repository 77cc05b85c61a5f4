"""The contract every compression pass follows: validated options, plan, then apply."""

from __future__ import annotations

import abc
import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize

from fxcomp.passes.options import Option, validate_options
from fxcomp.tracing import qualname

if TYPE_CHECKING:
    from fxcomp.plugin.host import Plugins


@dataclass
class PassContext:
    """What a pass may use besides the graph.

    Attributes:
        example_inputs: the inputs the model was traced and is verified with.
        calib_data: batches for data-driven passes (importance from activations …).
        plugins: the loaded plugins.
        train_data, val_data: labelled data for passes that train (``recover``).
        original: the model before any pass of the recipe (an annotated ``GraphModule``),
            a fresh copy for each pass that sets ``uses_original`` (a distillation teacher);
            ``None`` for the others.
        records: the plan records of the recipe's earlier passes (as in ``result.plan``).
    """

    example_inputs: tuple[torch.Tensor, ...]
    calib_data: Any
    plugins: Plugins
    train_data: Any = None
    val_data: Any = None
    original: fx.GraphModule | None = None
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PassResult:
    """What :meth:`Pass.apply` returns: the rewritten graph, whether anything changed, and statistics."""

    graph_module: fx.GraphModule
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckContext:
    """What a plugin verification check receives besides the rewritten graph.

    ``tolerance`` is the largest relative output change the pass promised (``None``: no
    promise), so a check that looks at values of its own (an early exit's logits) can hold
    the pass to it too. ``state`` is the check's own dict, kept across the passes of one
    :func:`fxcomp.compress` call; it is first filled by a run on the model before any pass,
    where ``pass_name`` is ``None``.
    """

    pass_name: str | None
    example_inputs: tuple[torch.Tensor, ...]
    outputs: Any
    reference_outputs: Any
    tolerance: float | None = None
    state: dict[str, Any] = field(default_factory=dict)


class Pass(abc.ABC):
    """A compression pass.

    Subclasses set:

    * ``name``: how recipes refer to the pass;
    * ``schema``: its options, each an :class:`fxcomp.Option` (validated when the pass is built);
    * ``tolerance``: the largest relative output change the pass promises, or ``None`` when
      it promises no exactness. The pipeline checks the promise after every run. A pass
      whose exactness depends on what it planned may set ``self.tolerance`` in :meth:`plan`;
    * ``uses_original``: whether the pass needs the model as it was before the recipe
      (``context.original``), e.g. as a distillation teacher.

    and implement :meth:`plan`, which decides without changing anything and returns a
    JSON-serializable description, and :meth:`apply`, which carries a plan out.
    """

    name: ClassVar[str]
    schema: ClassVar[Mapping[str, Option]] = {}
    tolerance: float | None = None
    uses_original: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = validate_options(self.schema, options, self.name)

    @abc.abstractmethod
    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        """Decide what to rewrite in ``gm``, without changing it. The result must be JSON-serializable."""

    @abc.abstractmethod
    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        """Carry out ``plan`` on ``gm``, which the pass may change in place, and return the result."""

    def config(self) -> dict[str, Any]:
        """The recipe entry that builds this pass."""
        return {"pass": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({options})"


def matches(qualified_name: str, patterns: Sequence[str]) -> bool:
    """Whether ``qualified_name`` matches any of the glob ``patterns``."""
    return any(fnmatch.fnmatchcase(qualified_name, pattern) for pattern in patterns)


def selected_modules(
    gm: fx.GraphModule, types: tuple[type[nn.Module], ...], include: Sequence[str], exclude: Sequence[str]
) -> Iterator[tuple[fx.Node, str, nn.Module]]:
    """``(node, qualified name, module)`` for each module of ``types`` a recipe's globs select.

    A module called several times is given once, with its first call.
    """
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in seen:
            continue
        seen.add(node.target)
        module = gm.get_submodule(node.target)
        name = qualname(node)
        if isinstance(module, types) and matches(name, include) and not matches(name, exclude):
            yield node, name, module


def weight_skip_reason(module: nn.Module, holders: Mapping[int, int]) -> str | None:
    """Why a pass that rewrites a layer's weight entry by entry must leave ``module``'s ``weight`` alone, or None.

    ``holders`` comes from :func:`fxcomp.passes.parameter_holders` on the graph module. An
    empty weight has nothing to rewrite, and a weight another module holds too (tied
    weights, an embedding reused as the output layer) would change under both names.
    """
    stored = module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else module.weight
    if stored.numel() == 0:
        return "its weight is empty"
    if holders.get(id(stored), 0) > 1:
        return "its weight is shared with another module"
    return None
