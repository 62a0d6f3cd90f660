"""Every tool's point convention, checked on a known translation before any TRE is trusted.

An image and a copy of it shifted by a known world vector (SimpleITK resampling, so ``moving(y) = fixed(y − s)``
and a fixed point ``x`` corresponds to ``x + s``), on two geometries (identity direction with anisotropic voxels;
x/y flipped as a RAS-stored NIfTI read into LPS; axes permuted as FreeSurfer's conformed "LIA" brains). Each tool registers the pair and maps the fixed points; the
residual against ``x + s`` must be a fraction of a voxel. ANTs' wrong recipes are reported beside its right one to
show the check tells them apart; elastix is gated on its affine stage alone (an unregularised B-spline adds
registration error on a pure shift that is not a convention matter).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import SimpleITK as sitk

from ..cases import blob_texture, pick_landmarks

SHIFT_MM = (4.5, -3.0, 6.0)  # no two components alike, so sign and axis errors show
MEAN_VOXELS, MAX_VOXELS = 0.25, 0.5
CHECK_PROFILES = {"ants-syn": "default", "elastix": "affine", "fireants": "default", "idir": "check"}
QUICK_PROFILES = {"ants-syn": "default", "elastix": "affine", "fireants": "quick", "idir": "check"}

GEOMETRIES = (
    dict(name="identity direction, 2×2×2.5 mm", size_xyz=(36, 40, 32), spacing=(2.0, 2.0, 2.5),
         origin=(-31.0, 47.5, 12.0), direction=None),
    dict(name="x/y flipped direction, 2.2×2×2 mm", size_xyz=(34, 40, 36), spacing=(2.2, 2.0, 2.0),
         origin=(40.0, -12.5, -80.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)),
    dict(name="permuted LIA direction, 2×2.2×2 mm", size_xyz=(34, 36, 40), spacing=(2.0, 2.2, 2.0),
         origin=(-20.0, 30.0, 25.0), direction=(1, 0, 0, 0, 0, -1, 0, -1, 0)),
)


def shifted_pair(geometry: dict, shift_mm: Sequence[float] = SHIFT_MM, seed: int = 3):
    """``(fixed, moving, mask, fixed points (N, 3))`` with ``moving(y) = fixed(y − shift)``."""
    fixed, mask = blob_texture(geometry["size_xyz"], geometry["spacing"], geometry["origin"],
                               geometry["direction"], blobs=120, seed=seed)
    moving = sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, tuple(-float(s) for s in shift_mm)),
                           sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    points = pick_landmarks(fixed, mask, 30, np.random.default_rng(seed), margin_mm=8.0)
    return fixed, moving, mask, points


def residual(mapped: np.ndarray, points: np.ndarray, shift: np.ndarray, spacing) -> dict:
    """Residuals of mapped points against ``points + shift`` (mm and voxels) and the mean displacement found."""
    r = np.linalg.norm(np.asarray(mapped) - (points + shift), axis=1)
    voxel = float(min(spacing))
    return {"mean_mm": float(r.mean()), "max_mm": float(r.max()), "mean_voxels": float(r.mean() / voxel),
            "max_voxels": float(r.max() / voxel),
            "mean_displacement_mm": [float(v) for v in np.mean(np.asarray(mapped) - points, axis=0)]}


def passes(res: dict) -> bool:
    return res["mean_voxels"] <= MEAN_VOXELS and res["max_voxels"] <= MAX_VOXELS


def check_tool(name: str, adapter, threads: int, profile: str, geometries=GEOMETRIES) -> list:
    """The check of one tool on every geometry: a list of result rows (``passed`` in each)."""
    shift = np.asarray(SHIFT_MM, dtype=np.float64)
    rows = []
    for geom in geometries:
        fixed, moving, mask, pts = shifted_pair(geom, shift)
        result = adapter.register(fixed, moving, mask, threads=threads, profile=profile)
        res = residual(result.map_points(pts), pts, shift, fixed.GetSpacing())
        row = {"geometry": geom["name"], "tool": name, "profile": profile, "passed": passes(res),
               "seconds": result.seconds, "recipe": result.extra.get("recipe"), "residual": res}
        if hasattr(adapter, "diagnostics"):
            row["wrong_recipes"] = {k: residual(v, pts, shift, fixed.GetSpacing())
                                    for k, v in adapter.diagnostics(result, pts).items()}
        rows.append(row)
        print(f"    {name:9s} [{geom['name']}]: residual mean {res['mean_mm']:.3f} mm, max {res['max_mm']:.3f} mm"
              f" -> {'PASS' if row['passed'] else 'FAIL'}", flush=True)
    return rows


def check_conventions(tools: Dict[str, object], threads: int, quick: bool = False) -> dict:
    """Every given tool (name → adapter) on the known shift. Returns ``{"passed", "shift_mm", "results"}``."""
    profiles = QUICK_PROFILES if quick else CHECK_PROFILES
    results = []
    for name, adapter in tools.items():
        results += check_tool(name, adapter, threads, profiles[name])
    return {"passed": all(r["passed"] for r in results), "shift_mm": list(SHIFT_MM),
            "thresholds": {"mean_voxels": MEAN_VOXELS, "max_voxels": MAX_VOXELS}, "results": results}
