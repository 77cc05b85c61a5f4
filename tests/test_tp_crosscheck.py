"""Cross-check: fxcomp's channel groups agree with torch-pruning's DependencyGraph on torchvision models.

Both tools partition the prunable layers by which of them must lose output channels
together. The only difference expected is the classifier: fxcomp pins the channels the
model returns, while torch-pruning groups them like any others; so the comparison is
restricted to the layers fxcomp may prune. torch-pruning treats ``nn.MultiheadAttention``
as one unit, which stands here for its output projection.
The models where the two disagree, and why, are listed in docs/results.md.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
import torchvision

import fxcomp

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
_MODELS = [
    "alexnet",
    "convnext_tiny",
    "densenet121",
    "efficientnet_b0",
    "googlenet",
    "mnasnet0_5",
    "mobilenet_v3_small",
    "regnet_y_400mf",
    "resnet18",
    "resnext50_32x4d",
    "squeezenet1_1",
    "vgg11_bn",
    "vit_b_32",
]


def _output_axis(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


def _fxcomp_partition(model: nn.Module, x: torch.Tensor) -> tuple[set[frozenset[str]], set[str]]:
    """Prunable groups as sets of layers whose output channels they hold, and the layers pinned."""
    layers = {name for name, module in model.named_modules() if isinstance(module, _LAYERS)}
    groups, pinned = set(), set()
    for group in fxcomp.analyze(fxcomp.trace(model, x)):
        owners = set()
        for member in group.members:
            owner, _, attribute = member.name.rpartition(".")
            if owner in layers and attribute == "weight" and member.kind == "parameter":
                if member.axis == _output_axis(model.get_submodule(owner)):
                    owners.add(owner)
        if owners and group.prunable:
            groups.add(frozenset(owners))
        elif owners:
            pinned |= owners
    return groups, pinned


def _torch_pruning_partition(model: nn.Module, x: torch.Tensor) -> list[frozenset[str]]:
    with contextlib.redirect_stdout(io.StringIO()):
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    names = {module: name for name, module in model.named_modules()}
    partition = []
    for group in graph.get_all_groups():
        owners = set()
        for dependency, _ in group:
            module = dependency.target.module
            if isinstance(module, nn.MultiheadAttention) and graph.is_out_channel_pruning_fn(dependency.handler):
                owners.add(names[module] + ".out_proj")
            depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels == module.out_channels > 1
            if isinstance(module, _LAYERS) and (graph.is_out_channel_pruning_fn(dependency.handler) or depthwise):
                owners.add(names[module])
        if owners:
            partition.append(frozenset(owners))
    return partition


@pytest.mark.slow
@pytest.mark.parametrize("name", _MODELS)
def test_prunable_groups_match_torch_pruning(name: str) -> None:
    size = 224 if name.startswith("vit") else 64  # ViT checks its input resolution
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning warns about parameters it has to guess
        model = torchvision.models.get_model(name, num_classes=10).eval()
        ours, pinned = _fxcomp_partition(model, x)
        theirs = _torch_pruning_partition(model, x)
    prunable = set().union(*ours)
    assert ours == {group & prunable for group in theirs if group & prunable}
    # All that fxcomp holds back is the classifier, whose outputs the model returns.
    assert set().union(*theirs) - prunable == pinned == {name for name, _ in _last_layer(model)}


def _last_layer(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [[(n, m) for n, m in model.named_modules() if isinstance(m, _LAYERS)][-1]]
