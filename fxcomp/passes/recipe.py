"""Recipes: the ordered list of passes to run, from YAML, a dict or Pass objects.

A recipe has the form::

    passes:
      - pass: fold_bn
      - pass: prune
        ratio: 0.5
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fxcomp.errors import RecipeError
from fxcomp.passes.base import Pass
from fxcomp.passes.options import validate_options
from fxcomp.plugin.host import Plugins

RecipeLike = str | os.PathLike | Mapping[str, Any] | Sequence[Pass]


def _read(recipe: str | os.PathLike) -> Any:
    """YAML text from a file (a PathLike, a one-line string naming a file or ending in .yaml/.yml) or a string."""
    text = str(recipe)
    is_path = isinstance(recipe, os.PathLike) or (
        "\n" not in text and (text.endswith((".yaml", ".yml")) or Path(text).is_file())
    )
    if is_path:
        if not Path(text).is_file():
            raise RecipeError(f"recipe file '{text}' does not exist; give a path to a YAML file or a YAML string")
        text = Path(text).read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(f"recipe is not valid YAML{where}: {problem}") from error


def _build(entry: Any, index: int, plugins: Plugins) -> Pass:
    path = f"passes[{index}]"
    if not isinstance(entry, Mapping):
        raise RecipeError(f"{path}: expected a mapping like {{pass: NAME, ...options}}, got {entry!r}")
    if "pass" not in entry:
        raise RecipeError(f"{path}.pass: missing; every entry names its pass, e.g. `- pass: fold_bn`")
    name = entry["pass"]
    passes = plugins.registry.passes
    if name not in passes:
        known = ", ".join(sorted(passes)) or "none (are the plugins installed?)"
        raise RecipeError(f"{path}.pass: unknown pass {name!r}; registered passes: {known}")
    pass_class: type[Pass] = passes[name].value
    options = {key: value for key, value in entry.items() if key != "pass"}
    return pass_class(**validate_options(pass_class.schema, options, path))


def load_recipe(recipe: RecipeLike, plugins: Plugins) -> list[Pass]:
    """Turn ``recipe`` (a YAML path or string, a dict, or a list of Pass objects) into passes.

    Raises :class:`fxcomp.RecipeError` naming the path of the first bad field.
    """
    if isinstance(recipe, (list, tuple)) and all(isinstance(p, Pass) for p in recipe):
        return list(recipe)
    data = _read(recipe) if isinstance(recipe, (str, os.PathLike)) else recipe
    if not isinstance(data, Mapping):
        raise RecipeError(
            f"recipe: expected a mapping with a `passes` list (or the path of a YAML file holding one), got {data!r}"
        )
    unknown = sorted(set(data) - {"passes"})
    if unknown:
        raise RecipeError(f"{unknown[0]}: unknown top-level field; a recipe has only `passes`")
    entries = data.get("passes")
    if not isinstance(entries, list):
        raise RecipeError(f"passes: expected a list of {{pass: NAME, ...options}}, got {entries!r}")
    return [_build(entry, index, plugins) for index, entry in enumerate(entries)]
