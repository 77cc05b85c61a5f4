"""Graph surgery shared by passes that replace one layer by several.

:func:`replace_with_chain` swaps a module call for a chain of module calls: the
modules are stored as an ``nn.Sequential`` under the old module's path, so the
state dict reads ``fc.0.weight``, ``fc.1.weight`` …, and every link is its own
graph node (``fc.0``, ``fc.1`` …) that the shape, MAC and channel analyses
see as an ordinary layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from fxcomp.passes.masks import Mask
from fxcomp.tracing import node_info, qualname
from fxcomp.tracing.costs import module_macs


def calls_per_module(graph: fx.Graph) -> dict[str, int]:
    """How many nodes call each module path (a module called twice shares its weights)."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def parameter_holders(gm: nn.Module) -> dict[int, int]:
    """How many modules hold each parameter (by ``id``); more than one means it is shared (tied weights)."""
    counts: dict[int, int] = {}
    for module in gm.modules():
        for parameter in module._parameters.values():
            if parameter is not None:
                counts[id(parameter)] = counts.get(id(parameter), 0) + 1
    return counts


def read_directly(gm: fx.GraphModule, path: str) -> str | None:
    """The first parameter or buffer of the module at ``path`` that the graph reads by ``get_attr``, or None."""
    prefix = f"{path}."
    return next((str(n.target) for n in gm.graph.find_nodes(op="get_attr") if str(n.target).startswith(prefix)), None)


def why_not_replaceable(gm: fx.GraphModule, node: fx.Node, calls: dict[str, int]) -> str | None:
    """Why the ``call_module`` ``node`` cannot be given to :func:`replace_with_chain`, or None.

    ``calls`` comes from :func:`calls_per_module`.
    """
    if calls.get(str(node.target), 0) != 1:
        return "the module is called more than once (its weights are shared)"
    module = gm.get_submodule(node.target)
    if parametrize.is_parametrized(module):
        if all(isinstance(step, Mask) for chain in module.parametrizations.values() for step in chain):
            return "its weight is masked (prune/sparsify masks): call fxcomp.strip_masks first"
        return "its weight is parametrized (fake quantization or clustering): run this pass before the one that added it"
    if not type(module).__module__.startswith("torch.nn.modules"):
        return f"it is a {type(module).__name__}, whose forward the replacement would not keep"
    if module._forward_hooks or module._forward_pre_hooks:
        return "it has forward hooks, which the replacement would not keep"
    holders = parameter_holders(gm)
    if any(holders[id(p)] > 1 for p in module.parameters()):
        return "its weight is shared with another module"
    read = read_directly(gm, str(node.target))
    if read is not None:
        return f"the graph also reads its '{read}' directly"
    if len(node.args) != 1 or node.kwargs:
        return "it is called with more than one input"
    return None


def replace_with_chain(gm: fx.GraphModule, node: fx.Node, modules: Sequence[nn.Module]) -> list[fx.Node]:
    """Replace the ``call_module`` ``node`` by calls of ``modules`` in turn; return the new nodes.

    The node's module is replaced by ``nn.Sequential(*modules)`` at the same path, so it
    must pass :func:`why_not_replaceable`: called once, unmasked, with one input. The
    last new node takes over the node's users.
    """
    if node.op != "call_module":
        raise ValueError(f"replace_with_chain needs a call_module node, got {node.op} '{qualname(node)}'")
    if len(node.args) != 1 or node.kwargs:
        raise ValueError(f"'{qualname(node)}' is called with more than one input; it cannot become a chain")
    target = str(node.target)
    parent_path, _, attribute = target.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    setattr(parent, attribute, nn.Sequential(*modules))
    chain: list[fx.Node] = []
    previous, value = node, node.args[0]
    for index in range(len(modules)):
        with gm.graph.inserting_after(previous):
            value = previous = gm.graph.call_module(f"{target}.{index}", (value,))
        chain.append(value)
    node.replace_all_uses_with(chain[-1])
    gm.graph.erase_node(node)
    return chain


def chain_costs(
    modules: Sequence[nn.Module], input_shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> tuple[int, int]:
    """``(MACs, parameters)`` of calling ``modules`` in turn on an input of ``input_shape`` and ``dtype``.

    Shapes are worked out on the meta device, so no arithmetic is done; MACs follow the
    same rules as the report (:mod:`fxcomp.tracing.costs`).
    """
    value = torch.empty(tuple(input_shape), dtype=dtype, device="meta")
    macs = params = 0
    for module in modules:
        on_meta = {name: tensor.to("meta") for name, tensor in [*module.named_parameters(), *module.named_buffers()]}
        output = functional_call(module, on_meta, (value,))
        macs += module_macs(module, (value,), output)
        params += sum(p.numel() for p in module.parameters())
        value = output
    return macs, params


def cost_change(node: fx.Node, modules: Sequence[nn.Module]) -> dict[str, int]:
    """MACs and parameters of the layer ``node`` calls and of ``modules`` replacing it.

    Keys ``macs_before``, ``macs_after``, ``params_before``, ``params_after``, as plans record them.
    """
    info = node_info(node)
    macs, params = chain_costs(modules, info.inputs[0].shape, info.inputs[0].dtype)
    return {"macs_before": info.macs, "macs_after": macs, "params_before": info.params, "params_after": params}


def no_gain_reason(change: dict[str, int], replacement: str) -> str | None:
    """Why a :func:`cost_change` saves nothing (not both fewer MACs and fewer parameters), or None."""
    if change["macs_after"] < change["macs_before"] and change["params_after"] < change["params_before"]:
        return None
    return (
        f"{replacement} costs {change['macs_after']:,} MACs and {change['params_after']:,} parameters "
        f"against the layer's {change['macs_before']:,} and {change['params_before']:,}: no gain"
    )
