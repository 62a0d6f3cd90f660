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
