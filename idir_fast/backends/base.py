"""What a backend provides: Φ, J and H of the SIREN at points, and image sampling."""
from __future__ import annotations

from typing import NamedTuple, Optional

import abc

import torch


class Derivatives(NamedTuple):
    """Network outputs at ``N`` points (normalised frame).

    Attributes:
        phi: ``(N, 3)`` Φ(x) = x + u(x).
        J: ``(N, 3, 3)`` with ``J[n, c, i] = ∂Φ_c/∂x_i``, or ``None`` when order < 1.
        H6: ``(N, 3, 6)`` second derivatives in :data:`idir_fast.objectives.PAIRS` order, or ``None`` when order < 2.
    """

    phi: torch.Tensor
    J: Optional[torch.Tensor]
    H6: Optional[torch.Tensor]


class Backend(abc.ABC):
    """Interface of a compute backend. Subclasses override :meth:`derivatives` (and may override
    :meth:`sample`); the objective terms themselves live in :mod:`idir_fast.objectives`."""

    name = "base"

    @abc.abstractmethod
    def derivatives(self, siren, x: torch.Tensor, order: int) -> Derivatives:
        """Φ (and J, H6 up to ``order``) of ``siren`` at normalised points ``x`` ``(N, 3)``, differentiable
        w.r.t. the SIREN's parameters."""

    @abc.abstractmethod
    def sample(self, volume: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Trilinear sample of ``volume`` ``(nz, ny, nx)`` at index points ``(N, 3)``, differentiable w.r.t. index."""

    def similarity(self, volume: torch.Tensor, index: torch.Tensor, fixed_values: torch.Tensor,
                   compat=None) -> torch.Tensor:
        """NCC of ``fixed_values`` and ``volume`` sampled at ``index``; differentiable w.r.t. ``index``."""
        from ..objectives import ncc

        return ncc(fixed_values, self.sample(volume, index), compat)

    def backward_passes(self, order: int) -> int:
        """Backward passes over the network per optimisation step."""
        return 1

    def supports(self, device: torch.device) -> bool:
        return True

    def __repr__(self):
        return f"<idir_fast backend {self.name!r}>"
