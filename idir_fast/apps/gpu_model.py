"""A roofline model of one optimisation step on a GPU, from its FLOPs and bytes per kernel.

The peak rates are stated once, in :data:`H100` (NVIDIA H100 SXM5 datasheet: FP32 66.9 TFLOP/s, TF32 tensor
cores 494.7 TFLOP/s dense, HBM3 3.35 TB/s). A kernel's model time is ``max(FLOPs / rate, bytes / bandwidth)``;
the step's is their sum (launch gaps are not modelled: the loop replays a CUDA graph). The benchmark prints it
beside the measured time, and on a GPU the doctor prints it per kernel beside the profiler's times, so the
first GPU session sees where the step is off its floor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

from ..core.derivatives import num_streams


@dataclass(frozen=True)
class GpuSpec:
    name: str
    fp32_tflops: float
    tf32_tflops: float
    bandwidth_tbs: float

    def gemm_rate(self, precision: str) -> float:
        """FLOP/s of a float32 matrix product in ``precision`` (tf32x3 = three TF32 products)."""
        return 1e12 * {"ieee": self.fp32_tflops, "tf32": self.tf32_tflops,
                       "tf32x3": self.tf32_tflops / 3.0}[precision]


H100 = GpuSpec("H100 SXM5 (datasheet peaks)", fp32_tflops=66.9, tf32_tflops=494.7, bandwidth_tbs=3.35)


@dataclass(frozen=True)
class KernelCost:
    name: str
    flops: float
    bytes: float
    gemm: bool  # runs at the matrix-product rate (else the FP32 rate)

    def ms(self, gpu: GpuSpec, precision: str) -> float:
        rate = gpu.gemm_rate(precision) if self.gemm else 1e12 * gpu.fp32_tflops
        return 1e3 * max(self.flops / rate, self.bytes / (1e12 * gpu.bandwidth_tbs))


def step_kernels(n: int, hidden: Sequence[int], order: int, backend: str, precision: str = "ieee",
                 bytes_per_float: int = 4) -> List[KernelCost]:
    """The kernels of one step (forward, backward; sampling, NCC and Adam are negligible at these sizes).

    ``triton``: per hidden layer one fused forward (reads h, writes a and z) and one adjoint kernel (reads ā and
    z, writes z̄), plus two cuBLAS products in the backward. ``torch``: the same products, with the stream algebra
    as separate element-wise ops (modelled as 4× the fused kernels' traffic). ``tf32x3`` adds the operand splits.
    """
    S, f = num_streams(order), bytes_per_float
    widths = (3,) + tuple(int(h) for h in hidden) + (3,)
    fused = backend == "triton"
    ew = 1 if fused else 4  # element-wise traffic factor of unfused stream algebra
    split = 2 if precision == "tf32x3" else 0  # extra read+write of each GEMM operand to split it
    out: List[KernelCost] = []
    m0 = widths[1]
    out.append(KernelCost("first layer forward", 2.0 * n * 3 * m0 + 12.0 * S * n * m0, ew * f * (S + 1) * n * m0,
                          False))
    for k, m in zip(widths[1:-2], widths[2:-1]):
        act_in, act_out = S * n * k, S * n * m
        out.append(KernelCost(f"hidden {k}→{m} forward (GEMM + epilogue)", 2.0 * act_in * m,
                              f * (act_in + 2 * act_out + k * m) + (0 if fused else ew * 2 * f * act_out), True))
        out.append(KernelCost(f"hidden {k}→{m} adjoint (element-wise)", 20.0 * act_out, ew * 3 * f * act_out, False))
        out.append(KernelCost(f"hidden {k}→{m} backward GEMMs (z̄ W, z̄ᵀ h)", 4.0 * act_in * m,
                              f * (1 + split) * (2 * act_out + 2 * act_in), True))
    k = widths[-2]
    out.append(KernelCost("output layer forward + backward GEMMs", 3 * 2.0 * S * n * k * 3,
                          f * (1 + split) * 3 * S * n * k, True))
    out.append(KernelCost("first layer adjoint", 20.0 * S * n * m0, ew * 3 * f * S * n * m0, False))
    return out


def model_step_ms(n: int, hidden: Sequence[int], order: int, backend: str, precision: str = "ieee",
                  gpu: GpuSpec = H100) -> float:
    """Model time of one step in ms (``nan`` for the reference backend, whose nested passes are not modelled)."""
    if backend not in ("torch", "triton"):
        return float("nan")
    return sum(k.ms(gpu, precision) for k in step_kernels(n, hidden, order, backend, precision))
