"""The package boundaries docs/architecture.md promises: the core never imports the
built-in plugins, and the built-in plugins reach fxcomp only through its public
namespaces, exactly as a third-party plugin would."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {"fxcomp", *(f"fxcomp.{package.name}" for package in (ROOT / "fxcomp").iterdir() if (package / "__init__.py").exists())}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_boundaries_cover_the_packages() -> None:
    assert {"fxcomp.passes", "fxcomp.tracing", "fxcomp.analysis", "fxcomp.lowering"} <= PUBLIC
    assert len(_sources("fxcomp")) > 20 and len(_sources("plugins")) > 10


@pytest.mark.parametrize("path", _sources("fxcomp"), ids=lambda path: str(path.relative_to(ROOT)))
def test_core_never_imports_the_built_in_plugins(path: Path) -> None:
    wrong = [f"line {line}: {module}" for line, module in _imports(path) if module.split(".")[0] in {"fxcomp_plugins", "plugins"}]
    assert not wrong, wrong


@pytest.mark.parametrize("path", _sources("plugins"), ids=lambda path: str(path.relative_to(ROOT)))
def test_built_in_plugins_use_only_the_public_namespaces(path: Path) -> None:
    wrong = [
        f"line {line}: {module}"
        for line, module in _imports(path)
        if module.split(".")[0] == "fxcomp" and module not in PUBLIC
    ]
    assert not wrong, wrong
