"""Linear transforms in and out: ITK transform files (``.tfm``, ``.txt``, ``.h5``, ``.mat`` as ANTs writes them),
``SimpleITK.Transform`` objects and 4×4 matrices, all as the fixed-world → moving-world map (LPS mm, the pull
direction ITK and ANTs use for registration results)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .files import atomic_path, output_error, writing

TransformLike = Union[str, os.PathLike, sitk.Transform, np.ndarray]
TRANSFORM_EXTENSIONS = (".tfm", ".txt", ".h5", ".hdf5", ".mat")


def read_transform(obj: TransformLike, name: str = "initial_transform") -> sitk.Transform:
    """A ``SimpleITK.Transform`` from a file path, a transform, or a 4×4 matrix."""
    if isinstance(obj, sitk.Transform):
        return obj
    if isinstance(obj, np.ndarray):
        return matrix_to_transform(_check_matrix(obj, name))
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if not p.is_file():
            raise InputError(f"'{name}': transform file not found: {str(p)!r}")
        try:
            return sitk.ReadTransform(str(p))
        except RuntimeError as err:
            last = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            raise InputError(f"'{name}': cannot read {str(p)!r} as an ITK transform "
                             f"(.tfm/.txt/.h5/.mat) ({last})") from None
    raise InputError(f"'{name}' must be a transform file path, a SimpleITK.Transform or a 4×4 matrix, "
                     f"got {type(obj).__name__}")


def transform_matrix(obj: TransformLike, name: str = "initial_transform", tolerance_mm: float = 1e-4) -> np.ndarray:
    """The 4×4 matrix of a linear (rigid, similarity, affine, or a composite of them) fixed → moving transform.

    The matrix is read off the transform's action on four points, then checked on random points far apart, so
    any linear ITK transform type (and composites) works and a nonlinear one is refused with a clear error.
    """
    if isinstance(obj, np.ndarray):
        return _check_matrix(obj, name)
    tx = read_transform(obj, name)
    if tx.GetDimension() != 3:
        raise InputError(f"'{name}' must be a 3-D transform, got a {tx.GetDimension()}-D one")
    try:
        base = np.asarray(tx.TransformPoint((0.0, 0.0, 0.0)))
        cols = [np.asarray(tx.TransformPoint(tuple(e))) - base for e in np.eye(3) * 100.0]
    except RuntimeError as err:
        raise InputError(f"'{name}': cannot evaluate the transform ({err})") from None
    A = np.eye(4)
    A[:3, :3] = np.stack(cols, axis=1) / 100.0
    A[:3, 3] = base
    probe = np.random.default_rng(0).uniform(-300, 300, size=(8, 3))
    err = max(np.linalg.norm(np.asarray(tx.TransformPoint(tuple(p))) - (A[:3, :3] @ p + A[:3, 3])) for p in probe)
    if not err <= tolerance_mm:
        raise InputError(f"'{name}' must be a linear transform (rigid, similarity or affine); "
                         f"{tx.GetName()} is not (off by {err:.3g} mm from its best affine)")
    return _check_matrix(A, name)


def _check_matrix(A, name: str) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.shape != (4, 4) or not np.all(np.isfinite(A)) or not np.allclose(A[3], [0, 0, 0, 1]):
        raise InputError(f"'{name}' must be a finite 4×4 homogeneous matrix, got shape {A.shape}")
    det = np.linalg.det(A[:3, :3])
    if not det > 1e-6:
        raise InputError(f"'{name}' must keep orientation and volume (det of its linear part > 0), got {det:.3g}")
    return A


def matrix_to_transform(A: np.ndarray) -> sitk.AffineTransform:
    """A 4×4 fixed → moving matrix as a ``SimpleITK.AffineTransform`` (centre 0)."""
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(float(v) for v in np.asarray(A)[:3, :3].ravel()))
    tx.SetTranslation(tuple(float(v) for v in np.asarray(A)[:3, 3]))
    return tx


def write_itk_transform_to(tmp: Union[str, os.PathLike], tx: sitk.Transform, final: Union[str, os.PathLike]) -> None:
    """Write an ITK transform into the temporary file ``tmp`` (destined for ``final``) and check that it reads
    back (HDF5 and text writers can fail halfway on a full disk)."""
    with writing(final):
        sitk.WriteTransform(tx, os.fspath(tmp))
    try:
        sitk.ReadTransform(os.fspath(tmp))
    except RuntimeError as err:
        raise output_error(final, err, "read back") from None


def write_transform(A: np.ndarray, path: Union[str, os.PathLike]) -> Path:
    """Write a 4×4 fixed → moving matrix as an ITK affine transform file (``.mat`` loads in ANTs, ITK, Slicer)."""
    with atomic_path(path) as tmp:
        write_itk_transform_to(tmp, matrix_to_transform(A), path)
    return Path(path)
