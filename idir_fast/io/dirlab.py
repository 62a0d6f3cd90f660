"""DIR-LAB 4DCT (Castillo et al. 2009): raw volumes, landmark files, and the TRE evaluation.

Volumes are headerless little-endian int16 in C order ``(z, y, x)``, no flips; the geometry comes from the case
table below (origin 0, identity direction). Landmarks are 1-based voxel indices ``x y z``; world points are
``(index − 1) · spacing``. Fixed = T00 (inhale), moving = T50 (exhale), as in the paper.
"""
from __future__ import annotations

import os

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from ..core.metrics import tre
from ..errors import InputError
from .landmarks import read_points

# case: (size x, y, z), (spacing x = y, z) in mm, published initial mean TRE (mm)
CASES = {
    1: ((256, 256, 94), (0.97, 2.5), 3.89),
    2: ((256, 256, 112), (1.16, 2.5), 4.34),
    3: ((256, 256, 104), (1.15, 2.5), 6.94),
    4: ((256, 256, 99), (1.13, 2.5), 9.83),
    5: ((256, 256, 106), (1.10, 2.5), 7.48),
    6: ((512, 512, 128), (0.97, 2.5), 10.89),
    7: ((512, 512, 136), (0.97, 2.5), 11.03),
    8: ((512, 512, 128), (0.97, 2.5), 14.99),
    9: ((512, 512, 128), (0.97, 2.5), 7.92),
    10: ((512, 512, 120), (0.97, 2.5), 7.30),
}
# Stored intensities are HU + 1024 (air ≈ 0).
HU_OFFSET = 1024.0


def check_case(case) -> int:
    if isinstance(case, bool) or not isinstance(case, (int, np.integer)) or int(case) not in CASES:
        raise InputError(f"'case' must be a DIR-LAB case number 1–10, got {case!r}")
    return int(case)


def spacing(case: int) -> tuple:
    sxy, sz = CASES[check_case(case)][1]
    return (sxy, sxy, sz)


def image_names(case: int, phase: str) -> list:
    """The file names the public release uses for a case's volume (they differ between cases)."""
    case = check_case(case)
    return [f"case{case}_{phase}_s.img", f"case{case}_{phase}-ssm.img", f"case{case}_{phase}.img"]


def landmark_name(case: int, phase: str) -> str:
    return f"Case{check_case(case)}_300_{phase}_xyz.txt"


def _find(data_dir: Path, names) -> Optional[Path]:
    lower = {n.lower() for n in names}
    for root, _dirs, files in os.walk(data_dir):
        for f in files:
            if f.lower() in lower:
                return Path(root) / f
    return None


def read_volume(path: Union[str, os.PathLike], case: int) -> sitk.Image:
    """Read a raw DIR-LAB volume as a Float32 HU image with the case's geometry."""
    case = check_case(case)
    p = Path(path)
    if not p.is_file():
        raise InputError(f"'path': DIR-LAB volume not found: {str(p)!r}")
    (nx, ny, nz), _, _ = CASES[case]
    expected = nx * ny * nz * 2
    actual = p.stat().st_size
    if actual != expected:
        raise InputError(f"'path': {str(p)!r} has {actual} bytes but DIR-LAB case {case} needs {nx}×{ny}×{nz} int16 "
                         f"= {expected} bytes (wrong case number or a truncated file)")
    arr = np.fromfile(p, dtype="<i2").reshape(nz, ny, nx).astype(np.float32) - HU_OFFSET
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing(case))
    return img


def read_landmarks(path: Union[str, os.PathLike], case: int) -> np.ndarray:
    """Landmarks of a case as world points (mm): ``(index − 1) · spacing``."""
    idx = read_points(path, "landmarks")
    return (idx - 1.0) * np.asarray(spacing(case))


@dataclass
class DirLabCase:
    case: int
    fixed_landmarks: np.ndarray  # T00, world mm
    moving_landmarks: np.ndarray  # T50, world mm
    fixed_path: Optional[Path] = None
    moving_path: Optional[Path] = None

    def images(self):
        if self.fixed_path is None or self.moving_path is None:
            raise InputError(f"'data': the T00/T50 volumes of DIR-LAB case {self.case} were not found "
                             f"(expected one of {image_names(self.case, 'T00')})")
        return read_volume(self.fixed_path, self.case), read_volume(self.moving_path, self.case)


def find_case(data_dir: Union[str, os.PathLike], case: int) -> DirLabCase:
    """Locate a case's landmark files (required) and volumes (optional) anywhere under ``data_dir``."""
    case = check_case(case)
    d = Path(data_dir)
    if not d.is_dir():
        raise InputError(f"'data': folder not found: {str(d)!r}")
    lm = [_find(d, [landmark_name(case, ph)]) for ph in ("T00", "T50")]
    if lm[0] is None or lm[1] is None:
        raise InputError(f"'data': landmark files {landmark_name(case, 'T00')} / {landmark_name(case, 'T50')} "
                         f"not found under {str(d)!r}")
    fixed_lm, moving_lm = read_landmarks(lm[0], case), read_landmarks(lm[1], case)
    if fixed_lm.shape != moving_lm.shape:
        raise InputError(f"'data': case {case} landmark files hold {len(fixed_lm)} and {len(moving_lm)} points")
    return DirLabCase(case, fixed_lm, moving_lm, _find(d, image_names(case, "T00")),
                      _find(d, image_names(case, "T50")))


def identity_tre(data_dir, case: int) -> dict:
    """TRE of the identity transform (the published 'initial TRE')."""
    c = find_case(data_dir, case)
    return tre(c.fixed_landmarks, c.moving_landmarks)


