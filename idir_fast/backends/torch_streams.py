"""Analytic derivative streams in plain PyTorch: Φ, ∂Φ and ∂²Φ of the SIREN in one forward pass.

Every point carries ``S`` streams through the network instead of one vector (see ``shared/notes/engine-math.md``):
the value ``h`` (S = 1), plus first derivatives ``h_i`` (S = 4), plus the 6 unique second derivatives ``h_ab``
(S = 10), held as one ``(S, N, width)`` tensor so each linear layer is one matrix product over all streams.

A linear map acts on every stream alike and the bias only on the value. A sine layer with
``s = sin(ωz)``, ``c = ω cos(ωz)``, ``q = −ω² sin(ωz)`` maps

    a = s,   a_i = c ⊙ z_i,   a_ab = c ⊙ z_ab + q ⊙ z_a ⊙ z_b.

The input streams are ``x``, the unit vectors and zeros, so the first layer's derivative streams are
per-point constants times ``W_0`` columns. Gradients w.r.t. the parameters come from autograd over this forward
(one backward pass), which measured faster on CPU than a hand-written adjoint in PyTorch (README, benchmarks).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..objectives import PAIRS
from ..sampling import trilinear_fast
from .base import Backend, Derivatives

NUM_STREAMS = (1, 4, 10)


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


def derivatives_from_streams(x: torch.Tensor, u: torch.Tensor, order: int) -> Derivatives:
    """Assemble Φ, J, H6 from output streams ``u`` ``(S, N, 3)``."""
    phi = x + u[0]
    J = H6 = None
    if order >= 1:
        J = u[1:4].permute(1, 2, 0) + torch.eye(3, dtype=u.dtype, device=u.device)  # J[n, c, i]
    if order >= 2:
        H6 = u[4:10].permute(1, 2, 0)  # (N, c, pair)
    return Derivatives(phi, J, H6)


class TorchBackend(Backend):
    name = "torch"

    def derivatives(self, siren, x: torch.Tensor, order: int) -> Derivatives:
        u = siren_streams(siren.parameter_list(), siren.omega, x, order)
        return derivatives_from_streams(x, u, order)

    def sample(self, volume, index):
        return trilinear_fast(volume, index)

    def similarity(self, volume, index, fixed_values, compat=None):
        """The compiled fused sampling + NCC op when built (``csrc/``), else the PyTorch path (same definition)."""
        from .. import fused_ncc

        if fused_ncc.available(index.device):
            return fused_ncc.fused_ncc(volume, index, fixed_values, compat)
        return super().similarity(volume, index, fixed_values, compat)

    def backward_passes(self, order: int) -> int:
        return 1


# ------------------------------------------------------------------------------------------------------------
# Hand-written backward (the adjoints of shared/notes/engine-math.md). The same algebra is what the Triton
# kernels implement; kept here as their blueprint and measured against autograd over the forward (README).
def _sine_adjoint(ga: torch.Tensor, z0: torch.Tensor, zi, zab, omega: float, order: int) -> torch.Tensor:
    """Pre-activation adjoints ``z̄`` ``(S, N, H)`` of a sine layer from its output adjoints ``ā``.

    ``zi``/``zab`` are the pre-activation derivative streams (``None`` for ``zab`` in the first layer, where
    they vanish; ``zi`` are then ``(H,)`` weight columns).
    """
    s = torch.sin(omega * z0)
    c = omega * torch.cos(omega * z0)
    ga = ga.unbind(0)
    g0 = c * ga[0]
    if order == 0:
        return g0.unsqueeze(0)
    q = (-omega * omega) * s
    gi = [c * ga[1 + i] for i in range(3)]
    acc0 = zi[0] * ga[1] + zi[1] * ga[2] + zi[2] * ga[3]
    gab = []
    if order >= 2:
        w2c = (omega * omega) * c
        for p, (a, b) in enumerate(PAIRS):
            gp = ga[4 + p]
            gab.append(c * gp)
            if a == b:
                gi[a] = gi[a] + q * (2.0 * zi[a]) * gp
            else:
                gi[a] = gi[a] + q * zi[b] * gp
                gi[b] = gi[b] + q * zi[a] * gp
            zz = zi[a] * zi[b]
            g0 = g0 + (-w2c * zz) * gp if zab is None else g0 + (q * zab[p] - w2c * zz) * gp
    g0 = g0 + q * acc0
    return torch.stack([g0] + gi + gab)


class _SirenStreamsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, omega, order, *params):
        n_layers = len(params) // 2
        hs, zs = [], []
        with torch.no_grad():
            w0, b0 = params[0], params[1]
            z0 = torch.addmm(b0, x, w0.T)
            zs.append(z0)
            h = _sine_streams(z0, torch.zeros_like(b0), omega, order, first_layer_w=w0)
            for layer in range(1, n_layers):
                w, b = params[2 * layer], params[2 * layer + 1]
                S, N, width = h.shape
                hs.append(h)
                z = (h.reshape(S * N, width) @ w.T).reshape(S, N, -1)
                z[0].add_(b)
                if layer == n_layers - 1:
                    out = z
                    break
                zs.append(z)
                h = _sine_streams(z, torch.zeros_like(b), omega, order)
        ctx.omega, ctx.order, ctx.n_layers = omega, order, n_layers
        ctx.save_for_backward(x, *params, *hs, *zs)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        omega, order, L = ctx.omega, ctx.order, ctx.n_layers
        saved = ctx.saved_tensors
        x, params = saved[0], saved[1:1 + 2 * L]
        hs, zs = saved[1 + 2 * L:1 + 3 * L - 1], saved[1 + 3 * L - 1:]
        grads = [None] * (2 * L)
        g = grad_out.contiguous()
        for layer in range(L - 1, 0, -1):
            w = params[2 * layer]
            h = hs[layer - 1]
            S, N, width = h.shape
            g2 = g.reshape(S * N, -1)
            grads[2 * layer] = g2.T @ h.reshape(S * N, width)
            grads[2 * layer + 1] = g[0].sum(0)
            gh = (g2 @ w).reshape(S, N, width)
            z = zs[layer - 1]
            if layer - 1 == 0:
                w0 = params[0]
                g = _sine_adjoint(gh, z, w0.unbind(1), None, omega, order)
            else:
                zu = z.unbind(0)
                g = _sine_adjoint(gh, zu[0], zu[1:4], zu[4:], omega, order)
        # first layer: z = W0 x + b0, z_i = W0[:, i]
        gw0 = g[0].T @ x
        if order >= 1:
            gw0 = gw0 + torch.stack([g[1 + i].sum(0) for i in range(3)], dim=1)
        grads[0], grads[1] = gw0, g[0].sum(0)
        return (None, None, None, *grads)


def siren_streams_manual(params: Sequence[torch.Tensor], omega: float, x: torch.Tensor, order: int) -> torch.Tensor:
    """:func:`siren_streams` with the hand-written backward (gradients w.r.t. the parameters only)."""
    return _SirenStreamsFn.apply(x, float(omega), int(order), *params)
