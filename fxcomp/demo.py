"""``fxcomp demo``: train a small CNN on scikit-learn's digits, compress it, compare before and after.

Everything it needs ships with the packages: the 1,797 8×8 digit images come
inside scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tabulate import tabulate

from fxcomp.data import Splits, digits
from fxcomp.passes.pipeline import CompressionResult, compress
from fxcomp.plugin.host import Plugins
from fxcomp.report import totals
from fxcomp.timing import interleaved_latency
from fxcomp.tracing import trace

DEMO_RECIPE = """
passes:
  - pass: fold_bn
"""
"""The built-in recipe the demo applies; it grows as passes land."""


class DigitsNet(nn.Module):
    """A small conv net for 1×8×8 digit images: three conv-BN-ReLU blocks, global pooling, a classifier."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def train(model: nn.Module, data: Splits, *, seconds: float, seed: int = 0, min_epochs: int = 8) -> int:
    """Train ``model`` with Adam in mini-batches of 64 for about ``seconds``, and at least ``min_epochs``
    epochs (so a busy machine still gets a trained model); return the epochs run."""
    torch.manual_seed(seed)
    images, labels = data.train.tensors
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    start, epochs = time.perf_counter(), 0
    while epochs < min_epochs or time.perf_counter() - start < seconds:
        for index in torch.randperm(len(labels)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(images[index]), labels[index]).backward()
            optimizer.step()
        epochs += 1
    model.eval()
    return epochs


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` whose arg-max prediction equals the label."""
    model.eval()
    return (model(images).argmax(dim=1) == labels).float().mean().item()


def run_demo(*, seconds: float = 5.0, seed: int = 0, plugins: Plugins | None = None) -> tuple[str, CompressionResult]:
    """Train, compress with :data:`DEMO_RECIPE` and return the printed summary and the compression result."""
    data = digits(val=0, test=360, seed=seed)  # the demo reports test accuracy only
    test_x, test_y = data.test.tensors
    model = DigitsNet()
    epochs = train(model, data, seconds=seconds, seed=seed)
    example = test_x[:1]
    result = compress(model, example, DEMO_RECIPE, plugins=plugins)
    compressed = result.model
    original = trace(model, example)
    latency = interleaved_latency(
        {"original": lambda: model(example), "compressed": lambda: compressed(example)}, repeats=50, threads=1
    )
    rows = []
    for name, module, graph in (("original", model, original), ("compressed", compressed, compressed)):
        figures = totals(graph)
        rows.append(
            [
                name,
                f"{100 * accuracy(module, test_x, test_y):.2f}%",
                f"{figures.params:,}",
                f"{figures.macs:,}",
                f"{1e6 * latency[name]:.0f}",
            ]
        )
    header = (
        f"fxcomp demo: {type(model).__name__} trained on scikit-learn digits "
        f"({len(data.train)} train / {len(data.test)} test images, {epochs} epochs)\n"
        f"recipe: {' → '.join(entry['pass'] for entry in result.plan)}\n"
    )
    table = tabulate(
        rows, headers=["model", "test accuracy", "params", "MACs", "latency µs (batch 1, 1 thread, median)"]
    )
    return f"{header}\n{table}\n\n{result.report}", result
