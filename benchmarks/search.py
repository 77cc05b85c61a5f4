"""Searched vs uniform per-group pruning at half the MACs, each followed by the same recovery.

A ResNet-style CNN (stem and three stages of two basic blocks, 16/32/64 channels or ``--widths``) is
trained on Fashion-MNIST (scikit-learn digits when absent), then pruned to ``--target``
of its MACs two ways, each for ``--seeds`` seeds:

* uniform: ``{pass: prune, target_macs: T}`` (the same ratio for every group, L1);
* searched: ``{pass: search, target_macs: T, seed: s}`` (evolutionary search over the
  per-group ratios, scored by BatchNorm recalibration + held-out accuracy; with
  ``--finetune-steps N`` each candidate is fine-tuned N steps before it is scored; with
  ``--techniques prune lowrank separable`` the search may also factor layers or split them
  into depthwise-separable pairs on top of the pruning);

and both recovered by the same ``{pass: recover, epochs: R, seed: s}`` (the uniform model's
BatchNorm statistics are first re-estimated on 8 training batches, and with
``--finetune-steps`` it is fine-tuned as many steps, as the search does for the model it
hands over). It prints each
run's MACs, proxy and test accuracy, the search's wall time, and the mean ± std of
the test accuracy per method.

    python benchmarks/search.py [--epochs 4] [--recover-epochs 2] [--seeds 3] [--target 0.5] [--workers 1]
                                [--finetune-steps 0] [--widths 16 32 64] [--techniques prune]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tabulate import tabulate

import fxcomp
from fxcomp.recovery import evaluate, recalibrate_batchnorm, short_finetune

from benchmark_data import add_data_arguments, benchmark_setup  # benchmarks/ is on sys.path
from benchmark_models import ResNetSmall


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def _percent(fraction: float | None) -> str:
    return "off budget" if fraction is None else f"{100 * fraction:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of the original model")
    parser.add_argument("--recover-epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the MACs to keep")
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--finetune-steps", type=int, default=0, help="training steps before each candidate is scored")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64], help="channels of the CNN's stages")
    parser.add_argument("--techniques", nargs="+", default=["prune"], help="what the search may do to a layer")
    add_data_arguments(parser)
    args = parser.parse_args()
    data = benchmark_setup(args)
    example = data.test.tensors[0][:1]

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    original = fxcomp.recover(ResNetSmall(data.classes, widths=tuple(args.widths)), data, epochs=args.epochs, lr=0.1, weight_decay=5e-4,
                              seed=args.seed, progress=False).model.eval()
    _, accuracy = evaluate(original, data.test)
    print(f"original ({'/'.join(map(str, args.widths))} channels): {100 * accuracy:.2f}% test accuracy after {args.epochs} epochs ({time.perf_counter() - start:.0f} s)")

    recover = {"pass": "recover", "epochs": args.recover_epochs, "lr": 0.02}
    rows, results = [], {"uniform": [], "searched": []}
    for seed in range(args.seeds):
        methods = {
            "uniform": {"pass": "prune", "target_macs": args.target},
            "searched": {"pass": "search", "target_macs": args.target, "seed": seed, "population": args.population,
                         "generations": args.generations, "workers": args.workers, "progress": False,
                         "finetune_steps": args.finetune_steps, "finetune_lr": args.finetune_lr,
                         "techniques": args.techniques},
        }
        for method, step in methods.items():
            start = time.perf_counter()
            pruned = fxcomp.compress(original, example, {"passes": [step]}, train_data=data.train, val_data=data.val)
            seconds = time.perf_counter() - start
            handed = pruned.model
            if method == "uniform":  # search hands over its model with BatchNorm re-estimated (and fine-tuned); so does uniform
                recalibrate_batchnorm(handed, data.train, batches=8, seed=seed)
                if args.finetune_steps:
                    handed = short_finetune(handed, data.train, steps=args.finetune_steps, lr=args.finetune_lr, seed=seed)
            result = fxcomp.compress(handed, example, {"passes": [{**recover, "seed": seed}]},
                                     train_data=data.train, val_data=data.val)
            _, accuracy = evaluate(result.model.eval(), data.test)
            results[method].append(100 * accuracy)
            plan = pruned.plan[0]["plan"]
            proxy = f"{100 * plan['chosen']['accuracy']:.2f} (uniform {_percent(plan['uniform']['accuracy'])})" if method == "searched" else "-"
            macs = pruned.report.after_totals.macs / pruned.report.before_totals.macs
            evaluated = plan.get("evaluated", "-")
            rows.append([seed, method, f"{macs:.3f}", evaluated, f"{seconds:.0f}", proxy, f"{100 * accuracy:.2f}"])
            print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
            if method == "searched" and plan["chosen"]["rewrites"]:
                print(f"     rewrites chosen: {plan['chosen']['rewrites']}", flush=True)
    print()
    headers = ["seed", "method", "MACs kept", "candidates", "prune/search s", "proxy accuracy %", "test accuracy % after recovery"]
    print(tabulate(rows, headers=headers))
    print()
    summary = [[method, _mean_std(values)] for method, values in results.items()]
    gain = statistics.mean(results["searched"]) - statistics.mean(results["uniform"])
    print(tabulate(summary, headers=["method", f"test accuracy % ({args.seeds} seeds)"]))
    tuned = f"; candidates and uniform fine-tuned {args.finetune_steps} steps (lr {args.finetune_lr}) first" if args.finetune_steps else ""
    print(f"searched − uniform: {gain:+.2f} pp; recovery {args.recover_epochs} epochs each{tuned}; "
          f"search techniques: {', '.join(args.techniques)}; torch {torch.__version__}, {args.threads} threads")


if __name__ == "__main__":
    main()
