"""Labelled batches from the forms users hold data in: a ``Splits``, a ``TensorDataset``, any
``Dataset``, a ``DataLoader`` or a plain list of ``(inputs, target)`` batches."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fxcomp.arguments import is_whole
from fxcomp.data.splits import Splits
from fxcomp.errors import DataError, UsageError

Batches = Iterable[Any]


class _TensorBatches:
    """Batches sliced straight from a ``TensorDataset``'s tensors (a DataLoader would index item by item).

    Shuffled batches draw a new permutation each pass from a generator seeded once.
    """

    def __init__(self, data: TensorDataset, batch_size: int, shuffle: bool, seed: int) -> None:
        self.tensors, self.batch_size, self.shuffle = data.tensors, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.tensors[0]) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        count = len(self.tensors[0])
        order = torch.randperm(count, generator=self.generator) if self.shuffle else torch.arange(count)
        for index in order.split(self.batch_size) if count else ():  # an empty tensor splits into one empty part
            yield tuple(t[index] for t in self.tensors)


def loader(data: Any, batch_size: int, *, shuffle: bool, seed: int = 0, split: str = "train") -> Batches:
    """Batches of ``(inputs, target)`` from a DataLoader / iterable of batches, or a Dataset.

    A :class:`Splits` gives its ``split`` part: ``"train"`` where the batches train or
    re-estimate statistics, ``"val"`` where they judge the model.
    """
    if isinstance(data, Splits):
        data = {"train": data.train, "val": data.val}[split]
    if isinstance(data, Dataset) and (not is_whole(batch_size) or batch_size < 1):
        raise UsageError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if isinstance(data, TensorDataset):
        return _TensorBatches(data, int(batch_size), shuffle, seed)
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
    if isinstance(data, Iterable) and not isinstance(data, torch.Tensor):
        return data
    raise DataError(f"training data must be a Dataset, a DataLoader or a list of (inputs, target) batches; got {type(data).__name__}")


def pair(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, target)`` of a labelled batch; a :class:`DataError` for anything else."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not all(isinstance(b, torch.Tensor) for b in batch):
        raise DataError("recovery needs labelled batches: each batch must be (inputs, target)")
    return batch[0], batch[1]
