"""The patterns the built-in Triton kernels replace, and how each kernel module is built from the layers.

Pattern (registered name)  → kernel module:

* ``lowrank_linear``: ``Linear(N→K)`` then ``Linear(K→M)`` with K below both (``lowrank``'s output)
  → :class:`LowRankLinearKernel`;
* ``int8_weight_linear`` / ``int4_weight_linear``: a ``Linear`` whose weight ``quantize`` made
  int8 (also binary and ternary, stored as int8) or grouped int4, fake-quantized or converted
  → :class:`Int8LinearKernel` / :class:`Int4LinearKernel`;
* ``codebook_linear``: a ``Linear`` whose weight ``cluster`` shares → :class:`CodebookLinearKernel`;
* ``sparse_linear``: a ``Linear`` whose weights are at most ``max_density`` nonzero
  (``sparsify``'s output, masked or baked) → :class:`CSRLinearKernel`;
* ``separable_conv``: a depthwise ``Conv2d`` [→ BatchNorm] [→ ReLU] → a pointwise 1×1 ``Conv2d``
  [→ BatchNorm] [→ ReLU] (``separable``'s output, MobileNet blocks) → :class:`SeparableConvKernel`.

Every kernel computes in float32 and reproduces the layers up to the order of its sums;
layers whose weights, inputs or outputs are not float32 are declined.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from fxcomp import TensorSpec, TraceError, node_info, qualname
from fxcomp.lowering import Declined, Lowering, Matched, module_at, sole_user
from fxcomp.passes import Mask, SharedWeights, integer_weight

from fxcomp_plugins.triton_kernels.modules import (
    CodebookLinearKernel,
    CSRLinearKernel,
    Int4LinearKernel,
    Int8LinearKernel,
    LowRankLinearKernel,
    SeparableConvKernel,
)
from fxcomp_plugins.triton_kernels.runtime import MAX_RANK, why_unavailable

_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu)
_RELU_METHODS = ("relu", "relu_")


class TritonLowering(Lowering):
    """A lowering to one of the built-in Triton kernels: they run where Triton can run them."""

    def unavailable(self) -> str | None:
        return why_unavailable()


def _one_input(node: fx.Node) -> bool:
    return len(node.args) == 1 and not node.kwargs


def _linear(gm: fx.GraphModule, node: fx.Node) -> nn.Linear | None:
    layer = module_at(gm, node, nn.Linear)
    return layer if layer is not None and _one_input(node) else None


def _chain_kinds(module: nn.Module, name: str = "weight") -> list[type]:
    if not parametrize.is_parametrized(module, name):
        return []
    return [type(step) for step in module.parametrizations[name]]


def _values_problem(nodes: Sequence[fx.Node], dims: int | None = None) -> str | None:
    """Why the kernel cannot take the matched nodes' input or give their output: not float32,
    or an input without ``dims`` dimensions. Graphs without shape annotations are checked when lowered."""
    try:
        entering, leaving = node_info(nodes[0]).inputs[0], node_info(nodes[-1]).output
    except (TraceError, IndexError):
        return None
    for role, spec in (("input", entering), ("output", leaving)):
        if isinstance(spec, TensorSpec) and spec.dtype != torch.float32:
            return f"its {role} is {spec.dtype}; the kernel computes in float32"
    if dims is not None and isinstance(entering, TensorSpec) and len(entering.shape) != dims:
        return f"its input has {len(entering.shape)} dimensions, the kernel takes {dims}"
    return None


def _float32_weight(module: nn.Module) -> str | None:
    if module.weight.dtype != torch.float32:
        return f"its weights are {module.weight.dtype}, the kernel computes in float32"
    return None


def _stored_as_is(module: nn.Module) -> str | None:
    """Why ``module``'s weights are not plain float32 tensors, if they are not."""
    if parametrize.is_parametrized(module):
        kinds = ", ".join(sorted({kind.__name__ for chain in module.parametrizations.values() for kind in map(type, chain)}))
        return f"its weights are computed ({kinds}); strip masks or lower them with their own kernel"
    return _float32_weight(module)


class LowRankLinearLowering(TritonLowering):
    """``Linear(N→K)`` followed only by ``Linear(K→M)``, K < min(M, N): one kernel, the K values per row on-chip."""

    def match(self, gm: fx.GraphModule, node: fx.Node) -> Matched | Declined | None:
        first = _linear(gm, node)
        second_node = sole_user(node) if first is not None else None
        second = _linear(gm, second_node) if second_node is not None else None
        if second is None:
            return None
        rank = first.out_features
        if rank >= min(first.in_features, second.out_features):
            return None
        nodes = [node, second_node]
        problem = _stored_as_is(first) or _stored_as_is(second) or _values_problem(nodes)
        if problem:
            return Declined(nodes, problem)
        if rank > MAX_RANK:
            return Declined(nodes, f"rank {rank} is above the {MAX_RANK} the kernel keeps on-chip")
        return Matched(nodes)

    def build(self, gm: fx.GraphModule, nodes: Sequence[fx.Node]) -> nn.Module:
        first, second = (gm.get_submodule(str(node.target)) for node in nodes)
        bias = second.bias.detach() if second.bias is not None else None
        if first.bias is not None:  # x·Vᵀ·Uᵀ + U·c + b
            folded = second.weight.detach() @ first.bias.detach()
            bias = folded if bias is None else bias + folded
        return LowRankLinearKernel(first.weight, second.weight, bias)


