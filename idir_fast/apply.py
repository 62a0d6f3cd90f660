"""Applying a saved registration to other images, label maps and points — what ``antsApplyTransforms`` and
``transformix`` do for their tools (``idir-fast apply`` on the command line).

A saved registration is either its model file (``model.pt``, or the run's prefix or folder: Φ evaluated
anywhere, its inverse by the backward network or Newton's method) or a displacement field on the fixed grid
(``0Warp``, the whole map fixed → moving as idir_fast writes it; with ``affine``, a linear map applied after the
field, as ANTs' ``-t 1Warp.nii.gz -t 0GenericAffine.mat``). Images are resampled by SimpleITK through the
displacement field of Φ on the output grid, so ``apply`` with the model on the fixed grid equals ``sitk.Resample``
through the written ``0Warp`` — linear, B-spline, nearest-neighbour or label-Gaussian interpolation (the last two
keep the label values of a segmentation). Points: fixed → moving, or with ``inverse`` moving → fixed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
import torch

from .core.geometry import ImageGeometry, apply_affine
from .core.sampling import trilinear
from .errors import InputError

INTERPOLATIONS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor,
                  "label": sitk.sitkLabelGaussian}
"""``interpolation`` → SimpleITK interpolator. ``nearest`` and ``label`` keep an image's values (label maps)."""
KEEPS_VALUES = ("nearest", "label")
INVERSE_TOLERANCE_MM = 1e-4


@dataclass
class SavedRegistration:
    """A saved registration read back: a model (``registration``) or a displacement field with an optional affine
    after it. ``fixed_geometry`` is the grid outputs go onto by default."""

    fixed_geometry: ImageGeometry
    registration: Optional[object] = None  # a Registration, from a model file
    field: Optional[sitk.Image] = None     # world displacement (VectorFloat64) on the fixed grid
    affine: Optional[np.ndarray] = None    # 4×4 applied after the field

    @property
    def moving_geometry(self) -> Optional[ImageGeometry]:
        return None if self.registration is None else self.registration.moving_geometry

    # ------------------------------------------------------------------------------------------ points
    def points(self, points_world: np.ndarray, inverse: bool = False) -> np.ndarray:
        """Fixed world points → moving world points (``inverse``: moving → fixed), ``(N, 3)`` LPS mm."""
        pts = np.asarray(points_world, dtype=np.float64)
        if self.registration is not None:
            return self.registration.transform_points(pts, inverse=inverse)
        if not inverse:
            moved = pts + self._field_at(pts)
            return moved if self.affine is None else apply_affine(self.affine, moved)
        y = pts if self.affine is None else apply_affine(np.linalg.inv(self.affine), pts)
        x = y.copy()  # x = y − d(x): a contraction where the field is invertible (|∂d/∂x| < 1)
        for _ in range(200):
            nxt = y - self._field_at(x)
            step = np.abs(nxt - x).max(initial=0.0)
            x = nxt
            if step < INVERSE_TOLERANCE_MM:
                return x
        raise InputError("'inverse': the displacement field could not be inverted at these points (the fixed-point "
                         "iteration did not converge: the field folds there); use the run's model.pt")

    def _field_at(self, points_world: np.ndarray) -> np.ndarray:
        """The field trilinearly sampled at world points (border values outside its grid)."""
        g = ImageGeometry.from_sitk(self.field)
        vol = torch.from_numpy(sitk.GetArrayFromImage(self.field).astype(np.float64))  # (z, y, x, 3)
        idx = torch.from_numpy(apply_affine(g.world_to_index(), points_world))
        return np.stack([trilinear(vol[..., c], idx).numpy() for c in range(3)], axis=1)

    # ------------------------------------------------------------------------------------------ images
    def displacement_on(self, reference: ImageGeometry, inverse: bool = False) -> sitk.Image:
        """The world displacement of the map (or its inverse) at every voxel of ``reference`` (VectorFloat64)."""
        total = int(np.prod(reference.size))
        out = np.empty((total, 3), dtype=np.float64)
        block = 1 << 18
        for start in range(0, total, block):
            kk, jj, ii = np.unravel_index(np.arange(start, min(start + block, total)), reference.shape_zyx)
            p = apply_affine(reference.index_to_world(), np.stack([ii, jj, kk], axis=1).astype(np.float64))
            out[start:start + len(p)] = self.points(p, inverse=inverse) - p
        img = sitk.GetImageFromArray(out.reshape(reference.shape_zyx + (3,)), isVector=True)
        reference.apply_to(img)
        return img

    def sitk_transform(self, reference: ImageGeometry, inverse: bool = False) -> sitk.Transform:
        """The map onto ``reference`` as an ITK transform: a model's (or an inverse's) displacement field on that
        grid — on the fixed grid exactly the ``0Warp`` the run wrote; a forward field as it is, with its affine
        after it."""
        if self.registration is not None and not inverse and reference == self.fixed_geometry:
            own = self.registration.displacement_field()  # the values 0Warp holds
            return sitk.DisplacementFieldTransform(sitk.Cast(own, sitk.sitkVectorFloat64))
        if self.registration is not None or inverse:
            return sitk.DisplacementFieldTransform(self.displacement_on(reference, inverse))
        field = sitk.DisplacementFieldTransform(sitk.Image(self.field))
        if self.affine is None:
            return field
        from .io.transforms import matrix_to_transform

        return sitk.CompositeTransform([matrix_to_transform(self.affine), field])  # applied right to left


