"""The local NCC of a step's points: each point's 3×3×3 neighbourhood in the fixed image against its image under
Φ in the moving image.

A point ``x`` of the fixed mask (a voxel centre) has neighbours ``x + δ_k`` at the offsets of
:func:`~idir_fast.core.objectives.stencil_offsets` (fixed voxels). The fixed neighbourhood is read from the
fixed volume; the moving one is sampled at ``Φ(x) + J(x) δ_k``, the first-order expansion of ``Φ(x + δ_k)`` —
exact for an affine Φ and, for the smooth maps a regulariser allows, within ``½ |H| δ²`` of it — so the network
is evaluated once per point (the Jacobian comes with the step's derivatives) instead of 27 times. Everything is
built once per pair and stage; a call issues only device ops (capture-safe).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..core.derivatives import Derivatives
from ..core.objectives import local_ncc, local_ncc_from_moments, stencil_offsets
from ..ops.local_ncc import MomentsWorkspace
from .prepare import PreparedPair


class LocalNCC:
    """``LNCC(x, Φ)`` of one pair: :func:`~idir_fast.core.objectives.local_ncc` over the points' neighbourhoods.

    Args:
        pair: the prepared pair (its ``fixed`` and ``moving`` volumes: a smoothed stage passes its own pair).
        spacing: voxels between a neighbourhood's samples.
        sample: ``(volume, index (M, 3)) → (M,)`` trilinear sampling differentiable w.r.t. ``index`` (the
            backend's).
        moments: the backend's fused moving neighbourhoods (:func:`idir_fast.ops.local_ncc.local_moments`), or
            ``None``: then the neighbourhoods are sampled with ``sample`` and scored by
            :func:`~idir_fast.core.objectives.local_ncc` (the reference).
    """

    def __init__(self, pair: PreparedPair, spacing: float, sample: Callable[..., torch.Tensor],
                 moments: Optional[Callable[..., tuple]] = None):
        if pair.fixed is None:
            raise ValueError("LocalNCC needs the pair's fixed volume (PreparedPair.fixed)")
        dev, dt = pair.points.device, pair.points.dtype
        self.fixed, self.moving, self.sample, self.moments = pair.fixed, pair.moving, sample, moments
        n2fi = torch.as_tensor(pair.normalised_to_fixed_index(), dtype=dt, device=dev)
        self.fixed_lin, self.fixed_off = n2fi[:3, :3].T.contiguous(), n2fi[:3, 3].contiguous()
        offsets = stencil_offsets(spacing, dtype=dt, device=dev)  # (K, 3) fixed voxels
        self.offsets = offsets
        # The points are voxel centres, so with a whole-voxel spacing every fixed sample is a voxel (clamped to the
        # grid as trilinear sampling clamps it): read it directly — one load instead of eight, and no weights —
        # from the volume padded by the stencil's reach with its edge values, which is that clamping done once:
        # a neighbour is then the centre's flat index plus a constant, (N, K) indices and one gather per step.
        self.voxel_offsets = offsets.round().long() if float(spacing).is_integer() else None
        if self.voxel_offsets is not None:
            r = int(self.voxel_offsets.abs().max())
            nz, ny, nx = self.fixed.shape
            padded = torch.nn.functional.pad(self.fixed[None, None], (r,) * 6, mode="replicate")[0, 0]
            self.fixed_padded = padded.reshape(-1).contiguous()
            strides = torch.tensor([1, nx + 2 * r, (nx + 2 * r) * (ny + 2 * r)], dtype=torch.long, device=dev)
            self.padded_strides = strides
            self.padded_offsets = (self.voxel_offsets * strides).sum(-1) + r * int(strides.sum())  # (K,)
            self.fixed_upper = torch.tensor([nx - 1, ny - 1, nz - 1], dtype=torch.long, device=dev)
        # the same offsets in the network's frame: δ_n = (index → normalised) · δ_voxel
        index_to_n = torch.linalg.inv(n2fi)[:3, :3]
        self.offsets_normalised = (offsets @ index_to_n.T).contiguous()
        self.moving_lin, self.moving_off = pair.moving_index_affine()
        # the fused op's samples and image gradients (kept for its backward) in buffers reused by every step
        self.workspace = MomentsWorkspace() if moments is not None else None

    def fixed_neighbourhoods(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` fixed samples of the neighbourhoods of points ``x`` ``(N, 3)`` (constant)."""
        n, k = x.shape[0], self.offsets.shape[0]
        centre = x @ self.fixed_lin + self.fixed_off
        if self.voxel_offsets is not None:  # centres on the grid (the points are in it): clamped, then offset
            voxel = torch.minimum(centre.round().long().clamp_(min=0), self.fixed_upper)
            flat = (voxel * self.padded_strides).sum(-1, keepdim=True) + self.padded_offsets  # (N, K)
            return self.fixed_padded[flat]
        return self.sample(self.fixed, (centre.unsqueeze(1) + self.offsets).reshape(-1, 3)).reshape(n, k).detach()

    def neighbourhoods(self, d: Derivatives, x: torch.Tensor):
        """``(fixed (N, K), moving (N, K))`` samples of the points' neighbourhoods; ``moving`` differentiable
        w.r.t. Φ and J."""
        n, k = x.shape[0], self.offsets.shape[0]
        fixed = self.fixed_neighbourhoods(x)
        spread = torch.einsum("nci,ki->nkc", d.J, self.offsets_normalised)  # J δ, (N, K, 3)
        mapped = (d.phi.unsqueeze(1) + spread).reshape(-1, 3) @ self.moving_lin + self.moving_off
        moving = self.sample(self.moving, mapped).reshape(n, k)
        return fixed.detach(), moving

    def __call__(self, d: Derivatives, x: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The mean local NCC at points ``x`` ``(N, 3)`` (normalised) with Φ's derivatives ``d``; ``weights``
        ``(N,)`` restricts it to points mapped into a moving mask."""
        if self.moments is None:
            fixed, moving = self.neighbourhoods(d, x)
            return local_ncc(fixed, moving, weights)
        fixed = self.fixed_neighbourhoods(x)
        centred = fixed - fixed.mean(dim=1, keepdim=True)
        cov, var_m = self.moments(self.moving, d.phi, d.J, centred, self.offsets_normalised, self.moving_lin,
                                  self.moving_off, self.workspace)
        return local_ncc_from_moments(cov, (centred * centred).mean(dim=1), var_m, weights)


__all__ = ["LocalNCC"]
