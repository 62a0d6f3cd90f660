"""Fused Triton kernels for the SIREN with derivative streams (value, Jacobian and Hessian in one pass).

Math (``shared/notes/engine-math.md``; the PyTorch blueprint is ``idir_fast/ops/siren_streams.py``): each point
carries ``S`` = 1, 4 or 10 streams (value; ∂/∂x_i; ∂²/∂x_a∂x_b for the pairs 00, 11, 22, 01, 02, 12). A sine
layer computes ``z_s = W h_s`` (+ b on the value stream) and, with ``s = sin ωz``, ``c = ω cos ωz``,
``q = −ω² sin ωz``::

    a = s,   a_i = c z_i,   a_ab = c z_ab + q z_a z_b.

Its adjoint, given ``ā_s``::

    z̄_ab = c ā_ab
    z̄_i  = c ā_i + q Σ_{pairs ∋ i} ā_kl ∂(z_k z_l)/∂z_i
    z̄    = c ā + q Σ_i z_i ā_i + Σ_pairs (q z_kl − ω² c z_k z_l) ā_kl

Kernels (one launch per layer, Liger-Kernel style):

* ``_siren_first_fwd_kernel`` — the 3→H first layer: ``z = W x + b`` by three FMAs (K = 3 is too small for a
  tensor-core tile), ``z_i = W[:, i]``, then the stream epilogue.
* ``_siren_hidden_fwd_kernel`` — an H→H sine layer: one ``BLOCK_N × BLOCK_M`` tile of every stream's product
  ``h_s Wᵀ``; the weight tile is loaded once per K-step (streamed from L2, never assumed resident) and reused by
  all S streams; the bias, the sine and the stream algebra run in the epilogue, so pre-activations never make
  a round trip to memory before the activation. Writes ``a_s`` and ``z_s`` (kept for the backward).
* ``_siren_sine_bwd_kernel`` — the adjoint algebra above, elementwise over all streams in one pass.

The linear output layer (H→3) and the backward's matrix products (input adjoint ``z̄ W`` and weight gradient
``Σ_s z̄_sᵀ h_s``) are single large GEMMs over all ``S·N`` rows and go to cuBLAS (:func:`matmul`).

Precision is explicit and the same everywhere: ``"ieee"`` (full float32), ``"tf32x3"`` (three TF32 tensor-core
products per float32 product, float32-level accuracy) or ``"tf32"`` (one); ``tl.dot`` in the kernels and the
cuBLAS products of the output layer and the backward follow it. Offsets are 64-bit wherever a stream index
multiplies ``N·width`` (``_stream_stride``), and launches run on the inputs' GPU.
"""
from __future__ import annotations

import contextlib
from typing import List, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ..core.derivatives import NUM_STREAMS
from ..ops.siren_streams import streams_backward
from . import DEFAULT_PRECISION, PRECISIONS


@triton.jit
def _sine_stream_epilogue(z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, omega):
    """a = sin ωz and its derivative streams from pre-activation streams (z0 includes the bias)."""
    s = tl.sin(omega * z0)
    c = omega * tl.cos(omega * z0)
    q = -(omega * omega) * s
    a1 = c * z1
    a2 = c * z2
    a3 = c * z3
    a4 = c * z4 + q * z1 * z1
    a5 = c * z5 + q * z2 * z2
    a6 = c * z6 + q * z3 * z3
    a7 = c * z7 + q * z1 * z2
    a8 = c * z8 + q * z1 * z3
    a9 = c * z9 + q * z2 * z3
    return s, a1, a2, a3, a4, a5, a6, a7, a8, a9


@triton.jit
def _stream_stride(N, M):
    """Elements between two streams of an ``(S, N, M)`` tensor, in int64: ``S·N·M`` passes 2³¹ (N ≈ 930k points
    at width 256 with 9 streams after the first), where 32-bit offsets would wrap."""
    return N.to(tl.int64) * M


