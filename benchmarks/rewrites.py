"""Architecture rewrites on trained models: ``separable`` and ``lowrank``, then ``recover``.

(a) A VGG-style CNN trained on Fashion-MNIST (scikit-learn digits when it is absent):
    ``separable`` (depth multiplier 1) then ``recover`` (KD from the original). MACs of
    the converted layers and of the model, CPU latency at batch 1 and 32 (both models
    with BatchNorm folded, as deployed; in eager and both lowered to inductor), test accuracy
    of the original, right after conversion and after recovery.
(b) LeNet-300-100 trained the same way: ``lowrank`` at energy 0.9, then ``recover``.
(c) torchvision vgg16 (weights=None, 224×224): ``lowrank`` on its classifier at a fixed
    rank; parameters and latency of the classifier and of the whole model.

Latency: one process, fixed threads, inference mode, the two models interleaved, median
of ``--repeats`` runs after warm-up. Everything goes through ``fxcomp.compress``.

    python benchmarks/rewrites.py [--part a|b|c|all] [--epochs 3] [--recover-epochs 2] [--threads 2] [--channels-last | --autotune]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn as nn
import torchvision
from tabulate import tabulate

import fxcomp
from fxcomp.data import Splits
from fxcomp.recovery import evaluate, recover
from fxcomp.timing import interleaved_latency

from benchmark_data import benchmark_data  # benchmarks/ is the script's directory, so on sys.path
from benchmark_models import LeNet300


def _block(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]


class VGGSmall(nn.Module):
    """Three VGG stages of two 3×3 conv-BN-ReLU layers (32, 64, 128 channels) and a two-layer head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        stages = []
        for inputs, outputs in ((1, 32), (32, 64), (64, 128)):
            stages += [*_block(inputs, outputs), *_block(outputs, outputs), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 9, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _latency_rows(
    original: nn.Module, rewritten: nn.Module, shape: tuple[int, ...], batches: tuple[int, ...], args, *,
    inductor: bool = False, layout: dict | None = None,
) -> tuple[list[list[str]], list[str]]:
    """Per batch: both models' median latency and the speedup; with ``inductor`` also both lowered to
    inductor (``fxcomp.lower``, compiled once per batch size) and timed in the same interleaved runs.
    ``layout`` (``fxcomp.lower`` options such as ``channels_last`` or ``autotune``) applies to every
    model (two GraphModules), eager ones too. Also returns, per autotuned lowering, the candidate it kept."""
    rows, choices = [], []
    layout = layout or {}

    def lowered(name: str, model: nn.Module, backend: str, x: torch.Tensor) -> nn.Module:
        if not layout and backend == "eager":
            return model
        result = fxcomp.lower(model, backend, example_inputs=x, **layout)
        if result.report.autotune:
            times = ", ".join(f"{r['candidate']} {r['ms']:.3f} ms" for r in result.report.autotune if r["ms"] is not None)
            choices.append(f"batch {x.shape[0]}, {name} ({backend}): kept {result.report.layout} ({times})")
        return result.module

    for batch in batches:
        x = torch.randn(batch, *shape)
        models = {"original": original, "rewritten": rewritten}
        runs = {name: (lambda module=lowered(name, model, "eager", x): module(x)) for name, model in models.items()}
        if inductor:
            runs |= {f"{name} inductor": (lambda module=lowered(name, model, "inductor", x): module(x)) for name, model in models.items()}
        medians = interleaved_latency(runs, repeats=args.repeats, warmup=3, threads=args.threads)
        row = [batch, f"{1e3 * medians['original']:.2f}", f"{1e3 * medians['rewritten']:.2f}", f"{medians['original'] / medians['rewritten']:.2f}"]
        if inductor:
            original_ms, rewritten_ms = medians["original inductor"], medians["rewritten inductor"]
            row += [f"{1e3 * original_ms:.2f}", f"{1e3 * rewritten_ms:.2f}", f"{original_ms / rewritten_ms:.2f}"]
        rows.append(row)
    return rows, choices


def _layer_macs(plan: dict, key: str) -> int:
    return sum(entry[key] for entry in plan["layers"])


def _accuracy(model: nn.Module, data: Splits) -> str:
    return f"{100 * evaluate(model, data.test)[1]:.2f}"


def _rewrite_and_recover(model: nn.Module, data: Splits, rewrite: dict, args) -> tuple[fxcomp.CompressionResult, nn.Module]:
    """The rewritten model before and after a KD recovery from the original."""
    example = data.example_inputs()
    rewritten = fxcomp.compress(model, example, {"passes": [rewrite]})
    kd = {"kind": "kd", "T": 4, "alpha": 0.5}
    recovered = recover(
        rewritten.model, data, teacher=model, distill=kd, epochs=args.recover_epochs, lr=args.lr / 5, progress=False
    ).model
    return rewritten, recovered.eval()


def separable_vgg(data: Splits, args) -> None:
    """Part (a)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    model = recover(VGGSmall(data.classes), data, epochs=args.epochs, lr=args.lr, progress=False).model.eval()
    print(f"(a) VGGSmall trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
    rewritten, recovered = _rewrite_and_recover(model, data, {"pass": "separable"}, args)
    plan = rewritten.plan[0]["plan"]
    before, after = rewritten.report.before_totals, rewritten.report.after_totals
    converted_before, converted_after = _layer_macs(plan, "macs_before"), _layer_macs(plan, "macs_after")
    print(
        f"converted {len(plan['layers'])} convs (skipped: {', '.join(s['layer'] + ': ' + s['reason'] for s in plan['skipped'])})\n"
        f"converted layers {converted_before / 1e6:.2f} → {converted_after / 1e6:.2f} MMACs ({converted_before / converted_after:.2f}× fewer); "
        f"model {before.macs / 1e6:.2f} → {after.macs / 1e6:.2f} MMACs ({before.macs / after.macs:.2f}×), "
        f"params {before.params:,} → {after.params:,}"
    )
    errors = ", ".join(f"{entry['layer']} {entry['error']:.2f}" for entry in plan["layers"])
    print(f"relative weight error per layer: {errors}")
    print(
        tabulate(
            [["original", _accuracy(model, data)], ["separable, no training", _accuracy(rewritten.model, data)],
             [f"separable + {args.recover_epochs} epochs KD", _accuracy(recovered, data)]],
            headers=["model", "test accuracy %"],
        )
    )
    # Deployed, both fold their BatchNorms; timing them folded isolates what separable changed.
    example, fold = data.example_inputs(), {"passes": [{"pass": "fold_bn"}]}
    original, converted = (fxcomp.compress(m, example, fold).model.eval() for m in (model, recovered))
    layout = {"channels_last": True} if args.channels_last else {"autotune": True} if args.autotune else {}
    rows, choices = _latency_rows(original, converted, tuple(example.shape[1:]), (1, 32), args, inductor=True, layout=layout)
    headers = ["batch", "original ms", "separable ms", "speedup", "original inductor ms", "separable inductor ms", "speedup (inductor)"]
    print(tabulate(rows, headers=headers))
    if choices:
        print("autotuned lowerings (median ms on the example batch):\n  " + "\n  ".join(choices))


def lowrank_lenet(data: Splits, args) -> None:
    """Part (b)."""
    torch.manual_seed(0)
    pixels = data.example_inputs().numel()
    model = recover(LeNet300(pixels, data.classes), data, epochs=args.epochs, lr=args.lr, progress=False).model.eval()
    rewritten, recovered = _rewrite_and_recover(model, data, {"pass": "lowrank", "energy": 0.9}, args)
    plan = rewritten.plan[0]["plan"]
    before, after = rewritten.report.before_totals, rewritten.report.after_totals
    ranks = ", ".join(f"{entry['layer']} rank {entry['ranks'][0]} (error {entry['error']:.2f})" for entry in plan["layers"])
    print(f"\n(b) LeNet-300-100, lowrank energy 0.9: {ranks}; skipped {[s['layer'] for s in plan['skipped']]}")
    print(f"params {before.params:,} → {after.params:,} ({before.params / after.params:.2f}× fewer), MACs {before.macs:,} → {after.macs:,}")
    print(
        tabulate(
            [["original", _accuracy(model, data)], ["lowrank, no training", _accuracy(rewritten.model, data)],
             [f"lowrank + {args.recover_epochs} epochs KD", _accuracy(recovered, data)]],
            headers=["model", "test accuracy %"],
        )
    )


def lowrank_vgg16(args) -> None:
    """Part (c)."""
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    example = torch.randn(1, 3, 224, 224)
    start = time.perf_counter()
    recipe = {"passes": [{"pass": "lowrank", "rank": args.vgg_rank, "include": ["classifier.*"]}]}
    result = fxcomp.compress(model, example, recipe)
    seconds = time.perf_counter() - start
    plan = result.plan[0]["plan"]
    classifier_before = sum(entry["params_before"] for entry in plan["layers"])
    classifier_after = sum(entry["params_after"] for entry in plan["layers"])
    before, after = result.report.before_totals, result.report.after_totals
    print(f"\n(c) vgg16 (weights=None) classifier, lowrank rank {args.vgg_rank} ({seconds:.0f} s to plan, rewrite and verify)")
    for entry in plan["layers"]:
        print(f"  {entry['layer']}: params {entry['params_before']:,} → {entry['params_after']:,}, relative error {entry['error']:.3f}")
    for skip in plan["skipped"]:
        print(f"  {skip['layer']} skipped: {skip['reason']}")
    print(
        f"classifier params {classifier_before / 1e6:.1f}M → {classifier_after / 1e6:.1f}M ({classifier_before / classifier_after:.1f}× fewer); "
        f"model params {before.params / 1e6:.1f}M → {after.params / 1e6:.1f}M ({before.params / after.params:.2f}×), "
        f"GMACs {before.macs / 1e9:.2f} → {after.macs / 1e9:.2f}"
    )
    original_head, factored_head = model.classifier, nn.Sequential(*[result.model.get_submodule(f"classifier.{i}") for i in range(7)])
    head, _ = _latency_rows(original_head, factored_head, (25088,), (1, 32), args)
    whole, _ = _latency_rows(model, result.model, (3, 224, 224), (1,), args)
    rows = [["classifier", *row] for row in head] + [["whole model", *row] for row in whole]
    print(tabulate(rows, headers=["part", "batch", "original ms", "lowrank ms", "speedup"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("a", "b", "c", "all"), default="all")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--recover-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--vgg-rank", type=int, default=256)
    layouts = parser.add_mutually_exclusive_group()
    layouts.add_argument("--channels-last", action="store_true", help="part (a): lower every timed model with channels_last=True")
    layouts.add_argument("--autotune", action="store_true", help="part (a): lower every timed model with autotune=True")
    parser.add_argument("--data", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, latency median of {args.repeats} interleaved runs")
    if args.part in ("a", "b", "all"):
        data = benchmark_data(args.data)
        print(f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test")
        if args.part in ("a", "all"):
            separable_vgg(data, args)
        if args.part in ("b", "all"):
            lowrank_lenet(data, args)
    if args.part in ("c", "all"):
        lowrank_vgg16(args)


if __name__ == "__main__":
    main()
