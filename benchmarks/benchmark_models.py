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


class LeNet5(nn.Module):
    """LeNet-5 as in the Deep Compression paper (Caffe's): conv 20 and 50 filters of 5×5, fc 500, fc 10."""

    def __init__(self, side: int, classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        flat = 50 * (((side - 4) // 2 - 4) // 2) ** 2
        self.fc1, self.fc2 = nn.Linear(flat, 500), nn.Linear(500, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))
