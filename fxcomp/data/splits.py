"""Deterministic train / validation / test splits of an image classification data set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from fxcomp.arguments import is_whole
from fxcomp.errors import DataError


@dataclass(frozen=True)
class Splits:
    """A data set cut into train, validation and test parts (tensors of images and labels).

    Attributes:
        name: the data set's name.
        train, val, test: ``TensorDataset`` s of ``(image, label)``; images are float
            ``(1, H, W)`` tensors in [0, 1], labels int64 class indices.
        classes: the number of classes.
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    classes: int

    def loaders(self, batch_size: int = 128, *, seed: int = 0) -> tuple[DataLoader, DataLoader, DataLoader]:
        """Train (shuffled, reproducibly from ``seed``), validation and test loaders."""
        shuffled = DataLoader(
            self.train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        return shuffled, DataLoader(self.val, batch_size=batch_size), DataLoader(self.test, batch_size=batch_size)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        """The first ``batch`` training images, for tracing."""
        return self.train.tensors[0][:batch]


def validation_part(train_data: Any, val_data: Any) -> Any:
    """The validation data training on ``train_data`` uses: ``val_data`` when given, else the
    validation part of a :class:`Splits` that holds one (cut with ``val=0``, it holds none), else None."""
    if val_data is None and isinstance(train_data, Splits) and len(train_data.val):
        return train_data.val
    return val_data


def split(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    val: int,
    test: int | tuple[torch.Tensor, torch.Tensor],
    seed: int,
) -> Splits:
    """Cut ``images``/``labels`` by a permutation fixed by ``seed``: ``val`` (and ``test``) examples, the rest train.

    ``test`` is a count taken from the same pool, or a separate (images, labels) pair.
    """
    separate = isinstance(test, tuple)
    counts = {"val": val} if separate else {"val": val, "test": test}
    for key, count in counts.items():
        if not is_whole(count) or count < 0:
            raise DataError(f"{name}: {key} is a number of examples, a whole number >= 0; got {count!r}")
    held = sum(int(count) for count in counts.values())
    if held >= len(labels):
        raise DataError(f"{name}: cannot hold out {held} of {len(labels)} examples and train on the rest; lower {' or '.join(counts)}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    parts = [order[: int(val)], order[int(val) : held], order[held:]]
    val_set, pool_test, train_set = (TensorDataset(images[p], labels[p]) for p in parts)
    test_set = TensorDataset(*test) if separate else pool_test
    classes = int(labels.max()) + 1
    return Splits(name, train_set, val_set, test_set, classes)
