"""Offline data sets for recovery, tests and benchmarks; nothing is downloaded.

* :func:`digits`: scikit-learn's 8×8 digits (ships inside scikit-learn);
* :func:`fashion_mnist` and :func:`mnist`: the standard IDX ``.gz`` files from a directory
  (Fashion-MNIST defaults to Debian's ``dataset-fashion-mnist`` location).

Each returns :class:`Splits`: deterministic train / validation / test tensor data sets.
:func:`known_length` is ``len(data)`` when the data can tell it; :func:`validation_part`
the validation data training uses (a ``Splits`` supplies its own when it holds any).
"""

from fxcomp.data.batches import known_length
from fxcomp.data.digits import digits
from fxcomp.data.idx import FASHION_MNIST_DIR, fashion_mnist, mnist, read_idx
from fxcomp.data.splits import Splits, validation_part

__all__ = ["FASHION_MNIST_DIR", "Splits", "digits", "fashion_mnist", "known_length", "mnist", "read_idx", "validation_part"]
