"""Images in and out: paths, SimpleITK images and NumPy arrays read and validated with clear errors; images
written atomically and checked before they replace anything.

What is checked on input (every format): a 3-D scalar image of at least 2 voxels per axis, orthonormal direction
cosines, finite intensities that fit float32 and whose range float32 arithmetic can resolve, and enough memory to
hold it. NIfTI (``.nii``, ``.nii.gz``) also: the file holds all the voxel data its header declares (the
uncompressed length for ``.nii.gz``) and its float voxels are finite — both checked on the file itself
(:mod:`.nifti`), because ITK's NIfTI reader fills a short file with zeros and reads NaN/Inf as 0. MetaImage and
NRRD: ITK itself refuses a short file and keeps NaN/Inf, which the intensity check then reports.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .. import memory
from ..core.geometry import ImageGeometry
from ..errors import InputError, OutputError
from . import nifti
from .files import atomic_path, human_bytes, output_error, split_extension, temporary_path, writing

ImageLike = Union[str, os.PathLike, sitk.Image, np.ndarray]

ORTHOGONALITY_TOLERANCE = 1e-4
"""Largest |DᵀD − I| accepted for direction cosines D (NIfTI cannot store a sheared grid; ITK coerces it)."""
SMALLEST_INTENSITY_RANGE = 1e-12
"""Smallest max − min intensity accepted: below it float32 sums of squares underflow and NCC is undefined."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
RUN_ID_KEY = "idir_fast_run_id"
"""Metadata key of the run id in MetaImage and NRRD outputs (NIfTI keeps it in ``descrip``)."""


class DefaultGeometryWarning(UserWarning):
    """A NumPy image was given without its geometry: 1 mm voxels, origin 0, identity direction were assumed."""


