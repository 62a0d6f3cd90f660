"""The inverse of a :class:`~idir_fast.transform.Transform` and how well it inverts.

Φ⁻¹ maps moving world points back to fixed ones: by the backward network Ψ of a symmetric registration, else by
Newton's method on the forward network (:func:`idir_fast.core.inverse.newton_inverse`). The checks a run reports:
the inverse consistency ``‖Φ(Φ⁻¹(y)) − y‖`` and, with Ψ, the cycle error ``‖Ψ(Φ(x)) − x‖`` on the fixed grid — a
per-voxel uncertainty map, high where the two directions disagree.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .core.geometry import ImageGeometry, apply_affine
from .core.inverse import newton_inverse
from .errors import InputError
from .transform import Transform, check_points

UNCONVERGED_MM = 0.5
"""With a backward network, a point whose cycle error exceeds this counts as not inverted."""


def grid_world_blocks(g: ImageGeometry, block: int = 1 << 20) -> Iterator[Tuple[int, np.ndarray]]:
    """``(start, world points (n, 3))`` over a grid in array order, a block at a time (host memory bounded)."""
    total = int(np.prod(g.size))
    for start in range(0, total, block):
        kk, jj, ii = np.unravel_index(np.arange(start, min(start + block, total)), g.shape_zyx)
        yield start, apply_affine(g.index_to_world(), np.stack([ii, jj, kk], axis=1).astype(np.float64))


def backward_points(t: Transform, points_world: np.ndarray) -> np.ndarray:
    """Ψ(y) for moving world points: the backward network in the moving frame, then the affine part undone."""
    return apply_affine(np.linalg.inv(t.world_affine), t.map_normalised(t.backward, points_world))


def newton_points(t: Transform, points_world: np.ndarray, tolerance_mm: float = 1e-3):
    """Φ⁻¹ of moving world points by Newton's method on the network, chunked on the device.

    Returns:
        ``(fixed world points, residual mm, converged)``.
    """
    w2n = t.forward.world_to_normalised
    n2w = np.linalg.inv(w2n)
    mm_per_unit = float(np.abs(np.linalg.det(n2w[:3, :3])) ** (1.0 / 3.0))
    target = torch.from_numpy(apply_affine(w2n @ np.linalg.inv(t.world_affine), points_world)).to(t.device)
    eye = torch.eye(3, dtype=torch.float64, device=t.device)

    def phi_and_jacobian(x):
        u = t.streams(x, 1)
        return x + u[0], u[1:4].permute(1, 2, 0) + eye

    xs, res, conv = [], [], []
    for tc in target.split(t.chunk):
        r = newton_inverse(phi_and_jacobian, tc, tolerance=tolerance_mm, scale=mm_per_unit)
        xs.append(r.x.cpu().numpy())
        res.append(r.residual.cpu().numpy())
        conv.append(r.converged.cpu().numpy())
    cat = (lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape))
    return apply_affine(n2w, cat(xs, (0, 3))), cat(res, (0,)), cat(conv, (0,)).astype(bool)


def inverse_points(t: Transform, points) -> np.ndarray:
    """Moving world points ``(N, 3)`` → fixed world points: Ψ when the transform has it, else Newton."""
    pts = check_points(points)
    return backward_points(t, pts) if t.backward is not None else newton_points(t, pts)[0]


def _moving_grid(t: Transform) -> ImageGeometry:
    if t.moving_geometry is None:
        raise InputError("the moving image's grid is unknown (this model file does not store it); pass "
                         "moving= to idir_fast.load")
    return t.moving_geometry


def inverse_displacement_field(t: Transform) -> sitk.Image:
    """``v(y) = Φ⁻¹(y) − y`` on the moving grid, mm, LPS (VectorFloat32; ANTs' ``0InverseWarp``)."""
    g = _moving_grid(t)
    out = np.empty((int(np.prod(g.size)), 3), dtype=np.float32)
    for start, y in grid_world_blocks(g):
        out[start:start + len(y)] = inverse_points(t, y) - y
    img = sitk.GetImageFromArray(out.reshape(g.shape_zyx + (3,)), isVector=True)
    g.apply_to(img)
    return img


def inverse_consistency(t: Transform, points_moving: Optional[np.ndarray] = None) -> dict:
    """``‖Φ(Φ⁻¹(y)) − y‖`` (mm: mean, p95, max) over every 8th voxel of the moving grid (or ``points_moving``),
    and the share of points not inverted (Newton did not converge: folded or non-invertible regions; with Ψ: a
    cycle error above :data:`UNCONVERGED_MM`)."""
    if points_moving is None:  # every 8th voxel of the moving grid: a fair sample, a fraction of the time
        y = np.concatenate([b for _, b in grid_world_blocks(_moving_grid(t))])[::8]
    else:
        y = check_points(points_moving)
    if t.backward is not None:
        x, converged = backward_points(t, y), None
    else:
        x, _, converged = newton_points(t, y)
    err = np.linalg.norm(t.transform_points(x) - y, axis=1)
    if converged is None:
        converged = err <= UNCONVERGED_MM
    return {"mean_mm": float(err.mean()), "p95_mm": float(np.percentile(err, 95)), "max_mm": float(err.max()),
            "not_converged_fraction": float(1.0 - converged.mean()), "points": int(err.size)}


def consistency_errors(t: Transform) -> np.ndarray:
    """Cycle error ``‖Ψ(Φ(x)) − x‖`` (mm) at every voxel of the fixed grid, array order (needs Ψ)."""
    if t.backward is None:
        raise InputError("the consistency map needs a symmetric registration (symmetric=True)")
    g = t.fixed_geometry
    out = np.empty(int(np.prod(g.size)), dtype=np.float32)
    for start, x in grid_world_blocks(g):
        out[start:start + len(x)] = np.linalg.norm(backward_points(t, t.transform_points(x)) - x, axis=1)
    return out.reshape(g.shape_zyx)


def consistency_image(t: Transform) -> sitk.Image:
    """:func:`consistency_errors` as a Float32 image on the fixed grid (``{prefix}Consistency``)."""
    img = sitk.GetImageFromArray(consistency_errors(t).astype(np.float32))
    t.fixed_geometry.apply_to(img)
    return img


def consistency_summary(t: Transform, mask: Optional[sitk.Image] = None, flag_mm: float = 2.0) -> dict:
    """Cycle error inside the fixed mask (the whole grid without one): mean, p95, max (mm) and ``flagged`` when
    p95 exceeds ``flag_mm`` — a registration to look at."""
    e = consistency_errors(t)
    if mask is not None:
        e = e[sitk.GetArrayViewFromImage(mask) > 0]
    p95 = float(np.percentile(e, 95))
    return {"mean_mm": float(e.mean()), "p95_mm": p95, "max_mm": float(e.max()), "flag_mm": float(flag_mm),
            "flagged": bool(p95 > flag_mm)}


__all__ = ["inverse_points", "inverse_displacement_field", "inverse_consistency", "consistency_errors",
           "consistency_image", "consistency_summary", "grid_world_blocks"]
