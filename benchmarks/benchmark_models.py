"""Models more than one benchmark trains."""

from __future__ import annotations

import torch
import torch.nn as nn


class LeNet300(nn.Module):
    """LeNet-300-100: 784 → 300 → 100 → 10, ReLU."""

    def __init__(self, pixels: int, classes: int = 10) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(pixels, 300), nn.Linear(300, 100), nn.Linear(100, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))))
