"""The fxcomp command and the inspection outputs (tables, DOT)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
import torchvision

import fxcomp
from fxcomp.cli import main


def test_inspect_prints_the_per_layer_table(capsys) -> None:
    assert main(["inspect", "torchvision.models:resnet18", "--input-shape", "1,3,224,224"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["layer", "op", "input", "output", "params", "MACs"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["conv1"] == ["conv1", "Conv2d", "1×3×224×224", "1×64×112×112", "9.41k", "118.01M"]
    assert rows["layer1.0.add"][1:3] == ["add", "1×64×56×56,"]
    assert rows["fc"][-2:] == ["513.00k", "512.00k"]
    assert rows["total"] == ["total", "11.69M", "1.82G"]


def test_layer_table_matches_node_info(small_cnn, image) -> None:
    gm = fxcomp.trace(small_cnn, image)
    table = fxcomp.layer_table(gm).splitlines()
    conv2 = next(line for line in table if line.startswith("conv2 "))
    # 2×32×16×16 outputs × 16 inputs × 3×3 kernel
    assert conv2.split()[-1] == f"{2 * 32 * 16 * 16 * 16 * 9 / 1e6:.2f}M"
    assert fxcomp.node_info(next(n for n in gm.graph.nodes if n.target == "conv2")).macs == 2 * 32 * 16 * 16 * 16 * 9


def _group_rows(printed: str) -> tuple[list[str], str]:
    """The rows of the channel-group table ``inspect --groups`` prints, and its summary line."""
    section = printed.split("\nchannel groups\n", 1)[1].splitlines()
    return section[2:-2], section[-1]


def test_inspect_groups_lists_every_group_and_why_it_is_pinned(capsys) -> None:
    assert main(["inspect", "torchvision.models:resnet18", "--input-shape", "1,3,64,64", "--groups"]) == 0
    rows, summary = _group_rows(capsys.readouterr().out)
    assert len(rows) == 13
    assert rows[0].split() == ["0", "conv1,", "layer1.0.conv2,", "layer1.1.conv2", "64", "1", "yes"]
    assert rows[-1].split() == ["12", "fc", "1000", "1", "no", "the", "model", "returns", "these", "channels"]
    assert summary == "12 of 13 groups prunable, holding 2880 of 3880 channels"


class _GroupedWithShortcut(torch.nn.Module):
    """Four producers added together (one group), and a grouped conv (two equal segments)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(3, 8, 1) for _ in range(4))
        self.grouped = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(self.grouped(sum(conv(x) for conv in self.convs)))


def test_group_table_shortens_long_producer_lists_and_shows_segments() -> None:
    groups = fxcomp.analyze(fxcomp.trace(_GroupedWithShortcut(), torch.randn(1, 3, 6, 6)))
    rows = fxcomp.group_table(groups).splitlines()
    # The grouped conv reads input j and j + 4 with the same weight column: 4 channels, not 8.
    assert rows[2].split() == ["0", "convs.0,", "convs.1,", "convs.2", "(+1", "more)", "4", "1", "yes"]
    assert rows[3].split() == ["1", "grouped", "8", "2", "yes"]
    assert rows[-1] == "2 of 3 groups prunable, holding 12 of 15 channels"


def test_inspect_groups_of_a_saved_model(tmp_path, capsys, small_cnn, image) -> None:
    saved = tmp_path / "model.fxc"
    fxcomp.save(fxcomp.trace(small_cnn, image), saved)
    assert main(["inspect", str(saved), "--groups"]) == 0
    rows, summary = _group_rows(capsys.readouterr().out)
    assert [row.split()[:4] for row in rows] == [["0", "conv1", "16", "1"], ["1", "conv2", "32", "1"], ["2", "fc", "10", "1"]]
    assert summary == "2 of 3 groups prunable, holding 48 of 58 channels"


