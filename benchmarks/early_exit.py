"""Early exits on a ResNet-style CNN: accuracy and mean MACs per sample against thresholds, and batch-1 latency.

1. Train a ResNet-style CNN (stem + three stages of two basic blocks, 16/32/64 channels)
   on Fashion-MNIST (scikit-learn digits when it is absent): the original model.
2. ``fxcomp.compress`` with ``early_exit`` (``--num-exits`` exits at even fractions of
   the MACs, heads average-pooling to ``--head-pool``² and classifying linearly) and
   ``recover`` training the heads with the backbone frozen (SDN-style), so the final
   output stays the original's.
3. ``fxcomp.calibrate_exits`` on the validation split with ``--max-drop`` (0.003 by
   default: a margin below the 0.5 pp target, since thresholds fitted on 5,000
   validation images lose a little on unseen ones); then, on the
   test split, accuracy, share of samples per exit and mean MACs per sample for the
   calibrated thresholds and for a sweep of one confidence threshold on every exit,
   each measured by running the early-exit model (``fxcomp.exit_statistics``).
4. CPU latency at batch 1 over ``--latency-samples`` test images, eager: the original
   model against the early-exit model with the calibrated thresholds; one process, fixed
   threads, the two interleaved, median of ``--repeats`` passes over the images.

    python benchmarks/early_exit.py [--data fashion-mnist|digits] [--epochs 6] [--head-epochs 4]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
from tabulate import tabulate

import fxcomp
from fxcomp.dynamic.calibrate import HEADERS
from fxcomp.recovery import evaluate, evaluate_outputs
from fxcomp.report import exit_table
from fxcomp.timing import interleaved_latency

from benchmark_data import add_data_arguments, benchmark_setup  # benchmarks/ is on sys.path
from benchmark_models import ResNetSmall


def _batch1_latency(original: nn.Module, early: fxcomp.EarlyExitModel, images: torch.Tensor, args) -> dict[str, float]:
    singles = [image.unsqueeze(0) for image in images]

    def run(model: nn.Module):
        return lambda: [model(x) for x in singles]

    return interleaved_latency({"original": run(original), "early exit": run(early)}, repeats=args.repeats, warmup=1, threads=args.threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the original model")
    parser.add_argument("--head-epochs", type=int, default=4, help="training epochs of the exit heads")
    parser.add_argument("--num-exits", type=int, default=3)
    parser.add_argument("--head-pool", type=int, default=7, help="pool each exit's input to this size per axis")
    parser.add_argument("--head-hidden", type=int, default=0, help="hidden linear layer width in each head (0: none)")
    parser.add_argument(
        "--max-drop", type=float, default=0.003,
        help="accuracy drop allowed on validation data (below the 0.005 target: a margin for the test split)",
    )  # fmt: skip
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    add_data_arguments(parser)
    args = parser.parse_args()
    data = benchmark_setup(args)
    example = data.test.tensors[0][:8]

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    trained = fxcomp.recover(ResNetSmall(data.classes), data, epochs=args.epochs, lr=0.1, weight_decay=5e-4, seed=args.seed)
    original = trained.model.eval()
    _, test_accuracy = evaluate(original, data.test)
    print(f"original: test accuracy {100 * test_accuracy:.2f}% after {args.epochs} epochs ({time.perf_counter() - start:.0f} s)")

    recipe = {
        "passes": [
            {"pass": "early_exit", "num_exits": args.num_exits, "head_pool": args.head_pool, "head_hidden": args.head_hidden},
            {"pass": "recover", "epochs": args.head_epochs, "lr": 0.01, "optimizer": "adam", "exits": {"train": "heads"}},
        ]
    }
    start = time.perf_counter()
    result = fxcomp.compress(original, example, recipe, train_data=data.train, val_data=data.val)
    early = result.model.eval()
    print(f"exits added and trained in {time.perf_counter() - start:.0f} s\n")
    print(exit_table(early.exit_plan()))
    _, exit_accuracies = evaluate_outputs(early, data.test)
    print("\ntest accuracy per exit (every sample at every exit): " + ", ".join(f"{100 * a:.2f}%" for a in exit_accuracies))

    calibration = fxcomp.calibrate_exits(early, data.val, max_accuracy_drop=args.max_drop)
    print(f"\ncalibration on the validation split ({len(data.val)} images):\n{calibration}\n")

    calibrated = early.thresholds
    rows = []
    for threshold in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999):
        early.thresholds = [threshold] * early.num_exits
        rows.append(["sweep", *fxcomp.exit_statistics(early, data.test).row()])
    early.thresholds = calibrated
    chosen = fxcomp.exit_statistics(early, data.test)
    rows.append(["calibrated", *chosen.row()])
    print(f"test split ({len(data.test)} images), original accuracy {100 * test_accuracy:.2f}%:")
    print(tabulate(rows, headers=["setting", *HEADERS]))

    images = data.test.tensors[0][: args.latency_samples]
    medians = _batch1_latency(original, early, images, args)
    per_image = {name: 1e3 * seconds / len(images) for name, seconds in medians.items()}
    print(
        f"\nbatch-1 latency over {len(images)} test images ({args.threads} threads, median of {args.repeats}): "
        f"original {per_image['original']:.3f} ms/image, early exit {per_image['early exit']:.3f} ms/image, "
        f"speedup {medians['original'] / medians['early exit']:.2f}×"
    )
    print(
        f"calibrated thresholds on test: accuracy {100 * chosen.accuracy:.2f}% "
        f"({100 * (chosen.accuracy - test_accuracy):+.2f} pp), {100 * chosen.macs_saving:.1f}% fewer mean MACs per sample"
    )


if __name__ == "__main__":
    main()
