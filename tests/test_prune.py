"""The prune pass: shapes shrink, MACs drop, and the pruned model equals the original with those channels zeroed."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

import fxcomp
from tests.conftest import randomize_batchnorm
from tests.test_analyzer import _Concat, _Depthwise, _FlattenHead, _Split


def zeroed_reference(model: nn.Module, plan: dict) -> nn.Module:
    """A copy of ``model`` with every parameter/buffer entry the plan removes set to zero.

    Consumers then ignore the removed channels, so the copy computes what the
    pruned model computes, unless a layer mixes statistics across channels.
    """
    reference = copy.deepcopy(model)
    state = reference.state_dict()
    with torch.no_grad():
        for name, axes in plan["kept"].items():
            tensor = state[name]
            for axis, kept in axes.items():
                mask = torch.ones(tensor.shape[int(axis)], dtype=torch.bool)
                mask[kept] = False
                tensor.index_fill_(int(axis), mask.nonzero().flatten(), 0)
    return reference


def _prune_and_compare(model: nn.Module, x: torch.Tensor, recipe: str = "passes: [{pass: prune, ratio: 0.5}]"):
    torch.manual_seed(0)
    model = randomize_batchnorm(model).eval()
    result = fxcomp.compress(model, x, recipe)
    (record,) = result.plan
    with torch.no_grad():
        expected = zeroed_reference(model, record["plan"])(x)
        actual = result.model(x)
    error = ((actual - expected).abs().max() / expected.abs().max()).item()
    return result, error


SMALL_ZOO = [
    ("concat", _Concat, (1, 3, 4, 4)),
    ("split", _Split, (1, 3, 4, 4)),
    ("flatten", _FlattenHead, (1, 3, 4, 5)),
    ("depthwise", _Depthwise, (1, 3, 5, 5)),
]


@pytest.mark.parametrize(("name", "factory", "shape"), SMALL_ZOO, ids=[z[0] for z in SMALL_ZOO])
def test_small_couplings_prune_exactly(name, factory, shape) -> None:
    result, error = _prune_and_compare(factory(), torch.randn(*shape))
    assert error < 1e-4
    assert result.report.after_totals.macs < result.report.before_totals.macs


def test_split_sizes_follow_pruning() -> None:
    result, error = _prune_and_compare(_Split(), torch.randn(1, 3, 4, 4))
    split = next(n for n in result.model.graph.nodes if fxcomp.qualname(n) == "split")
    assert split.args[1] == [2, 2]  # 8 channels → 4 kept, 3/5 split → halves kept within each part
    assert error < 1e-4


ZOO = torchvision.models.list_models(module=torchvision.models)
_CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


def _input_size(name: str) -> int:
    if name.startswith("inception"):
        return 299
    if name.startswith(("vit", "swin", "maxvit")):
        return 224  # these models check or need their training resolution
    return 64


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_prunes_at_half_ratio(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, num_classes=10)
    size = _input_size(name)
    result, error = _prune_and_compare(model, torch.randn(1, 3, size, size))
    before, after = result.report.before_totals, result.report.after_totals
    assert after.macs < 0.7 * before.macs and after.params < before.params
    assert result.model(torch.randn(2, 3, size, size)).shape == (2, 10)
    if not any(isinstance(m, _CROSS_CHANNEL_NORMS) for m in model.modules()):
        # Norms that mix statistics across channels make the zeroed reference differ by design.
        assert error < 1e-4, error


def test_plan_replays_on_a_fresh_model() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    result = fxcomp.compress(model, x, "passes: [{pass: prune, ratio: 0.25, importance: l2}]")
    kept = result.plan[0]["plan"]["kept"]
    assert kept["conv1.weight"]["0"] == kept["bn1.weight"]["0"] == kept["layer1.0.conv1.weight"]["1"]
    assert len(kept["conv1.weight"]["0"]) == 48
    state = result.model.state_dict()
    original = model.state_dict()
    for name, axes in kept.items():
        replayed = original[name]
        for axis, indices in axes.items():
            replayed = replayed.index_select(int(axis), torch.tensor(indices))
        assert torch.equal(replayed, state[name]), name


def test_round_to_and_pinned_groups_are_reported() -> None:
    result = fxcomp.compress(
        torchvision.models.resnet18(num_classes=10).eval(),
        torch.randn(1, 3, 32, 32),
        "passes: [{pass: prune, ratio: 0.3, round_to: 8, ignore: ['layer4.*']}]",
    )
    plan = result.plan[0]["plan"]
    for group in plan["groups"]:
        assert (group["channels"] - len(group["removed"])) % 8 == 0
    reasons = [reason for pinned in plan["pinned"] for reason in pinned["reasons"]]
    assert "the model returns these channels" in reasons and "ignored by the user" in reasons
    assert not any(p.startswith("layer4.") for g in plan["groups"] for p in g["producers"])