def read_image(path: Union[str, os.PathLike], name: str = "image", check_values: bool = True) -> sitk.Image:
    """Read an image file (NIfTI, MetaImage, NRRD, …) or a DICOM series folder with SimpleITK.

    NIfTI files are first checked for truncation and (``check_values``) NaN/Inf voxels, which ITK would hide.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"'{name}': file not found: {str(p)!r}")
    if p.is_file() and nifti.is_nifti(p):
        try:
            nifti.read_header(p)
        except nifti.NiftiProblem as err:
            raise InputError(f"'{name}': cannot read {str(p)!r} as an image ({err})") from None
        try:
            content = nifti.check(p, count_non_finite=check_values)
        except nifti.NiftiProblem as err:
            raise InputError(f"'{name}': {str(p)!r} is not a complete NIfTI image: {err}") from None
        except OSError as err:
            raise InputError(f"'{name}': cannot read {str(p)!r} ({err.strerror or err})") from None
        if content.non_finite:
            raise InputError(f"'{name}' contains {content.non_finite} NaN/Inf intensities (in {str(p)!r}; "
                             "ITK's NIfTI reader would turn them into 0)")
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(str(p))
            if not files:
                raise InputError(f"'{name}': folder {str(p)!r} holds no DICOM series")
            reader.SetFileNames(files)
            return reader.Execute()
        _check_read_memory(p, name)
        return sitk.ReadImage(str(p))
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"'{name}': not enough memory to read {str(p)!r} ({human_bytes(memory.available_host_memory())} "
                         "available)") from None
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise InputError(f"'{name}': cannot read {str(p)!r} as an image ({first})") from None


def _check_read_memory(p: Path, name: str) -> None:
    """Refuse an image whose voxels do not fit in the memory available, before reading them."""
    if not memory.checks_enabled():
        return
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.ReadImageInformation()
    memory.check_read(p, reader.GetSize(), reader.GetNumberOfComponents(), name)


def as_image(obj: ImageLike, name: str, *, spacing: Optional[Sequence[float]] = None,
             origin: Optional[Sequence[float]] = None, direction: Optional[Sequence[float]] = None,
             check_values: bool = True) -> sitk.Image:
    """Turn a path, SimpleITK image or NumPy array into a validated scalar 3-D float32 SimpleITK image.

    Args:
        obj: file path / DICOM folder, ``sitk.Image``, or array in NumPy ``(z, y, x)`` order.
        name: argument name used in error messages.
        spacing, origin, direction: geometry for a NumPy array, in SimpleITK ``(x, y, z)`` order (ignored for
            files and SimpleITK images, which carry their own; :func:`idir_fast.api.read_pair` refuses them
            there). Without ``spacing`` a NumPy array gets 1 mm voxels, with a :class:`DefaultGeometryWarning`.
        check_values: reject NaN/Inf intensities, values beyond float32, a range float32 cannot resolve.
    """
    if isinstance(obj, (str, os.PathLike)):
        image = read_image(obj, name, check_values)
    elif isinstance(obj, sitk.Image):
        image = obj
    elif isinstance(obj, np.ndarray):
        image = _image_from_array(obj, name, spacing, origin, direction, check_values)
    else:
        raise InputError(f"'{name}' must be a file path, a SimpleITK.Image or a NumPy array, "
                         f"got {type(obj).__name__}")
    if image.GetDimension() != 3:
        raise InputError(f"'{name}' must be a 3-D image, got a {image.GetDimension()}-D image "
                         f"of size {image.GetSize()}")
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(f"'{name}' has complex voxels; pass a real image (e.g. the magnitude)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"'{name}' must be a scalar image, got {image.GetNumberOfComponentsPerPixel()} "
                         "components per voxel")
    if min(image.GetSize()) < 2:
        raise InputError(f"'{name}' must have at least 2 voxels along each axis, got size {image.GetSize()}")
    check_direction(image.GetDirection(), name)
    if check_values and image.GetPixelID() == sitk.sitkFloat64:
        _check_values(sitk.GetArrayViewFromImage(image), name)  # before the cast turns big values into Inf
    image = sitk.Cast(image, sitk.sitkFloat32)
    if check_values:
        _check_values(sitk.GetArrayViewFromImage(image), name)
    return image


def _image_from_array(arr: np.ndarray, name, spacing, origin, direction, check_values) -> sitk.Image:
    if arr.ndim != 3:
        raise InputError(f"'{name}' must be a 3-D array in (z, y, x) order, got shape {arr.shape}")
    if np.iscomplexobj(arr):
        raise InputError(f"'{name}' is a complex array ({arr.dtype}); pass a real image (e.g. np.abs of it)")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"'{name}' must be a numeric array, got dtype {arr.dtype}")
    if check_values and np.issubdtype(arr.dtype, np.floating):
        _check_values(arr, name)  # in the array's own precision, before the float32 cast
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    if spacing is None:
        warnings.warn(f"'{name}': a NumPy array without spacing= gets 1 mm voxels, origin 0 and the identity "
                      "direction; pass spacing=, origin=, direction= (SimpleITK (x, y, z) order) to register in "
                      "millimetres", DefaultGeometryWarning, stacklevel=5)
    else:
        _check_vector(spacing, "spacing", positive=True)
        image.SetSpacing([float(s) for s in spacing])
    if origin is not None:
        _check_vector(origin, "origin")
        image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        try:
            d = np.asarray(direction, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise InputError(f"'direction' must be 9 numbers (a 3×3 matrix, row-major), got {direction!r}") from None
        if d.shape != (9,) or not np.all(np.isfinite(d)):
            raise InputError(f"'direction' must be 9 finite numbers (a 3×3 matrix, row-major), got {direction!r}")
        check_direction(d, "direction")
        try:
            image.SetDirection([float(v) for v in d])
        except RuntimeError as err:
            raise InputError(f"'direction' is not a valid direction matrix ({str(err).strip().splitlines()[-1]})") \
                from None
    return image


def check_direction(direction, name: str) -> None:
    """Direction cosines must be orthonormal: a singular or sheared matrix is refused, naming ``name``."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    det = float(np.linalg.det(d))
    if not abs(det) > 1e-6:
        raise InputError(f"'{name}' has a singular direction matrix (det {det:.3g}): its axes are not independent; "
                         f"got {np.round(d, 6).tolist()}")
    error = float(np.max(np.abs(d.T @ d - np.eye(3))))
    if error > ORTHOGONALITY_TOLERANCE:
        raise InputError(f"'{name}' has non-orthogonal direction cosines (a sheared grid; |DᵀD − I| = {error:.3g}, "
                         f"D = {np.round(d, 6).tolist()}): NIfTI outputs cannot keep such a grid (ITK coerces it "
                         "to another one). Resample the image onto an orthogonal grid first")


