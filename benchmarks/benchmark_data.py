"""The data the benchmarks train on: Fashion-MNIST, or scikit-learn digits when it is absent."""

from __future__ import annotations

import argparse

import torch

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


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--threads`` and ``--seed``, as the training benchmarks take them."""
    parser.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def benchmark_setup(args: argparse.Namespace) -> Splits:
    """Fix the thread count from ``args`` and load the data set they name."""
    torch.set_num_threads(args.threads)
    return benchmark_data(args.data)