def test_inspect_writes_dot(tmp_path, capsys) -> None:
    dot = tmp_path / "graph.dot"
    assert main(["inspect", "tests.conftest:SmallCNN", "--input-shape", "1,3,8,8", "--dot", str(dot)]) == 0
    text = dot.read_text()
    assert text.startswith("digraph fxcomp {") and text.rstrip().endswith("}")
    assert '"conv1" [label="conv1\\nConv2d\\n1×16×8×8\\n27,648 MACs", fillcolor=lightyellow];' in text
    assert '"conv1" -> "bn1";' in text
    # Every data-flow edge of the graph, and nothing else, is in the file.
    from tests.conftest import SmallCNN

    gm = fxcomp.trace(SmallCNN(), torch.zeros(1, 3, 8, 8))
    expected = {f'"{node.name}" -> "{user.name}";' for node in gm.graph.nodes for user in node.users}
    assert set(re.findall(r'"\w+" -> "\w+";', text)) == expected
    assert len(expected) == len(gm.graph.nodes) - 1  # a chain: every node but the output feeds one user


def test_compress_command_writes_model_and_plan(tmp_path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("passes:\n  - pass: fold_bn\n")
    out, plan = tmp_path / "model.fxc", tmp_path / "plan.json"
    argv = ["compress", "torchvision.models:resnet18", "--recipe", str(recipe), "--input-shape", "1,3,64,64"]
    assert main([*argv, "--out", str(out), "--plan", str(plan)]) == 0
    printed = capsys.readouterr().out
    assert "folded=20" in printed and "layer1.0.bn1" in printed
    assert json.loads(plan.read_text())[0]["stats"] == {"folded": 20, "skipped": 0}
    loaded = fxcomp.load(out)
    reference = torchvision.models.resnet18().eval()
    assert loaded(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in reference.parameters())


def test_compress_command_prints_the_lowering_report(tmp_path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("passes:\n  - pass: lowrank\n    rank: 4\n  - pass: lower\n    backend: triton\n")
    argv = ["compress", "tests.conftest:SmallCNN", "--recipe", str(recipe), "--input-shape", "1,3,8,8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "lowered to backend 'triton': 1 pattern occurrence(s)" in printed and "lowrank_linear  fc.0, fc.1" in printed


def test_compress_calibrates_int8_with_the_training_data(tmp_path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("passes:\n  - pass: quantize\n    scheme: int8\n")
    plan = tmp_path / "plan.json"
    argv = ["compress", "fxcomp.demo:DigitsNet", "--recipe", str(recipe), "--input-shape", "1,1,8,8", "--plan", str(plan)]
    assert main([*argv, "--train-data", "digits"]) == 0
    (record,) = json.loads(plan.read_text())
    assert record["stats"]["layers"] == len(record["plan"]["layers"]) > 0
    assert all(low < high for low, high in record["stats"]["input_range"].values())
    assert main(argv) == 2  # without data there is nothing to calibrate on
    assert capsys.readouterr().err.endswith("pass calib_data=[batch, ...] to fxcomp.compress; on the command line, give --train-data\n")


def test_compress_dry_run_writes_no_model(tmp_path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("passes:\n  - pass: fold_bn\n")
    out = tmp_path / "model.fxc"
    argv = ["compress", "tests.conftest:SmallCNN", "--recipe", str(recipe), "--input-shape", "1,3,8,8"]
    assert main([*argv, "--dry-run", "--out", str(out)]) == 0
    assert not out.exists()
    printed = capsys.readouterr().out
    assert "no layer changed" in printed
    assert printed.splitlines()[-1].split() == ["fold_bn", "planned", "only"]  # it said 'no', as if folding found nothing


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "nowhere_module:x", "--input-shape", "1,3"], "error: cannot import module 'nowhere_module'"),
        (["inspect", "torchvision.models", "--input-shape", "1,3"], "must look like MODULE:CALLABLE"),
        (["inspect", "torchvision.models:nope", "--input-shape", "1,3"], "has no attribute 'nope'"),
        (["inspect", "missing.fxc"], "error: no such file 'missing.fxc'"),
        (["inspect", "tests.conftest:SmallCNN"], "error: inspecting MODULE:CALLABLE needs --input-shape"),
        (["inspect", "torchvision.models:resnet18", "--input-shape", "1,5,32,32"], "error: cannot compute the shapes of node 'conv1'"),
        (
            ["compress", "tests.conftest:SmallCNN", "--recipe", "passes: [{pass: nope}]", "--input-shape", "1,3,8,8"],
            "error: passes[0].pass: unknown pass 'nope'",
        ),
        (
            ["compress", "tests.conftest:SmallCNN", "--recipe", "passes: [{pass: [prune]}]", "--input-shape", "1,3,8,8"],
            "error: passes[0].pass: unknown pass ['prune']",
        ),
        (
            ["inspect", "torchvision.models:ResNet", "--input-shape", "1,3,8,8"],
            "error: calling 'torchvision.models:ResNet' with no arguments raised TypeError: ResNet.__init__() missing",
        ),
        (
            ["compress", "tests.conftest:SmallCNN", "--recipe", "passes: [{pass: fold_bn}]", "--input-shape", "1,3,8,8",
             "--out", "no_such_dir/model.fxc"],
            "error: cannot write 'no_such_dir/model.fxc': directory '",
        ),
        (
            ["compress", "tests.conftest:SmallCNN", "--recipe", "passes: [{pass: fold_bn}]", "--input-shape", "1,3,8,8",
             "--plan", "no_such_dir/plan.json"],
            "does not exist; create it or choose another path",
        ),
        (
            ["inspect", "tests.conftest:SmallCNN", "--input-shape", "1,3,8,8", "--dot", "no_such_dir/graph.dot"],
            "error: cannot write 'no_such_dir/graph.dot'",
        ),
    ],
)
def test_user_errors_print_one_line_and_exit_2(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) or message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_a_model_module_that_fails_to_import_is_a_one_line_error(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "broken_model_module.py").write_text("import torch\nraise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["inspect", "broken_model_module:Net", "--input-shape", "1,3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: importing module 'broken_model_module' raised RuntimeError: no GPU here; fix that module"


def test_a_failing_model_factory_is_named_and_fxcomp_errors_pass_through(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "factories_module.py").write_text(
        "import fxcomp\n"
        "def crashes():\n    raise RuntimeError('weights missing')\n"
        "def no_data():\n    raise fxcomp.DataError('no data in /x; install it')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["inspect", "factories_module:crashes", "--input-shape", "1,3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: calling 'factories_module:crashes' with no arguments raised RuntimeError: weights missing; fix the factory"
    )
    assert main(["inspect", "factories_module:no_data", "--input-shape", "1,3"]) == 2
    assert capsys.readouterr().err.strip() == "error: no data in /x; install it"


def test_a_recipe_file_that_is_not_utf8_is_a_one_line_error(tmp_path, capsys) -> None:
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes(b"passes:\n  - pass: fold_bn\n    exclude: caf\xe9\n")
    assert main(["compress", "tests.conftest:SmallCNN", "--recipe", str(recipe), "--input-shape", "1,3,8,8"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: recipe file '{recipe}' is not UTF-8 text (invalid continuation byte at byte 42); save it as UTF-8"
    )


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(fxcomp.FxcompError):
        main(["--debug", "inspect", "nowhere_module:x", "--input-shape", "1,3"])


def test_console_script_exit_status() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "fxcomp.cli", "inspect", "nowhere:x", "--input-shape", "1"],
        capture_output=True,
        text=True,
    )
    assert process.returncode == 2
    assert process.stderr.strip() == "error: cannot import module 'nowhere': No module named 'nowhere'; is it installed?"


def test_bad_input_shape_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["inspect", "tests.conftest:SmallCNN", "--input-shape", "1,x"])
    assert caught.value.code == 2
    assert "expected comma-separated sizes" in capsys.readouterr().err


def test_demo_trains_compresses_and_reports(tmp_path, capsys) -> None:
    out = tmp_path / "demo.fxc"
    assert main(["demo", "--seconds", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.startswith(("original ", "compressed "))}
    original_accuracy = float(rows["original"][1].rstrip("%"))
    assert original_accuracy > 80.0  # ten classes: chance is 10%
    assert rows["compressed"][1] == rows["original"][1]  # folding BatchNorm is exact
    assert int(rows["compressed"][2].replace(",", "")) < int(rows["original"][2].replace(",", ""))
    assert "folded=3" in printed
    assert fxcomp.load(out)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_inspect_shows_a_saved_model_at_other_input_shapes(tmp_path, capsys, small_cnn) -> None:
    saved = tmp_path / "model.fxc"
    fxcomp.save(fxcomp.trace(small_cnn, torch.zeros(1, 3, 8, 8)), saved)
    assert main(["inspect", str(saved), "--input-shape", "2,3,16,16"]) == 0
    conv1 = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("conv1 "))
    assert "2×16×16×16" in conv1
    assert main(["inspect", str(saved)]) == 0
    conv1 = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("conv1 "))
    assert "1×16×8×8" in conv1
