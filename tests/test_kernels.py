"""fxcomp's Triton kernels against their pure-torch references and plain torch math, in Triton's interpreter."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from fxcomp_plugins.triton_kernels import runtime
from fxcomp_plugins.triton_kernels.codebook import codebook_linear, codebook_linear_reference
from fxcomp_plugins.triton_kernels.lowrank import lowrank_linear, lowrank_linear_reference
from fxcomp_plugins.triton_kernels.quantized import (
    int4_linear,
    int4_linear_reference,
    int8_linear,
    int8_linear_reference,
    pack_int4_rows,
    unpack_int4_rows,
)
from fxcomp_plugins.triton_kernels.separable import separable_conv2d, separable_conv2d_reference
from fxcomp_plugins.triton_kernels.sparse import csr_linear, csr_linear_reference, to_csr

# (B, N, M): ragged sizes that leave every tile partly masked, and one spanning several tiles
# in every direction of the interpreter's 64 × 128 output tiles and 128-column steps.
LINEAR_SHAPES = [(3, 37, 19), (1, 1, 1), (70, 300, 150)]


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _bias(outputs: int, with_bias: bool) -> torch.Tensor | None:
    return _randn(outputs, seed=99) if with_bias else None


def _plus(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding: 1e-4 relative, absolute errors scaled by the output's magnitude."""
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected.float(), rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("rank", [1, 5, 40])
def test_lowrank_linear(shape: tuple[int, int, int], rank: int, with_bias: bool) -> None:
    batch, features, outputs = shape
    x, v, u = _randn(batch, features), _randn(rank, features, seed=1), _randn(outputs, rank, seed=2)
    bias = _bias(outputs, with_bias)
    y = lowrank_linear(x, v, u, bias)
    assert_matches(y, lowrank_linear_reference(x, v, u, bias))
    assert_matches(y, F.linear(F.linear(x, v), u, bias))