@triton.jit
def _tile_coordinates(N, M, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """``(pid_n, pid_m)`` of this program in a 1-D grid where the column tiles of one row block are consecutive:
    they read the same input rows, which are then still in L2 (and a 1-D grid has no 65,535 limit on rows)."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    return pid // tiles_m, pid % tiles_m


@triton.jit
def _load_streams(ptr, off, mask, stride, ORDER: tl.constexpr):
    """The streams of ``ptr`` at ``off`` (``stride`` apart): the value, then 3 (ORDER ≥ 1) and 6 (ORDER 2) more;
    zeros for the streams the order does not have."""
    v0 = tl.load(ptr + off, mask=mask, other=0.0)
    zero = v0 * 0.0
    v1, v2, v3 = zero, zero, zero
    v4, v5, v6, v7, v8, v9 = zero, zero, zero, zero, zero, zero
    if ORDER >= 1:
        v1 = tl.load(ptr + stride + off, mask=mask, other=0.0)
        v2 = tl.load(ptr + 2 * stride + off, mask=mask, other=0.0)
        v3 = tl.load(ptr + 3 * stride + off, mask=mask, other=0.0)
    if ORDER >= 2:
        v4 = tl.load(ptr + 4 * stride + off, mask=mask, other=0.0)
        v5 = tl.load(ptr + 5 * stride + off, mask=mask, other=0.0)
        v6 = tl.load(ptr + 6 * stride + off, mask=mask, other=0.0)
        v7 = tl.load(ptr + 7 * stride + off, mask=mask, other=0.0)
        v8 = tl.load(ptr + 8 * stride + off, mask=mask, other=0.0)
        v9 = tl.load(ptr + 9 * stride + off, mask=mask, other=0.0)
    return v0, v1, v2, v3, v4, v5, v6, v7, v8, v9


@triton.jit
def _store_streams(ptr, off, mask, stride, v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, ORDER: tl.constexpr):
    tl.store(ptr + off, v0, mask=mask)
    if ORDER >= 1:
        tl.store(ptr + stride + off, v1, mask=mask)
        tl.store(ptr + 2 * stride + off, v2, mask=mask)
        tl.store(ptr + 3 * stride + off, v3, mask=mask)
    if ORDER >= 2:
        tl.store(ptr + 4 * stride + off, v4, mask=mask)
        tl.store(ptr + 5 * stride + off, v5, mask=mask)
        tl.store(ptr + 6 * stride + off, v6, mask=mask)
        tl.store(ptr + 7 * stride + off, v7, mask=mask)
        tl.store(ptr + 8 * stride + off, v8, mask=mask)
        tl.store(ptr + 9 * stride + off, v9, mask=mask)


@triton.jit
def _siren_first_fwd_kernel(x_ptr, w_ptr, b_ptr, a_ptr, z_ptr, N, M, omega, ORDER: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """First sine layer: ``z = W x + b`` (x: (N, 3), W: (M, 3)); writes a: (S, N, M) and z: (N, M)."""
    pid_n, pid_m = _tile_coordinates(N, M, BLOCK_N, BLOCK_M)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M
    x0 = tl.load(x_ptr + offs_n * 3, mask=mask_n, other=0.0)
    x1 = tl.load(x_ptr + offs_n * 3 + 1, mask=mask_n, other=0.0)
    x2 = tl.load(x_ptr + offs_n * 3 + 2, mask=mask_n, other=0.0)
    w0 = tl.load(w_ptr + offs_m * 3, mask=mask_m, other=0.0)
    w1 = tl.load(w_ptr + offs_m * 3 + 1, mask=mask_m, other=0.0)
    w2 = tl.load(w_ptr + offs_m * 3 + 2, mask=mask_m, other=0.0)
    b = tl.load(b_ptr + offs_m, mask=mask_m, other=0.0)
    z0 = x0[:, None] * w0[None, :] + x1[:, None] * w1[None, :] + x2[:, None] * w2[None, :] + b[None, :]
    zero = z0 * 0.0
    z1 = zero + w0[None, :]
    z2 = zero + w1[None, :]
    z3 = zero + w2[None, :]
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = _sine_stream_epilogue(z0, z1, z2, z3, zero, zero, zero, zero, zero,
                                                                   zero, omega)
    off = offs_n[:, None] * M + offs_m[None, :]
    mask = mask_n[:, None] & mask_m[None, :]
    _store_streams(a_ptr, off, mask, _stream_stride(N, M), a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, ORDER)
    tl.store(z_ptr + off, z0, mask=mask)


@triton.jit
def _siren_hidden_fwd_kernel(h_ptr, w_ptr, b_ptr, a_ptr, z_ptr, N, K, M, omega, ORDER: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                             PRECISION: tl.constexpr):
    """Hidden sine layer: ``z_s = h_s Wᵀ`` (+ b on s = 0) for all streams, then the stream epilogue.

    h: (S, N, K), W: (M, K), b: (M,); writes a: (S, N, M) and z: (S, N, M).
    """
    pid_n, pid_m = _tile_coordinates(N, M, BLOCK_N, BLOCK_M)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask_m = offs_m < M
    hs = _stream_stride(N, K)  # stream stride of h
    acc_t = h_ptr.dtype.element_ty
    acc0 = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_t)
    acc1 = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_t)
    acc2 = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_t)
    acc3 = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_t)
    acc4 = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_t)
    acc5 = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_t)
    acc6 = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_t)
    acc7 = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_t)
    acc8 = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_t)
    acc9 = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_t)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        # Wᵀ tile (BLOCK_K, BLOCK_M), read from L2 once per K-step and shared by every stream
        w = tl.load(w_ptr + offs_m[None, :] * K + kk[:, None], mask=mask_k[:, None] & mask_m[None, :], other=0.0)
        hp = h_ptr + offs_n[:, None] * K + kk[None, :]
        hm = mask_n[:, None] & mask_k[None, :]
        acc0 += tl.dot(tl.load(hp, mask=hm, other=0.0), w, input_precision=PRECISION)
        if ORDER >= 1:
            acc1 += tl.dot(tl.load(hp + hs, mask=hm, other=0.0), w, input_precision=PRECISION)
            acc2 += tl.dot(tl.load(hp + 2 * hs, mask=hm, other=0.0), w, input_precision=PRECISION)
            acc3 += tl.dot(tl.load(hp + 3 * hs, mask=hm, other=0.0), w, input_precision=PRECISION)
        if ORDER >= 2:
            acc4 += tl.dot(tl.load(hp + 4 * hs, mask=hm, other=0.0), w, input_precision=PRECISION)
            acc5 += tl.dot(tl.load(hp + 5 * hs, mask=hm, other=0.0), w, input_precision=PRECISION)
            acc6 += tl.dot(tl.load(hp + 6 * hs, mask=hm, other=0.0), w, input_precision=PRECISION)
            acc7 += tl.dot(tl.load(hp + 7 * hs, mask=hm, other=0.0), w, input_precision=PRECISION)
            acc8 += tl.dot(tl.load(hp + 8 * hs, mask=hm, other=0.0), w, input_precision=PRECISION)
            acc9 += tl.dot(tl.load(hp + 9 * hs, mask=hm, other=0.0), w, input_precision=PRECISION)
    b = tl.load(b_ptr + offs_m, mask=mask_m, other=0.0)
    z0 = acc0 + b[None, :]
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = _sine_stream_epilogue(z0, acc1, acc2, acc3, acc4, acc5, acc6, acc7,
                                                                   acc8, acc9, omega)
    off = offs_n[:, None] * M + offs_m[None, :]
    mask = mask_n[:, None] & mask_m[None, :]
    os = _stream_stride(N, M)
    _store_streams(a_ptr, off, mask, os, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, ORDER)
    _store_streams(z_ptr, off, mask, os, z0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, acc8, acc9, ORDER)


@triton.jit
def _siren_sine_bwd_kernel(ga_ptr, z_ptr, w0_ptr, gz_ptr, N, M, omega, ORDER: tl.constexpr, FIRST: tl.constexpr,
                           BLOCK: tl.constexpr):
    """Pre-activation adjoints ``z̄_s`` from output adjoints ``ā_s`` (both (S, N, M)) and the saved ``z``.

    For the first layer (``FIRST``) only ``z`` (N, M) is saved: ``z_i = W0[:, i]`` and ``z_ab = 0``.
    """
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    os = _stream_stride(N, M)
    mask = offs < os
    if FIRST:
        z0 = tl.load(z_ptr + offs, mask=mask, other=0.0)
        zero = z0 * 0.0
        col = offs % M
        z1 = tl.load(w0_ptr + col * 3, mask=mask, other=0.0)
        z2 = tl.load(w0_ptr + col * 3 + 1, mask=mask, other=0.0)
        z3 = tl.load(w0_ptr + col * 3 + 2, mask=mask, other=0.0)
        z4, z5, z6, z7, z8, z9 = zero, zero, zero, zero, zero, zero
    else:
        z0, z1, z2, z3, z4, z5, z6, z7, z8, z9 = _load_streams(z_ptr, offs, mask, os, ORDER)
    s = tl.sin(omega * z0)
    c = omega * tl.cos(omega * z0)
    q = -(omega * omega) * s
    ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7, ga8, ga9 = _load_streams(ga_ptr, offs, mask, os, ORDER)
    g0 = c * ga0
    g1 = c * ga1
    g2 = c * ga2
    g3 = c * ga3
    if ORDER >= 1:
        g0 += q * (z1 * ga1 + z2 * ga2 + z3 * ga3)
    if ORDER >= 2:
        g1 += q * (2.0 * z1 * ga4 + z2 * ga7 + z3 * ga8)
        g2 += q * (2.0 * z2 * ga5 + z1 * ga7 + z3 * ga9)
        g3 += q * (2.0 * z3 * ga6 + z1 * ga8 + z2 * ga9)
        w2c = (omega * omega) * c
        g0 += ((q * z4 - w2c * z1 * z1) * ga4 + (q * z5 - w2c * z2 * z2) * ga5
               + (q * z6 - w2c * z3 * z3) * ga6 + (q * z7 - w2c * z1 * z2) * ga7
               + (q * z8 - w2c * z1 * z3) * ga8 + (q * z9 - w2c * z2 * z3) * ga9)
    _store_streams(gz_ptr, offs, mask, os, g0, g1, g2, g3, c * ga4, c * ga5, c * ga6, c * ga7, c * ga8, c * ga9,
                   ORDER)


# ------------------------------------------------------------------------------------------------ launchers
def _tile(width: int, cap: int) -> int:
    """``cap`` when it divides the width (256, the default, and every multiple of 64), else 16 (any multiple
    of 16): two tile shapes per dimension keep the set of compiled specialisations small and checked."""
    return cap if width % cap == 0 else 16


def hidden_fwd_config(order: int, k: int, m: int) -> dict:
    """Tile sizes of the hidden-layer forward. S accumulators of BLOCK_N × BLOCK_M float32 live in registers
    (S · BLOCK_N · BLOCK_M / (32 · num_warps) per thread: 32, 32, 80 for S = 1, 4, 10), so more streams get
    more warps and fewer points per tile; every shipped configuration compiles for sm_80/sm_90 with 0 spills
    (``python -m idir_fast.kernels.aot``, run by the tests)."""
    return dict(BLOCK_N=(64, 32, 32)[order], BLOCK_M=_tile(m, 64), BLOCK_K=_tile(k, 16),
                num_warps=(4, 8, 8)[order], num_stages=2)


def first_fwd_config(order: int, m: int) -> dict:
    return dict(BLOCK_N=32, BLOCK_M=_tile(m, 64), num_warps=4)


BWD_BLOCK = 1024
BWD_WARPS = 8


def _check(x: torch.Tensor, params: Sequence[torch.Tensor]):
    if x.dim() != 2 or x.shape[1] != 3:
        raise ValueError(f"siren_streams_triton(): 'x' must have shape (N, 3), got {tuple(x.shape)}")
    if len(params) < 4 or len(params) % 2:
        raise ValueError("siren_streams_triton(): 'params' must be [W_0, b_0, …, W_out, b_out] with ≥ 1 sine layer")
    for p in params:
        if p.device != x.device or p.dtype != x.dtype:
            raise ValueError("siren_streams_triton(): parameters and 'x' must share device and dtype, got "
                             f"{p.device}/{p.dtype} and {x.device}/{x.dtype}")
    for w in params[0:-2:2]:
        if w.shape[0] % 16:
            raise ValueError(f"siren_streams_triton(): hidden widths must be multiples of 16, got {w.shape[0]}")


def tile_grid(n: int, m: int, cfg: dict) -> tuple:
    """The 1-D launch grid of a forward kernel: one program per ``BLOCK_N × BLOCK_M`` tile, column tiles of a
    row block consecutive (see ``_tile_coordinates``)."""
    return (triton.cdiv(n, cfg["BLOCK_N"]) * triton.cdiv(m, cfg["BLOCK_M"]),)


def _forward(x, params, omega, order, precision):
    S = NUM_STREAMS[order]
    n = x.shape[0]
    w0, b0 = params[0], params[1]
    m = w0.shape[0]
    a = torch.empty((S, n, m), device=x.device, dtype=x.dtype)
    z_first = torch.empty((n, m), device=x.device, dtype=x.dtype)
    cfg = first_fwd_config(order, m)
    _siren_first_fwd_kernel[tile_grid(n, m, cfg)](x, w0, b0, a, z_first, n, m, float(omega), ORDER=order,
                                                  BLOCK_N=cfg["BLOCK_N"], BLOCK_M=cfg["BLOCK_M"],
                                                  num_warps=cfg["num_warps"])
    inputs, zs = [], [z_first]
    for layer in range(1, len(params) // 2 - 1):
        w, b = params[2 * layer], params[2 * layer + 1]
        k, m = w.shape[1], w.shape[0]
        inputs.append(a)
        a_next = torch.empty((S, n, m), device=x.device, dtype=x.dtype)
        z = torch.empty((S, n, m), device=x.device, dtype=x.dtype)
        cfg = hidden_fwd_config(order, k, m)
        _siren_hidden_fwd_kernel[tile_grid(n, m, cfg)](a, w, b, a_next, z, n, k, m, float(omega), ORDER=order,
                                                       BLOCK_N=cfg["BLOCK_N"], BLOCK_M=cfg["BLOCK_M"],
                                                       BLOCK_K=cfg["BLOCK_K"], PRECISION=precision,
                                                       num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        a = a_next
        zs.append(z)
    inputs.append(a)
    w_out, b_out = params[-2], params[-1]
    u = matmul(a.reshape(S * n, -1), w_out.T, precision).reshape(S, n, -1)
    u[0] += b_out
    return u, inputs, zs


def _sine_backward(ga, z, w0, omega, order, first):
    gz = torch.empty_like(ga)
    n, m = ga.shape[1], ga.shape[2]
    grid = (triton.cdiv(n * m, BWD_BLOCK),)
    _siren_sine_bwd_kernel[grid](ga.contiguous(), z, w0, gz, n, m, float(omega), ORDER=order, FIRST=first,
                                 BLOCK=BWD_BLOCK, num_warps=BWD_WARPS)
    return gz


def tf32_split(a: torch.Tensor):
    """``(hi, lo)`` with ``hi + lo == a`` exactly and ``hi`` exactly representable in TF32 (sign, exponent and
    the top 10 mantissa bits of float32), so ``|lo| ≤ 2⁻¹⁰ |a|``."""
    hi = (a.contiguous().view(torch.int32) & -8192).view(torch.float32)  # -8192 = 0xFFFFE000
    return hi, a - hi


def matmul(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    """``a @ b`` by cuBLAS in the kernels' precision: ``ieee`` full float32; ``tf32`` one TF32 tensor-core
    product; ``tf32x3`` three (``a_hi b_hi + a_hi b_lo + a_lo b_hi``, float32-level accuracy on tensor cores),
    as ``tl.dot`` does in the forward kernels. Non-float32 operands (the interpreter's float64) are exact."""
    if a.dtype != torch.float32 or precision == "ieee":
        with _allow_tf32(False):
            return a @ b
    with _allow_tf32(True):
        if precision == "tf32":
            return a @ b
        a_hi, a_lo = tf32_split(a)
        b_hi, b_lo = tf32_split(b)
        return a_hi @ b_hi + (a_hi @ b_lo + a_lo @ b_hi)


class _allow_tf32:
    """cuBLAS may use TF32 exactly inside this context (restores the previous setting)."""

    def __init__(self, allow: bool):
        self.allow = allow

    def __enter__(self):
        self.prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.allow

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.prev


def _device_guard(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the *current* device), so ``cuda:1`` works like ``cuda:0``."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class SirenStreamsFunction(torch.autograd.Function):
    """Autograd wrapper: forward and backward only call the launchers above, on the inputs' device."""

    @staticmethod
    def forward(ctx, x, omega, order, precision, *params):
        with _device_guard(x):
            u, inputs, zs = _forward(x, params, omega, order, precision)
        ctx.omega, ctx.order, ctx.precision, ctx.n_params = omega, order, precision, len(params)
        ctx.save_for_backward(x, *params, *inputs, *zs)
        return u

    @staticmethod
    def backward(ctx, grad_u):
        saved, P = ctx.saved_tensors, ctx.n_params
        x, params = saved[0], saved[1:1 + P]
        L = P // 2 - 1  # sine layers
        inputs, zs = saved[1 + P:1 + P + L], saved[1 + P + L:]
        omega, order, precision = ctx.omega, ctx.order, ctx.precision
        with _device_guard(x):
            grads = streams_backward(
                grad_u, x, params, inputs, zs, omega, order,
                lambda ga, z, first, out=None: _sine_backward(ga, z, params[0], omega, order, first),
                lambda a, b, out=None: matmul(a, b, precision))
        return (None, None, None, None, *grads)


def siren_streams_triton(params: Sequence[torch.Tensor], omega: float, x: torch.Tensor, order: int,
                         precision: str = DEFAULT_PRECISION) -> torch.Tensor:
    """Output streams ``(S, N, 3)`` of the SIREN displacement (same contract as
    :func:`idir_fast.ops.siren_streams.siren_streams`), differentiable w.r.t. ``params``.

    Args:
        params: ``[W_0, b_0, …, W_out, b_out]``, contiguous, on one device, float32 (float64 in the interpreter).
        x: ``(N, 3)`` points. order: 0, 1 or 2. precision: ``"ieee"``, ``"tf32x3"`` or ``"tf32"``, for the
            kernels' ``tl.dot`` and the cuBLAS products of the output layer and the backward alike.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"'precision' must be one of {PRECISIONS}, got {precision!r}")
    if order not in (0, 1, 2):
        raise ValueError(f"'order' must be 0, 1 or 2, got {order!r}")
    params = [p.contiguous() for p in params]
    x = x.contiguous()
    _check(x, params)
    return SirenStreamsFunction.apply(x, float(omega), int(order), precision, *params)


def shipped_configs() -> List[Tuple[str, dict, dict]]:
    """Every kernel specialisation the launchers can produce for hidden widths that are multiples of 16
    (16–512): (kernel name, constexprs, launch options). Used by the ahead-of-time compile check."""
    out = []
    widths = range(16, 513, 16)
    for order in (0, 1, 2):
        tiles = sorted({(c["BLOCK_N"], c["BLOCK_M"], c["BLOCK_K"], c["num_warps"], c["num_stages"])
                        for c in (hidden_fwd_config(order, k, m) for k in widths for m in widths)})
        for bn, bm, bk, warps, stages in tiles:
            for prec in PRECISIONS:
                out.append(("_siren_hidden_fwd_kernel",
                            dict(ORDER=order, BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk, PRECISION=prec),
                            dict(num_warps=warps, num_stages=stages)))
        for c in sorted({(first_fwd_config(order, m)["BLOCK_M"]) for m in widths}):
            cfg = first_fwd_config(order, c)
            out.append(("_siren_first_fwd_kernel", dict(ORDER=order, BLOCK_N=cfg["BLOCK_N"], BLOCK_M=c),
                        dict(num_warps=cfg["num_warps"])))
        for first in (False, True):
            out.append(("_siren_sine_bwd_kernel", dict(ORDER=order, FIRST=first, BLOCK=BWD_BLOCK),
                        dict(num_warps=BWD_WARPS)))
    return out
