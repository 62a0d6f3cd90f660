"""Frames and the one place where coordinates change frame.

Three frames are used throughout the package, always named in variable and function names:

* **index** – continuous voxel indices ``(i, j, k)`` in SimpleITK's ``(x, y, z)`` order; voxel centres are integers.
  (NumPy arrays from ``sitk.GetArrayFromImage`` are indexed ``[k, j, i]``.)
* **world** – ITK's physical frame, LPS millimetres: ``p = origin + D · diag(spacing) · i``.
* **normalised** – the SIREN's input/output domain, a box around the fixed image. Two choices:

  - ``"isotropic"`` (default): a similarity transform of the world frame. The fixed image's index axes are
    rotated onto the network axes, its centre goes to 0 and its longest physical extent spans ``[-1, 1]``.
    Derivatives in this frame are world derivatives times one constant, so regularisers treat all directions
    alike, whatever the voxel spacing.
  - ``"per-axis"``: each index axis is mapped separately onto ``[-1, 1]`` (``-1 + 2 i / (N - 1)``), as in the
    released IDIR code. Anisotropic scans get squeezed into the cube.

All conversions are 4×4 homogeneous affines in float64; :func:`apply_affine` applies one to points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

NORMALISATIONS = ("isotropic", "per-axis")


@dataclass(frozen=True)
class ImageGeometry:
    """Sampling grid of a 3-D image, as SimpleITK describes it.

    Attributes:
        size: voxels per axis, ``(nx, ny, nz)``.
        spacing: mm per voxel, ``(sx, sy, sz)``.
        origin: world position of voxel ``(0, 0, 0)``, LPS mm.
        direction: 3×3 direction-cosine matrix, row-major (``direction[r][c]``), columns are the index axes.
    """

    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple  # 9 floats, row-major as sitk.Image.GetDirection()

    @staticmethod
    def from_sitk(image) -> "ImageGeometry":
        return ImageGeometry(
            size=tuple(int(v) for v in image.GetSize()),
            spacing=tuple(float(v) for v in image.GetSpacing()),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    @staticmethod
    def from_dict(d: dict) -> "ImageGeometry":
        return ImageGeometry(tuple(int(v) for v in d["size"]), tuple(map(float, d["spacing"])),
                             tuple(map(float, d["origin"])), tuple(map(float, d["direction"])))

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    def apply_to(self, image) -> None:
        """Copy this geometry's spacing, origin and direction onto a SimpleITK image of the same size."""
        if tuple(image.GetSize()) != tuple(self.size):
            raise ValueError(f"image size {image.GetSize()} does not match geometry size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape_zyx(self) -> tuple:
        """Array shape as NumPy/torch hold the voxels: ``(nz, ny, nx)``."""
        return tuple(reversed(self.size))

    def index_to_world(self) -> np.ndarray:
        """4×4 affine mapping index ``(i, j, k)`` to world LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        a[:3, 3] = self.origin
        return a

    def world_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_world())

    def world_to_normalised(self, normalisation: str = "isotropic") -> np.ndarray:
        """4×4 affine mapping world LPS mm to the network's normalised frame (see module docstring)."""
        return self.index_to_normalised(normalisation) @ self.world_to_index()

    def index_to_normalised(self, normalisation: str = "isotropic") -> np.ndarray:
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        n = np.asarray(self.size, dtype=np.float64)
        centre = (n - 1.0) / 2.0
        if normalisation == "per-axis":
            scale = 1.0 / np.maximum(centre, 0.5)
        else:
            half_extent = np.max(np.maximum(centre, 0.5) * np.asarray(self.spacing))
            scale = np.asarray(self.spacing) / half_extent
        a = np.eye(4)
        a[:3, :3] = np.diag(scale)
        a[:3, 3] = -scale * centre
        return a

    def world_extent_box(self) -> tuple:
        """Axis-aligned world bounding box ``(lo, hi)`` of the voxel centres (corners of the index box)."""
        corners = np.array([[i, j, k] for i in (0, self.size[0] - 1) for j in (0, self.size[1] - 1)
                            for k in (0, self.size[2] - 1)], dtype=np.float64)
        w = apply_affine(self.index_to_world(), corners)
        return w.min(0), w.max(0)

    def voxel_grid_index(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """All voxel-centre indices, ``(nz*ny*nx, 3)`` in ``(i, j, k)`` order, flattened in array (C) order."""
        nx, ny, nz = self.size
        k, j, i = torch.meshgrid(torch.arange(nz, device=device), torch.arange(ny, device=device),
                                 torch.arange(nx, device=device), indexing="ij")
        return torch.stack([i, j, k], dim=-1).reshape(-1, 3).to(dtype)

    def same_grid(self, other: "ImageGeometry", tol: float = 1e-4) -> bool:
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, rtol=0, atol=tol * max(self.spacing))
                and np.allclose(self.origin, other.origin, rtol=0, atol=tol * max(self.spacing))
                and np.allclose(self.direction, other.direction, rtol=0, atol=tol))


def apply_affine(affine, points):
    """Apply a 4×4 affine to points ``(..., 3)``; works for NumPy arrays and torch tensors alike."""
    if isinstance(points, torch.Tensor):
        a = torch.as_tensor(affine, dtype=points.dtype, device=points.device)
        return points @ a[:3, :3].T + a[:3, 3]
    a = np.asarray(affine, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ a[:3, :3].T + a[:3, 3]


def compose(*affines: Sequence) -> np.ndarray:
    """``compose(A, B, C)`` = ``A @ B @ C`` (C applied first)."""
    out = np.eye(4)
    for a in affines:
        out = out @ np.asarray(a, dtype=np.float64)
    return out


def boxes_overlap(a: ImageGeometry, b: ImageGeometry, a_to_b_world=None) -> bool:
    """Whether the world bounding boxes of two images intersect, ``a``'s box first mapped by the 4×4 affine
    ``a_to_b_world`` when given."""
    alo, ahi = a.world_extent_box()
    if a_to_b_world is not None:
        corners = np.array([[x, y, z] for x in (alo[0], ahi[0]) for y in (alo[1], ahi[1]) for z in (alo[2], ahi[2])])
        mapped = apply_affine(a_to_b_world, corners)
        alo, ahi = mapped.min(0), mapped.max(0)
    blo, bhi = b.world_extent_box()
    pad = 0.5 * (np.max(a.spacing) + np.max(b.spacing))
    return bool(np.all(alo - pad <= bhi) and np.all(blo - pad <= ahi))