@pytest.mark.parametrize("programs", [2, 8])
def test_lowrank_linear_splits_the_outputs_between_programs(programs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a GPU a small batch leaves row blocks idle, so the output tiles are shared out between
    # programs (each recomputing the intermediate); the interpreter normally uses one program.
    from fxcomp_plugins.triton_kernels import lowrank

    monkeypatch.setattr(lowrank, "_TARGET_PROGRAMS", programs)
    x, v, u, bias = _randn(3, 50), _randn(5, 50, seed=1), _randn(300, 5, seed=2), _randn(300, seed=3)
    assert lowrank._grid(3, 300)({"BLOCK_B": 64, "BLOCK_M": 128}) == (1, min(programs, 3))
    assert_matches(lowrank_linear(x, v, u, bias), F.linear(F.linear(x, v), u, bias))


def test_lowrank_linear_largest_rank_and_beyond() -> None:
    x, v, u = _randn(3, 20), _randn(256, 20, seed=1), _randn(7, 256, seed=2)
    assert_matches(lowrank_linear(x, v, u), x @ v.T @ u.T)
    with pytest.raises(ValueError, match="K <= 256"):
        lowrank_linear(x, _randn(257, 20), _randn(7, 257))


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_int8_linear(shape: tuple[int, int, int], with_bias: bool) -> None:
    batch, features, outputs = shape
    x, bias = _randn(batch, features), _bias(outputs, with_bias)
    weight = torch.randint(-128, 128, (outputs, features), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
    scales = torch.rand(outputs, generator=torch.Generator().manual_seed(2)) / 100 + 1e-3
    y = int8_linear(x, weight, scales, bias)
    assert_matches(y, int8_linear_reference(x, weight, scales, bias))
    assert_matches(y, _plus(x @ (weight.float() * scales[:, None]).T, bias))
    assert_matches(int8_linear(x, weight, scales[:, None], bias), y)  # scales [M, 1], as quantize stores them


def test_pack_int4_rows_layout_and_round_trip() -> None:
    integers = torch.tensor([[-8, 7, 0], [1, -1, 3]], dtype=torch.int8)
    packed = pack_int4_rows(integers)
    # low nibble = element 2j + 8, high nibble = element 2j + 1 + 8 (0 past the end of an odd row)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [[0 | 15 << 4, 8], [9 | 7 << 4, 11]]
    odd = torch.randint(-8, 8, (5, 37), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    assert pack_int4_rows(odd).shape == (5, 19)
    assert torch.equal(unpack_int4_rows(pack_int4_rows(odd), 37), odd)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4_rows(torch.tensor([[8]]))


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("group_size", [5, 8, 37, 64])  # 5 and 8 do not divide N = 37; 64 > N
@pytest.mark.parametrize("shape", [(3, 37, 19), (70, 301, 150)])
def test_int4_linear(shape: tuple[int, int, int], group_size: int, with_bias: bool) -> None:
    batch, features, outputs = shape
    x, bias = _randn(batch, features), _bias(outputs, with_bias)
    integers = torch.randint(-8, 8, (outputs, features), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
    groups = -(-features // group_size)
    scales = torch.rand(outputs, groups, generator=torch.Generator().manual_seed(2)) + 0.1
    packed = pack_int4_rows(integers)
    y = int4_linear(x, packed, scales, group_size, bias)
    assert_matches(y, int4_linear_reference(x, packed, scales, group_size, bias))
    weight = integers.float() * scales[:, torch.arange(features) // group_size]
    assert_matches(y, _plus(x @ weight.T, bias))


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(("index_dtype", "entries"), [(torch.uint8, 256), (torch.int16, 300), (torch.int32, 5)])
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_codebook_linear(shape: tuple[int, int, int], index_dtype: torch.dtype, entries: int, with_bias: bool) -> None:
    batch, features, outputs = shape
    x, bias, codebook = _randn(batch, features), _bias(outputs, with_bias), _randn(entries, seed=1)
    indices = torch.randint(0, entries, (outputs, features), generator=torch.Generator().manual_seed(2)).to(index_dtype)
    y = codebook_linear(x, indices, codebook, bias)
    assert_matches(y, codebook_linear_reference(x, indices, codebook, bias))
    assert_matches(y, _plus(x @ codebook[indices.long()].T, bias))


def _sparse_weight(outputs: int, features: int, density: float) -> torch.Tensor:
    """A random weight with about ``density`` of its entries nonzero and its second row all zeros."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(outputs, features, generator=generator) * (torch.rand(outputs, features, generator=generator) < density)
    if outputs > 1:
        weight[1] = 0
    return weight


@pytest.mark.parametrize(
    "weight",
    [_sparse_weight(19, 37, 0.3), torch.zeros(4, 6), torch.zeros(0, 5), torch.eye(3), -torch.ones(2, 3)],
    ids=["random", "all-zero", "no-rows", "identity", "dense"],
)
def test_to_csr_keeps_exactly_the_nonzeros(weight: torch.Tensor) -> None:
    crow, col, values = to_csr(weight)
    assert crow.dtype == col.dtype == torch.int32 and values.dtype == weight.dtype
    assert crow.shape == (weight.shape[0] + 1,) and crow[0] == 0
    assert len(col) == len(values) == crow[-1] == int(torch.count_nonzero(weight))
    assert bool((values != 0).all())
    assert crow.diff().tolist() == (weight != 0).sum(dim=1).tolist()
    rebuilt = torch.zeros_like(weight)
    rebuilt[torch.arange(weight.shape[0]).repeat_interleave(crow.diff().long()), col.long()] = values
    assert torch.equal(rebuilt, weight)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(
    ("shape", "density"),
    [((3, 37, 19), 0.3), ((3, 37, 19), 0.0), ((1, 1, 1), 1.0), ((150, 600, 20), 0.9)],  # the last: 2 batch blocks, 3 steps
)
def test_csr_linear(shape: tuple[int, int, int], density: float, with_bias: bool) -> None:
    batch, features, outputs = shape
    x, bias, weight = _randn(batch, features), _bias(outputs, with_bias), _sparse_weight(outputs, features, density)
    crow, col, values = to_csr(weight)
    y = csr_linear(x, crow, col, values, bias)
    assert_matches(y, csr_linear_reference(x, crow, col, values, bias))
    assert_matches(y, _plus(x @ weight.T, bias))


# (kernel, stride, padding, dilation, multiplier) on a 2 × 3 × 7 × 7 input
GEOMETRIES = [
    ((3, 3), (2, 2), (1, 1), (2, 2), 2),
    ((1, 3), (1, 2), (0, 1), (1, 1), 1),
    ((3, 1), (2, 1), (1, 0), (1, 3), 3),
]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("mid_relu", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_separable_conv2d(geometry: tuple, with_bias: bool, mid_relu: bool, relu: bool) -> None:
    kernel, stride, padding, dilation, multiplier = geometry
    _check_separable(2, 3, 5, 7, kernel, stride, padding, dilation, multiplier, with_bias, mid_relu, relu)


def test_separable_conv2d_several_blocks() -> None:
    # 2·17·17 = 578 output pixels, 20·2 = 40 depthwise and 70 output channels: several blocks of each
    _check_separable(2, 20, 70, 17, (3, 3), (1, 1), (1, 1), (1, 1), 2, True, True, True)


def _check_separable(batch: int, channels: int, outputs: int, size: int, kernel: tuple[int, int],
                     stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], multiplier: int,
                     with_bias: bool, mid_relu: bool, relu: bool) -> None:
    """The fused kernel against its reference and against the two convolutions written out with F.conv2d."""
    depth = channels * multiplier
    x = _randn(batch, channels, size, size)
    dw_weight, pw_weight = _randn(depth, *kernel, seed=1), _randn(outputs, depth, seed=2)
    dw_bias, pw_bias = _bias(depth, with_bias), (_randn(outputs, seed=3) if with_bias else None)
    options = dict(stride=stride, padding=padding, dilation=dilation, multiplier=multiplier, mid_relu=mid_relu, relu=relu)
    y = separable_conv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, **options)
    assert_matches(y, separable_conv2d_reference(x, dw_weight, dw_bias, pw_weight, pw_bias, **options))
    mid = F.conv2d(x, dw_weight[:, None], dw_bias, stride=stride, padding=padding, dilation=dilation, groups=channels)
    out = F.conv2d(mid.relu() if mid_relu else mid, pw_weight[:, :, None, None], pw_bias)
    assert_matches(y, out.relu() if relu else out)


def test_half_inputs_are_computed_in_float32() -> None:
    x, v, u = _randn(3, 37).half(), _randn(5, 37, seed=1).half(), _randn(19, 5, seed=2).half()
    assert_matches(lowrank_linear(x, v, u), x.float() @ v.float().T @ u.float().T)


def test_launchers_reject_mismatched_shapes_and_dtypes() -> None:
    x = _randn(3, 8)
    with pytest.raises(ValueError, match="int8"):
        int8_linear(x, torch.zeros(4, 8), torch.ones(4))
    with pytest.raises(ValueError, match="weight"):
        int8_linear(x, torch.zeros(4, 9, dtype=torch.int8), torch.ones(4))
    with pytest.raises(ValueError, match="scales"):
        int4_linear(x, torch.zeros(4, 4, dtype=torch.uint8), torch.ones(4, 3), 4)
    with pytest.raises(ValueError, match="group_size"):
        int4_linear(x, torch.zeros(4, 4, dtype=torch.uint8), torch.ones(4, 3), 0)
    with pytest.raises(ValueError, match="indices must be"):
        codebook_linear(x, torch.zeros(4, 8, dtype=torch.int64), torch.ones(3))
    with pytest.raises(ValueError, match="int32"):
        csr_linear(x, torch.zeros(5, dtype=torch.int64), torch.zeros(0, dtype=torch.int32), torch.zeros(0))


def test_interpreter_launches_one_fixed_config_and_gpus_autotune() -> None:
    """``tuned`` passes the fixed interpreter tile sizes to an interpreted kernel and wraps a compiled
    one (built here without decorating, as it would be without TRITON_INTERPRET) in an autotuner."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from fxcomp_plugins.triton_kernels import lowrank

    assert lowrank._launcher.meta == runtime.LINEAR_INTERPRETER
    configs = runtime.linear_configs()
    compiled = runtime.tuned(JITFunction(lowrank._lowrank_kernel.fn), configs=configs, key=["B"], interpreter={})
    assert isinstance(compiled, Autotuner) and compiled.configs == configs


def test_why_unavailable_here() -> None:
    """In this process (TRITON_INTERPRET=1 set before the kernels were imported) they can run."""
    assert runtime.interpreting()
    assert runtime.why_unavailable() is None


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process with no CUDA device, no TRITON_INTERPRET and none of the kernel modules imported yet.

    Only the inputs of :func:`runtime.why_unavailable` are faked; nothing here runs a kernel.
    """
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(runtime.INTERPRET_ENV)
    for name in runtime.KERNEL_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return monkeypatch


def test_why_unavailable_without_gpu_or_interpreter(no_gpu: pytest.MonkeyPatch) -> None:
    assert not runtime.interpreting()
    message = runtime.why_unavailable()
    assert message is not None and "TRITON_INTERPRET=1" in message and "new process" not in message
    no_gpu.setenv(runtime.INTERPRET_ENV, "1")
    assert runtime.why_unavailable() is None


def test_why_unavailable_after_a_gpu_import(no_gpu: pytest.MonkeyPatch) -> None:
    """Kernel modules imported for the GPU keep compiled kernels, whatever the variable says later."""
    no_gpu.setenv(runtime.INTERPRET_ENV, "1")
    no_gpu.setitem(sys.modules, runtime.KERNEL_MODULES[0], types.SimpleNamespace(INTERPRETED=False))
    message = runtime.why_unavailable()
    assert message is not None and "TRITON_INTERPRET=1" in message and "new process" in message


def test_why_unavailable_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "triton" else find_spec(name, *args))
    assert "pip install 'fxcomp[triton]'" in runtime.why_unavailable()


def test_every_kernel_returns_an_empty_output_for_an_empty_batch() -> None:
    x, weight = torch.zeros(0, 8), _sparse_weight(5, 8, 0.5)
    linears = {
        "lowrank": lowrank_linear(x, _randn(3, 8), _randn(5, 3, seed=1), _randn(5, seed=2)),
        "int8": int8_linear(x, torch.ones(5, 8, dtype=torch.int8), torch.ones(5)),
        "int4": int4_linear(x, pack_int4_rows(torch.ones(5, 8, dtype=torch.int8)), torch.ones(5, 2), 4),
        "codebook": codebook_linear(x, torch.zeros(5, 8, dtype=torch.uint8), torch.ones(3)),
        "sparse": csr_linear(x, *to_csr(weight)),
    }
    for name, y in linears.items():
        assert (name, y.shape, y.dtype) == (name, (0, 5), torch.float32)
    options = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "multiplier": 1, "mid_relu": False, "relu": False}
    y = separable_conv2d(torch.zeros(0, 2, 4, 4), _randn(2, 3, 3), None, _randn(6, 2, seed=1), None, **options)
    assert (y.shape, y.dtype) == ((0, 6, 4, 4), torch.float32)