def _check_values(arr: np.ndarray, name: str) -> None:
    finite = np.isfinite(arr)
    if not np.all(finite):
        bad = int(np.size(arr) - np.count_nonzero(finite))
        raise InputError(f"'{name}' contains {bad} NaN/Inf intensities")
    if arr.size == 0:
        return
    lo, hi = float(np.min(arr)), float(np.max(arr))
    peak = max(abs(lo), abs(hi))
    if peak > FLOAT32_MAX:
        raise InputError(f"'{name}' has intensities beyond the float32 range (largest magnitude {peak:.3g} > "
                         f"{FLOAT32_MAX:.3g}); the registration computes in float32: rescale the image (NCC does "
                         "not depend on the intensity scale)")
    if 0.0 < hi - lo < SMALLEST_INTENSITY_RANGE:
        raise InputError(f"'{name}' has an intensity range of only {hi - lo:.3g} (values {lo:.3g} … {hi:.3g}): too "
                         "small for float32 arithmetic, it would look constant; rescale the image (NCC does not "
                         "depend on the intensity scale)")


def as_mask(obj: Optional[ImageLike], name: str, reference: sitk.Image, reference_name: str = "fixed image",
            **geometry) -> Optional[sitk.Image]:
    """Validate a mask against the image it belongs to (``reference``, called ``reference_name`` in errors): same
    size and geometry, at least one non-zero voxel."""
    if obj is None:
        return None
    if isinstance(obj, np.ndarray) and not geometry.get("spacing"):
        geometry = dict(spacing=reference.GetSpacing(), origin=reference.GetOrigin(),
                        direction=reference.GetDirection())
    mask = as_image(obj, name, **geometry)
    g_mask, g_ref = ImageGeometry.from_sitk(mask), ImageGeometry.from_sitk(reference)
    if g_mask.size != g_ref.size:
        raise InputError(f"'{name}' must have the {reference_name}'s size {g_ref.size}, got {g_mask.size}")
    if not g_mask.same_grid(g_ref):
        raise InputError(f"'{name}' must have the {reference_name}'s geometry (spacing {g_ref.spacing}, origin "
                         f"{g_ref.origin}, direction {g_ref.direction}); got spacing {g_mask.spacing}, "
                         f"origin {g_mask.origin}, direction {g_mask.direction}")
    if not np.any(sitk.GetArrayViewFromImage(mask) > 0):
        raise InputError(f"'{name}' is empty: it has no voxel > 0")
    return mask


def _check_vector(v, name, positive=False):
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.full(1, np.nan)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        raise InputError(f"'{name}' must be 3 finite{' positive' if positive else ''} numbers in (x, y, z) "
                         f"order, got {v!r}")


# ------------------------------------------------------------------------------------------------ writing
SINGLE_FILE_FORMATS = (".nii.gz", ".nii", ".mha", ".nrrd")


def run_id_metadata(run_id: str) -> Dict[str, str]:
    """Metadata that ties an image file to its run: NIfTI keeps ``ITK_FileNotes`` (its ``descrip`` field, 80
    characters); MetaImage and NRRD keep every key."""
    return {"ITK_FileNotes": f"idir_fast run_id={run_id}", RUN_ID_KEY: run_id}


