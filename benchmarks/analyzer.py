"""fxcomp's dependency analysis against torch-pruning's DependencyGraph, end to end.

For each model, in one process with a fixed thread count, interleaved runs of

* fxcomp: ``fxcomp.analyze(fxcomp.trace(model, x), plugins=plugins)`` (tracing with shape annotation
  included; the plugins, whose channel rules the analyzer consults, are loaded once beforehand, as
  importing torch_pruning is not timed either);
* torch-pruning: ``torch_pruning.DependencyGraph().build_dependency(model, example_inputs=x)``

and the median of the runs. The ratio is torch-pruning's time ÷ fxcomp's (> 1: fxcomp is faster).
Tracing alone (``fxcomp.trace``) is timed in the same interleaving, to show how much of
fxcomp's time is torch.fx tracing plus shape annotation, which the analysis needs first.

    python benchmarks/analyzer.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import warnings

import torch
import torch_pruning
import torchvision
from tabulate import tabulate

import fxcomp
from fxcomp.timing import interleaved_latency

MODELS = ("resnet50", "mobilenet_v2", "densenet121", "vit_b_16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    plugins = fxcomp.load_plugins()
    rows = []
    for name in MODELS:
        model = torchvision.models.get_model(name).eval()
        x = torch.randn(1, 3, 224, 224)

        def torch_pruning_build() -> None:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints advice about unwrapped parameters
                torch_pruning.DependencyGraph().build_dependency(model, example_inputs=x)

        medians = interleaved_latency(
            {
                "fxcomp": lambda: fxcomp.analyze(fxcomp.trace(model, x), plugins=plugins),
                "trace": lambda: fxcomp.trace(model, x),
                "torch_pruning": torch_pruning_build,
            },
            repeats=args.repeats,
            warmup=1,
            threads=args.threads,
            inference=False,  # torch-pruning walks autograd: it needs gradients enabled
        )
        groups = fxcomp.analyze(fxcomp.trace(model, x), plugins=plugins)
        rows.append(
            [
                name,
                f"{1e3 * medians['fxcomp']:.0f}",
                f"{1e3 * medians['trace']:.0f}",
                f"{1e3 * medians['torch_pruning']:.0f}",
                f"{medians['torch_pruning'] / medians['fxcomp']:.2f}",
                f"{sum(g.prunable for g in groups)}/{len(groups)}",
            ]
        )
    print(
        f"torch {torch.__version__}, torch-pruning {torch_pruning.__version__}, {args.threads} threads, "
        f"median of {args.repeats} interleaved runs, input 1×3×224×224"
    )
    print(tabulate(rows, headers=["model", "fxcomp ms", "of which tracing ms", "torch-pruning ms", "speedup (tp ÷ fxcomp)", "prunable groups"]))


if __name__ == "__main__":
    main()