class IntegerLinearLowering(TritonLowering):
    """A ``Linear`` with weights quantized to ``bits`` (int8 also holds binary and ternary weights)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def match(self, gm: fx.GraphModule, node: fx.Node) -> Matched | Declined | None:
        layer = _linear(gm, node)
        quantized = integer_weight(layer) if layer is not None else None
        if quantized is None or (quantized.scheme == "int4") != (self.bits == 4):
            return None
        if parametrize.is_parametrized(layer, "bias"):
            return Declined([node], "its bias is parametrized")
        problem = _float32_weight(layer) or _values_problem([node])
        return Declined([node], problem) if problem else Matched([node])

    def build(self, gm: fx.GraphModule, nodes: Sequence[fx.Node]) -> nn.Module:
        layer = gm.get_submodule(str(nodes[0].target))
        quantized = integer_weight(layer)
        if self.bits == 4:
            return Int4LinearKernel(quantized.integers, quantized.scales, quantized.group_size, layer.bias)
        return Int8LinearKernel(quantized.integers, quantized.scales[:, 0], layer.bias)


def _codebook_storage(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, codebook)`` with ``codebook[indices]`` equal to the layer's weight: entry 0 is zero."""
    sharing = next(step for step in layer.parametrizations["weight"] if isinstance(step, SharedWeights))
    weight = layer.weight.detach()
    codebook = torch.cat([weight.new_zeros(1), sharing.centroids.detach().to(weight.dtype)])
    indices = torch.where(weight == 0, 0, sharing.assignment.long() + 1)
    small = torch.uint8 if len(codebook) <= 256 else torch.int16 if len(codebook) < 2**15 else torch.int32
    return indices.to(small), codebook


class CodebookLinearLowering(TritonLowering):
    """A ``Linear`` whose weight is a codebook indexed per entry (``cluster``), pruned zeros included."""

    def match(self, gm: fx.GraphModule, node: fx.Node) -> Matched | Declined | None:
        layer = _linear(gm, node)
        if layer is None or SharedWeights not in _chain_kinds(layer):
            return None
        problem = _float32_weight(layer) or _values_problem([node])
        if problem:
            return Declined([node], problem)
        indices, codebook = _codebook_storage(layer)
        if not torch.equal(codebook[indices.long()], layer.weight.detach()):
            return Declined([node], "a parametrization after the weight sharing changes the shared values")
        return Matched([node])

    def build(self, gm: fx.GraphModule, nodes: Sequence[fx.Node]) -> nn.Module:
        layer = gm.get_submodule(str(nodes[0].target))
        return CodebookLinearKernel(*_codebook_storage(layer), layer.bias)


class SparseLinearLowering(TritonLowering):
    """A ``Linear`` with at most ``max_density`` of its weights nonzero, plain or masked (``sparsify``)."""

    def __init__(self, max_density: float = 0.25) -> None:
        self.max_density = max_density

    def match(self, gm: fx.GraphModule, node: fx.Node) -> Matched | Declined | None:
        layer = _linear(gm, node)
        if layer is None or any(kind is not Mask for kind in _chain_kinds(layer)):
            return None
        weight = layer.weight.detach()
        density = int(weight.count_nonzero()) / max(1, weight.numel())
        if density <= self.max_density:
            problem = _float32_weight(layer) or _values_problem([node])
            return Declined([node], problem) if problem else Matched([node])
        if Mask in _chain_kinds(layer):
            return Declined([node], f"{density:.0%} of its weights are nonzero; the sparse kernel pays off up to {self.max_density:.0%}")
        return None

    def build(self, gm: fx.GraphModule, nodes: Sequence[fx.Node]) -> nn.Module:
        layer = gm.get_submodule(str(nodes[0].target))
        return CSRLinearKernel(layer.weight, layer.bias)


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.ReLU) and _one_input(node)
    single = len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and single
    return node.op == "call_method" and node.target in _RELU_METHODS and single


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels and conv.out_channels % conv.in_channels == 0


def _is_pointwise(conv: nn.Conv2d, channels: int) -> bool:
    plain = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
    return plain and conv.groups == 1 and conv.in_channels == channels


