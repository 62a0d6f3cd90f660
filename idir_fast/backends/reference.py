"""The paper's method, written plainly: Φ from the SIREN, J and H by nested autograd.

``J`` takes one ``autograd.grad`` per output component (3 passes) and ``H`` one per Jacobian entry (9 passes),
each with ``create_graph=True`` so the final ``loss.backward()`` can differentiate through them: 1, 4 or 13
backward passes per epoch for derivative order 0, 1 or 2 — the costs the paper reports. Sampling and NCC are the
plain definitions of :mod:`idir_fast.core` (autograd through the interpolant).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..core.derivatives import Derivatives, full_hessian_to_pairs
from ..core.objectives import ncc
from ..core.sampling import trilinear
from ..core.siren import siren_displacement


def _grad(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∂(Σ y)/∂x kept differentiable; zeros where ``y`` does not depend on ``x`` (e.g. an affine field's J)."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def derivatives(params: Sequence[torch.Tensor], omega: float, x: torch.Tensor, order: int,
                precision: Optional[str] = None, workspace=None) -> Derivatives:
    """Φ (and J, H6 up to ``order``) of the SIREN at normalised points ``x`` ``(N, 3)`` by nested autograd
    (``precision`` and ``workspace`` do not apply)."""
    return field_derivatives(lambda p: siren_displacement(params, omega, p), x, order)


def field_derivatives(displacement: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      order: int) -> Derivatives:
    """Φ = x + u(x) and its derivatives up to ``order`` by nested autograd, for any differentiable ``u``
    (``(N, 3) → (N, 3)``): the SIREN, or an analytic field in the tests."""
    x = x.detach().requires_grad_(True)
    u = displacement(x)
    phi = x + u
    J = H6 = None
    if order >= 1:
        du = torch.stack([_grad(u[:, c], x) for c in range(3)], dim=1)  # du[n, c, i] = ∂u_c/∂x_i
        J = du + torch.eye(3, dtype=x.dtype, device=x.device)
        if order >= 2:
            H = torch.stack([torch.stack([_grad(du[:, c, i], x) for i in range(3)], dim=1)
                             for c in range(3)], dim=1)  # H[n, c, i, j]
            H6 = full_hessian_to_pairs(H)
    return Derivatives(phi, J, H6)


def similarity(moving: torch.Tensor, index: torch.Tensor, fixed_values: torch.Tensor,
               compat: Optional[str] = None, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NCC of ``fixed_values`` and ``moving`` sampled at ``index``, autograd through the plain interpolant;
    ``weights`` ``(N,)`` restricts it to points inside a moving mask."""
    return ncc(fixed_values, trilinear(moving, index), compat, weights)


def backward_passes(order: int) -> int:
    return 1 + (3 if order >= 1 else 0) + (9 if order >= 2 else 0)
