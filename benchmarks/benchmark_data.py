"""The data the benchmarks train on: Fashion-MNIST, or scikit-learn digits when it is absent."""

from __future__ import annotations

from fxcomp.data import Splits, digits, fashion_mnist
from fxcomp.errors import DataError


def benchmark_data(name: str) -> Splits:
    """``fashion-mnist`` (Debian's ``dataset-fashion-mnist``; digits, with a note, when missing) or ``digits``."""
    if name == "digits":
        return digits()
    try:
        return fashion_mnist()
    except DataError as error:
        print(f"{error}\nfalling back to scikit-learn digits")
        return digits()