class _Walk:
    """Follows a chain of single-use nodes, taking optional steps."""

    def __init__(self, gm: fx.GraphModule, node: fx.Node) -> None:
        self.gm, self.nodes, self.roles = gm, [node], {"dw": node}

    def next(self) -> fx.Node | None:
        return sole_user(self.nodes[-1])

    def take(self, role: str, node: fx.Node) -> None:
        self.nodes.append(node)
        self.roles[role] = node

    def optional_batchnorm_relu(self, prefix: str) -> None:
        after = self.next()
        if after is not None and module_at(self.gm, after, nn.BatchNorm2d) is not None and _one_input(after):
            self.take(f"{prefix}bn", after)
            after = self.next()
        if after is not None and _is_relu(self.gm, after):
            self.take(f"{prefix}relu", after)


def _walk(gm: fx.GraphModule, node: fx.Node) -> _Walk | None:
    """The nodes of a depthwise → pointwise block starting at ``node``, by role, if it is one."""
    depthwise = module_at(gm, node, nn.Conv2d)
    if depthwise is None or not _one_input(node) or not _is_depthwise(depthwise):
        return None
    walk = _Walk(gm, node)
    walk.optional_batchnorm_relu("mid_")
    after = walk.next()
    pointwise = module_at(gm, after, nn.Conv2d) if after is not None else None
    if pointwise is None or not _one_input(after) or not _is_pointwise(pointwise, depthwise.out_channels):
        return None
    walk.take("pw", after)
    walk.optional_batchnorm_relu("")
    return walk


def _folded(conv: nn.Conv2d, batchnorm: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``conv``'s weight and bias with the eval-mode ``batchnorm`` after it folded in."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else None
    if batchnorm is None:
        return weight, bias
    scale = torch.rsqrt(batchnorm.running_var + batchnorm.eps)
    if batchnorm.weight is not None:
        scale = scale * batchnorm.weight.detach()
    shift = -batchnorm.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if batchnorm.bias is not None:
        shift = shift + batchnorm.bias.detach()
    return weight * scale.reshape(-1, 1, 1, 1), shift


class SeparableConvLowering(TritonLowering):
    """Depthwise k×k conv [→ BN] [→ ReLU] → pointwise 1×1 conv [→ BN] [→ ReLU], fused."""

    def match(self, gm: fx.GraphModule, node: fx.Node) -> Matched | Declined | None:
        walk = _walk(gm, node)
        if walk is None:
            return None
        for step in walk.nodes:
            module = gm.get_submodule(str(step.target)) if step.op == "call_module" else None
            if isinstance(module, nn.Conv2d):
                problem = _stored_as_is(module)
                if problem is None and isinstance(module.padding, str):
                    problem = f"'{qualname(step)}' has padding={module.padding!r}; the kernel takes the padding as numbers"
                if problem is None and module.padding_mode != "zeros":
                    problem = f"'{qualname(step)}' pads with {module.padding_mode!r}; the kernel pads with zeros"
                if problem:
                    return Declined(walk.nodes, problem)
            if isinstance(module, nn.BatchNorm2d) and module.running_mean is None:
                return Declined(walk.nodes, "a BatchNorm without running statistics cannot be folded")
        problem = _values_problem(walk.nodes, dims=4)
        return Declined(walk.nodes, problem) if problem else Matched(walk.nodes)

    def build(self, gm: fx.GraphModule, nodes: Sequence[fx.Node]) -> nn.Module:
        roles = _walk(gm, nodes[0]).roles
        module = {role: gm.get_submodule(str(step.target)) for role, step in roles.items() if step.op == "call_module"}
        depthwise, pointwise = module["dw"], module["pw"]
        dw_weight, dw_bias = _folded(depthwise, module.get("mid_bn"))
        pw_weight, pw_bias = _folded(pointwise, module.get("bn"))
        geometry = {
            "stride": depthwise.stride,
            "padding": depthwise.padding,
            "dilation": depthwise.dilation,
            "multiplier": depthwise.out_channels // depthwise.in_channels,
        }
        return SeparableConvKernel(
            dw_weight[:, 0], dw_bias, pw_weight[:, :, 0, 0], pw_bias,
            geometry=geometry, mid_relu="mid_relu" in roles, relu="relu" in roles,
        )


LOWERINGS: dict[str, Lowering] = {
    "lowrank_linear": LowRankLinearLowering(),
    "int8_weight_linear": IntegerLinearLowering(bits=8),
    "int4_weight_linear": IntegerLinearLowering(bits=4),
    "codebook_linear": CodebookLinearLowering(),
    "sparse_linear": SparseLinearLowering(),
    "separable_conv": SeparableConvLowering(),
}
"""The built-in Triton lowerings by pattern name."""
