"""Trilinear sampling of a volume at continuous voxel indices — the one definition of the interpolant.

Boundary semantics (the released IDIR code's, ``grid_sample(align_corners=True, padding_mode="border")``): each
index coordinate is clamped to ``[0, n − 1]``; outside the volume the value is the border's and the derivative
along a clamped axis is zero. Inside, the cell is ``floor(i)`` clamped to ``n − 2``, so a point exactly on an
interior voxel plane takes the derivative of the cell above it (and the last plane that of the cell below).

Volumes are ``(nz, ny, nx)`` tensors (NumPy order); points are ``(N, 3)`` indices in ``(i, j, k) = (x, y, z)``
order, matching :mod:`idir_fast.geometry`.
"""
from __future__ import annotations

from typing import Tuple

import torch


def _clamp_axis(i: torch.Tensor, hi: float) -> torch.Tensor:
    """``i`` clamped to ``[0, hi]`` by ``where`` (derivative 1 on the closed interval; ``torch.minimum`` would
    halve it at equality); NaN goes to 0 so it never reaches the integer cast (the callers add it back)."""
    return torch.where(i >= 0, torch.where(i > hi, torch.full_like(i, hi), i), torch.zeros_like(i))


def _corners(volume: torch.Tensor, index: torch.Tensor):
    # per-axis Python bounds: no tensor is built from host data, so sampling is capture-safe
    nz, ny, nx = volume.shape
    highs = (nx - 1, ny - 1, nz - 1)
    axes = index.unbind(-1)
    inside = torch.stack([(i >= 0) & (i <= hi) for i, hi in zip(axes, highs)], dim=-1)
    clamped = torch.stack([_clamp_axis(i, float(hi)) for i, hi in zip(axes, highs)], dim=-1)
    base = torch.stack([torch.clamp(torch.floor(c), max=float(hi - 1)) for c, hi in
                        zip(clamped.unbind(-1), highs)], dim=-1).long()
    t = clamped - base.to(index.dtype)
    i0, j0, k0 = base.unbind(-1)
    flat = volume.reshape(-1)
    stride_k, stride_j = ny * nx, nx
    o = k0 * stride_k + j0 * stride_j + i0
    c = [flat[o + dk * stride_k + dj * stride_j + di] for dk in (0, 1) for dj in (0, 1) for di in (0, 1)]
    return c, t, inside


def trilinear(volume: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of ``volume`` at ``index`` ``(N, 3)``; differentiable w.r.t. ``index`` by autograd.

    Returns:
        ``(N,)`` sampled values.
    """
    c, t, _ = _corners(volume, index)
    tx, ty, tz = t.unbind(-1)
    c000, c001, c010, c011, c100, c101, c110, c111 = c  # c{dk}{dj}{di}
    c00 = c000 + (c001 - c000) * tx
    c01 = c010 + (c011 - c010) * tx
    c10 = c100 + (c101 - c100) * tx
    c11 = c110 + (c111 - c110) * tx
    c0 = c00 + (c01 - c00) * ty
    c1 = c10 + (c11 - c10) * ty
    value = c0 + (c1 - c0) * tz
    return torch.where(torch.isnan(index).any(-1), index.sum(-1), value)  # a diverged Φ stays visible


def trilinear_with_gradient(volume: torch.Tensor, index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Value ``(N,)`` and index-frame gradient ``(N, 3)`` of the trilinear interpolant (no autograd graph).

    The gradient is the analytic derivative of :func:`trilinear` (zero along clamped axes), from the same 8 reads.
    """
    with torch.no_grad():
        c, t, inside = _corners(volume, index)
        tx, ty, tz = t.unbind(-1)
        c000, c001, c010, c011, c100, c101, c110, c111 = c
        ux, uy, uz = 1 - tx, 1 - ty, 1 - tz
        # values along x on the 4 edges, then their y/z blends
        c00 = c000 * ux + c001 * tx
        c01 = c010 * ux + c011 * tx
        c10 = c100 * ux + c101 * tx
        c11 = c110 * ux + c111 * tx
        c0 = c00 * uy + c01 * ty
        c1 = c10 * uy + c11 * ty
        value = c0 * uz + c1 * tz
        dz = c1 - c0
        dy = (c01 - c00) * uz + (c11 - c10) * tz
        dx = ((c001 - c000) * uy + (c011 - c010) * ty) * uz + ((c101 - c100) * uy + (c111 - c110) * ty) * tz
        grad = torch.stack([dx, dy, dz], dim=-1) * inside.to(volume.dtype)
        bad = torch.isnan(index).any(-1)
        value = torch.where(bad, index.sum(-1), value)
        grad = torch.where(bad[:, None], index.sum(-1, keepdim=True).expand_as(grad), grad)
    return value, grad
