"""Metrics registration papers report: TRE, folding, SDlogJ, Dice.

All distances are Euclidean in world millimetres; no rounding to voxels.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk


def tre(predicted_mm, target_mm) -> dict:
    """Target registration error statistics between corresponding points ``(N, 3)`` in mm.

    Returns:
        dict with ``mean``, ``std`` (population, as DIR-LAB tables), ``median``, ``p95``, ``max``, ``n`` and the
        per-point ``errors`` list.
    """
    p, t = np.asarray(predicted_mm, dtype=np.float64), np.asarray(target_mm, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"tre(): points must be matching (N, 3) arrays, got {p.shape} and {t.shape}")
    e = np.linalg.norm(p - t, axis=1)
    return {"mean": float(e.mean()), "std": float(e.std()), "median": float(np.median(e)),
            "p95": float(np.percentile(e, 95)), "max": float(e.max()), "n": int(e.size), "errors": e.tolist()}


def _masked(values: sitk.Image, mask: Optional[sitk.Image]) -> np.ndarray:
    v = sitk.GetArrayViewFromImage(values)
    if mask is None:
        return np.asarray(v).ravel()
    m = sitk.GetArrayViewFromImage(mask) > 0
    if m.shape != v.shape:
        raise ValueError(f"mask shape {m.shape} does not match image shape {v.shape}")
    return np.asarray(v)[m]


def folding(jacobian_determinant: sitk.Image, mask: Optional[sitk.Image] = None) -> dict:
    """Count and fraction of voxels with ``det J ≤ 0`` (inside ``mask`` when given)."""
    d = _masked(jacobian_determinant, mask)
    n = int(np.count_nonzero(d <= 0))
    return {"count": n, "fraction": float(n / max(d.size, 1)), "voxels": int(d.size)}


def sdlogj(jacobian_determinant: sitk.Image, mask: Optional[sitk.Image] = None, variant: str = "true") -> float:
    """Standard deviation of ``log det J`` inside the mask.

    Args:
        variant: ``"true"`` — the std of ``log(det J)`` over voxels with ``det J > 0`` (folded voxels have no
            logarithm and are excluded; report :func:`folding` beside it); ``"learn2reg+3"`` — Learn2Reg's
            variant, ``std(log(clip(det J + 3, 1e-9, 1e9)))``, which shifts every determinant by 3 and so
            compresses the spread and stays finite under folding. The two are not comparable.
    """
    d = _masked(jacobian_determinant, mask).astype(np.float64)
    if variant == "true":
        d = d[d > 0]
        return float(np.std(np.log(d))) if d.size else float("nan")
    if variant == "learn2reg+3":
        return float(np.std(np.log(np.clip(d + 3.0, 1e-9, 1e9))))
    raise ValueError(f"sdlogj(): 'variant' must be 'true' or 'learn2reg+3', got {variant!r}")


def dice(a: sitk.Image, b: sitk.Image) -> float:
    """Dice overlap of two binary masks on the same grid (voxels > 0 are foreground)."""
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    if x.shape != y.shape:
        raise ValueError(f"dice(): masks must have the same shape, got {x.shape} and {y.shape}")
    s = int(x.sum()) + int(y.sum())
    return float(2.0 * np.logical_and(x, y).sum() / s) if s else 1.0
