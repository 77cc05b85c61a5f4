"""Knowledge distillation and pruning recovery on Fashion-MNIST (scikit-learn digits when it is absent).

(a) A teacher CNN (~1M parameters; ``--teacher``) and a student ~10× smaller; the student is trained alone,
    with KD, with FitNet hints and with attention transfer: same epochs, several seeds,
    test accuracy mean ± std, and the share of the teacher–student gap each closes. With
    several ``--kd-alpha`` weights, one more row takes, per seed, the KD student of best
    validation accuracy (the choice a user makes without the test set).
(b) A small ResNet trained, pruned to half its MACs (``prune`` with ``target_macs: 0.5``),
    then recovered for the same epochs by plain fine-tuning and by KD from the unpruned model.

Everything goes through ``fxcomp.recover`` and ``fxcomp.compress`` as a user would call them.

    python benchmarks/distill.py [--epochs 4] [--teacher-epochs 12] [--seeds 3] [--part a|b|both] [--threads 2]
                                 [--weight-decay 0] [--kd-alpha 0.9 ...] [--no-features] [--teacher head|conv]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tabulate import tabulate

import fxcomp
from fxcomp.data import Splits
from fxcomp.recovery import evaluate, recover

from benchmark_data import benchmark_data  # benchmarks/ is the script's directory, so on sys.path


class Teacher(nn.Module):
    """Three conv-BN-ReLU blocks (16, 32, 64 channels) and a wide classifier head: ~0.9M parameters."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64 * 3 * 3, 1536)
        self.fc2 = nn.Linear(1536, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.adaptive_avg_pool2d(F.relu(self.bn3(self.conv3(x))), 3)
        return self.fc2(F.dropout(F.relu(self.fc1(torch.flatten(x, 1))), 0.3, self.training))


class ConvTeacher(nn.Module):
    """Four conv-BN-ReLU blocks (32, 64, 128, 256 channels, the first three pooled) and a 256-wide head: ~1.0M parameters.

    Its parameters sit in convolutions more than :class:`Teacher`'s, and it is the stronger teacher.
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        widths = [1, 32, 64, 128, 256]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(widths, widths[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])
        self.fc1 = nn.Linear(256 * 3 * 3, 256)
        self.fc2 = nn.Linear(256, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(bn(conv(x)))
            if index < 3:
                x = F.max_pool2d(x, 2)
        x = F.adaptive_avg_pool2d(x, 3)
        return self.fc2(F.dropout(F.relu(self.fc1(torch.flatten(x, 1))), 0.3, self.training))


TEACHERS = {"head": Teacher, "conv": ConvTeacher}


class Student(nn.Module):
    """Two conv-BN-ReLU blocks (8, 16 channels) and a small classifier head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 4 * 4, 320)
        self.fc2 = nn.Linear(320, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(x))), 4)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class Block(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs)
        self.conv2, self.bn2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False), nn.BatchNorm2d(outputs)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
            if stride != 1 or inputs != outputs
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet for 28×28 images: stem, three stages of two blocks (8, 16, 32 channels)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        widths = [(8, 8, 1), (8, 8, 1), (8, 16, 2), (16, 16, 1), (16, 32, 2), (32, 32, 1)]
        self.blocks = nn.Sequential(*[Block(i, o, s) for i, o, s in widths])
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def _variants(kd_alphas: list[float], features: bool) -> dict[str, dict | None]:
    variants: dict[str, dict | None] = {"student alone": None}
    for alpha in kd_alphas:
        variants[f"KD (T=4, α={alpha:g})"] = {"kind": "kd", "T": 4, "alpha": alpha}
    if features:
        variants["FitNet (bn2 → bn2)"] = {"kind": "fitnet", "student": "bn2", "teacher": "bn2"}
        variants["attention transfer (bn1, bn2)"] = {"kind": "attention", "student": ["bn1", "bn2"], "teacher": ["bn1", "bn2"]}
    return variants


