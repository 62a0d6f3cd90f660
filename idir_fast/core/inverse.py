"""Inverting a smooth map by Newton's method, vectorised over points.

Given ``F(x) = x + u(x)`` with Jacobian ``J(x) = I + ∇u(x)`` and targets ``t``, solve ``F(x) = t`` for every point
at once: ``x ← x − λ J(x)⁻¹ (F(x) − t)``, with a step ``λ`` halved per point while it does not reduce the
residual (a damped Newton method; from ``x = t`` it converges in a handful of iterations where F is invertible).
Points where it stops without reaching the tolerance, or lands where ``det J ≤ 0``, are reported as not
converged: F is folded or not invertible there.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Tuple

import torch

from .objectives import determinant


class Inverse(NamedTuple):
    """Result of :func:`newton_inverse`: ``x`` ``(N, 3)``, ``residual`` ``(N,)`` = ``‖F(x) − t‖`` (in the
    units of ``scale``), ``converged`` ``(N,)`` bool."""

    x: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor


def newton_inverse(map_and_jacobian: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]],
                   targets: torch.Tensor, *, tolerance: float = 1e-6, max_iterations: int = 30,
                   scale: float = 1.0) -> Inverse:
    """Solve ``F(x) = targets`` for ``(N, 3)`` targets.

    Args:
        map_and_jacobian: ``x (N, 3) → (F(x) (N, 3), J(x) (N, 3, 3))`` with ``J[n, c, i] = ∂F_c/∂x_i``.
        tolerance: stop where ``scale · ‖F(x) − t‖ ≤ tolerance``.
        scale: converts residuals to the caller's units (e.g. mm per normalised unit).
    """
    x = targets.clone()
    f, J = map_and_jacobian(x)
    r = f - targets
    norm = scale * r.norm(dim=-1)
    for _ in range(max_iterations):
        active = norm > tolerance
        if not bool(active.any()):
            break
        step = torch.linalg.solve(J, r.unsqueeze(-1)).squeeze(-1) if J.dtype == torch.float64 else \
            torch.linalg.solve(J.double(), r.double().unsqueeze(-1)).squeeze(-1).to(r.dtype)
        lam = torch.ones_like(norm)
        for _ in range(6):  # per-point backtracking: keep the largest λ that reduces the residual
            trial = x - (lam * active).unsqueeze(-1) * step
            f_t, J_t = map_and_jacobian(trial)
            r_t = f_t - targets
            n_t = scale * r_t.norm(dim=-1)
            better = (n_t < norm) | ~active
            if bool(better.all()):
                break
            lam = torch.where(better, lam, 0.5 * lam)
        accept = (n_t < norm) & active
        x = torch.where(accept.unsqueeze(-1), trial, x)
        r = torch.where(accept.unsqueeze(-1), r_t, r)
        J = torch.where(accept[:, None, None], J_t, J)
        norm = torch.where(accept, n_t, norm)
        if not bool(accept.any()):
            break
    converged = (norm <= tolerance) & (determinant(J) > 0)
    return Inverse(x, norm, converged)