def image_run_id(path: Union[str, os.PathLike]) -> Optional[str]:
    """The run id an image output carries in its metadata (``None`` when it carries none or cannot be read)."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        keys = set(reader.GetMetaDataKeys())
        if RUN_ID_KEY in keys:
            return reader.GetMetaData(RUN_ID_KEY).strip() or None
        for key in ("ITK_FileNotes", "descrip"):
            if key in keys:
                text = reader.GetMetaData(key).strip()
                if text.startswith("idir_fast run_id="):
                    return text.split("=", 1)[1].strip() or None
    except RuntimeError:
        pass
    return None


def verify_image_file(tmp: Union[str, os.PathLike], image: sitk.Image, final: Union[str, os.PathLike]) -> None:
    """Check a just-written image file before it replaces ``final``: a NIfTI file holds all its voxel data
    (ITK's NIfTI writer only prints ``NWAD: wrote only …`` when the disk is full; counted on the file itself), a
    MetaImage/NRRD file reads back whole, and every file's header has the image's size and components."""
    if nifti.is_nifti(final):
        try:
            nifti.check(tmp, count_non_finite=False)
        except nifti.NiftiProblem as err:
            raise output_error(final, OSError(f"incomplete file after writing: {err}")) from None
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(os.fspath(tmp))
        reader.ReadImageInformation()
        if not nifti.is_nifti(final):
            reader.Execute()  # MetaImage/NRRD: ITK refuses a file whose data is short, so read it all back
    except RuntimeError as err:
        raise output_error(final, err, "read back") from None
    if (tuple(reader.GetSize()) != tuple(image.GetSize())
            or reader.GetNumberOfComponents() != image.GetNumberOfComponentsPerPixel()):
        raise OutputError(f"cannot write {str(final)!r}: the written file reads back as size {reader.GetSize()} "
                          f"× {reader.GetNumberOfComponents()} components, not {image.GetSize()} × "
                          f"{image.GetNumberOfComponentsPerPixel()}")


GZIP_LEVEL = 1
"""ISA-L's level for ``.nii.gz`` outputs: float fields and images hardly compress at any level, so the fastest
level loses next to nothing (docs/measurements.md)."""


def _isal_gzip():
    """python-isal's drop-in for :mod:`gzip` (ISA-L: the same format, much faster to write), or ``None`` where it
    is not installed."""
    try:
        from isal import igzip
    except ImportError:
        return None
    return igzip


def _write_nifti_gz(image: sitk.Image, tmp: str, final: str) -> bool:
    """Write ``image`` as ``.nii.gz`` into ``tmp`` (destined for ``final``): ITK writes the plain NIfTI into a
    temporary file of its own beside ``final`` (a leftover is found as any other), ISA-L compresses it (the
    same file content as ITK's own zlib compression, in a fraction of its time; no name and time in the gzip
    header, so the same image gives the same bytes). ``False`` when python-isal is not installed."""
    igzip = _isal_gzip()
    if igzip is None:
        return False
    raw = temporary_path(final[: -len(".gz")])
    try:
        sitk.WriteImage(image, raw, False)
        with open(raw, "rb") as src, open(tmp, "wb") as out:
            with igzip.IGzipFile(filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(raw)
    return True


def write_image_to(tmp: Union[str, os.PathLike], image: sitk.Image, final: Union[str, os.PathLike],
                   compress: bool = True) -> None:
    """Write ``image`` into the temporary file ``tmp`` (destined for ``final``) and check it; a compressed NIfTI
    through ISA-L where it is installed (:func:`_write_nifti_gz`), else through ITK."""
    gz = compress and str(final).lower().endswith(".nii.gz")
    with writing(final):
        if not (gz and _write_nifti_gz(image, os.fspath(tmp), os.fspath(final))):
            sitk.WriteImage(image, os.fspath(tmp), compress)
    verify_image_file(tmp, image, final)


def write_image(image: sitk.Image, path: Union[str, os.PathLike], compress: bool = True,
                metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write a SimpleITK image atomically: a temporary file, checked (:func:`verify_image_file`) and flushed to
    disk, then renamed; on any failure an :class:`~idir_fast.errors.OutputError` and the previous file is kept.

    Args:
        metadata: string keys set on ``image`` before writing (e.g. :func:`run_id_metadata`).
    """
    ext = split_extension(path)[1].lower()
    if ext not in SINGLE_FILE_FORMATS:
        raise InputError(f"'path': write_image writes single-file formats {SINGLE_FILE_FORMATS}, got {str(path)!r}")
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, value)
    with atomic_path(path) as tmp:
        write_image_to(tmp, image, path, compress)
    return Path(path)
