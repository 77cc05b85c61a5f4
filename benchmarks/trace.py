"""How long fxcomp.trace takes compared with one real forward pass of the same model.

fxcomp.trace annotates shapes on meta tensors, so its cost should not grow with
the model's FLOPs. For each model, in one process with a fixed thread count,
the two are interleaved (trace, forward, trace, forward, …) with the shape
annotation alone (``fxcomp.propagate`` on the traced graph), and the median of
the runs is printed; also the time to trace every torchvision classification
model built on the meta device.

    python benchmarks/trace.py [--repeats 5] [--threads 2] [--zoo]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from tabulate import tabulate

import fxcomp
from fxcomp.timing import interleaved_latency

MODELS = ("resnet50", "mobilenet_v2", "densenet121", "vit_b_16")


def compare(repeats: int, threads: int) -> list[list[str]]:
    rows = []
    for name in MODELS:
        model = torchvision.models.get_model(name).eval()
        x = torch.randn(1, 3, 224, 224)
        gm = fxcomp.trace(model, x)
        medians = interleaved_latency(
            {"trace": lambda: fxcomp.trace(model, x), "shapes": lambda: fxcomp.propagate(gm, (x,)), "forward": lambda: model(x)},
            repeats=repeats,
            warmup=1,
            threads=threads,
        )
        gmacs = sum(fxcomp.node_info(n).macs for n in gm.graph.nodes) / 1e9
        rows.append(
            [
                name,
                f"{gmacs:.2f}",
                f"{1e3 * medians['trace']:.0f}",
                f"{1e3 * medians['shapes']:.0f}",
                f"{1e3 * medians['forward']:.0f}",
                f"{medians['trace'] / medians['forward']:.2f}",
            ]
        )
    return rows


def zoo(threads: int) -> tuple[int, float, float]:
    torch.set_num_threads(threads)
    times = []
    for name in torchvision.models.list_models(module=torchvision.models):
        try:
            with torch.device("meta"):
                model = torchvision.models.get_model(name)
            device = "meta"
        except NotImplementedError:  # regnet's constructor needs real tensors
            model, device = torchvision.models.get_model(name), "cpu"
        size = 299 if name == "inception_v3" else 224
        x = torch.empty(1, 3, size, size, device=device)
        start = time.perf_counter()
        fxcomp.trace(model.eval(), x)
        times.append(time.perf_counter() - start)
    return len(times), sum(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--zoo", action="store_true", help="also trace all torchvision classification models")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} interleaved runs, input 1×3×224×224")
    headers = ["model", "GMACs", "trace ms", "of which shapes ms", "forward ms", "trace ÷ forward"]
    print(tabulate(compare(args.repeats, args.threads), headers=headers))
    if args.zoo:
        count, total, median = zoo(args.threads)
        print(f"\ntraced {count} torchvision classification models (meta device) in {total:.1f} s, median {median:.2f} s")


if __name__ == "__main__":
    main()
