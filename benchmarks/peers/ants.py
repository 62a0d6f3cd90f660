"""ANTs (antspyx): ``ants.registration(type_of_transform='SyN')`` with antspyx defaults (affine + SyN, Mattes MI).

Point convention (checked on a known shift, :mod:`.conventions`): points in ITK/LPS world mm, no RAS flip, through
``fwdtransforms`` (``[…Warp.nii.gz, …GenericAffine.mat]``: the list that warps *images* moving → fixed) with
nothing inverted — point mapping runs opposite to image mapping, so that list maps points fixed → moving.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..common import Stopwatch, importable, package_version
from . import Registered, displacement_jacobian

PROFILES = {"default": ("SyN", {}), "quick": ("SyN", dict(aff_iterations=(100, 50, 0, 0), reg_iterations=(10, 5, 0))),
            "syncc": ("SyNCC", {})}


def unavailable() -> Optional[str]:
    return None if importable("ants") else "antspyx is not importable (pip install antspyx)"


def to_ants(image: sitk.Image):
    """SimpleITK → ANTs image with the same voxels, spacing, origin and direction (both are ITK, LPS)."""
    import ants

    arr = np.ascontiguousarray(sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0))  # (x, y, z)
    return ants.from_numpy(arr, origin=tuple(image.GetOrigin()), spacing=tuple(image.GetSpacing()),
                           direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3))


def map_points(points: np.ndarray, transforms: Sequence[str], whichtoinvert: Sequence[bool]) -> np.ndarray:
    """``(N, 3)`` LPS world points through an ANTs transform list (antsApplyTransformsToPoints)."""
    import ants
    import pandas as pd

    df = pd.DataFrame(np.asarray(points, dtype=np.float64), columns=["x", "y", "z"])
    out = ants.apply_transforms_to_points(3, df, list(transforms), whichtoinvert=list(whichtoinvert))
    return out[["x", "y", "z"]].to_numpy(dtype=np.float64)


def register(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, *, threads: int, profile: str = "default",
             seed: int = 1) -> Registered:
    """One ANTs registration (no mask: antspyx's default); the transforms stay in a folder removed at exit."""
    import ants

    kind, kwargs = PROFILES[profile]
    try:  # antspyx passes --random-seed to antsRegistration when this is set (Mattes sampling is random)
        ants.config._random_seed = int(seed)
    except AttributeError:
        pass
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    work = tempfile.TemporaryDirectory(prefix="peers_ants_")  # removed when the result is dropped
    fa, ma = to_ants(fixed), to_ants(moving)
    with Stopwatch() as sw:
        reg = ants.registration(fa, ma, type_of_transform=kind, outprefix=os.path.join(work.name, "ants_"),
                                **kwargs)
    lists = {"fwd": list(reg["fwdtransforms"]), "inv": list(reg["invtransforms"])}
    warps = [t for t in lists["fwd"] if t.endswith("Warp.nii.gz")]

    def mapping(points, recipe="fwd", _folder=work):
        return map_points(points, lists[recipe], [recipe == "inv" and t.endswith(".mat") for t in lists[recipe]])

    def warp_labels(labels, _folder=work):
        moved = ants.apply_transforms(fixed=fa, moving=to_ants(labels), transformlist=lists["fwd"],
                                      interpolator="nearestNeighbor")
        out = sitk.GetImageFromArray(np.rint(moved.numpy().transpose(2, 1, 0)).astype(np.uint8))
        out.CopyInformation(fixed)
        return out

    def jacobian(_folder=work):
        # the warp field's determinant; the affine part has a positive determinant and does not change the sign
        return displacement_jacobian(sitk.ReadImage(warps[0]))

    return Registered(mapping, jacobian if warps else None, sw.wall, sw.cpu,
                      {"type_of_transform": kind, **{k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in kwargs.items()},
                       "mask": "none (antspyx default)", "threads": threads},
                      getattr(ants, "__version__", package_version("antspyx")),
                      extra={"recipe": "LPS points, fwdtransforms, whichtoinvert all False"},
                      warp_labels=warp_labels)


def diagnostics(result: Registered, points: np.ndarray) -> dict:
    """The wrong recipes the convention check must tell apart: ``invtransforms`` with ``[True, False]``, and
    RAS-flipped points."""
    flip = np.array([-1.0, -1.0, 1.0])
    return {"wrong_recipe_invtransforms": result.map_points(points, "inv"),
            "wrong_frame_RAS": result.map_points(points * flip) * flip}