def distillation(data: Splits, args: argparse.Namespace) -> None:
    """Part (a): teacher, student alone, KD, FitNet, attention transfer."""
    epochs, teacher_epochs, seeds, lr, decay = args.epochs, args.teacher_epochs, args.seeds, args.lr, args.weight_decay
    torch.manual_seed(0)
    start = time.perf_counter()
    teacher = recover(TEACHERS[args.teacher](data.classes), data, epochs=teacher_epochs, lr=lr, weight_decay=decay, progress=False).model
    teacher_accuracy = evaluate(teacher, data.test)[1]
    print(
        f"teacher: {_params(teacher):,} params, trained {teacher_epochs} epochs, "
        f"test accuracy {100 * teacher_accuracy:.2f}% ({time.perf_counter() - start:.0f} s)"
    )
    student_params = _params(Student(data.classes))
    print(f"student: {student_params:,} params ({_params(teacher) / student_params:.1f}× fewer)")
    variants = _variants(args.kd_alpha, not args.no_features)
    accuracies: dict[str, list[float]] = {name: [] for name in variants}
    kd_names = [name for name, spec in variants.items() if spec and spec["kind"] == "kd"]
    chosen = f"KD, α chosen on validation ({', '.join(f'{alpha:g}' for alpha in args.kd_alpha)})"
    if len(kd_names) > 1:
        accuracies[chosen] = []
    for seed in range(seeds):
        validation: dict[str, float] = {}
        for name, spec in variants.items():
            torch.manual_seed(seed)
            student = Student(data.classes)
            result = recover(
                student, data, teacher=teacher if spec else None, distill=spec, epochs=epochs, lr=lr,
                weight_decay=decay, seed=seed, progress=False,
            )
            validation[name] = evaluate(result.model, data.val)[1]
            accuracies[name].append(evaluate(result.model, data.test)[1])
            print(f"  seed {seed} {name}: {100 * accuracies[name][-1]:.2f}% (validation {100 * validation[name]:.2f}%)", flush=True)
        if len(kd_names) > 1:  # the KD weight a user would pick without looking at the test set
            best = max(kd_names, key=lambda name: validation[name])
            accuracies[chosen].append(accuracies[best][-1])
            print(f"  seed {seed} {chosen}: {best} → {100 * accuracies[chosen][-1]:.2f}%", flush=True)
    alone = statistics.mean(accuracies["student alone"])
    rows = []
    for name, values in accuracies.items():
        closed = (statistics.mean(values) - alone) / (teacher_accuracy - alone) if teacher_accuracy > alone else float("nan")
        rows.append([name, _mean_std(values), "-" if name == "student alone" else f"{100 * closed:.0f}%"])
    rows.append(["teacher", f"{100 * teacher_accuracy:.2f}", ""])
    print(f"\n(a) {data.name}, students {epochs} epochs each, SGD lr {lr} cosine, weight decay {decay:g}, {seeds} seeds: test accuracy %")
    print(tabulate(rows, headers=["student training", "accuracy mean ± std", "gap closed"]))


def pruned_recovery(data: Splits, epochs: int, lr: float) -> None:
    """Part (b): ResNet pruned to half its MACs, recovered by fine-tuning and by KD."""
    torch.manual_seed(0)
    model = recover(ResNet(data.classes), data, epochs=epochs, lr=lr, progress=False).model
    unpruned = evaluate(model, data.test)[1]
    example = data.example_inputs()
    pruned = fxcomp.compress(model, example, {"passes": [{"pass": "prune", "target_macs": 0.5}]})
    before, after = pruned.report.before_totals, pruned.report.after_totals
    rows = [
        ["unpruned", f"{before.macs / 1e6:.2f}", f"{before.params:,}", f"{100 * unpruned:.2f}"],
        ["pruned, no recovery", f"{after.macs / 1e6:.2f}", f"{after.params:,}", f"{100 * evaluate(pruned.model, data.test)[1]:.2f}"],
    ]
    for name, spec in (("pruned + fine-tuning", None), ("pruned + KD from unpruned", {"kind": "kd", "T": 4, "alpha": 0.9})):
        result = recover(pruned.model, data, teacher=model if spec else None, distill=spec, epochs=epochs, lr=lr, progress=False)
        rows.append([name, f"{after.macs / 1e6:.2f}", f"{after.params:,}", f"{100 * evaluate(result.model, data.test)[1]:.2f}"])
        print(f"  {name}: {rows[-1][-1]}%", flush=True)
    print(f"\n(b) {data.name}, ResNet pruned with target_macs 0.5, recovered {epochs} epochs, SGD lr {lr} cosine")
    print(tabulate(rows, headers=["model", "MMACs", "params", "test accuracy %"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of every student and of the ResNet")
    parser.add_argument("--teacher-epochs", type=int, default=12, help="the teacher is trained to near convergence first")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="of every model trained in part (a)")
    parser.add_argument("--kd-alpha", type=float, nargs="+", default=[0.9],
                        help="one KD variant per weight of the soft term; with several, also the one of best validation accuracy per seed")
    parser.add_argument("--teacher", choices=tuple(TEACHERS), default="head",
                        help="part (a)'s teacher: head (Teacher, most weights in its classifier) or conv (ConvTeacher)")
    parser.add_argument("--no-features", action="store_true", help="part (a) without the FitNet and attention-transfer students")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = benchmark_data(args.data)
    print(f"torch {torch.__version__}, {args.threads} threads; {data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test")
    if args.part in ("a", "both"):
        distillation(data, args)
    if args.part in ("b", "both"):
        pruned_recovery(data, args.epochs, args.lr)


if __name__ == "__main__":
    main()
