"""``save`` and ``load``: a rewritten GraphModule in a file that never runs code when loaded.

The file is a ``torch.save`` archive holding only a dict of plain tensors and
one JSON string describing the graph and the modules it calls. Loading reads it
with ``torch.load(weights_only=True)``, which unpickles nothing but tensors and
plain containers, and rebuilds modules and calls only from the allow-list
(:mod:`fxcomp.export.allowlist`). Module objects are rebuilt without running
their constructors: an allow-listed class is instantiated empty and given its
saved attributes, parameters and buffers. A parametrized module (a masked
weight, see :mod:`fxcomp.passes.masks`) is stored as its original class plus,
per parametrized tensor, the stored original and the chain of parametrization
modules (each an allow-listed module like any other); loading registers the
chain again, so masks keep working, also in training.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.utils import _pytree as pytree

from fxcomp.arguments import is_whole
from fxcomp.dynamic.model import CRITERIA, EXITS, HEADS, EarlyExitModel, has_exits
from fxcomp.errors import ExitError, LoadError, SaveError, TraceError
from fxcomp.export.deep import CodecError, CodecReport, codable, decode_tensor, encode_tensor
from fxcomp.export.allowlist import AllowList, build_allowlist, is_safe_method
from fxcomp.export.paths import check_writable
from fxcomp.export.values import decode, encode
from fxcomp.passes.masks import class_before_parametrizations, strip_masks
from fxcomp.plugin.host import Plugins, load_plugins
from fxcomp.tracing import TensorSpec, propagate, qualname
from fxcomp.tracing.names import QUALNAME
from fxcomp.tracing.shapes import INFO

FORMAT = "fxcomp-graph"
VERSION = 1
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_NAME = re.compile(r"^(?!__)[A-Za-z0-9_-]+\Z")
"""Names of submodules, parameters and buffers save and load accept: ASCII letters, digits, ``_`` and ``-``
(RegNet's ``block1-0``, a ``3x3`` branch), not starting with ``__``. fx writes a name that is not an
identifier as a string (``getattr(self, "3x3")``), and module members are dict keys, never code.

ASCII only: Python folds other letters in identifiers (NFKC), so a name like ``__ｃlass__``
would reach ``__class__`` in the code fx generates; and no dunder, which ``self.__class__``
in that code would resolve on the class rather than among the members."""
_DOTTED = re.compile(r"^(?!__)[A-Za-z0-9_-]+(\.(?!__)[A-Za-z0-9_-]+)*\Z")
"""Module and attribute paths save and load accept: :data:`_NAME` s joined by dots."""
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_REBUILT: tuple[tuple[type[nn.Module], frozenset[str], str], ...] = (
    (nn.RNNBase, frozenset({"_flat_weights", "_flat_weight_refs"}), "_init_flat_weights"),
)
"""Attributes a module derives from its own parameters (an RNN's list of them and weak references
to them): not saved, and rebuilt on load by the module's own method named beside them."""


def _derived_attributes(module: nn.Module) -> frozenset[str]:
    return frozenset().union(*(names for cls, names, _ in _REBUILT if isinstance(module, cls)))


def _rebuild_derived(module: nn.Module) -> None:
    for cls, _, method in _REBUILT:
        if isinstance(module, cls):
            getattr(module, method)()
_OPS = ("placeholder", "get_attr", "call_module", "call_function", "call_method", "output")


def _allowlist(plugins: Plugins | None) -> AllowList:
    plugins = plugins if plugins is not None else load_plugins()
    return build_allowlist(plugins.registry.serializables)


class _TensorTable:
    """Tensors to store, each once, so tied weights stay tied."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.names: dict[str, str] = {}
        self._keys: dict[int, str] = {}

    def add(self, tensor: torch.Tensor, name: str) -> str:
        """The key of ``tensor`` (stored under its first ``name``, for reports)."""
        key = self._keys.get(id(tensor))
        if key is None:
            if tensor.is_meta:
                raise SaveError(
                    f"tensor '{name}' is on the meta device and holds no values; give the model real weights before "
                    "saving (e.g. model.to_empty(device='cpu') then load_state_dict)"
                )
            key = self._keys[id(tensor)] = f"t{len(self._keys)}"
            self.names[key] = name
            self.tensors[key] = tensor.detach().cpu()
        return key


def _encode_parametrizations(
    module: nn.Module, path: str, allow: AllowList, table: _TensorTable
) -> dict[str, Any]:
    """Per parametrized tensor of ``module``: its stored original and the chain of parametrization modules."""
    encoded = {}
    for name, chain in module.parametrizations.items():
        if "original" in chain._parameters:
            stored = chain._parameters["original"]
        elif "original" in chain._buffers:
            stored = chain._buffers["original"]
        else:
            raise SaveError(
                f"'{path}.{name}' is parametrized from several tensors (its right_inverse returns a sequence), "
                "which fxcomp.save cannot store; remove that parametrization before saving"
            )
        encoded[name] = {
            "original": {
                "tensor": table.add(stored, f"{path}.{name}"),
                "parameter": isinstance(stored, nn.Parameter),
                "requires_grad": stored.requires_grad,
            },
            "unsafe": bool(chain.unsafe),
            "chain": [
                _encode_module(step, f"{path}.parametrizations.{name}.{index}", allow, table)
                for index, step in enumerate(chain)
            ],
        }
    return encoded


def _check_names(module: nn.Module, path: str, attributes: Iterable[str]) -> None:
    """Refuse the names of ``module``'s members (and saved ``attributes``) that :func:`load` would refuse."""
    members = [("submodule", module._modules), ("parameter", module._parameters), ("buffer", module._buffers)]
    for kind, names in members:
        for name in names:
            if not _NAME.match(name):
                raise SaveError(
                    f"module '{path}' has a {kind} named {name!r}, which fxcomp.load would refuse; give {kind}s "
                    "names of ASCII letters, digits, '_' and '-' (not starting with '__')"
                )
    for name in attributes:
        if not _IDENTIFIER.match(name):
            raise SaveError(
                f"module '{path}' has an attribute named {name!r}, which fxcomp.load would refuse; give attributes "
                "names that are ASCII identifiers"
            )


def _encode_module(module: nn.Module, path: str, allow: AllowList, table: _TensorTable) -> dict[str, Any]:
    parametrized = parametrize.is_parametrized(module)
    cls = class_before_parametrizations(module)
    class_name = allow.class_name(cls)
    if class_name is None:
        raise SaveError(
            f"module '{path}' is a {cls.__qualname__}, which fxcomp.load would refuse; register "
            "its class through the fxcomp_register_serializables hook, or trace through it (not as a leaf)"
        )
    for key in _MODULE_INTERNALS:
        if "hook" in key and isinstance(vars(module)[key], dict) and vars(module)[key]:
            raise SaveError(f"module '{path}' has {key} registered; hooks are code and cannot be saved, remove them")
    derived = _derived_attributes(module)
    attributes = {key: value for key, value in vars(module).items() if key not in _MODULE_INTERNALS and key not in derived}
    _check_names(module, path, attributes)
    attrs = {key: encode(value, f"module '{path}' attribute '{key}'") for key, value in attributes.items()}
    parameters = {
        name: None if p is None else {"tensor": table.add(p, f"{path}.{name}"), "requires_grad": p.requires_grad}
        for name, p in module._parameters.items()
    }
    encoded = {
        "class": class_name,
        "training": module.training,
        "attrs": attrs,
        "parameters": parameters,
        "buffers": {name: None if b is None else table.add(b, f"{path}.{name}") for name, b in module._buffers.items()},
        "non_persistent": sorted(module._non_persistent_buffers_set),
        "children": {
            name: _encode_module(child, f"{path}.{name}", allow, table)
            for name, child in module._modules.items()
            if child is not None and not (parametrized and name == "parametrizations")
        },
    }
    if parametrized:
        encoded["parametrizations"] = _encode_parametrizations(module, path, allow, table)
    return encoded


def _encode_node(node: fx.Node, allow: AllowList) -> dict[str, Any]:
    target: Any = node.target
    if node.op == "call_function":
        target = allow.function_name(node.target)
        if target is None:
            name = getattr(node.target, "__qualname__", repr(node.target))
            raise SaveError(
                f"node '{qualname(node)}' calls {getattr(node.target, '__module__', '?')}.{name}, which fxcomp.load "
                "would refuse; register it through the fxcomp_register_serializables hook"
            )
    if node.op == "call_method" and not is_safe_method(target):
        raise SaveError(
            f"node '{qualname(node)}' calls the tensor method '{target}', which fxcomp.load would refuse "
            "(it takes a callable or leaves torch); compute it outside the model"
        )
    if node.op in ("call_module", "get_attr") and not _DOTTED.match(target):
        raise SaveError(
            f"node '{qualname(node)}' refers to '{target}', a path fxcomp.load would refuse; give submodules, "
            "parameters and buffers names of ASCII letters, digits, '_' and '-' (not starting with '__')"
        )
    where = f"node '{qualname(node)}'"
    return {
        "name": node.name,
        "op": node.op,
        "target": target,
        "args": encode(node.args, where),
        "kwargs": encode(node.kwargs, where),
        "qualname": qualname(node),
    }


def _covered(path: str, saved: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in saved)


def _encode_graph(gm: fx.GraphModule, allow: AllowList, table: _TensorTable) -> dict[str, Any]:
    modules: dict[str, Any] = {}
    called = sorted({n.target for n in gm.graph.nodes if n.op == "call_module"}, key=lambda t: t.count("."))
    for target in called:
        if not _covered(target, modules):
            modules[target] = _encode_module(gm.get_submodule(target), target, allow, table)
    attributes: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr" or _covered(node.target, modules) or node.target in attributes:
            continue
        owner_path, _, name = node.target.rpartition(".")
        owner = gm.get_submodule(owner_path)
        value = getattr(owner, name)
        if isinstance(value, nn.Module):
            modules[node.target] = _encode_module(value, node.target, allow, table)
        elif isinstance(value, torch.Tensor):
            attributes[node.target] = {
                "tensor": table.add(value, node.target),
                "parameter": isinstance(value, nn.Parameter),
                "requires_grad": value.requires_grad,
                "persistent": name not in owner._non_persistent_buffers_set,
            }
        else:
            attributes[node.target] = {"value": encode(value, f"attribute '{node.target}'")}
    if has_exits(gm):
        modules[HEADS] = _encode_module(gm.get_submodule(HEADS), HEADS, allow, table)
    codegen = gm.graph._codegen
    pytree_info = None
    if isinstance(codegen, fx.graph._PyTreeCodeGen):
        info = codegen.pytree_info
        pytree_info = {
            "orig_args": list(info.orig_args),
            "in_spec": pytree.treespec_dumps(info.in_spec) if info.in_spec is not None else None,
            "out_spec": pytree.treespec_dumps(info.out_spec) if info.out_spec is not None else None,
        }
    elif type(codegen) is not fx.graph.CodeGen:
        raise SaveError(f"the graph uses a custom {type(codegen).__name__}, which cannot be saved")
    inputs = []
    for node in gm.graph.nodes:
        spec = node.meta.get(INFO)
        if node.op == "placeholder":
            output = spec.output if spec is not None else None
            inputs.append(
                {"shape": list(output.shape), "dtype": str(output.dtype).removeprefix("torch.")}
                if isinstance(output, TensorSpec)
                else None
            )
    return {
        "training": gm.training,
        "modules": modules,
        "attributes": attributes,
        "nodes": [_encode_node(node, allow) for node in gm.graph.nodes],
        "pytree_info": pytree_info,
        "inputs": inputs,
        "exits": gm.meta[EXITS] if has_exits(gm) else None,
    }


def save(
    module: fx.GraphModule | EarlyExitModel,
    path: str | os.PathLike,
    *,
    plugins: Plugins | None = None,
    codec: str | None = None,
    index_bits: int | None = None,
) -> CodecReport | None:
    """Write ``module`` (a GraphModule or an EarlyExitModel, e.g. ``compress(...).model``) to ``path``.

    The file stores the graph, the modules it calls with their attributes, and the
    tensors; never pickled code. An early-exit model's heads, exit points, criterion
    and thresholds are stored too. Raises :class:`fxcomp.SaveError` when the graph
    calls something :func:`load` would refuse (extend the allow-list through the
    ``fxcomp_register_serializables`` hook).

    ``codec="deep"`` stores every weight (floating point, two or more dimensions) with
    the Deep Compression codec (:mod:`fxcomp.export.deep`): sparse positions as
    ``index_bits``-bit differences (default 5; only with this codec), values as codebook
    indices, both Huffman-coded.
    Masks and shared weights are baked in first, so the file holds plain weights that
    load back bit-identical. It returns the :class:`~fxcomp.export.deep.CodecReport`
    (per weight: kept entries, bits, bytes and compression vs float, before and after
    Huffman coding); without a codec it returns None.
    """
    if codec not in (None, "deep"):
        raise SaveError(f"codec {codec!r} is not one of: deep (or None for plain tensors)")
    index_bits = _index_bits(codec, index_bits)
    if isinstance(module, EarlyExitModel):
        module = module.model
    if not isinstance(module, fx.GraphModule):
        raise SaveError(
            f"fxcomp.save takes a torch.fx.GraphModule, got {type(module).__name__}; "
            "trace the model first with fxcomp.trace(model, example_inputs)"
        )
    for name, _ in module.named_modules():
        if name and not _DOTTED.match(name):
            raise SaveError(
                f"module '{name}' has a name fxcomp.load would refuse; give submodules names of ASCII letters, "
                "digits, '_' and '-' (not starting with '__')"
            )
    check_writable(path)
    class_name = type(module).__name__
    if codec == "deep" and isinstance(module, fx.GraphModule):
        module = strip_masks(copy.deepcopy(module))  # the copy is a plain GraphModule
    allow = _allowlist(plugins)
    table = _TensorTable()
    graph = {**_encode_graph(module, allow, table), "class_name": class_name}
    report = _deep_code(table, graph, index_bits) if codec == "deep" else None
    torch.save({"format": FORMAT, "version": VERSION, "graph": json.dumps(graph), "tensors": table.tensors}, path)
    return report


def _index_bits(codec: str | None, index_bits: Any) -> int:
    """``index_bits`` checked (a whole number in [1, 16], given only with the deep codec), as an int; 5 by default."""
    if index_bits is None:
        return 5
    if codec != "deep":
        raise SaveError("index_bits sets the deep codec's position width; add codec='deep' (a recipe's save: {codec: deep}) or drop it")
    if not is_whole(index_bits) or not 1 <= index_bits <= 16:
        raise SaveError(f"index_bits must be between 1 and 16 (a whole number), got {index_bits!r}")
    return int(index_bits)


_CODED = "coded"  # the key of the one byte tensor holding every coded weight's streams


def _as_bytes(value: torch.Tensor) -> torch.Tensor:
    """The bytes of ``value`` in order, as a fresh 1-D uint8 tensor (also for an empty one, whose stride may be 0)."""
    return torch.empty(value.numel(), dtype=value.dtype).copy_(value.reshape(-1)).view(torch.uint8)


def _deep_code(table: _TensorTable, graph: dict[str, Any], index_bits: int) -> CodecReport:
    """Replace the table's weights by their Deep Compression coding, all in one byte tensor.

    ``graph["encoded"]`` gets each weight's description, with where its parts lie in the bytes.
    """
    encoded, sizes, other, pieces, offset = {}, [], 0.0, [], 0
    for key, tensor in list(table.tensors.items()):
        if not codable(tensor):
            other += tensor.numel() * tensor.element_size()
            continue
        meta, payload, size = encode_tensor(tensor, index_bits)
        del table.tensors[key]
        meta["parts"] = {}
        for part, value in payload.items():
            raw = _as_bytes(value)
            meta["parts"][part] = [offset, raw.numel(), str(value.dtype).removeprefix("torch.")]
            pieces.append(raw)
            offset += raw.numel()
        encoded[key] = meta
        sizes.append(dataclasses.replace(size, name=table.names[key]))
    table.tensors[_CODED] = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.uint8)
    graph["encoded"] = encoded
    return CodecReport(sizes, other)


