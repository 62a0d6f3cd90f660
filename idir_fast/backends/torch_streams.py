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


def _sine_streams(z: torch.Tensor, omega: float, order: int, first_layer_w=None) -> torch.Tensor:
    """Apply the sine to pre-activation streams.

    Args:
        z: ``(S, N, H)`` pre-activation streams, or ``(N, H)`` values only when ``first_layer_w`` is given.
        first_layer_w: ``(H, 3)`` first-layer weights; then ``z_i = W[:, i]`` and ``z_ab = 0``.
    """
    z0 = z if first_layer_w is not None else z[0]
    s = torch.sin(omega * z0)
    out = [s]
    if order >= 1:
        c = omega * torch.cos(omega * z0)
        if first_layer_w is not None:
            zi = [first_layer_w[:, i] for i in range(3)]
        else:
            zi = [z[1 + i] for i in range(3)]
        out += [c * zi[i] for i in range(3)]
        if order >= 2:
            q = (-omega * omega) * s
            for p, (a, b) in enumerate(PAIRS):
                term = q * (zi[a] * zi[b])
                out.append(term if first_layer_w is not None else c * z[4 + p] + term)
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
    h = _sine_streams(torch.addmm(b0, x, w0.T), omega, order, first_layer_w=w0)
    for layer in range(1, len(params) // 2):
        w, b = params[2 * layer], params[2 * layer + 1]
        S, N, width = h.shape
        z = (h.reshape(S * N, width) @ w.T).reshape(S, N, -1)
        z[0].add_(b)  # the bias acts on the value stream only; mm's backward does not need its output
        if layer == len(params) // 2 - 1:
            return z  # the linear output layer
        h = _sine_streams(z, omega, order)
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

    def backward_passes(self, order: int) -> int:
        return 1