def _run_report(field_path: Path, run_id: str) -> Optional[dict]:
    """The report of the run ``run_id`` in the field's folder (the folder of the file a link points to as well):
    ``{prefix}report.json`` whatever the field is called now."""
    import json

    for folder in dict.fromkeys([field_path.parent, field_path.resolve().parent]):
        for candidate in sorted(folder.glob("*report.json")):
            try:
                report = json.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(report, dict) and report.get("run_id") == run_id:
                return report
    return None


def _affine_of_the_same_run(field_path: Path, affine, matrix: np.ndarray) -> bool:
    """Whether ``affine`` is the linear part that the idir_fast run which wrote the field ``field_path`` also
    wrote, so that the field (which holds the whole map) would map every point twice through it.

    Known by the run's report beside the field (found by the field's run id): the matrix it records, or a file
    with the checksum of its ``Affine.mat``. Without a report, by the name: ``{prefix}Affine.mat`` beside
    ``{prefix}0Warp…``."""
    from .io.images import image_run_id
    from .io.outputs import sha256_file

    run_id = image_run_id(field_path)
    if run_id is None:  # not a field idir_fast wrote (e.g. ANTs' 1Warp, which leaves its affine out)
        return False
    is_file = isinstance(affine, (str, os.PathLike))
    report = _run_report(field_path, run_id)
    if report is not None:
        try:
            recorded = np.asarray(report["settings"]["world_affine"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            recorded = None
        if recorded is not None and recorded.shape == (4, 4) and not np.allclose(recorded, np.eye(4)):
            if np.allclose(matrix, recorded, atol=1e-6) or np.allclose(matrix, np.linalg.inv(recorded), atol=1e-6):
                return True
        files = report.get("files") if isinstance(report.get("files"), dict) else {}
        sums = {v.get("sha256") for v in files.values() if isinstance(v, dict) and v.get("kind") == "affine"}
        return bool(is_file and sums and sha256_file(affine) in sums)
    name = field_path.name
    at = max(name.rfind("0InverseWarp"), name.rfind("0Warp"))
    if not is_file or at < 0:
        return False
    return Path(affine).resolve() == (field_path.resolve().parent / f"{name[:at]}Affine.mat").resolve()


def read_saved(transform: Union[str, os.PathLike], affine: Union[str, os.PathLike, None] = None,
               moving=None, device=None) -> SavedRegistration:
    """A saved registration from ``transform``: a model file, a run prefix or folder holding ``model.pt``, or a
    displacement-field image (``0Warp``); ``affine`` (an ITK/ANTs linear transform file) applies after a field."""
    from .io.images import read_image
    from .io.model_file import find_model_file
    from .io.transforms import transform_matrix
    from .registration import load

    p = Path(transform)
    model = None
    if p.is_dir() or not p.exists() or p.suffix == ".pt":
        try:
            model = find_model_file(p)
        except InputError:
            raise InputError(f"'transform': {str(p)!r} is neither a model file, a run prefix or folder with a "
                             "model.pt, nor a displacement-field image") from None
    if model is not None:
        if affine is not None:
            raise InputError("'affine' composes with a displacement field; a model file already holds its affine "
                             "part")
        reg = load(model, moving=moving, device=device)
        return SavedRegistration(reg.fixed_geometry, registration=reg)
    field = read_image(p, "transform", check_values=False)
    if field.GetNumberOfComponentsPerPixel() != 3 or field.GetDimension() != 3:
        raise InputError(f"'transform': {str(p)!r} is not a 3-D displacement field (3 components per voxel); got "
                         f"{field.GetNumberOfComponentsPerPixel()} component(s)")
    matrix = None if affine is None else transform_matrix(affine, "affine")
    if matrix is not None and _affine_of_the_same_run(p, affine, matrix):
        raise InputError(f"'affine': {str(affine)!r} is the affine part of the run that wrote {str(p)!r}, and "
                         "idir_fast's 0Warp already holds the whole map, affine included; apply the field alone "
                         "(unlike ANTs' 1Warp, which needs its 0GenericAffine.mat)")
    return SavedRegistration(ImageGeometry.from_sitk(field), field=sitk.Cast(field, sitk.sitkVectorFloat64),
                             affine=matrix)


def input_image(obj, name: str) -> sitk.Image:
    """A 3-D scalar image as stored (its pixel type kept: a label map stays integer), from a path or an image."""
    from .io.images import check_direction, read_image

    if isinstance(obj, (str, os.PathLike)):
        image = read_image(obj, name, check_values=False)
    elif isinstance(obj, sitk.Image):
        image = obj
    else:
        raise InputError(f"'{name}' must be an image path or a SimpleITK.Image, got {type(obj).__name__}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"'{name}' must be a 3-D scalar image, got {image.GetDimension()}-D with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel")
    check_direction(image.GetDirection(), name)
    return image


def apply_to_image(saved: SavedRegistration, image: sitk.Image, *, reference: Optional[sitk.Image] = None,
                   interpolation: str = "linear", default_value: float = 0.0, inverse: bool = False) -> sitk.Image:
    """``image`` (on the moving side; with ``inverse`` on the fixed side) resampled onto ``reference`` (default:
    the fixed grid; with ``inverse`` the moving grid of a model). ``nearest``/``label`` keep the image's values and
    pixel type (label maps); ``linear``/``bspline`` give Float32."""
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"'interpolation' must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
    if reference is not None:
        ref = ImageGeometry.from_sitk(reference)
    elif not inverse:
        ref = saved.fixed_geometry
    elif saved.moving_geometry is not None:
        ref = saved.moving_geometry
    else:
        raise InputError("'reference': mapping an image back onto the moving side needs the moving grid (give "
                         "reference=, or the run's model.pt, which stores it)")
    grid = sitk.Image(list(ref.size), sitk.sitkUInt8)
    ref.apply_to(grid)
    pixel = image.GetPixelID() if interpolation in KEEPS_VALUES else sitk.sitkFloat32
    return sitk.Resample(image, grid, saved.sitk_transform(ref, inverse), INTERPOLATIONS[interpolation],
                         float(default_value), pixel)


class PointsOutsideWarning(UserWarning):
    """Points given to :func:`apply` lie well outside the image grid they belong to."""


OUTSIDE_MARGIN = 0.1
"""How far beyond the grid (a fraction of its size per axis) a point may lie before :func:`apply` warns."""


def _warn_points_outside(world: np.ndarray, grid: ImageGeometry, points_frame: str) -> None:
    """One warning when points lie beyond the transform's input ``grid`` (the fixed grid, or the moving grid of an
    inverse) by more than :data:`OUTSIDE_MARGIN` of its size: there the map is the network's extrapolation or the
    field's border, and points in another frame than ``points_frame`` says (indices read as mm) land there."""
    idx = apply_affine(grid.world_to_index(), world)
    size = np.asarray(grid.size, dtype=np.float64)
    far = np.any((idx < -0.5 - OUTSIDE_MARGIN * size) | (idx > size - 0.5 + OUTSIDE_MARGIN * size), axis=1)
    if far.any():
        import warnings

        first = int(np.argmax(far))
        warnings.warn(f"apply(): {int(far.sum())} of {len(world)} point(s) lie outside the transform's input "
                      f"grid (point {first} at voxel index {np.round(idx[first], 1).tolist()} of a {list(grid.size)} "
                      f"grid); the map there is extrapolated. Are they in the frame 'points_frame' says "
                      f"({points_frame!r})?", PointsOutsideWarning, stacklevel=3)


def apply(transform, image=None, *, points=None, reference=None, interpolation: str = "linear",
          default_value: float = 0.0, inverse: bool = False, affine=None, points_frame: str = "world",
          device=None):
    """Apply a saved registration to an image or label map, or to points.

    Args:
        transform: ``model.pt``, a run prefix or folder, or a ``0Warp`` displacement field (or a
            :class:`~idir_fast.registration.Registration` in memory).
        image: an image path or ``SimpleITK.Image`` on the moving side (``inverse``: the fixed side).
        points: ``(N, 3)`` points or a point file, fixed-side (``inverse``: moving-side) — world LPS mm, or 0-/1-based
            voxel indices of the fixed image (``points_frame`` "index0"/"index1").
        reference: the output grid (an image or path); default: the fixed grid (``inverse``: the moving grid).
        interpolation: ``linear``, ``bspline``, ``nearest`` or ``label`` (the last two keep label values).
        default_value: the value outside the input image.
        inverse: map moving → fixed.
        affine: with a displacement field, a linear transform file applied after it (ANTs' affine).

    Returns:
        the resampled ``SimpleITK.Image``, or the mapped ``(N, 3)`` world points.
    """
    from .io.landmarks import read_points, to_world

    if (image is None) == (points is None):
        raise InputError("apply(): give exactly one of 'image' or 'points'")
    if isinstance(transform, SavedRegistration):
        saved = transform
    elif hasattr(transform, "transform_points") and hasattr(transform, "fixed_geometry"):
        saved = SavedRegistration(transform.fixed_geometry, registration=transform)
    else:
        saved = read_saved(transform, affine, device=device)
    if points is not None:
        pts = read_points(points, "points") if isinstance(points, (str, os.PathLike)) else np.asarray(points, float)
        if pts.ndim != 2 or pts.shape[1] != 3 or not np.all(np.isfinite(pts)):
            raise InputError(f"'points' must be finite (N, 3) coordinates, got shape {pts.shape}")
        side = saved.moving_geometry if inverse else saved.fixed_geometry
        if points_frame != "world" and side is None:
            raise InputError("'points_frame': voxel indices of the moving image need its grid (the run's model.pt "
                             "stores it)")
        world = to_world(pts, points_frame, side)
        if side is not None:
            _warn_points_outside(world, side, points_frame)
        return saved.points(world, inverse=inverse)
    img = input_image(image, "image")
    ref = None if reference is None else input_image(reference, "reference")
    return apply_to_image(saved, img, reference=ref, interpolation=interpolation, default_value=default_value,
                          inverse=inverse)


__all__ = ["apply", "apply_to_image", "read_saved", "SavedRegistration", "INTERPOLATIONS", "PointsOutsideWarning"]
