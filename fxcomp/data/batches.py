"""Labelled batches from the forms users hold data in: a ``Splits``, a ``TensorDataset``, any
``Dataset``, a ``DataLoader`` or a plain list of ``(inputs, target)`` batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fxcomp.arguments import described, is_whole
from fxcomp.data.splits import Splits
from fxcomp.errors import DataError, TrainingError, UsageError, first_line

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


def _integral(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds integers (not floats, complex numbers or bools)."""
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


def pair(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, target)`` of a labelled batch; a :class:`DataError` for anything else.

    Integer targets of any width (int32 labels from NumPy, uint8) come back as int64, the
    type ``cross_entropy`` takes class indices in.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not all(isinstance(b, torch.Tensor) for b in batch):
        raise DataError("recovery needs labelled batches: each batch must be (inputs, target)")
    x, y = batch
    return x, y.long() if _integral(y) else y


def known_length(data: Any) -> int | None:
    """``len(data)`` when ``data`` can tell it (a DataLoader over an ``IterableDataset`` cannot), else None."""
    try:
        return len(data)
    except TypeError:
        return None


def outputs_on(
    run: Callable[[torch.Tensor], Any], x: torch.Tensor, what: str, *, model: str = "model", fix: str = ""
) -> Any:
    """``run(x)``; a :class:`DataError` naming the ``what`` inputs' shape when the ``model`` (or the
    role given, e.g. "teacher") fails on them, ending with ``fix`` (by default: give inputs it takes)."""
    try:
        return run(x)
    except Exception as error:  # noqa: BLE001 - the model's own error, named with the batch's shape
        raise DataError(
            f"the {model} fails on the {what} inputs ({'×'.join(map(str, x.shape))}): {first_line(error)}; "
            f"{fix or f'give inputs shaped like the {model} expects'}"
        ) from error


def _described(value: Any) -> str:
    if not isinstance(value, torch.Tensor):
        return f"a {type(value).__name__}"
    text = described(value.shape, value.dtype)
    return f"{text} in [{int(value.min())}, {int(value.max())}]" if _integral(value) and value.numel() else text


def check_targets(logits: Any, y: torch.Tensor, what: str) -> None:
    """Raise :class:`TrainingError` unless ``logits`` are (batch, classes) and ``y`` holds one class index per example."""
    classes = logits.shape[-1] if isinstance(logits, torch.Tensor) and logits.dim() == 2 else None
    fits = y.dim() == 1 and _integral(y)
    if classes is None or not fits or len(y) != len(logits) or (len(y) and (y.min() < 0 or y.max() >= classes)):
        raise TrainingError(
            f"the {what} targets do not fit a classifier: the model gives {_described(logits)} and the targets are "
            f"{_described(y)}; give one integer label in [0, {classes or 'classes'}) per example"
        )


def labelled_outputs(
    data: Any, run: Callable[[torch.Tensor], Sequence[torch.Tensor]], what: str, batch_size: int
) -> Iterator[tuple[torch.Tensor, Sequence[torch.Tensor]]]:
    """Per batch of labelled ``data`` (a :class:`Splits` gives its validation part): the targets and ``run``'s
    logits (a list, the final output last), checked to fit each other; the errors name the ``what`` data."""
    for batch in loader(data, batch_size, shuffle=False, split="val"):
        x, y = pair(batch)
        outputs = outputs_on(run, x, what)
        check_targets(outputs[-1], y, what)
        yield y, outputs
