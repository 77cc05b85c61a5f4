"""Shared fixtures: small models and a way to install a throwaway plugin through a real entry point."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

# fxcomp's Triton kernels (tests/test_kernels.py, tests/test_lowering.py) run in Triton's interpreter
# on this GPU-less machine; Triton reads the variable when the kernels are first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")


class SmallCNN(nn.Module):
    """conv-BN-ReLU ×2, pooling and a classifier: the shape of most models fxcomp compresses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                if module.track_running_stats:
                    module.running_mean.copy_(torch.randn(size, generator=generator))
                    module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.randn(size, generator=generator))
                    module.bias.copy_(torch.randn(size, generator=generator))
    return model


@pytest.fixture
def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(SmallCNN()).eval()


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install a plugin module as a distribution with an ``fxcomp`` entry point, on a temporary sys.path entry.

    ``install_plugin(entry_name, module_name, source, dist="...", version="...")`` writes
    ``module_name.py`` and a ``.dist-info`` with ``entry_points.txt``, exactly what pip
    leaves behind when it installs a package, so ``importlib.metadata`` finds it.
    Give every test its own module names: imported modules stay in ``sys.modules``.
    """
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(entry_name: str, module_name: str, source: str, dist: str = "fxcomp-test-plugin", version: str = "1.2.3"):
        (site / f"{module_name}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        entry_points = info / "entry_points.txt"
        lines = entry_points.read_text() if entry_points.exists() else "[fxcomp]\n"
        entry_points.write_text(lines + f"{entry_name} = {module_name}\n")

    return install
