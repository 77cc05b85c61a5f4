"""Does pruning's MACs reduction turn into CPU speed? ResNet-50 pruned to ~26% of its MACs.

torch-pruning's channel ratio 0.5 takes ResNet-50 from 4.12 to 1.07 GMACs; this
prunes it to the same fraction (``target_macs: 0.26``, L1 importance) and
measures eager CPU latency of the original and the pruned model at batch 1 and
16: one process, fixed threads, inference mode, the two models interleaved,
median after warm-up. It prints the realized speedup divided by the MACs
reduction (1.0 = latency falls exactly as MACs do).

``--fold-bn`` folds BatchNorm into the convolutions of *both* models before
timing, so the comparison still isolates pruning while neither pays for
separate BatchNorm calls. ``--lower inductor`` lowers both models with
``fxcomp.lower`` (torch.compile, compiled once per batch size) before timing;
``--channels-last`` lowers both with ``channels_last=True`` (NHWC weights and values);
``--autotune`` lowers both with ``autotune=True`` (the fastest of the four combinations of
channels-last and direct convolutions, timed per model and batch size; the kept one is printed).

    python benchmarks/prune_latency.py [--repeats 10] [--threads 2] [--round-to 1] [--scope local] [--fold-bn]
                                       [--lower inductor] [--channels-last | --autotune]
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torchvision
from tabulate import tabulate

import fxcomp
from fxcomp.timing import interleaved_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-macs", type=float, default=1.07 / 4.12)
    parser.add_argument("--round-to", type=int, default=1, help="keep channel counts a multiple of this")
    parser.add_argument("--scope", choices=("local", "global"), default="local")
    parser.add_argument("--fold-bn", action="store_true", help="fold BatchNorm in both models before timing")
    parser.add_argument("--lower", choices=("eager", "inductor"), default="eager", help="fxcomp.lower both models first")
    layouts = parser.add_mutually_exclusive_group()
    layouts.add_argument("--channels-last", action="store_true", help="lower both models with channels_last=True")
    layouts.add_argument("--autotune", action="store_true", help="lower both models with autotune=True")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)  # autotune times the candidates at the current thread count
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    example = torch.randn(1, 3, 224, 224)
    prune = {"pass": "prune", "target_macs": args.target_macs, "round_to": args.round_to, "scope": args.scope}
    result = fxcomp.compress(model, example, {"passes": [prune, *([{"pass": "fold_bn"}] if args.fold_bn else [])]})
    pruned = result.model.eval()
    layout = {"channels_last": True} if args.channels_last else {"autotune": True} if args.autotune else {}
    lowered = args.lower != "eager" or bool(layout)
    if args.fold_bn or lowered:  # a GraphModule, as fxcomp.lower takes
        model = fxcomp.compress(model, example, {"passes": [{"pass": "fold_bn"}] if args.fold_bn else []}).model.eval()
    before, after = result.report.before_totals, result.report.after_totals
    macs_reduction = before.macs / after.macs
    rows, kept = [], []

    def lowered_run(name: str, m: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
        if not lowered:
            return m
        lowering = fxcomp.lower(m, args.lower, example_inputs=x, **layout)
        if lowering.report.autotune:
            times = ", ".join(f"{r['candidate']} {r['ms']:.1f} ms" for r in lowering.report.autotune if r["ms"] is not None)
            kept.append(f"batch {x.shape[0]}, {name}: kept {lowering.report.layout} ({times})")
        return lowering.module

    for batch in (1, 16):
        x = torch.randn(batch, 3, 224, 224)
        original_run, pruned_run = (lowered_run(name, m, x) for name, m in (("original", model), ("pruned", pruned)))
        medians = interleaved_latency(
            {"original": lambda: original_run(x), "pruned": lambda: pruned_run(x)},
            repeats=args.repeats,
            warmup=3,
            threads=args.threads,
        )
        speedup = medians["original"] / medians["pruned"]
        rows.append(
            [
                batch,
                f"{1e3 * medians['original']:.1f}",
                f"{1e3 * medians['pruned']:.1f}",
                f"{speedup:.2f}",
                f"{speedup / macs_reduction:.2f}",
            ]
        )
    print(
        f"resnet50, scope {args.scope}, round_to {args.round_to}, fold_bn {args.fold_bn}, lowered to {args.lower}{' (channels-last)' if args.channels_last else ' (autotuned)' if args.autotune else ''}: {before.macs / 1e9:.2f} → {after.macs / 1e9:.2f} GMACs ({macs_reduction:.2f}× fewer), "
        f"params {before.params / 1e6:.1f}M → {after.params / 1e6:.1f}M; torch {torch.__version__}, "
        f"{args.threads} threads, median of {args.repeats} interleaved runs after 3 warm-ups"
    )
    headers = ["batch", "original ms", "pruned ms", "speedup", "speedup ÷ MACs reduction"]
    print(tabulate(rows, headers=headers))
    if kept:
        print("autotuned lowerings (median ms on the example batch):\n  " + "\n  ".join(kept))


if __name__ == "__main__":
    main()
