"""Landmark files: three numbers per row, tolerant of CRLF, leading spaces, tabs, commas and a header line."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Union

import numpy as np

from ..core.geometry import ImageGeometry, apply_affine
from ..errors import InputError

_SPLIT = re.compile(r"[\s,;]+")
FRAMES = ("world", "index0", "index1")


def read_points(path: Union[str, os.PathLike], name: str = "landmarks") -> np.ndarray:
    """Read an ``(N, 3)`` point file.

    Rows hold exactly three numbers separated by whitespace, commas or semicolons. Empty lines are skipped and a
    first line without numbers is taken as a header. Any other row that is not three numbers is an error naming
    the file and line.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"'{name}': landmark file not found: {str(p)!r}")
    try:
        text = p.read_text(encoding="utf-8-sig", errors="strict")
    except (UnicodeDecodeError, OSError) as err:
        raise InputError(f"'{name}': cannot read {str(p)!r} as text ({err})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = [f for f in _SPLIT.split(line.strip()) if f]
        if not fields:
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            if not rows and lineno == 1 and not any(_is_number(f) for f in fields):
                continue  # header
            raise InputError(f"'{name}': {str(p)!r} line {lineno}: expected 3 numbers, got {line.strip()!r}") \
                from None
        if len(values) != 3:
            raise InputError(f"'{name}': {str(p)!r} line {lineno}: expected 3 columns (x y z), got {len(values)}")
        if not np.all(np.isfinite(values)):
            raise InputError(f"'{name}': {str(p)!r} line {lineno}: non-finite value")
        rows.append(values)
    if not rows:
        raise InputError(f"'{name}': {str(p)!r} holds no landmarks")
    return np.asarray(rows, dtype=np.float64)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def to_world(points: np.ndarray, frame: str, geometry: ImageGeometry = None) -> np.ndarray:
    """Convert points given in ``frame`` (``world`` mm, 0-based ``index0`` or 1-based ``index1`` voxel indices in
    (x, y, z) order) to world LPS mm."""
    if frame not in FRAMES:
        raise InputError(f"'frame' must be one of {FRAMES}, got {frame!r}")
    if frame == "world":
        return np.asarray(points, dtype=np.float64)
    if geometry is None:
        raise InputError(f"landmarks in frame {frame!r} need the image geometry")
    idx = np.asarray(points, dtype=np.float64) - (1.0 if frame == "index1" else 0.0)
    return apply_affine(geometry.index_to_world(), idx)


def write_points(points: np.ndarray, path: Union[str, os.PathLike]) -> None:
    """Write ``(N, 3)`` points: a ``.csv`` file comma-separated under an ``x,y,z`` header (as spreadsheets and
    pandas read it), any other name one space-separated row per point (as DIR-LAB's files)."""
    from .files import write_text

    rows = np.asarray(points)
    if os.fspath(path).lower().endswith(".csv"):
        write_text("x,y,z\n" + "".join(f"{x:.6f},{y:.6f},{z:.6f}\n" for x, y, z in rows), path)
    else:
        write_text("".join(f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in rows), path)
