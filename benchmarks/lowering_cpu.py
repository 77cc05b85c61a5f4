"""Eager vs inductor on CPU for a compressed ResNet-style model (fxcomp.lower's two CPU backends).

torchvision's resnet18 (random weights; latency does not depend on them) is pruned to
half its MACs and has its BatchNorms folded (``prune`` → ``fold_bn``), then lowered
with ``fxcomp.lower(..., backend="eager")`` and ``backend="inductor"`` (torch.compile;
inductor emits C++ on CPU). Both run in one process with fixed threads under
inference mode, interleaved, median of ``--repeats`` runs after warm-up, at batch 1
and 16. It prints the compile time, the output difference and the speedups —
inductor over eager on the compressed model, and the compressed model (eager and
inductor) over the uncompressed one in eager.

    python benchmarks/lowering_cpu.py [--repeats 10] [--threads 2] [--size 224]
"""

from __future__ import annotations

import argparse
import time
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
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--target-macs", type=float, default=0.5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = torchvision.models.resnet18().eval()
    example = torch.randn(1, 3, args.size, args.size)
    recipe = {"passes": [{"pass": "prune", "target_macs": args.target_macs}, {"pass": "fold_bn"}]}
    result = fxcomp.compress(model, example, recipe)
    before, after = result.report.before_totals, result.report.after_totals
    eager = fxcomp.lower(result.model, "eager").module
    rows, compile_seconds = [], []
    for batch in (1, 16):
        x = torch.randn(batch, 3, args.size, args.size)
        # One compilation per batch size: a second shape would make torch.compile recompile with a dynamic batch.
        start = time.perf_counter()
        inductor = fxcomp.lower(result.model, "inductor", example_inputs=x).module
        compile_seconds.append(time.perf_counter() - start)
        with torch.inference_mode():
            reference = eager(x)
            difference = (inductor(x) - reference).abs().max().item() / reference.abs().max().item()
        medians = interleaved_latency(
            {"original": lambda: model(x), "eager": lambda: eager(x), "inductor": lambda: inductor(x)},
            repeats=args.repeats,
            warmup=3,
            threads=args.threads,
        )
        rows.append([
            batch,
            f"{1e3 * medians['original']:.1f}",
            f"{1e3 * medians['eager']:.1f}",
            f"{1e3 * medians['inductor']:.1f}",
            f"{medians['eager'] / medians['inductor']:.2f}",
            f"{medians['original'] / medians['eager']:.2f}",
            f"{medians['original'] / medians['inductor']:.2f}",
            f"{difference:.1e}",
        ])
    print(
        f"resnet18 at {args.size}×{args.size}: prune (target_macs {args.target_macs}) + fold_bn, "
        f"{before.macs / 1e9:.2f} → {after.macs / 1e9:.2f} GMACs; torch {torch.__version__}, {args.threads} threads, "
        f"median of {args.repeats} interleaved runs after 3 warm-ups; lowering to inductor (compile and check) took "
        f"{' / '.join(f'{s:.0f}' for s in compile_seconds)} s at batch 1 / 16"
    )
    headers = ["batch", "original eager ms", "compressed eager ms", "compressed inductor ms",
               "inductor ÷ eager speedup", "compressed speedup (eager)", "compressed speedup (inductor)", "rel. diff"]
    print(tabulate(rows, headers=headers))


if __name__ == "__main__":
    main()
