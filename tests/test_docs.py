"""The documentation's examples run: the plugin in writing-a-plugin.md is installed and used as written."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import fxcomp
from fxcomp.cli import main

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"<!-- (file: (?P<name>\S+)|run) -->\n```\w*\n(?P<body>.*?)```", re.DOTALL)


def _blocks(page: str) -> tuple[dict[str, str], list[str]]:
    files, runs = {}, []
    for match in _BLOCK.finditer((DOCS / page).read_text()):
        if match["name"]:
            files[match["name"]] = match["body"]
        else:
            runs.append(match["body"])
    return files, runs


def test_plugin_guide_example_installs_and_runs(install_plugin, capsys) -> None:
    files, runs = _blocks("writing-a-plugin.md")
    assert set(files) == {"pyproject.toml", "fxcomp_strip_dropout.py"} and len(runs) == 2
    project = tomllib.loads(files["pyproject.toml"])["project"]
    ((entry_name, module_name),) = project["entry-points"]["fxcomp"].items()
    install_plugin(
        entry_name, module_name, files[f"{module_name}.py"], dist=project["name"], version=project["version"]
    )

    plugins = fxcomp.load_plugins(disable=())
    info = {i.name: i for i in plugins.infos}[entry_name]
    assert (info.distribution, info.version, info.registered) == (
        "fxcomp-strip-dropout",
        "0.1.0",
        {"passes": ["strip_dropout"]},
    )
    exec(compile(runs[0], "writing-a-plugin.md", "exec"), {})
    assert "strip_dropout  yes         removed=2" in capsys.readouterr().out
    exec(compile(runs[1], "writing-a-plugin.md", "exec"), {})  # the lowering example asserts what it shows
    assert "linear_relu" in capsys.readouterr().out

    shown = re.search(r"\$ fxcomp plugins\n(.*?)```", (DOCS / "writing-a-plugin.md").read_text(), re.DOTALL)[1]
    assert main(["plugins"]) == 0
    assert capsys.readouterr().out.strip().replace(fxcomp.__version__, "0.1.0") == shown.strip()
