"""Deep Compression of LeNet-300-100 and LeNet-5 on Fashion-MNIST with the shipped recipe.

Each model is trained (``--epochs``, SGD with Nesterov momentum, cosine rate), then
``fxcomp.compress`` runs ``examples/recipes/deep_compression.yaml`` (iterative global
magnitude pruning with fine-tuning, k-means weight sharing, centroid fine-tuning) and
the result is saved with the recipe's codec. The saved file is loaded back and its
test accuracy measured, so the figures are those of the file, not of the model in
memory. Printed: accuracy before and after, the codec's per-layer table (weights
kept, bits, bytes and compression vs float32 before and after Huffman coding), and
the file sizes.

    python benchmarks/deep_compression.py [--data fashion-mnist|digits] [--epochs 10] [--model lenet300|lenet5|all] [--recipe PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

import fxcomp
from fxcomp.recovery import evaluate

from benchmark_data import add_data_arguments, benchmark_setup  # benchmarks/ is on sys.path
from benchmark_models import LeNet5, LeNet300

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "recipes" / "deep_compression.yaml"


def run(name: str, model: nn.Module, data, args) -> None:
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    original = fxcomp.recover(model, data, epochs=args.epochs, lr=args.lr, progress=False, seed=args.seed).model.eval()
    _, before = evaluate(original, data.test)
    params = sum(p.numel() for p in original.parameters())
    print(f"\n== {name}: {params:,} parameters, test accuracy {100 * before:.2f}% ({time.perf_counter() - start:.0f} s)")

    start = time.perf_counter()
    example = data.test.tensors[0][:8]
    result = fxcomp.compress(original, example, args.recipe, train_data=data.train, val_data=data.val)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.fxc")
        report = result.save(path)
        loaded = fxcomp.load(path)
        coded_size = os.path.getsize(path)
        plain = os.path.join(directory, "plain.fxc")
        fxcomp.save(fxcomp.trace(original, example), plain)
        plain_size = os.path.getsize(plain)
    _, after = evaluate(loaded, data.test)
    print(f"compressed in {time.perf_counter() - start:.0f} s; test accuracy of the saved file {100 * after:.2f}% ({100 * (after - before):+.2f} pp)\n")
    print(report)
    dense, coded, huffman = report.totals()
    print(
        f"\n{name}: {dense / 1024:.1f} KB of float32 parameters → {coded / 1024:.1f} KB coded ({report.ratio_before_huffman:.1f}×), "
        f"{huffman / 1024:.1f} KB with Huffman ({report.ratio:.1f}×); file {plain_size / 1024:.1f} KB → {coded_size / 1024:.1f} KB "
        f"({plain_size / coded_size:.1f}×, including the graph description and container)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--model", default="all", choices=["lenet300", "lenet5", "all"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="a variant of the shipped recipe to try")
    args = parser.parse_args()
    data = benchmark_setup(args)
    side = data.train.tensors[0].shape[-1]
    print(f"recipe: {args.recipe}")
    if args.model in ("lenet300", "all"):
        run("LeNet-300-100", LeNet300(side * side, data.classes), data, args)
    if args.model in ("lenet5", "all"):
        if side < 28:
            print(f"\nLeNet-5 needs images of at least 28×28; these are {side}×{side}, skipped")
        else:
            run("LeNet-5", LeNet5(side, data.classes), data, args)


if __name__ == "__main__":
    main()
