"""The search pass: budgets met, reproducible, constraints respected, parallel and distributed scoring agree."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import fxcomp
from fxcomp import DataError, RecipeError
from fxcomp.data import digits
from fxcomp import UsageError
from fxcomp.recovery import evaluate, recalibrate_batchnorm, short_finetune

pytestmark = pytest.mark.slow


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """A stem, two residual blocks and a wider conv: groups of different sizes and costs."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1, self.block2 = Block(width), Block(width)
        self.wide = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = self.wide(self.block2(self.block1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


SMALL = {"population": 4, "generations": 2, "eval_samples": 120, "recalibration_batches": 2, "progress": False}


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def trained(data) -> nn.Module:
    torch.manual_seed(0)
    return fxcomp.recover(TinyResNet(), data, epochs=2, lr=0.05, progress=False).model.eval()


def _search(model, data, **options):
    step = {"pass": "search", **SMALL, **options}
    return fxcomp.compress(model, data.example_inputs(), {"passes": [step]}, train_data=data.train, val_data=data.val)


@pytest.mark.parametrize(("budget", "metric"), [({"target_macs": 0.5}, "macs"), ({"target_params": 0.4}, "params")])
def test_the_budget_is_met_within_two_percent(budget, metric, trained, data) -> None:
    result = _search(trained, data, **budget)
    before, after = result.report.before_totals, result.report.after_totals
    reached = after.macs / before.macs if metric == "macs" else after.params / before.params
    target = next(iter(budget.values()))
    assert abs(reached - target) <= 0.02 * target
    plan = result.plan[0]["plan"]
    assert plan["metric"] == metric and plan["chosen"]["feasible"]
    assert plan["chosen"]["cost"] == pytest.approx(result.plan[0]["stats"][metric], abs=1e-4)
    assert all(abs(c["cost"] - target) <= 0.02 * target for c in plan["candidates"] if c["feasible"])


def test_the_same_seed_gives_the_same_search_and_another_seed_another(trained, data) -> None:
    first, again = (_search(trained, data, target_macs=0.5, seed=3).plan[0]["plan"] for _ in range(2))
    other = _search(trained, data, target_macs=0.5, seed=4).plan[0]["plan"]
    assert first["candidates"] == again["candidates"] and first["chosen"] == again["chosen"]
    assert [c["direction"] for c in other["candidates"]] != [c["direction"] for c in first["candidates"]]


def test_the_search_starts_from_the_uniform_ratio_and_never_chooses_worse(trained, data) -> None:
    plan = _search(trained, data, target_macs=0.5).plan[0]["plan"]
    uniform = plan["uniform"]
    assert set(uniform["direction"]) == {1.0} and len(set(uniform["ratios"].values())) == 1
    assert plan["chosen"]["accuracy"] >= uniform["accuracy"]
    assert plan["evaluated"] == len(plan["candidates"]) >= SMALL["population"]


def test_candidates_that_break_the_budget_are_never_applied(data) -> None:
    # With 16 channels a group's last channels are coarse steps of cost: along many directions
    # the real cost jumps over the 2% window around the budget; those candidates are rejected.
    torch.manual_seed(0)
    coarse = fxcomp.recover(TinyResNet(width=16), data, epochs=1, lr=0.05, progress=False).model.eval()
    result = _search(coarse, data, target_macs=0.5, population=6)
    plan = result.plan[0]["plan"]
    notes = [c["note"] for c in plan["rejected"]]
    assert notes and all("off the budget" in note or "cannot reach 0.500" in note for note in notes)
    assert not any(c["feasible"] for c in plan["rejected"])
    assert plan["chosen"]["feasible"] and plan["chosen"] not in plan["rejected"]
    after, before = result.report.after_totals.macs, result.report.before_totals.macs
    assert abs(after / before - 0.5) <= 0.02 * 0.5
    with pytest.raises(RecipeError, match=r"no candidate meets the budget 0.05 \(cannot reach 0.050 .*\); raise max_ratio or the target$"):
        _search(coarse, data, target_macs=0.05, max_ratio=0.3)


def test_history_and_plot_files_are_written(trained, data, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    history, plot = tmp_path / "search.json", tmp_path / "search.png"
    plan = _search(trained, data, target_macs=0.6, history=str(history), plot=str(plot)).plan[0]["plan"]
    assert json.loads(history.read_text()) == plan
    assert plot.read_bytes().startswith(b"\x89PNG")
    front = plan["pareto"]
    assert front and all(a["cost"] < b["cost"] and a["accuracy"] < b["accuracy"] for a, b in zip(front, front[1:]))


def test_search_needs_held_out_data_and_one_budget(trained, data) -> None:
    with pytest.raises(DataError, match="pass train_data= and val_data="):
        fxcomp.compress(trained, data.example_inputs(), {"passes": [{"pass": "search", "target_macs": 0.5}]}, train_data=data.train)
    with pytest.raises(RecipeError, match="exactly one budget"):
        _search(trained, data, target_macs=0.5, target_params=0.5)
    step = {"passes": [{"pass": "search", "target_macs": 0.5}]}
    for empty in ("train_data", "val_data"):
        given = {"train_data": data.train, "val_data": data.val, empty: []}
        with pytest.raises(DataError, match=f"^search: {empty} is empty; give it the examples"):
            fxcomp.compress(trained, data.example_inputs(), step, **given)
    one_shot = iter([data.train[:64]])
    with pytest.raises(DataError, match="^search: train_data is a one-shot iterator"):
        fxcomp.compress(trained, data.example_inputs(), step, train_data=one_shot, val_data=data.val)
    own = DataLoader(data.train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match="^search: train_data shuffles with its own generator"):
        fxcomp.compress(trained, data.example_inputs(), step, train_data=own, val_data=data.val)
    plain = DataLoader(data.train, batch_size=16, shuffle=True)  # shuffles from the global generator search seeds
    assert fxcomp.compress(trained, data.example_inputs(), {"passes": [{"pass": "search", **SMALL, "target_macs": 0.5}]},
                           train_data=plain, val_data=data.val).plan[0]["plan"]


def test_a_splits_object_as_val_data_scores_on_its_validation_part(trained, data) -> None:
    step = {"passes": [{"pass": "search", **SMALL, "target_macs": 0.5}]}
    on_splits = fxcomp.compress(trained, data.example_inputs(), step, train_data=data.train, val_data=data).plan[0]["plan"]
    on_val = fxcomp.compress(trained, data.example_inputs(), step, train_data=data.train, val_data=data.val).plan[0]["plan"]
    assert on_splits["candidates"] == on_val["candidates"]


@pytest.mark.parametrize("techniques", [["prune"], ["prune", "lowrank", "separable"]])
def test_worker_processes_score_as_the_main_process_does(techniques, trained, data) -> None:
    alone = _search(trained, data, target_macs=0.5, techniques=techniques, seed=5).plan[0]["plan"]
    shared = _search(trained, data, target_macs=0.5, techniques=techniques, seed=5, workers=2).plan[0]["plan"]
    assert shared["candidates"] == alone["candidates"]
    assert any(c["rewrites"] for c in alone["candidates"]) == (len(techniques) > 1)


def _distributed_search(rank: int, world: int, directory: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        data = digits()
        model = fxcomp.load(os.path.join(directory, "model.fxc"))
        plan = _search(model, data, target_macs=0.5).plan[0]["plan"]
        with open(os.path.join(directory, f"rank{rank}.json"), "w") as handle:
            json.dump(plan["candidates"], handle)
    finally:
        dist.destroy_process_group()


def test_two_distributed_processes_run_the_same_search(trained, data, tmp_path) -> None:
    fxcomp.save(fxcomp.trace(trained, data.example_inputs()), tmp_path / "model.fxc")
    mp.spawn(_distributed_search, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    alone = _search(fxcomp.load(tmp_path / "model.fxc"), data, target_macs=0.5).plan[0]["plan"]["candidates"]
    assert ranks[0] == ranks[1]
    assert [c["direction"] for c in ranks[0]] == [c["direction"] for c in alone]
    assert [c["cost"] for c in ranks[0]] == pytest.approx([c["cost"] for c in alone])


def test_recalibrate_batchnorm_averages_the_batch_statistics_and_restores_modes(data) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    images = data.train.tensors[0][:256]
    labels = torch.zeros(128, dtype=torch.long)
    used = recalibrate_batchnorm(model, [(images[:128], labels), (images[128:], labels)], batches=2)
    features = model[0](images).detach()
    assert used == 2 and not model.training and not model[1].training
    torch.testing.assert_close(model[1].running_mean, features.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert model[1].momentum == 0.1


def test_recalibration_without_batches_keeps_the_statistics(data) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    model[1].running_mean.fill_(0.5)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert recalibrate_batchnorm(model, data.train, batches=0) == 0
    assert recalibrate_batchnorm(model, [], batches=4) == 0
    for batches in (2.5, -1, True):  # 2.5 ran every batch
        with pytest.raises(fxcomp.UsageError, match=r"^recalibrate_batchnorm needs batches >= 0 \(a whole number\), got"):
            recalibrate_batchnorm(model, data.train, batches=batches)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert model[1].momentum == 0.1


def test_short_finetune_trains_a_copy_reproducibly(trained, data) -> None:
    before = {name: value.clone() for name, value in trained.state_dict().items()}
    state = torch.random.get_rng_state()
    tuned, again = (short_finetune(trained, data.train, steps=5, lr=0.05, seed=1) for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    other = short_finetune(trained, data.train, steps=5, lr=0.05, seed=2)
    assert all(torch.equal(value, trained.state_dict()[name]) for name, value in before.items())
    assert not tuned.training
    for name, value in tuned.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])
    assert not torch.equal(tuned.fc.weight, trained.fc.weight) and not torch.equal(tuned.fc.weight, other.fc.weight)
    with pytest.raises(UsageError, match="short_finetune needs steps >= 1"):
        short_finetune(trained, data.train, steps=0)


def test_with_finetune_steps_the_applied_model_is_the_one_scored(trained, data) -> None:
    plain = _search(trained, data, target_macs=0.5).plan[0]["plan"]
    result = _search(trained, data, target_macs=0.5, finetune_steps=3, finetune_lr=0.05)
    plan = result.plan[0]["plan"]
    # The same candidates (the budget decides the ratios), scored after three training steps.
    assert [c["ratios"] for c in plan["candidates"][:4]] == [c["ratios"] for c in plain["candidates"][:4]]
    assert [c["accuracy"] for c in plan["candidates"][:4]] != [c["accuracy"] for c in plain["candidates"][:4]]
    held_out = TensorDataset(*(t[: SMALL["eval_samples"]] for t in data.val.tensors))
    assert evaluate(result.model, held_out)[1] == plan["chosen"]["accuracy"]
    # A shuffling DataLoader draws from the global generator: every candidate and apply still see the same batches.
    shuffled = DataLoader(data.train, batch_size=64, shuffle=True)
    step = {"pass": "search", **SMALL, "target_macs": 0.5, "finetune_steps": 3, "finetune_lr": 0.05}
    result = fxcomp.compress(trained, data.example_inputs(), {"passes": [step]}, train_data=shuffled, val_data=data.val)
    assert evaluate(result.model, held_out)[1] == result.plan[0]["plan"]["chosen"]["accuracy"]
    with pytest.raises(RecipeError, match="finetune_steps"):
        _search(trained, data, target_macs=0.5, finetune_steps=-1)
    with pytest.raises(fxcomp.TrainingError, match=r"^search.finetune_lr 1e\+30: the training loss became nan"):
        _search(trained, data, target_macs=0.5, finetune_steps=3, finetune_lr=1e30)


REWRITING = {"target_macs": 0.5, "techniques": ["prune", "lowrank", "separable"], "population": 6, "generations": 2}


def test_rewrites_chosen_per_layer_meet_the_budget_and_are_applied_as_scored(trained, data, monkeypatch) -> None:
    import fxcomp_plugins.search as search_plugin

    # Whatever the search chooses is applied as scored; make it choose the best candidate that rewrites a layer.
    ranked = search_plugin.ranked
    monkeypatch.setattr(search_plugin, "ranked", lambda candidates: sorted(ranked(candidates), key=lambda c: not c.rewrites))
    result = _search(trained, data, **REWRITING)
    plan = result.plan[0]["plan"]
    rewriting = [c for c in plan["candidates"] if c["rewrites"]]
    assert plan["uniform"]["rewrites"] == {} and rewriting
    assert set().union(*(c["rewrites"].values() for c in rewriting)) == {"lowrank", "separable"}
    assert all(abs(c["cost"] - 0.5) <= 0.02 * 0.5 for c in plan["candidates"] if c["feasible"])
    assert abs(result.report.after_totals.macs / result.report.before_totals.macs - 0.5) <= 0.02 * 0.5
    chosen = plan["chosen"]
    assert chosen["rewrites"] and chosen["feasible"]
    rewritten = [name for name, module in result.model.named_modules() if isinstance(module, nn.Sequential) and name not in ("stem", "wide")]
    assert sorted(rewritten) == sorted(chosen["rewrites"]) and result.plan[0]["stats"]["rewritten_layers"] == len(rewritten)
    for layer, technique in chosen["rewrites"].items():
        chain = result.model.get_submodule(layer)
        assert isinstance(result.model.get_submodule(plan["renamed"][layer]), (nn.Conv2d, nn.Linear))
        first, second = chain[0], chain[1]
        if technique == "separable":  # a depthwise conv, then a pointwise one
            assert len(chain) == 2 and first.groups == first.in_channels and second.kernel_size == (1, 1)
        else:  # factors keeping half the rank: the first narrows its input to at most half
            inputs, rank = first.weight.shape[1], first.weight.shape[0]
            assert len(chain) in (2, 3) and rank <= math.ceil(0.5 * inputs)
    held_out = TensorDataset(*(t[: SMALL["eval_samples"]] for t in data.val.tensors))
    assert evaluate(result.model, held_out)[1] == chosen["accuracy"]


class _Narrowing(nn.Module):
    """conv1 (1→32) then a 1×1 conv2 (32→16): factoring conv2 gains only while conv1 keeps most channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


def test_a_rewrite_pruning_made_pointless_is_skipped_and_not_recorded() -> None:
    from fxcomp.passes import PassContext
    from fxcomp_plugins.search import Search
    from fxcomp_plugins.search.evaluation import prune_with, score
    from fxcomp_plugins.search.evolution import Genome

    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    gm = fxcomp.trace(_Narrowing().eval(), x)
    examples = TensorDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    context = PassContext((x,), None, fxcomp.load_plugins(), examples, examples)
    def searched(**budget):  # the problem a search plans on: groups, and the layers a rewrite would change
        problem = Search(techniques=["prune", "lowrank"], **budget)._problem(gm, context)
        Search._rewritable(problem, gm, context)
        return problem

    problem = searched(target_macs=0.5)
    assert "conv2" in problem.layers and problem.names == ["conv1", "conv2"]
    whole = prune_with(problem, [0.0, 0.0], {"conv2": "lowrank"})
    assert whole.rewrites == {"conv2": "lowrank"} and whole.renamed == {"conv2": "conv2.1"}
    assert isinstance(whole.graph.get_submodule("conv2.1"), nn.Conv2d)
    halved = prune_with(problem, [0.5, 0.0], {"conv2": "lowrank"})  # 16 → 16 channels: rank 8 saves nothing
    assert halved.rewrites == {} and halved.renamed == {}
    assert type(halved.graph.get_submodule("conv2")) is nn.Conv2d
    # Factoring conv2 alone leaves 0.85 of the MACs: under a 0.95 budget the candidate is rejected, naming what it asked for.
    near = searched(target_macs=0.95)
    genome = Genome((1.0, 1.0), tuple("lowrank" if layer == "conv2" else "prune" for layer in near.layers))
    record = score(near, genome)
    assert not record["feasible"] and record["rewrites"] == {"conv2": "lowrank"}
    assert record["note"] == "its real cost stays at 0.850 of the original, off the budget 0.950"


def test_genomes_building_the_same_model_are_scored_once(monkeypatch) -> None:
    from fxcomp.passes import PassContext
    from fxcomp_plugins.search import Search
    from fxcomp_plugins.search import evaluation
    from fxcomp_plugins.search.evolution import Genome

    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    gm = fxcomp.trace(_Narrowing().eval(), x)
    examples = TensorDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    context = PassContext((x,), None, fxcomp.load_plugins(), examples, examples)
    problem = Search(techniques=["prune", "lowrank"], target_macs=0.52)._problem(gm, context)
    Search._rewritable(problem, gm, context)
    calls = []
    monkeypatch.setattr(evaluation, "evaluate", lambda model, data: calls.append(model) or evaluate(model, data))
    # Pruning conv1 alone to the budget leaves 16 of its channels, and factoring conv2 then gains nothing:
    # the two genomes reach the budget through different ratios but build the same model.
    pruned_only, pointless = (Genome((1.0, 0.0), tuple(c if layer == "conv2" else "prune" for layer in problem.layers))
                              for c in ("prune", "lowrank"))
    first, second = evaluation.score(problem, pruned_only), evaluation.score(problem, pointless)
    assert first["feasible"] and second["feasible"] and first["ratios"] != second["ratios"]
    assert first["rewrites"] == second["rewrites"] == {} and first["accuracy"] == second["accuracy"]
    assert len(calls) == 1
    factored = evaluation.score(problem, Genome((1.0, 0.5), pointless.choices))  # another model is scored anew
    assert factored["feasible"] and factored["rewrites"] == {"conv2": "lowrank"} and len(calls) == 2


def test_the_same_seed_gives_the_same_rewrites(trained, data) -> None:
    first, again = (_search(trained, data, **{**REWRITING, "population": 4, "generations": 1}, seed=5).plan[0]["plan"] for _ in range(2))
    assert first["candidates"] == again["candidates"]
    assert any(c["rewrites"] for c in first["candidates"])


def test_rewrite_techniques_are_checked(trained, data) -> None:
    with pytest.raises(RecipeError, match=r"^passes\[0\].techniques: include prune; pruning is what meets the budget"):
        _search(trained, data, target_macs=0.5, techniques=["lowrank"])
    with pytest.raises(RecipeError, match="techniques: expected one or a list of 'prune', 'lowrank', 'separable', got"):
        _search(trained, data, target_macs=0.5, techniques=["prune", "distill"])
    plugins = fxcomp.load_plugins(disable=["lowrank"])
    step = {"pass": "search", **SMALL, **REWRITING}
    with pytest.raises(RecipeError, match="search uses the 'lowrank' pass, which no loaded plugin registers"):
        fxcomp.compress(trained, data.example_inputs(), {"passes": [step]}, train_data=data.train, val_data=data.val, plugins=plugins)


def test_the_evolution_draws_only_each_layers_own_choices() -> None:
    from fxcomp_plugins.search.evolution import Candidate, Evolution

    choices = [["prune", "lowrank"], ["prune", "separable"], ["prune", "lowrank", "separable"]]
    evolution = Evolution(4, choices=choices, population=30, mutation=0.5, crossover=0.5, seed=0)
    first = evolution.first()
    assert first[0].direction == (1.0,) * 4 and first[0].choices == ("prune",) * 3
    parents = [Candidate(0, genome, accuracy=1.0 - index / 100, cost=0.5, feasible=True) for index, genome in enumerate(first)]
    children = evolution.children(parents, 30)
    genomes = first + children
    assert len({genome.key() for genome in genomes}) == len(genomes)
    for genome in genomes:
        assert all(choice in options for choice, options in zip(genome.choices, choices))
    assert {choice for genome in genomes for choice in genome.choices} == {"prune", "lowrank", "separable"}
    again = Evolution(4, choices=choices, population=30, mutation=0.5, crossover=0.5, seed=0)
    assert again.first() == first and again.children(parents, 30) == children


class _Noisy(torch.utils.data.Dataset):
    """Images with fresh random noise on every read: calibration data that draws from the global generator."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index] + 0.5 * torch.randn_like(self.images[index])


def test_data_driven_importance_ranks_the_same_when_scoring_and_applying(trained, data) -> None:
    calib = DataLoader(_Noisy(data.train.tensors[0][:256]), batch_size=64, shuffle=True)
    step = {"pass": "search", **SMALL, "target_macs": 0.5, "importance": "activation"}
    result = fxcomp.compress(trained, data.example_inputs(), {"passes": [step]},
                             train_data=data.train, val_data=data.val, calib_data=calib)
    held_out = TensorDataset(*(t[: SMALL["eval_samples"]] for t in data.val.tensors))
    assert evaluate(result.model, held_out)[1] == result.plan[0]["plan"]["chosen"]["accuracy"]


def _flops_as_latency(run, threads, repeats=0) -> float:
    """A stand-in for the latency table's timer: runs the layer once and reports 1 s per 10⁹ FLOPs.

    Timing real layers makes the budget test depend on a quiet machine; this keeps every table
    entry deterministic and monotone in the channel counts, as measured latencies are on average.
    """
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() * 1e-9


def test_the_latency_table_times_conv_and_linear_layers_only() -> None:
    from fxcomp_plugins.search.latency import LatencyTable

    table = LatencyTable(None, 1)
    assert table.layer_ms(nn.Linear(16, 8), fxcomp.TensorSpec((4, 16), torch.float32)) > 0
    assert table.layer_ms(nn.ReLU(), fxcomp.TensorSpec((4, 16), torch.float32)) is None
    assert table.measured == 1


def test_a_latency_budget_uses_a_per_layer_table_cached_on_disk(tmp_path, monkeypatch) -> None:
    from fxcomp_plugins.search import latency
    from fxcomp_plugins.search.latency import LatencyTable

    monkeypatch.setattr(latency, "_time", _flops_as_latency)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(512, 1, 24, 24, generator=generator), torch.randint(0, 10, (512,), generator=generator)
    train, val = TensorDataset(images[:384], labels[:384]), TensorDataset(images[384:], labels[384:])
    torch.manual_seed(0)
    model = TinyResNet(width=32).eval()
    table = tmp_path / "latency.json"
    gm = fxcomp.trace(model, images[:1])
    budget = {"target_latency": 0.8, "latency_table": str(table)}  # of the latency the search measures

    def search(**options):
        step = {"pass": "search", **SMALL, **budget, **options}
        return fxcomp.compress(model, images[:1], {"passes": [step]}, train_data=train, val_data=val).plan[0]

    first = search()
    plan = first["plan"]
    assert plan["metric"] == "latency" and plan["latency"]["measured_layers"] > 0
    assert abs(plan["chosen"]["cost"] - plan["target"]) <= 0.02 * plan["target"]
    assert first["stats"]["latency"] == pytest.approx(plan["chosen"]["cost"], abs=1e-4)
    measured = json.loads(table.read_text())
    again = search()["plan"]
    reread = json.loads(table.read_text())
    assert all(reread[key] == value for key, value in measured.items())  # reused, never re-timed
    assert len(reread) == len(measured) + again["latency"]["measured_layers"]  # only new layers were timed
    cached = LatencyTable(str(table), torch.get_num_threads())
    assert cached.layers_ms(gm) > 0 and cached.measured == 0
    assert plan["target"] == 0.8
    with pytest.raises(RecipeError, match="latency budgets are measured on this machine"):
        search(workers=2)
    with pytest.raises(RecipeError, match=r"passes\[0\] \(search\): give exactly one budget"):
        search(target_latency_ms=1.0)


def test_output_and_table_paths_are_checked_before_the_search(tmp_path) -> None:
    from fxcomp_plugins.search import Search
    from fxcomp_plugins.search.latency import LatencyTable

    with pytest.raises(RecipeError, match=r"search.history: cannot write '.*missing/h.json': directory '.*missing' does not exist"):
        Search(target_macs=0.5, history=str(tmp_path / "missing" / "h.json"))
    with pytest.raises(RecipeError, match=r"search.plot: cannot write '.*': it is a directory"):
        Search(target_macs=0.5, plot=str(tmp_path))
    with pytest.raises(RecipeError, match=r"^search.latency_table: '.*' is a directory; give a file name$"):
        Search(target_latency=0.9, latency_table=str(tmp_path))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RecipeError, match=r"^search.latency_table: '.*a_file/sub/t.json' lies under '.*a_file', which is a file"):
        Search(target_latency=0.9, latency_table=str(tmp_path / "a_file" / "sub" / "t.json"))
    Search(target_latency=0.9, latency_table=str(tmp_path / "new" / "t.json"))  # missing folders are created later
    broken = tmp_path / "latency.json"
    for content in ("{not json", "[1, 2]", '{"conv": "fast"}'):
        broken.write_text(content)
        with pytest.raises(RecipeError, match=rf"search.latency_table: '{broken}' is not a latency table.*; delete it to rebuild it$"):
            LatencyTable(str(broken), 1)
