"""Recipes: the ordered list of passes to run, from YAML, a dict or Pass objects.

A recipe has the form::

    passes:
      - pass: fold_bn
      - pass: prune
        ratio: 0.5
      - pass: lower      # optional, last: fxcomp.lower the result (CompressionResult.lowered)
        backend: inductor
        autotune: true   # or channels_last / direct_convs: true (fxcomp.lower's options)
    save:                # optional: how CompressionResult.save (and the CLI's --out) writes the model
      codec: deep        # the Deep Compression codec of fxcomp.save
      index_bits: 5
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fxcomp.errors import RecipeError
from fxcomp.passes.base import Pass
from fxcomp.passes.options import validate_options
from fxcomp.plugin.host import Plugins
from fxcomp.plugin.registry import BUILT_IN_BACKENDS, INDUCTOR_MODES

RecipeLike = str | os.PathLike | Mapping[str, Any] | Sequence[Pass]


class _RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the last would win silently)
    and reading ``1e-3`` as a number (YAML 1.1 wants ``1.0e-3``; YAML 1.2 and Python read both)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`, merged by the base class
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # the base class refuses it with its own message
                continue
            if key in seen:
                mark = key_node.start_mark
                raise RecipeError(
                    f"recipe gives '{key}' twice in one mapping (line {mark.line + 1}); keep one of them"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read(recipe: str | os.PathLike) -> Any:
    """YAML text from a file (a PathLike, a one-line string naming a file or ending in .yaml/.yml) or a string."""
    text = str(recipe)
    is_path = isinstance(recipe, os.PathLike) or (
        "\n" not in text and (text.endswith((".yaml", ".yml")) or Path(text).is_file())
    )
    if is_path:
        if not Path(text).is_file():
            raise RecipeError(f"recipe file '{text}' does not exist; give a path to a YAML file or a YAML string")
        try:
            text = Path(text).read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise RecipeError(f"recipe file '{text}' is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(f"recipe is not valid YAML{where}: {problem}") from error


def located(error: RecipeError, index: int, name: str) -> RecipeError:
    """``error``, raised by recipe step ``index`` (pass ``name``), with its message naming the step's path.

    ``prune.importance: …`` becomes ``passes[1].importance: …``, like the schema's own errors; other
    messages get ``passes[1] (prune): `` in front.
    """
    message, path = str(error), f"passes[{index}]"
    for own in (f"{name}.", f"pass '{name}': ", f"{name}: "):
        if message.startswith(own):
            rest = message.removeprefix(own)
            return RecipeError(f"{path}.{rest}" if own.endswith(".") else f"{path} ({name}): {rest}")
    return error if message.startswith(path) else RecipeError(f"{path} ({name}): {message}")


def _build(entry: Any, index: int, plugins: Plugins) -> Pass:
    path = f"passes[{index}]"
    if not isinstance(entry, Mapping):
        raise RecipeError(f"{path}: expected a mapping like {{pass: NAME, ...options}}, got {entry!r}")
    if "pass" not in entry:
        raise RecipeError(f"{path}.pass: missing; every entry names its pass, e.g. `- pass: fold_bn`")
    name = entry["pass"]
    passes = plugins.registry.passes
    if not isinstance(name, str) or name not in passes:
        known = ", ".join(sorted(passes)) or "none (are the plugins installed?)"
        raise RecipeError(f"{path}.pass: unknown pass {name!r}; registered passes: {known}")
    pass_class: type[Pass] = passes[name].value
    options = {key: value for key, value in entry.items() if key != "pass"}
    validate_options(pass_class.schema, options, path)  # errors name the recipe field; the pass checks once more
    try:
        return pass_class(**options)  # from the values given, so that a normalizing check applies once
    except RecipeError as error:
        raise located(error, index, name) from error


@dataclass
class Recipe:
    """A loaded recipe: its passes, the options to save the result with (``fxcomp.save``'s) and,
    when it ends with a ``lower`` step, that step's options (``fxcomp.lower``'s ``backend``, ``mode``, ``channels_last``,
    ``direct_convs`` and ``autotune``)."""

    passes: list[Pass]
    save: dict[str, Any] = field(default_factory=dict)
    lower: dict[str, Any] | None = None


def _save_options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or set(value) - {"codec", "index_bits"}:
        raise RecipeError(f"save: expected a mapping with keys among codec, index_bits; got {value!r}")
    if value.get("codec") not in (None, "deep"):
        raise RecipeError(f"save.codec: expected deep (or nothing for plain tensors), got {value.get('codec')!r}")
    if "index_bits" in value and value.get("codec") != "deep":
        raise RecipeError("save.index_bits: sets the deep codec's position width; add `codec: deep` or drop it")
    bits = value.get("index_bits", 5)
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise RecipeError(f"save.index_bits: expected a whole number in [1, 16], got {bits!r}")
    return dict(value)


def _lower_options(entry: Mapping[str, Any], index: int, count: int, plugins: Plugins) -> dict[str, Any]:
    path = f"passes[{index}]"
    if index != count - 1:
        raise RecipeError(f"{path}.pass: `lower` must be the last step of a recipe (it is step {index + 1} of {count})")
    layout = ("channels_last", "direct_convs", "autotune")
    unknown = sorted(set(entry) - {"pass", "backend", "mode", *layout})
    if unknown:
        raise RecipeError(f"{path}.{unknown[0]}: unknown option of `lower`; it takes backend, mode, {', '.join(layout)}")
    options = {"backend": entry.get("backend", "eager"), "mode": entry.get("mode")} | {name: entry.get(name, False) for name in layout}
    if not isinstance(options["backend"], str) or not options["backend"]:
        raise RecipeError(f"{path}.backend: expected a backend name such as eager, inductor or triton, got {options['backend']!r}")
    backends = plugins.registry.backends()
    if options["backend"] not in backends:
        raise RecipeError(f"{path}.backend: unknown backend {options['backend']!r}; available: {', '.join(backends)}")
    if options["mode"] is not None and (options["backend"] != "inductor" or options["mode"] not in INDUCTOR_MODES):
        raise RecipeError(f"{path}.mode: expected one of {', '.join(INDUCTOR_MODES)} with backend inductor, got {options['mode']!r}")
    for name in layout:
        if not isinstance(options[name], bool):
            raise RecipeError(f"{path}.{name}: expected true or false, got {options[name]!r}")
        if options[name] and options["backend"] not in BUILT_IN_BACKENDS:
            raise RecipeError(f"{path}.{name}: applies to backends {' and '.join(BUILT_IN_BACKENDS)}, not {options['backend']!r}")
    if options["autotune"] and (options["channels_last"] or options["direct_convs"]):
        raise RecipeError(f"{path}.autotune: it chooses channels_last and direct_convs itself; drop them or drop autotune")
    return options


def load_recipe(recipe: RecipeLike, plugins: Plugins) -> Recipe:
    """Turn ``recipe`` (a YAML path or string, a dict, or a list of Pass objects) into passes and save options.

    Raises :class:`fxcomp.RecipeError` naming the path of the first bad field.
    """
    if isinstance(recipe, (list, tuple)) and all(isinstance(p, Pass) for p in recipe):
        return Recipe(list(recipe))
    data = _read(recipe) if isinstance(recipe, (str, os.PathLike)) else recipe
    if not isinstance(data, Mapping):
        raise RecipeError(
            f"recipe: expected a mapping with a `passes` list (or the path of a YAML file holding one), got {data!r}"
        )
    unknown = sorted(set(data) - {"passes", "save"})
    if unknown:
        raise RecipeError(f"{unknown[0]}: unknown top-level field; a recipe has `passes` and optionally `save`")
    entries = data.get("passes")
    if not isinstance(entries, list):
        raise RecipeError(f"passes: expected a list of {{pass: NAME, ...options}}, got {entries!r}")
    passes, lower = [], None
    for index, entry in enumerate(entries):
        if isinstance(entry, Mapping) and entry.get("pass") == "lower":
            lower = _lower_options(entry, index, len(entries), plugins)
        else:
            passes.append(_build(entry, index, plugins))
    return Recipe(passes, _save_options(data.get("save")), lower)
