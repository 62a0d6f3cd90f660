"""Images in and out: paths, SimpleITK images and NumPy arrays read and validated with clear errors; images
written atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..core.geometry import ImageGeometry
from ..errors import InputError
from .files import atomic_path

ImageLike = Union[str, os.PathLike, sitk.Image, np.ndarray]

def read_image(path: Union[str, os.PathLike], name: str = "image") -> sitk.Image:
    """Read an image file (NIfTI, MetaImage, NRRD, …) or a DICOM series folder with SimpleITK."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"'{name}': file not found: {str(p)!r}")
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(str(p))
            if not files:
                raise InputError(f"'{name}': folder {str(p)!r} holds no DICOM series")
            reader.SetFileNames(files)
            return reader.Execute()
        return sitk.ReadImage(str(p))
    except InputError:
        raise
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise InputError(f"'{name}': cannot read {str(p)!r} as an image ({first})") from None


def as_image(obj: ImageLike, name: str, *, spacing: Optional[Sequence[float]] = None,
             origin: Optional[Sequence[float]] = None, direction: Optional[Sequence[float]] = None,
             check_values: bool = True) -> sitk.Image:
    """Turn a path, SimpleITK image or NumPy array into a validated scalar 3-D float32 SimpleITK image.

    Args:
        obj: file path / DICOM folder, ``sitk.Image``, or array in NumPy ``(z, y, x)`` order.
        name: argument name used in error messages.
        spacing, origin, direction: geometry for a NumPy array, in SimpleITK ``(x, y, z)`` order.
        check_values: reject NaN/Inf intensities.
    """
    if isinstance(obj, (str, os.PathLike)):
        image = read_image(obj, name)
    elif isinstance(obj, sitk.Image):
        image = obj
    elif isinstance(obj, np.ndarray):
        if obj.ndim != 3:
            raise InputError(f"'{name}' must be a 3-D array in (z, y, x) order, got shape {obj.shape}")
        if not (np.issubdtype(obj.dtype, np.number) or obj.dtype == bool):
            raise InputError(f"'{name}' must be a numeric array, got dtype {obj.dtype}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(obj, dtype=np.float32))
        if spacing is not None:
            _check_vector(spacing, "spacing", positive=True)
            image.SetSpacing([float(s) for s in spacing])
        if origin is not None:
            _check_vector(origin, "origin")
            image.SetOrigin([float(o) for o in origin])
        if direction is not None:
            image.SetDirection([float(d) for d in np.asarray(direction, dtype=np.float64).ravel()])
    else:
        raise InputError(f"'{name}' must be a file path, a SimpleITK.Image or a NumPy array, "
                         f"got {type(obj).__name__}")
    if image.GetDimension() != 3:
        raise InputError(f"'{name}' must be a 3-D image, got a {image.GetDimension()}-D image "
                         f"of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"'{name}' must be a scalar image, got {image.GetNumberOfComponentsPerPixel()} "
                         "components per voxel")
    if min(image.GetSize()) < 2:
        raise InputError(f"'{name}' must have at least 2 voxels along each axis, got size {image.GetSize()}")
    image = sitk.Cast(image, sitk.sitkFloat32)
    if check_values:
        arr = sitk.GetArrayViewFromImage(image)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise InputError(f"'{name}' contains {bad} NaN/Inf intensities")
    return image


def as_mask(obj: Optional[ImageLike], name: str, reference: sitk.Image, **geometry) -> Optional[sitk.Image]:
    """Validate a mask against the fixed image: same size and geometry, at least one non-zero voxel."""
    if obj is None:
        return None
    if isinstance(obj, np.ndarray) and not geometry.get("spacing"):
        geometry = dict(spacing=reference.GetSpacing(), origin=reference.GetOrigin(),
                        direction=reference.GetDirection())
    mask = as_image(obj, name, **geometry)
    g_mask, g_ref = ImageGeometry.from_sitk(mask), ImageGeometry.from_sitk(reference)
    if g_mask.size != g_ref.size:
        raise InputError(f"'{name}' must have the fixed image's size {g_ref.size}, got {g_mask.size}")
    if not g_mask.same_grid(g_ref):
        raise InputError(f"'{name}' must have the fixed image's geometry (spacing {g_ref.spacing}, origin "
                         f"{g_ref.origin}, direction {g_ref.direction}); got spacing {g_mask.spacing}, "
                         f"origin {g_mask.origin}, direction {g_mask.direction}")
    if not np.any(sitk.GetArrayViewFromImage(mask) > 0):
        raise InputError(f"'{name}' is empty: it has no voxel > 0")
    return mask


def _check_vector(v, name, positive=False):
    arr = np.asarray(v, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        raise InputError(f"'{name}' must be 3 finite{' positive' if positive else ''} numbers in (x, y, z) "
                         f"order, got {v!r}")


def write_image(image: sitk.Image, path: Union[str, os.PathLike], compress: bool = True) -> Path:
    """Write a SimpleITK image atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, tmp, compress)
    return Path(path)
