"""Peers side by side: the same registration cases through ANTs SyN, elastix, FireANTs and idir_fast, in one run
(``python -m benchmarks.peers``; options: ``--help``).

Each tool is one adapter module with the same three parts:

* ``unavailable() -> Optional[str]``: why the tool cannot run here (not installed), or ``None``;
* ``register(fixed, moving, mask, *, threads, profile) -> Registered``: one registration, timed;
* the :class:`Registered` it returns maps fixed-image world points (LPS mm) into the moving image and gives
  ``det J`` of its transform on the fixed grid.

So TRE, folding and the point-convention check (every tool maps points of a known shift before any TRE is
trusted: :mod:`.conventions`) are computed once, here and in :mod:`idir_fast.core.metrics`, for every tool alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np
import SimpleITK as sitk

from idir_fast.core.metrics import folding, tre

from ..cases import Case, label_dice


@dataclass
class Registered:
    """One tool's result on one pair.

    Attributes:
        map_points: ``(N, 3)`` fixed world points → the moving image's world points.
        jacobian: ``() → det J`` on the fixed grid (a SimpleITK image), or ``None`` when the tool has none.
        seconds, cpu_seconds: wall and process CPU time of the registration call.
        settings: what the tool was asked.
        version: the tool's version.
        extra: anything more the row should carry.
        warp_labels: ``(label map on the moving grid) → it on the fixed grid``, by the tool's own nearest-neighbour
            resampling, or ``None``.
    """

    map_points: Callable[[np.ndarray], np.ndarray]
    jacobian: Optional[Callable[[], sitk.Image]]
    seconds: float
    cpu_seconds: float
    settings: dict
    version: Optional[str]
    extra: dict = field(default_factory=dict)
    warp_labels: Optional[Callable[[sitk.Image], sitk.Image]] = None


def displacement_jacobian(field_image: sitk.Image) -> sitk.Image:
    """``det(I + ∂u/∂x)`` of a world displacement field on its grid (ANTs ``0Warp``-style, affine included)."""
    return sitk.DisplacementFieldJacobianDeterminant(sitk.Cast(field_image, sitk.sitkVectorFloat64))


def evaluate(case: Case, result: Registered) -> dict:
    """The row of one tool on one case: TRE before and after (mm) when the case has landmarks, label Dice when it
    has labels, folding inside the case's mask, times."""
    strip = (lambda d: {k: v for k, v in d.items() if k != "errors"})
    row = {"case": case.name, "seconds": result.seconds, "cpu_seconds": result.cpu_seconds,
           "settings": result.settings, "version": result.version, **result.extra}
    if case.fixed_landmarks is not None:
        mapped = np.asarray(result.map_points(case.fixed_landmarks), dtype=np.float64)
        row.update(tre_initial=strip(tre(case.fixed_landmarks, case.moving_landmarks)),
                   tre=strip(tre(mapped, case.moving_landmarks)))
    if case.moving_labels is not None and result.warp_labels is not None:
        warped = result.warp_labels(case.moving_labels)
        row["dice"] = label_dice(warped, case.fixed_labels, case.structures)
        unwarped = sitk.Resample(case.moving_labels, case.fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        row["dice_initial"] = label_dice(unwarped, case.fixed_labels, case.structures)
    if result.jacobian is not None:
        det = result.jacobian()
        if det.GetSize() != case.fixed.GetSize():
            det = sitk.Resample(det, case.fixed, sitk.Transform(), sitk.sitkLinear, 1.0, sitk.sitkFloat32)
        row["folding"] = folding(det, case.mask)
        arr = sitk.GetArrayViewFromImage(det)[sitk.GetArrayViewFromImage(case.mask) > 0]
        row["folding"]["min_det"] = float(arr.min()) if arr.size else float("nan")
    return row


def adapters() -> Dict[str, object]:
    """Tool name → adapter module (imported lazily: a tool's package is imported only when it runs)."""
    from . import ants, elastix, fireants, idir

    return {"ants-syn": ants, "elastix": elastix, "fireants": fireants, "idir": idir}
