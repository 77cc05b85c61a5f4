"""Architecture rewrites composed with pruning and recovery in one recipe, and saved."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fxcomp
from fxcomp.data import digits
from fxcomp.demo import DigitsNet
from fxcomp.recovery import evaluate, recover


def test_prune_separable_lowrank_on_a_torchvision_model_runs_and_saves(tmp_path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    recipe = {
        "passes": [
            {"pass": "prune", "ratio": 0.5},
            {"pass": "separable", "include": ["layer*"]},
            {"pass": "lowrank", "ratio": 0.25, "include": ["layer*", "fc"]},
        ]
    }
    result = fxcomp.compress(model, x, recipe)
    prune, separable, lowrank = result.plan
    assert len(separable["plan"]["layers"]) > 10 and len(lowrank["plan"]["layers"]) > 10
    assert result.report.after_totals.macs < result.report.before_totals.macs / 4
    output = result.model(x)
    assert output.shape == (2, 10) and torch.isfinite(output).all()
    path = tmp_path / "resnet18.fxc"
    fxcomp.save(result.model, path)
    torch.testing.assert_close(fxcomp.load(path)(x), output, rtol=0, atol=0)


@pytest.fixture(scope="module")
def data():
    return digits()


def test_separable_then_recover_with_kd_from_the_original(data) -> None:
    torch.manual_seed(0)
    trained = recover(DigitsNet(), data, epochs=4, lr=0.05, batch_size=32, progress=False).model
    x = data.example_inputs()
    recipe = {
        "passes": [
            {"pass": "separable"},
            {"pass": "lowrank", "rank": 8, "include": ["*conv3*"]},
            {"pass": "recover", "epochs": 2, "lr": 0.02, "batch_size": 32, "distill": {"kind": "kd", "T": 4, "alpha": 0.5}},
        ]
    }
    result = fxcomp.compress(trained, x, recipe, train_data=data.train, val_data=data.val)
    separable, lowrank, recovered = result.plan
    assert {entry["layer"] for entry in separable["plan"]["layers"]} == {"conv2", "conv3"}
    assert [entry["layer"] for entry in lowrank["plan"]["layers"]] == ["conv3.1"]
    assert len(recovered["stats"]["history"]) == 2
    assert evaluate(result.model, data.test)[1] > evaluate(trained, data.test)[1] - 0.05
