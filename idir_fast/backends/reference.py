"""The paper's method, written plainly: Φ from the SIREN, J and H by nested autograd.

``J`` takes one ``autograd.grad`` per output component (3 passes) and ``H`` one per Jacobian entry (9 passes),
each with ``create_graph=True`` so the final ``loss.backward()`` can differentiate through them: 1, 4 or 13
backward passes per epoch for derivative order 0, 1 or 2 — the costs the paper reports.
"""
from __future__ import annotations

import torch

from ..objectives import full_hessian_to_pairs
from ..sampling import trilinear
from .base import Backend, Derivatives


def _grad(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∂(Σ y)/∂x kept differentiable; zeros where ``y`` does not depend on ``x`` (e.g. an affine field's J)."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


class ReferenceBackend(Backend):
    name = "reference"

    def derivatives(self, siren, x: torch.Tensor, order: int) -> Derivatives:
        x = x.detach().requires_grad_(True)
        u = siren.displacement(x)
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

    def sample(self, volume, index):
        return trilinear(volume, index)

    def backward_passes(self, order: int) -> int:
        return 1 + (3 if order >= 1 else 0) + (9 if order >= 2 else 0)
