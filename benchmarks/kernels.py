"""fxcomp's Triton kernels: bytes moved and FLOPs against the unfused torch reference, and speed on a GPU.

For each kernel and two workloads (a memory-bound one at batch 1 and a larger batch)
it prints the analytic cost — FLOPs, bytes read and written from device memory, and the
time a roofline machine (``--bandwidth`` GB/s, ``--flops`` GFLOP/s; an A100's fp32 figures
by default) needs at least — of three ways to compute the layer:

* ``fused``: the Triton kernel (compressed weights read once, intermediates on-chip);
* ``reference``: the pure-torch reference beside the kernel, as stock torch runs it
  (dequantize / look up / densify the weight into memory, or two separate layers);
* ``dense``: the uncompressed layer (one cuBLAS/cuDNN call on float32 weights).

With CUDA it then times all three (median of ``--repeats`` runs with
``triton.testing.do_bench``) and prints the speedups. Without CUDA the kernels run in
Triton's interpreter (``TRITON_INTERPRET=1``, set by this script), so it checks each kernel
against its reference on small ragged shapes and says that no timing was possible.

    python benchmarks/kernels.py [--repeats 50] [--bandwidth 1555] [--flops 19500]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first imported

import torch.nn.functional as F  # noqa: E402
from tabulate import tabulate  # noqa: E402

from fxcomp_plugins.triton_kernels import codebook, lowrank, quantized, separable, sparse  # noqa: E402

FLOAT = 4  # bytes per float32


@dataclass
class Cost:
    """FLOPs and device-memory bytes of one way to compute a layer."""

    flops: float
    bytes: float

    def seconds(self, bandwidth: float, flops: float) -> float:
        """The roofline lower bound on a machine with ``bandwidth`` bytes/s and ``flops`` FLOP/s."""
        return max(self.bytes / bandwidth, self.flops / flops)


@dataclass
class Case:
    """A kernel on one workload: its three costs and how to run each way."""

    kernel: str
    shape: str
    fused: Cost
    reference: Cost
    dense: Cost
    run_fused: Callable[[], torch.Tensor]
    run_reference: Callable[[], torch.Tensor]
    run_dense: Callable[[], torch.Tensor]


def _randn(*shape: int, device: str, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


def lowrank_case(batch: int, features: int, outputs: int, rank: int, device: str) -> Case:
    x, v, u = _randn(batch, features, device=device), _randn(rank, features, device=device), _randn(outputs, rank, device=device)
    bias, dense = _randn(outputs, device=device), u @ v
    io = FLOAT * (batch * features + batch * outputs + outputs)
    flops = 2 * batch * rank * (features + outputs)
    return Case(
        "lowrank_linear", f"B{batch} N{features} K{rank} M{outputs}",
        fused=Cost(flops, io + FLOAT * rank * (features + outputs)),
        # the two layers write the B×K intermediate and read it back
        reference=Cost(flops, io + FLOAT * (rank * (features + outputs) + 2 * batch * rank)),
        dense=Cost(2 * batch * features * outputs, io + FLOAT * features * outputs),
        run_fused=lambda: lowrank.lowrank_linear(x, v, u, bias),
        run_reference=lambda: lowrank.lowrank_linear_reference(x, v, u, bias),
        run_dense=lambda: F.linear(x, dense, bias),
    )


def _decoded_weight_costs(batch: int, features: int, outputs: int, stored: float) -> tuple[Cost, Cost, Cost]:
    """Fused, reference and dense costs of a linear layer whose weight is decoded from ``stored`` bytes."""
    io = FLOAT * (batch * features + batch * outputs + outputs)
    gemm = 2 * batch * features * outputs
    weight = FLOAT * features * outputs
    # the reference decodes into a float weight in memory (write) that the GEMM reads back
    return Cost(gemm, io + stored), Cost(gemm + features * outputs, io + stored + 2 * weight), Cost(gemm, io + weight)


def int8_case(batch: int, features: int, outputs: int, device: str) -> Case:
    x, bias = _randn(batch, features, device=device), _randn(outputs, device=device)
    weight = torch.randint(-127, 128, (outputs, features), dtype=torch.int8, generator=torch.Generator().manual_seed(1)).to(device)
    scales = torch.rand(outputs, generator=torch.Generator().manual_seed(2)).to(device) / 100
    dense = weight.float() * scales[:, None]
    fused, reference, full = _decoded_weight_costs(batch, features, outputs, features * outputs + FLOAT * outputs)
    return Case(
        "int8_linear", f"B{batch} N{features} M{outputs}", fused, reference, full,
        run_fused=lambda: quantized.int8_linear(x, weight, scales, bias),
        run_reference=lambda: quantized.int8_linear_reference(x, weight, scales, bias),
        run_dense=lambda: F.linear(x, dense, bias),
    )


def int4_case(batch: int, features: int, outputs: int, group_size: int, device: str) -> Case:
    x, bias = _randn(batch, features, device=device), _randn(outputs, device=device)
    integers = torch.randint(-8, 8, (outputs, features), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
    packed = quantized.pack_int4_rows(integers).to(device)
    groups = -(-features // group_size)
    scales = torch.rand(outputs, groups, generator=torch.Generator().manual_seed(2)).to(device) / 10
    dense = integers.to(device).float() * scales.repeat_interleave(group_size, 1)[:, :features]
    stored = packed.numel() + FLOAT * scales.numel()
    fused, reference, full = _decoded_weight_costs(batch, features, outputs, stored)
    return Case(
        "int4_linear", f"B{batch} N{features} M{outputs} g{group_size}", fused, reference, full,
        run_fused=lambda: quantized.int4_linear(x, packed, scales, group_size, bias),
        run_reference=lambda: quantized.int4_linear_reference(x, packed, scales, group_size, bias),
        run_dense=lambda: F.linear(x, dense, bias),
    )


def codebook_case(batch: int, features: int, outputs: int, entries: int, device: str) -> Case:
    x, bias = _randn(batch, features, device=device), _randn(outputs, device=device)
    indices = torch.randint(0, entries, (outputs, features), generator=torch.Generator().manual_seed(1)).to(torch.uint8).to(device)
    table = _randn(entries, device=device, seed=2)
    dense = table[indices.long()]
    fused, reference, full = _decoded_weight_costs(batch, features, outputs, indices.numel() + FLOAT * entries)
    return Case(
        "codebook_linear", f"B{batch} N{features} M{outputs} C{entries}", fused, reference, full,
        run_fused=lambda: codebook.codebook_linear(x, indices, table, bias),
        run_reference=lambda: codebook.codebook_linear_reference(x, indices, table, bias),
        run_dense=lambda: F.linear(x, dense, bias),
    )


def sparse_case(batch: int, features: int, outputs: int, density: float, device: str) -> Case:
    x, bias = _randn(batch, features, device=device), _randn(outputs, device=device)
    keep = torch.rand(outputs, features, generator=torch.Generator().manual_seed(1)) < density
    dense = (torch.randn(outputs, features, generator=torch.Generator().manual_seed(2)) * keep).to(device)
    crow, col, values = sparse.to_csr(dense)
    nonzeros = values.numel()
    io = FLOAT * (batch * features + batch * outputs + outputs)
    stored = 2 * FLOAT * nonzeros + FLOAT * (outputs + 1)
    return Case(
        "csr_linear", f"B{batch} N{features} M{outputs} {density:.0%} dense",
        fused=Cost(2 * batch * nonzeros, io + stored),
        # the reference scatters the entries into a dense float weight, then runs the dense GEMM
        reference=Cost(2 * batch * features * outputs, io + stored + 2 * FLOAT * features * outputs),
        dense=Cost(2 * batch * features * outputs, io + FLOAT * features * outputs),
        run_fused=lambda: sparse.csr_linear(x, crow, col, values, bias),
        run_reference=lambda: sparse.csr_linear_reference(x, crow, col, values, bias),
        run_dense=lambda: F.linear(x, dense, bias),
    )


def separable_case(batch: int, channels: int, size: int, outputs: int, kernel: int, device: str) -> Case:
    x = _randn(batch, channels, size, size, device=device)
    dw, dw_bias = _randn(channels, kernel, kernel, device=device, seed=1), _randn(channels, device=device, seed=2)
    pw, pw_bias = _randn(outputs, channels, device=device, seed=3), _randn(outputs, device=device, seed=4)
    full = _randn(outputs, channels, kernel, kernel, device=device, seed=5)
    geometry = {"stride": (1, 1), "padding": (kernel // 2, kernel // 2), "dilation": (1, 1), "multiplier": 1}
    pixels = batch * size * size
    inputs, results = FLOAT * pixels * channels, FLOAT * pixels * outputs
    weights = FLOAT * (channels * kernel * kernel + channels + outputs * channels + outputs)
    flops = 2 * pixels * channels * (kernel * kernel + outputs)
    return Case(
        "separable_conv2d", f"B{batch} C{channels} {size}×{size} k{kernel} O{outputs}",
        fused=Cost(flops, inputs + weights + results),
        # the depthwise output (with its ReLU applied in place) goes to memory and comes back
        reference=Cost(flops, inputs + weights + results + 4 * FLOAT * pixels * channels),
        dense=Cost(2 * pixels * channels * outputs * kernel * kernel, inputs + results + FLOAT * full.numel()),
        run_fused=lambda: separable.separable_conv2d(x, dw, dw_bias, pw, pw_bias, mid_relu=True, relu=True, **geometry),
        run_reference=lambda: separable.separable_conv2d_reference(x, dw, dw_bias, pw, pw_bias, mid_relu=True, relu=True, **geometry),
        run_dense=lambda: F.conv2d(x, full, None, 1, kernel // 2),
    )


def workloads(device: str, small: bool) -> list[Case]:
    """The cases to report: GPU-sized layers, or small ragged ones for the interpreter."""
    if small:
        return [
            lowrank_case(3, 37, 45, 5, device), int8_case(3, 37, 45, device), int4_case(3, 37, 45, 8, device),
            codebook_case(3, 37, 45, 16, device), sparse_case(3, 37, 45, 0.2, device),
            separable_case(2, 5, 9, 7, 3, device),
        ]
    cases = []
    for batch in (1, 512):
        cases += [
            lowrank_case(batch, 4096, 4096, 128, device), int8_case(batch, 4096, 4096, device),
            int4_case(batch, 4096, 4096, 128, device), codebook_case(batch, 4096, 4096, 32, device),
            sparse_case(batch, 4096, 4096, 0.1, device),
        ]
    return cases + [separable_case(batch, 64, 56, 128, 3, device) for batch in (1, 32)]


def cost_rows(cases: list[Case], bandwidth: float, flops: float) -> list[list[str]]:
    rows = []
    for case in cases:
        fused, reference, dense = (c.seconds(bandwidth, flops) for c in (case.fused, case.reference, case.dense))
        rows.append([
            case.kernel, case.shape,
            f"{case.fused.flops / 1e9:.3g}", f"{case.fused.bytes / 1e6:.3g}", f"{case.fused.flops / case.fused.bytes:.2f}",
            f"{case.reference.bytes / 1e6:.3g}", f"{case.dense.bytes / 1e6:.3g}",
            f"{reference / fused:.2f}×", f"{dense / fused:.2f}×",
        ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--bandwidth", type=float, default=1555, help="device memory bandwidth, GB/s")
    parser.add_argument("--flops", type=float, default=19500, help="fp32 peak, GFLOP/s")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    bandwidth, flops = args.bandwidth * 1e9, args.flops * 1e9
    print(f"roofline model: {args.bandwidth:g} GB/s, {args.flops:g} GFLOP/s (fp32); costs in GFLOP and MB of device memory traffic")
    headers = ["kernel", "workload", "GFLOP", "fused MB", "FLOP/byte", "reference MB", "dense MB",
               "bound: fused vs reference", "bound: fused vs dense"]
    device = "cuda" if cuda else "cpu"
    print(tabulate(cost_rows(workloads(device, small=False), bandwidth, flops), headers=headers))
    if cuda:
        print(f"\nmeasured on {torch.cuda.get_device_name()} (median of {args.repeats} runs):")
        print(tabulate(time_rows(workloads(device, small=False), args.repeats),
                       headers=["kernel", "workload", "fused ms", "reference ms", "dense ms", "vs reference", "vs dense", "error"]))
    else:
        print("\nno CUDA device: no timing. The kernels ran in Triton's interpreter; correctness on small ragged shapes:")
        rows = [[case.kernel, case.shape, f"{_error(case):.1e}"] for case in workloads(device, small=True)]
        print(tabulate(rows, headers=["kernel", "shape", "max |fused − reference| / max |reference|"]))


def _error(case: Case) -> float:
    got, want = case.run_fused(), case.run_reference()
    return ((got - want).abs().max() / want.abs().max()).item()


def time_rows(cases: list[Case], repeats: int) -> list[list[str]]:
    """Each case's three ways timed on the GPU, with the fused kernel's error against its reference."""
    from triton.testing import do_bench

    rows = []
    for case in cases:
        fused, reference, dense = (
            do_bench(run, rep=repeats, return_mode="median") for run in (case.run_fused, case.run_reference, case.run_dense)
        )
        rows.append([case.kernel, case.shape, f"{fused:.3f}", f"{reference:.3f}", f"{dense:.3f}",
                     f"{reference / fused:.2f}×", f"{dense / fused:.2f}×", f"{_error(case):.1e}"])
    return rows


if __name__ == "__main__":
    main()