# --- loading ---------------------------------------------------------------------------------------


def _malformed(what: str) -> LoadError:
    return LoadError(f"the file is malformed ({what}); only files written by fxcomp.save can be loaded")


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind):
        raise _malformed(what)
    return value


class _Loader:
    def __init__(self, graph: dict[str, Any], tensors: dict[str, torch.Tensor], allow: AllowList) -> None:
        self.graph = graph
        self.tensors = tensors
        self.allow = allow
        self.parameters: dict[str, nn.Parameter] = {}

    def tensor(self, key: Any) -> torch.Tensor:
        if not isinstance(key, str) or key not in self.tensors:
            raise _malformed(f"reference to missing tensor {key!r:.40}")
        return self.tensors[key]

    def parameter(self, spec: Any) -> nn.Parameter:
        spec = _expect(spec, dict, "parameter entry")
        key = spec.get("tensor")
        tensor = self.tensor(key)
        if key not in self.parameters:
            self.parameters[key] = nn.Parameter(tensor, requires_grad=bool(spec.get("requires_grad")))
        return self.parameters[key]

    def module(self, spec: Any, path: str) -> nn.Module:
        spec = _expect(spec, dict, f"module '{path}'")
        class_name = spec.get("class")
        cls = self.allow.classes.get(class_name) if isinstance(class_name, str) else None
        if cls is None:
            raise LoadError(
                f"the file asks for module class {class_name!r:.80} at '{path}', which is not on fxcomp's "
                "allow-list; if a plugin provides that class, install and enable the plugin"
            )
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        derived = _derived_attributes(module)
        for key, value in _expect(spec.get("attrs", {}), dict, f"attributes of '{path}'").items():
            if not _IDENTIFIER.match(key) or key in _MODULE_INTERNALS or key in derived:
                raise _malformed(f"attribute name {key!r:.40} of '{path}'")
            module.__dict__[key] = decode(value)
        module.training = bool(spec.get("training"))
        for name, param in _expect(spec.get("parameters", {}), dict, f"parameters of '{path}'").items():
            module._parameters[self._name(name, path)] = None if param is None else self.parameter(param)
        for name, key in _expect(spec.get("buffers", {}), dict, f"buffers of '{path}'").items():
            module._buffers[self._name(name, path)] = None if key is None else self.tensor(key)
        non_persistent = _expect(spec.get("non_persistent", []), list, f"buffers of '{path}'")
        module._non_persistent_buffers_set = {self._name(n, path) for n in non_persistent}
        for name, child in _expect(spec.get("children", {}), dict, f"children of '{path}'").items():
            module._modules[self._name(name, path)] = self.module(child, f"{path}.{name}")
        for name, chain in _expect(spec.get("parametrizations", {}), dict, f"parametrizations of '{path}'").items():
            self.parametrize(module, self._name(name, path), chain, f"{path}.{name}")
        try:
            _rebuild_derived(module)
        except (AttributeError, KeyError, TypeError) as error:
            raise _malformed(f"module '{path}' lacks what {cls.__name__} needs: {error}") from error
        return module

    def parametrize(self, module: nn.Module, name: str, spec: Any, path: str) -> None:
        """Register the saved chain of parametrizations on ``module``'s tensor ``name``."""
        spec = _expect(spec, dict, f"parametrization of '{path}'")
        stored = _expect(spec.get("original"), dict, f"original of '{path}'")
        original = self.parameter(stored) if stored.get("parameter") else self.tensor(stored.get("tensor"))
        chain = [
            self.module(step, f"{path}.parametrizations.{index}")
            for index, step in enumerate(_expect(spec.get("chain"), list, f"parametrizations of '{path}'"))
        ]
        if not chain:
            raise _malformed(f"empty parametrization of '{path}'")
        # Register on a stand-in: registering runs right_inverse, which must not alter the saved original.
        if isinstance(original, nn.Parameter):
            module._parameters[name] = nn.Parameter(original.detach().clone(), original.requires_grad)
        else:
            module._buffers[name] = original.clone()
        try:
            for step in chain:
                parametrize.register_parametrization(module, name, step, unsafe=bool(spec.get("unsafe")))
        except Exception as error:  # noqa: BLE001 - a chain that does not fit its tensor is a malformed file
            raise _malformed(f"the parametrization of '{path}' does not fit it: {error}") from error
        holder = module.parametrizations[name]
        if isinstance(original, nn.Parameter):
            holder._parameters["original"] = original
        else:
            holder._buffers["original"] = original

    @staticmethod
    def _name(name: Any, path: str, pattern: re.Pattern[str] = _NAME) -> str:
        """``name`` of a member of ``path`` (a submodule, parameter or buffer), checked against ``pattern``."""
        if not isinstance(name, str) or not pattern.match(name):
            raise _malformed(f"member name {name!r:.40} of '{path}'")
        return name

    def root(self) -> nn.Module:
        root = nn.Module()
        modules = _expect(self.graph.get("modules", {}), dict, "modules")
        for path, spec in sorted(modules.items(), key=lambda item: item[0].count(".")):
            owner, name = self._owner(root, path)
            owner._modules[name] = self.module(spec, path)
        for path, spec in _expect(self.graph.get("attributes", {}), dict, "attributes").items():
            owner, name = self._owner(root, path)
            spec = _expect(spec, dict, f"attribute '{path}'")
            if "value" in spec:
                owner.__dict__[name] = decode(spec["value"])
            elif spec.get("parameter"):
                owner._parameters[name] = self.parameter(spec)
            else:
                owner._buffers[name] = self.tensor(spec.get("tensor"))
                if spec.get("persistent") is False:
                    owner._non_persistent_buffers_set.add(name)
        return root

    def _owner(self, root: nn.Module, path: Any) -> tuple[nn.Module, str]:
        if not isinstance(path, str) or not _DOTTED.match(path):
            raise _malformed(f"path {path!r:.60}")
        *parents, name = path.split(".")
        owner = root
        for part in parents:
            child = owner._modules.get(part)
            if child is None:
                child = owner._modules[part] = nn.Module()
            owner = child
        return owner, name

    def target(self, node: dict[str, Any], root: nn.Module) -> Any:
        op, target = node.get("op"), node.get("target")
        if op == "call_function":
            if not isinstance(target, str) or target not in self.allow.functions:
                raise LoadError(
                    f"the file calls {target!r:.80}, which is not on fxcomp's allow-list; if a plugin provides "
                    "that function, install and enable the plugin"
                )
            return self.allow.functions[target]
        if op == "call_method":
            if not is_safe_method(target):
                raise LoadError(
                    f"the file calls tensor method {target!r:.80}, which fxcomp files may not call "
                    "(only public tensor methods that take no callable and stay in torch)"
                )
            return target
        if op in ("call_module", "get_attr"):
            if not isinstance(target, str) or not _DOTTED.match(target):
                raise _malformed(f"{op} target {target!r:.60}")
            try:
                owner = root.get_submodule(target.rpartition(".")[0])
                getattr(owner, target.rpartition(".")[2])
            except AttributeError as error:
                raise _malformed(f"{op} target '{target}' does not exist") from error
            return target
        if op in ("placeholder", "output"):
            if not isinstance(target, str) or not _IDENTIFIER.match(target):
                raise _malformed(f"{op} target {target!r:.40}")
            return target
        raise _malformed(f"unknown node kind {op!r:.40}")

    def fx_graph(self, root: nn.Module) -> fx.Graph:
        graph = fx.Graph()
        created: dict[str, fx.Node] = {}

        def node_ref(name: str) -> fx.Node:
            if not isinstance(name, str) or name not in created:
                raise _malformed(f"reference to node {name!r:.40} before its definition")
            return created[name]

        for spec in _expect(self.graph.get("nodes"), list, "node list"):
            spec = _expect(spec, dict, "node entry")
            name = spec.get("name")
            if not isinstance(name, str) or not _IDENTIFIER.match(name) or name in created:
                raise _malformed(f"node name {name!r:.40}")
            target = self.target(spec, root)
            args, kwargs = decode(spec.get("args"), node_ref), decode(spec.get("kwargs"), node_ref)
            if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise _malformed(f"arguments of node '{name}'")
            if not all(isinstance(k, str) and _IDENTIFIER.match(k) for k in kwargs):
                raise _malformed(f"keyword names of node '{name}'")
            if target is getattr and not (len(args) == 2 and isinstance(args[1], str) and is_safe_attribute(args[1])):
                raise LoadError(f"node '{name}' reads a private attribute; fxcomp files only read public ones")
            node = graph.create_node(spec["op"], target, args, kwargs, name=name)
            if node.name != name:
                raise _malformed(f"node name {name!r:.40} clashes with a reserved name")
            if isinstance(spec.get("qualname"), str):
                node.meta[QUALNAME] = spec["qualname"]
            created[name] = node
        info = self.graph.get("pytree_info")
        if info is not None:
            info = _expect(info, dict, "pytree info")
            in_spec, out_spec = (_treespec(info.get(key), key) for key in ("in_spec", "out_spec"))
            orig_args = [self._name(a, "inputs", _IDENTIFIER) for a in _expect(info.get("orig_args"), list, "pytree info")]
            graph._codegen = fx.graph._PyTreeCodeGen(fx.graph._PyTreeInfo(orig_args, in_spec, out_spec))
        return graph

    def example_inputs(self, graph: fx.Graph) -> list[torch.Tensor] | None:
        """Meta tensors of the saved input shapes, one per placeholder up to those with defaults.

        None when the file holds no shapes (a graph saved without them).
        """
        specs = self.graph.get("inputs")
        placeholders = [node for node in graph.nodes if node.op == "placeholder"]
        if not isinstance(specs, list) or len(specs) != len(placeholders):
            return None
        given = next((index for index, spec in enumerate(specs) if spec is None), len(specs))
        if not (specs or placeholders) or any(not node.args for node in placeholders[given:]):
            return None
        inputs = []
        for spec in specs[:given]:
            dtype = decode({"dtype": _expect(spec, dict, "input spec").get("dtype")})
            shape = _expect(spec.get("shape"), list, "input spec")
            try:
                if not all(type(size) is int and size >= 0 for size in shape):
                    raise ValueError(shape)
                inputs.append(torch.empty(shape, dtype=dtype, device="meta"))
            except (ValueError, RuntimeError) as error:  # RuntimeError: more elements than an int64 counts
                raise _malformed("input shape") from error
        return inputs


