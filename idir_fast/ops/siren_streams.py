"""Analytic derivative streams in plain PyTorch: Φ, ∂Φ and ∂²Φ of the SIREN in one forward pass.

Every point carries ``S`` streams through the network instead of one vector (see ``shared/notes/engine-math.md``):
the value ``h`` (S = 1), plus first derivatives ``h_i`` (S = 4), plus the 6 unique second derivatives ``h_ab``
(S = 10), held as one ``(S, N, width)`` tensor so each linear layer is one matrix product over all streams.

A linear map acts on every stream alike and the bias only on the value. A sine layer with
``s = sin(ωz)``, ``c = ω cos(ωz)``, ``q = −ω² sin(ωz)`` maps

    a = s,   a_i = c ⊙ z_i,   a_ab = c ⊙ z_ab + q ⊙ z_a ⊙ z_b.

The input streams are ``x``, the unit vectors and zeros, so the first layer's derivative streams are
per-point constants times ``W_0`` columns. Gradients w.r.t. the parameters come from autograd over this forward
(one backward pass), which measured faster on CPU than a hand-written adjoint in PyTorch
(``benchmarks/backward_choice.py``, README).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from ..core.derivatives import PAIRS


def _sine_streams(z: torch.Tensor, bias: torch.Tensor, omega: float, order: int, first_layer_w=None) -> torch.Tensor:
    """Add the bias to the value stream and apply the sine to pre-activation streams.

    Args:
        z: ``(S, N, H)`` pre-activation streams without bias, or ``(N, H)`` values only when ``first_layer_w``
            is given.
        first_layer_w: ``(H, 3)`` first-layer weights; then ``z_i = W[:, i]`` and ``z_ab = 0``.
    """
    if first_layer_w is not None:
        z0, zi, zab = z + bias, first_layer_w.unbind(1), None
    else:
        # unbind (not indexing): its backward stacks the stream gradients in one pass instead of
        # scattering each into a zero-filled copy of the whole tensor
        streams = z.unbind(0)
        z0, zi, zab = streams[0] + bias, streams[1:4], streams[4:]
    s = torch.sin(omega * z0)
    if order == 0:
        return s.unsqueeze(0)
    c = omega * torch.cos(omega * z0)
    out = [s] + [c * zi[i] for i in range(3)]
    if order >= 2:
        q = (-omega * omega) * s
        for p, (a, b) in enumerate(PAIRS):
            term = q * (zi[a] * zi[b])
            out.append(term if zab is None else c * zab[p] + term)
    return torch.stack(out)


def siren_streams(params: Sequence[torch.Tensor], omega: float, x: torch.Tensor, order: int) -> torch.Tensor:
    """Output streams of the SIREN displacement ``u``.

    Args:
        params: ``[W_0, b_0, …, W_out, b_out]`` with ``W_l`` of shape ``(out, in)``.
        omega: ω of every sine layer.
        x: ``(N, 3)`` normalised points.
        order: 0, 1 or 2.

    Returns:
        ``(S, N, 3)`` with S = 1, 4, 10: ``u``, ``∂u/∂x_i`` (i = 0..2), ``∂²u/∂x_a∂x_b`` (:data:`PAIRS` order).
    """
    w0, b0 = params[0], params[1]
    h = _sine_streams(x @ w0.T, b0, omega, order, first_layer_w=w0)
    for layer in range(1, len(params) // 2):
        w, b = params[2 * layer], params[2 * layer + 1]
        S, N, width = h.shape
        z = (h.reshape(S * N, width) @ w.T).reshape(S, N, -1)
        if layer == len(params) // 2 - 1:  # the linear output layer: 3 columns, cheap to rebuild
            return torch.cat([(z[0] + b).unsqueeze(0), z[1:]]) if S > 1 else z + b
        h = _sine_streams(z, b, omega, order)
    raise ValueError("params must hold at least one sine layer and the output layer")


# ------------------------------------------------------------------------------------------------------------
# The fused path: matrix products by torch, the element-wise stream algebra of each layer in one pass of a
# compiled kernel (``csrc/sine_streams_cpu.cpp`` on the CPU, the Triton kernels on a GPU), and the exact adjoint
# as the backward. The layout of a layer's saved tensors: ``inputs[l]`` the streams entering hidden layer ``l+1``
# (and the output layer), ``zs[l]`` the pre-activations of sine layer ``l`` (the first one holds values only).
def streams_backward(grad_u, x, params, inputs, zs, omega: float, order: int, sine_backward, matmul):
    """Parameter gradients of the stream forward, given ``∂L/∂u`` ``(S, N, 3)``.

    Args:
        sine_backward: ``(ā (S, N, M), z, first: bool) → z̄`` — the layer adjoint (engine-math note).
        matmul: ``(a, b) → a @ b`` in the caller's precision.

    Returns:
        the gradients of ``params`` in their order.
    """
    P = len(params)
    L = P // 2 - 1  # sine layers
    grads = [None] * P
    g = grad_u.contiguous()
    S, n = g.shape[0], g.shape[1]
    h = inputs[-1]
    g2 = g.reshape(S * n, -1)
    grads[-2] = matmul(g2.T, h.reshape(S * n, -1))
    grads[-1] = g[0].sum(0)
    ga = matmul(g2, params[-2]).reshape(S, n, -1)
    for layer in range(L - 1, 0, -1):
        gz = sine_backward(ga, zs[layer], False)
        w, h = params[2 * layer], inputs[layer - 1]
        gz2 = gz.reshape(S * n, -1)
        grads[2 * layer] = matmul(gz2.T, h.reshape(S * n, -1))
        grads[2 * layer + 1] = gz[0].sum(0)
        ga = matmul(gz2, w).reshape(S, n, -1)
    gz = sine_backward(ga, zs[0], True)
    gw0 = gz[0].T @ x  # a rank-3 input: tiny, exact
    if order >= 1:
        gw0 = gw0 + torch.stack([gz[1 + i].sum(0) for i in range(3)], dim=1)
    grads[0], grads[1] = gw0, gz[0].sum(0)
    return grads


class _CpuStreamsFunction(torch.autograd.Function):
    """Forward and exact backward of the streams with the compiled CPU kernels for the element-wise part: the bias
    added and ``sin``/``ω cos`` taken by ATen's vectorised ops (kept for the backward), the rest of each layer's
    stream algebra and its adjoint in one pass of ``idir_fast._C``."""

    @staticmethod
    def forward(ctx, x, omega, order, *params):
        from .sample_ncc import extension

        ext = extension()
        S = (1, 4, 10)[order]
        n = x.shape[0]
        empty = params[0].new_empty(0)
        inputs, zs, trig, a = [], [], [], None
        z = torch.addmm(params[1], x, params[0].T).unsqueeze(0)  # the first layer: values only
        for layer in range(len(params) // 2 - 1):
            if layer:
                w, b = params[2 * layer], params[2 * layer + 1]
                inputs.append(a)
                z = (a.reshape(S * n, -1) @ w.T).reshape(S, n, -1)
                z[0] += b
            wz = omega * z[0]
            s, c = torch.sin(wz), omega * torch.cos(wz)
            a = ext.sine_streams_forward(z, params[0] if layer == 0 else empty, s, c, omega, order)
            zs.append(z)
            trig += [s, c]
        inputs.append(a)
        u = (a.reshape(S * n, -1) @ params[-2].T).reshape(S, n, -1)
        u[0] += params[-1]
        ctx.omega, ctx.order, ctx.n_params, ctx.n_layers = omega, order, len(params), len(zs)
        ctx.save_for_backward(x, *params, *inputs, *zs, *trig)
        return u

    @staticmethod
    def backward(ctx, grad_u):
        from .sample_ncc import extension

        ext = extension()
        saved, P, L = ctx.saved_tensors, ctx.n_params, ctx.n_layers
        x, params = saved[0], saved[1:1 + P]
        inputs, zs, trig = saved[1 + P:1 + P + L], saved[1 + P + L:1 + P + 2 * L], saved[1 + P + 2 * L:]
        empty = params[0].new_empty(0)
        layer_of = {id(z): k for k, z in enumerate(zs)}

        def sine_backward(ga, z, first):
            k = layer_of[id(z)]
            return ext.sine_streams_backward(ga.contiguous(), z, params[0] if first else empty, trig[2 * k],
                                             trig[2 * k + 1], ctx.omega, ctx.order)

        grads = streams_backward(grad_u, x, params, inputs, zs, ctx.omega, ctx.order, sine_backward,
                                 lambda p, q: p @ q)
        return (None, None, None, *grads)


FUSED_MAX_ELEMENTS = 100_000
"""Points × widest layer up to which the ``torch`` backend uses the fused CPU kernels. In whole registrations at the
CPU default's sizes (750 and 1,500 points × 3×48 = 72,000) they make the run 1.28× faster
(``benchmarks/fused_in_step.py --registration``, record ``fused_in_step_20261126T014606Z.json``). Beyond, with
glibc's malloc as it comes, the fused step was slower (a page-fault effect: its saved stream tensors are fewer
but larger and are mapped afresh every step; ``benchmarks/malloc_policy.py``, record
``malloc_policy_20261126T040523Z.json``: 2.32 vs 1.72 s at 10,000 × 3×256). With freed memory kept
(:func:`idir_fast.environment.keep_freed_memory`, which ``register()`` applies on a CPU) the fused step is faster
at every size measured (1.11 vs 1.27 s there) — but it changes the float32 rounding order and so the trajectory,
and no full-length ``schedule="paper"`` accuracy record exists with it yet, so the rule stays until one does.
``IDIR_FAST_CPU_FUSED=1`` uses the kernels at every size, ``=0`` never."""

ENV_CPU_FUSED = "IDIR_FAST_CPU_FUSED"


def fused_available(x: torch.Tensor, params: Sequence[torch.Tensor] = ()) -> bool:
    """Whether :func:`siren_streams_fused` can run for points ``x``: CPU tensors of float32/float64 and the
    compiled op built with its stream kernels."""
    from .sample_ncc import extension

    ext = extension()
    return (x.device.type == "cpu" and ext is not None and hasattr(ext, "sine_streams_forward")
            and x.dtype in (torch.float32, torch.float64))


def fused_pays(x: torch.Tensor, params: Sequence[torch.Tensor] = ()) -> bool:
    """Whether the ``torch`` backend should use :func:`siren_streams_fused` here: it can run, and the problem is
    within :data:`FUSED_MAX_ELEMENTS` (``IDIR_FAST_CPU_FUSED=1``/``0`` overrides the size rule)."""
    if not fused_available(x, params):
        return False
    forced = os.environ.get(ENV_CPU_FUSED)
    if forced in ("0", "1"):
        return forced == "1"
    widest = max((int(w.shape[0]) for w in params[0:-2:2]), default=0)
    return 0 < x.shape[0] * widest <= FUSED_MAX_ELEMENTS


def siren_streams_fused(params: Sequence[torch.Tensor], omega: float, x: torch.Tensor, order: int) -> torch.Tensor:
    """:func:`siren_streams` through the compiled CPU kernels (same contract, differentiable w.r.t. ``params``).

    Not usable under ``torch.func.vmap`` (the batched-pairs step uses :func:`siren_streams`)."""
    return _CpuStreamsFunction.apply(x.contiguous(), float(omega), int(order), *[p.contiguous() for p in params])
