"""Channel labels: which producer channel each element of a tensor belongs to.

Every output channel of a prunable layer gets a unique integer label. A
tensor's labels are kept in *compact* form: an int64 tensor with the value's
number of dimensions, full size along the axes that carry labels and size 1
along the others (a conv output ``N×C×H×W`` has labels of shape ``1×C×1×1``).
``-1`` marks elements that belong to no prunable channel (model inputs,
constants).

Data-movement operations (cat, split, view, permute, channel shuffle, …) are
applied to the labels themselves, expanded to the value's real shape: torch
then works out where every channel goes, however the operation is written.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NO_LABEL = -1


def compact(labels: torch.Tensor) -> torch.Tensor:
    """Shrink every axis along which ``labels`` is constant to size 1."""
    for axis in range(labels.dim()):
        if labels.shape[axis] <= 1:
            continue
        first = labels.narrow(axis, 0, 1)
        if labels.stride(axis) == 0 or torch.equal(labels, first.expand_as(labels)):
            labels = first
    return labels.contiguous() if labels.numel() < 2**16 else labels.clone()


def expand(labels: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The compact ``labels`` broadcast (without copying) to the value's real ``shape``."""
    return labels.expand(tuple(shape))  # a tuple: a 0-dim value has no sizes to unpack


def unlabelled(ndim: int) -> torch.Tensor:
    """Compact labels of a tensor that carries no prunable channel."""
    return torch.full((1,) * ndim, NO_LABEL, dtype=torch.int64)


def fresh(start: int, count: int, axis: int, ndim: int) -> torch.Tensor:
    """Compact labels ``start … start+count-1`` along ``axis`` of an ``ndim``-dimensional value."""
    shape = [1] * ndim
    shape[axis] = count
    return torch.arange(start, start + count, dtype=torch.int64).reshape(shape)


def labelled_axes(labels: torch.Tensor) -> list[int]:
    """Axes of a compact label tensor that carry more than one value or any label."""
    return [axis for axis in range(labels.dim()) if labels.shape[axis] > 1]


def is_unlabelled(labels: torch.Tensor) -> bool:
    """Whether no element carries a label."""
    return bool((labels == NO_LABEL).all())


def along(labels: torch.Tensor, axis: int, size: int) -> torch.Tensor | None:
    """The 1-D labels along ``axis`` (length ``size``), or None if labels also vary along other axes."""
    axis = axis % labels.dim() if labels.dim() else 0
    others = [a for a in labelled_axes(labels) if a != axis]
    if others:
        return None
    line = labels.reshape(-1) if labels.dim() else labels.reshape(1)
    return line.expand(size) if line.numel() == 1 else line
