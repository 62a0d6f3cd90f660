"""Φ and its spatial derivatives: the one definition of their layout.

Derivatives are taken w.r.t. the network's normalised coordinates and carried as *streams* (see
``shared/notes/engine-math.md``): the value (1 stream), the three first derivatives (order 1: 4 streams) and the
six unique second derivatives in :data:`PAIRS` order (order 2: 10 streams).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
"""Order of the 6 unique second-derivative pairs ``(a, b)`` in ``H6`` and in the derivative streams."""

NUM_STREAMS = (1, 4, 10)
"""Streams per derivative order 0, 1, 2: value; + ∂/∂x_i; + ∂²/∂x_a∂x_b."""


def num_streams(order: int) -> int:
    """1, 4 or 10 streams for derivative order 0, 1 or 2."""
    if order not in (0, 1, 2):
        raise ValueError(f"'order' must be 0, 1 or 2, got {order!r}")
    return NUM_STREAMS[order]


class Derivatives(NamedTuple):
    """Network outputs at ``N`` points (normalised frame).

    Attributes:
        phi: ``(N, 3)`` Φ(x) = x + u(x).
        J: ``(N, 3, 3)`` with ``J[n, c, i] = ∂Φ_c/∂x_i``, or ``None`` when order < 1.
        H6: ``(N, 3, 6)`` second derivatives ``∂²Φ_c/∂x_a∂x_b`` in :data:`PAIRS` order, or ``None`` when order < 2.
    """

    phi: torch.Tensor
    J: Optional[torch.Tensor]
    H6: Optional[torch.Tensor]


def derivatives_from_streams(x: torch.Tensor, u: torch.Tensor, order: int) -> Derivatives:
    """Assemble Φ, J, H6 from the output streams of ``u``, ``(S, N, 3)``, at points ``x`` ``(N, 3)``."""
    phi = x + u[0]
    J = H6 = None
    if order >= 1:
        J = u[1:4].permute(1, 2, 0) + torch.eye(3, dtype=u.dtype, device=u.device)  # J[n, c, i]
    if order >= 2:
        H6 = u[4:10].permute(1, 2, 0)  # (N, c, pair)
    return Derivatives(phi, J, H6)


def full_hessian_to_pairs(H: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3, 3)`` Hessian ``H[n, c, i, j]`` → pair form ``(N, 3, 6)`` (upper triangle, :data:`PAIRS` order)."""
    return torch.stack([H[:, :, a, b] for a, b in PAIRS], dim=-1)
