"""Masks that hold chosen entries of a weight at exactly zero, also while the model trains.

A mask is a ``torch.nn.utils.parametrize`` parametrization: the module keeps
the stored tensor as ``parametrizations.<name>.original`` and computes
``<name>`` from it on every access, with the masked entries set to zero. The
masked entries therefore get no gradient, and no optimizer (momentum, weight
decay, Adam) can move them away from zero. Passes that prune, quantize or share
weights add masks with :func:`add_mask`; :func:`strip_masks` bakes them into
plain tensors and :func:`sparsity` reads how many entries are zero.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from fxcomp.errors import SaveError


class Mask(nn.Module):
    """A parametrization returning its input with the entries where ``mask`` is False set to zero.

    ``mask`` is a boolean buffer shaped like the parametrized tensor; ``True`` keeps an entry.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool))

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` where the mask is True, exact zeros elsewhere (also where ``tensor`` is inf or NaN)."""
        return torch.where(self.mask, tensor, 0)

    def right_inverse(self, tensor: torch.Tensor) -> torch.Tensor:
        """What to store when the masked tensor is assigned: the value itself (reading it masks it again)."""
        return tensor


def add_mask(module: nn.Module, name: str, keep: torch.Tensor) -> None:
    """Hold the entries of ``module``'s tensor ``name`` where ``keep`` is False at exactly zero.

    The tensor becomes parametrized with a :class:`Mask`. If it already has one,
    the two are combined (an entry stays only if both keep it) instead of
    stacking a second mask, so pruning again only ever adds zeros.

    Raises ``ValueError`` if ``keep`` is not shaped like the tensor.
    """
    current = getattr(module, name)
    if keep.shape != current.shape:
        raise ValueError(f"a mask of shape {tuple(keep.shape)} cannot mask '{name}' of shape {tuple(current.shape)}")
    keep = keep.detach().to(device=current.device, dtype=torch.bool)
    if parametrize.is_parametrized(module, name):
        for existing in module.parametrizations[name]:
            if isinstance(existing, Mask):
                existing.mask = existing.mask & keep
                return
    give_own_class(module)
    parametrize.register_parametrization(module, name, Mask(keep))


def has_parametrization(module: nn.Module, name: str, kind: type[nn.Module]) -> bool:
    """Whether ``module``'s tensor ``name`` is parametrized by a ``kind`` (a Mask, SharedWeights …)."""
    return parametrize.is_parametrized(module, name) and any(isinstance(s, kind) for s in module.parametrizations[name])


def give_own_class(module: nn.Module) -> None:
    """Before registering a parametrization on an already parametrized ``module``: give it a class of its own.

    Copies of a parametrized module share its generated class, and registering adds a
    property to that class; with a class of its own, the copies are left alone.
    """
    if parametrize.is_parametrized(module):
        shared = type(module)
        module.__class__ = type(shared.__name__, (shared,), {"_fxcomp_own_class": True})


def strip_masks(module: nn.Module) -> nn.Module:
    """Bake every :class:`Mask` (and shared weight, :mod:`fxcomp.passes.sharing`) into its tensor, in place.

    Returns ``module``. Each masked tensor becomes a plain parameter holding the masked values (the
    same ``Parameter`` object, so optimizers stay valid) and its module gets its
    original class back, so the model no longer depends on fxcomp. From then on
    training may move the zeros. Raises :class:`fxcomp.FxcompError` if a masked
    tensor also has parametrizations of another kind, which cannot be kept
    without the mask.
    """
    for path, owner in list(module.named_modules()):
        if not parametrize.is_parametrized(owner):
            continue
        if not any(_ours(step) for chain in owner.parametrizations.values() for step in chain):
            continue
        for name, chain in list(owner.parametrizations.items()):
            others = sorted({type(step).__name__ for step in chain if not _ours(step)})
            if others:
                where = f"{path}.{name}" if path else name
                raise SaveError(
                    f"'{where}' is also parametrized by {', '.join(others)}, which strip_masks cannot keep; "
                    f"bake them all with torch.nn.utils.parametrize.remove_parametrizations(module, '{name}')"
                )
        _bake(owner)
    return module


def class_before_parametrizations(module: nn.Module) -> type[nn.Module]:
    """``module``'s class without the classes parametrizing adds (torch's and :func:`give_own_class`'s)."""
    cls = type(module)
    while cls.__module__ == parametrize.__name__ or "_fxcomp_own_class" in vars(cls):
        cls = cls.__bases__[0]
    return cls


def _ours(step: nn.Module) -> bool:
    return isinstance(step, Mask) or getattr(step, "fxcomp_parametrization", False)


@torch.no_grad()
def _bake(owner: nn.Module) -> None:
    """Replace every (masked) parametrized tensor of ``owner`` by a plain one holding its value.

    torch's ``remove_parametrizations`` deletes properties from the module's generated
    class, which deep copies of the module share; this restores the original class on
    this module alone.
    """
    original_class = class_before_parametrizations(owner)
    baked = {}
    for name, chain in owner.parametrizations.items():
        stored = chain.original
        stored.data = chain().detach().clone()
        if any(getattr(step, "freezes_original", False) for step in chain):
            stored.requires_grad_(True)  # shared weights froze it while their centroids trained
        baked[name] = stored
    del owner._modules["parametrizations"]
    owner.__class__ = original_class
    for name, parameter in baked.items():
        owner._parameters[name] = parameter


@torch.no_grad()
def parameter_values(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter of ``module`` once, as ``(qualified name, value)``.

    A parametrized parameter (a masked weight) is listed under its own name
    (``conv1.weight``, not ``conv1.parametrizations.weight.original``) with the
    value the model computes from it, i.e. with its masked entries zero.
    """
    seen: set[int] = set()
    for path, owner in module.named_modules():
        if isinstance(owner, parametrize.ParametrizationList):
            continue
        prefix = f"{path}." if path else ""
        entries = [(name, p, p) for name, p in owner._parameters.items() if p is not None]
        if parametrize.is_parametrized(owner):
            for name, chain in owner.parametrizations.items():
                stored = [p for p in chain._parameters.values() if p is not None]
                if stored:
                    entries.append((name, stored[0], getattr(owner, name)))
        for name, stored, value in entries:
            if id(stored) not in seen:
                seen.add(id(stored))
                yield prefix + name, value.detach()


def sparsity(module: nn.Module) -> dict[str, float]:
    """The fraction of exactly-zero entries of each parameter of ``module``, by qualified name.

    Masked weights are read as the model computes them and named as the module
    names them (``conv1.weight``); a shared parameter is listed once; an empty
    one counts as 0.0.
    """
    return {
        name: (value.numel() - int(value.count_nonzero())) / value.numel() if value.numel() else 0.0
        for name, value in parameter_values(module)
    }