_MAX_ZERO_INPUT_BYTES = 1 << 30
_PART_TYPES = {"uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64}


def _decode_weights(encoded: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Put back, in ``tensors``, every weight the Deep Compression codec stored."""
    encoded = _expect(encoded, dict, "encoded weights")
    if not encoded:
        return
    coded = tensors.pop(_CODED, None)
    if coded is None or coded.dtype != torch.uint8 or coded.dim() != 1:
        raise _malformed("coded weights without their bytes")
    for key, meta in encoded.items():
        meta = _expect(meta, dict, "encoded weight")
        payload = {}
        for part, place in _expect(meta.get("parts"), dict, "coded parts").items():
            if not (isinstance(place, list) and len(place) == 3 and isinstance(place[2], str) and place[2] in _PART_TYPES):
                raise _malformed("coded part")
            start, length, dtype = place
            if not (isinstance(start, int) and isinstance(length, int) and 0 <= start <= start + length <= coded.numel()):
                raise _malformed("coded part outside the bytes")
            raw = coded[start : start + length].clone()  # a view needs an aligned start
            if length % _PART_TYPES[dtype].itemsize:
                raise _malformed("coded part of a partial element")
            payload[part] = raw.view(_PART_TYPES[dtype])
        try:
            tensors[key] = decode_tensor(meta, payload)
        except CodecError as error:
            raise _malformed(f"coded weight {key!r:.20}: {error}") from error


def _treespec(text: Any, what: str) -> pytree.TreeSpec | None:
    """The pytree spec ``text`` holds (None for none)."""
    if not text:
        return None
    try:
        return pytree.treespec_loads(_expect(text, str, what))
    except Exception as error:  # noqa: BLE001 - pytree raises many kinds for a spec it cannot read
        raise _malformed(f"{what} {text!r:.40}") from error


def _propagate(gm: fx.GraphModule, inputs: list[torch.Tensor]) -> None:
    """Restore ``gm``'s shapes from the saved input shapes (``inputs``, on meta).

    Shapes that need real data (rare) are computed on zeros, unless the inputs
    are too large to allocate.
    """
    try:
        propagate(gm, inputs)
        return
    except TraceError:
        if sum(t.numel() * t.element_size() for t in inputs) > _MAX_ZERO_INPUT_BYTES:
            raise _malformed("its input shapes do not fit its graph") from None
    try:
        propagate(gm, [torch.zeros(t.shape, dtype=t.dtype) for t in inputs])
    except TraceError as error:
        raise _malformed(f"its input shapes do not fit its graph: {error}") from error


def is_safe_attribute(name: str) -> bool:
    """Whether a ``getattr`` call in a loaded graph may read attribute ``name`` (public ones only)."""
    return name.isidentifier() and not name.startswith("_")


def _exit_plan(spec: Any) -> dict[str, Any]:
    spec = _expect(spec, dict, "exit plan")
    at = _expect(spec.get("at"), list, "exit points")
    thresholds = spec.get("thresholds")
    valid = (
        all(isinstance(name, str) and _IDENTIFIER.match(name) for name in at)
        and spec.get("criterion") in CRITERIA
        and (thresholds is None or (isinstance(thresholds, list) and all(isinstance(t, (int, float)) for t in thresholds)))
    )
    if not valid or set(spec) != {"at", "criterion", "thresholds"}:
        raise _malformed("exit plan")
    return {"at": list(at), "criterion": spec["criterion"], "thresholds": thresholds}


def load(path: str | os.PathLike, *, plugins: Plugins | None = None) -> fx.GraphModule | EarlyExitModel:
    """Load a GraphModule written by :func:`save` (an :class:`fxcomp.EarlyExitModel` if it has exits).

    Nothing in the file is executed: tensors are read with ``torch.load(weights_only=True)``,
    and every module class and function the graph names must be on the allow-list.
    Shapes, MACs and qualified names are restored. Raises :class:`fxcomp.LoadError` for
    a missing, corrupted, foreign or malicious file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise LoadError(f"fxcomp.load takes a file path (str or os.PathLike), got {type(path).__name__}; save to a file first")
    if not os.path.isfile(path):
        raise LoadError(f"no such file '{path}'; give the path of a file written by fxcomp.save")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means an unsafe or broken file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise LoadError(
            f"'{path}' is not a safe fxcomp model file ({reason:.200}); only files written by fxcomp.save can be loaded"
        ) from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LoadError(f"'{path}' is not an fxcomp model file; only files written by fxcomp.save can be loaded")
    if data.get("version") != VERSION:
        raise LoadError(f"'{path}' has format version {data.get('version')!r}; this fxcomp reads version {VERSION}")
    tensors = _expect(data.get("tensors"), dict, "tensor table")
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise _malformed("tensor table")
    try:
        graph = json.loads(_expect(data.get("graph"), str, "graph description"))
    except json.JSONDecodeError as error:
        raise _malformed(f"graph description is not JSON: {error}") from error
    _decode_weights(_expect(graph, dict, "graph description").get("encoded") or {}, tensors)
    loader = _Loader(_expect(graph, dict, "graph description"), tensors, _allowlist(plugins))
    root = loader.root()
    fx_graph = loader.fx_graph(root)
    class_name = graph.get("class_name")
    if not isinstance(class_name, str) or not _IDENTIFIER.match(class_name):
        raise _malformed(f"class name {class_name!r:.40}")
    try:
        fx_graph.lint()
        gm = fx.GraphModule(root, fx_graph, class_name)
    except Exception as error:  # noqa: BLE001 - an inconsistent graph is a malformed file
        raise _malformed(f"the graph is inconsistent: {error}") from error
    gm.training = bool(graph.get("training"))
    inputs = loader.example_inputs(fx_graph)
    if inputs is not None:
        _propagate(gm, inputs)
    if graph.get("exits") is None:
        return gm
    if HEADS not in root._modules or inputs is None:
        raise _malformed("early exits without heads or input shapes")
    gm.add_submodule(HEADS, root.get_submodule(HEADS))
    gm.meta[EXITS] = _exit_plan(graph["exits"])
    try:
        return EarlyExitModel(gm)
    except ExitError as error:
        raise _malformed(f"its exits do not fit its graph: {error}") from error
