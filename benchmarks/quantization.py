"""Quantizing a trained CNN (LeNet-5) on Fashion-MNIST: int8 static post-training quantization and weight-only schemes.

LeNet-5 is trained ``--epochs`` epochs; then each setting runs through ``fxcomp.compress``
and is evaluated on the test split:

* ``int8`` (per-channel int8 weights, per-tensor 8-bit activations at every layer's
  input) calibrated on ``--calib-images`` training images, once per observer;
* ``int8_weight_only`` and ``int4_weight_only`` (groups of ``--group-size``);
* ``ternary`` and ``binary`` weights (first and last layers kept in float), before and
  after ``--qat-epochs`` epochs of quantization-aware training through ``recover``.

Every setting ends with ``convert`` (integers stored, exact) and is saved with
``fxcomp.save``; the table gives the file size next to the float model's.

    python benchmarks/quantization.py [--data fashion-mnist|digits] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from tabulate import tabulate

import fxcomp
from fxcomp.recovery import evaluate

from benchmark_data import add_data_arguments, benchmark_setup  # benchmarks/ is on sys.path
from benchmark_models import LeNet5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--qat-epochs", type=int, default=2)
    args = parser.parse_args()
    data = benchmark_setup(args)
    if data.train.tensors[0].shape[-1] < 28:
        raise SystemExit("LeNet-5 needs images of at least 28×28; run with Fashion-MNIST")
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    original = fxcomp.recover(LeNet5(28, data.classes), data, epochs=args.epochs, lr=args.lr, progress=False, seed=args.seed).model.eval()
    _, base = evaluate(original, data.test)
    print(f"LeNet-5 trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s: test accuracy {100 * base:.2f}%\n")
    example = data.test.tensors[0][:8]
    images = data.train.tensors[0][: args.calib_images]
    calib = list(images.split(128))
    inner = ["conv2", "fc1"]  # binary / ternary keep the first and last layers in float
    settings = [
        *[(f"int8, {obs} observer", {"scheme": "int8", "observer": obs}, 0) for obs in ("minmax", "moving_average", "percentile")],
        ("int8 weight-only", {"scheme": "int8_weight_only"}, 0),
        (f"int4 weight-only, groups of {args.group_size}", {"scheme": "int4_weight_only", "group_size": args.group_size}, 0),
        ("ternary (conv2, fc1)", {"scheme": "ternary", "include": inner}, 0),
        (f"ternary (conv2, fc1) + {args.qat_epochs} epochs QAT", {"scheme": "ternary", "include": inner}, args.qat_epochs),
        ("binary (conv2, fc1)", {"scheme": "binary", "include": inner}, 0),
        (f"binary (conv2, fc1) + {args.qat_epochs} epochs QAT", {"scheme": "binary", "include": inner}, args.qat_epochs),
    ]
    directory = tempfile.mkdtemp()
    float_path = os.path.join(directory, "float.fxc")
    fxcomp.save(fxcomp.trace(original, example), float_path)
    rows = [["float", f"{100 * base:.2f}", "", "", f"{os.path.getsize(float_path) / 1024:.1f}"]]
    for label, options, qat in settings:
        passes = [{"pass": "quantize", **options}]
        if qat:
            passes.append({"pass": "recover", "epochs": qat, "lr": 0.01})
        passes.append({"pass": "convert"})
        result = fxcomp.compress(
            original, example, {"passes": passes}, calib_data=calib, train_data=data.train, val_data=data.val
        )
        path = os.path.join(directory, "quantized.fxc")
        fxcomp.save(result.model, path)
        _, accuracy = evaluate(fxcomp.load(path), data.test)
        errors = result.plan[0]["stats"]["relative_error"]
        size = f"{os.path.getsize(path) / 1024:.1f}"
        rows.append([label, f"{100 * accuracy:.2f}", f"{100 * (accuracy - base):+.2f}", f"{max(errors.values()):.4f}", size])
    headers = ["setting", "test accuracy %", "vs float (pp)", "largest weight error", "file KB"]
    print(tabulate(rows, headers=headers))
    print(f"\nfloat: {100 * base:.2f}%; int8 calibrated on {len(images)} training images in batches of 128")


if __name__ == "__main__":
    main()
