"""A registration pair made ready for the loop: checked, in the network's frame, on the training device."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk
import torch

from ..core.geometry import ImageGeometry, apply_affine, boxes_overlap, compose
from ..errors import InputError
from .points import gradient_weights


@dataclass
class PreparedPair:
    """Tensors an optimisation needs, on one device.

    Attributes:
        fixed_geometry, moving_geometry: grids of the two images.
        world_to_normalised: 4×4 float64, the network frame (fixed image's box).
        normalised_to_moving_index: 4×4 float64, Φ's frame → moving voxel indices.
        moving: ``(nz, ny, nx)`` moving intensities.
        points: ``(M, 3)`` normalised coordinates of the fixed voxels inside the mask.
        fixed_values: ``(M,)`` fixed intensities there.
        world_affine: 4×4 float64 fixed-world → moving-world map applied after Φ (an affine stage or a starting
            transform; the identity without one): the total map is ``A(Φ(x))``.
        moving_weights: ``(nz, ny, nx)`` moving mask (1 inside), or ``None``: the similarity then counts only
            points whose Φ(x) falls inside it.
        fixed: ``(nz, ny, nx)`` fixed intensities (the neighbourhoods of the local NCC), or ``None``.
    """

    fixed_geometry: ImageGeometry
    moving_geometry: ImageGeometry
    world_to_normalised: np.ndarray
    normalised_to_moving_index: np.ndarray
    moving: torch.Tensor
    points: torch.Tensor
    fixed_values: torch.Tensor
    world_affine: np.ndarray = None
    moving_weights: Optional[torch.Tensor] = None
    sources: Optional[tuple] = None  # (fixed image, moving image, mask-voxel indices): for smoothed stages
    fixed: Optional[torch.Tensor] = None

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    def with_smoothing(self, voxels: float) -> "PreparedPair":
        """This pair with both images smoothed by a Gaussian of ``voxels`` × the fixed image's largest spacing (the
        same physical width for both images); the points stay. ``0`` returns the pair itself."""
        if not voxels:
            return self
        fixed, moving, inside = self.sources
        sigma = float(voxels) * max(self.fixed_geometry.spacing)
        fixed_s = sitk.SmoothingRecursiveGaussian(fixed, sigma)
        moving_s = sitk.SmoothingRecursiveGaussian(moving, sigma)
        dev, dt = self.points.device, self.points.dtype
        fixed_arr = sitk.GetArrayFromImage(fixed_s)
        values = fixed_arr.ravel()[inside]
        return dataclasses.replace(self, moving=torch.as_tensor(sitk.GetArrayFromImage(moving_s), dtype=dt, device=dev),
                                   fixed_values=torch.as_tensor(values, dtype=dt, device=dev),
                                   fixed=torch.as_tensor(fixed_arr, dtype=dt, device=dev))

    def sampling_weights(self, sampling: str) -> Optional[torch.Tensor]:
        """``(M,)`` weights of this pair's mask points for a stage's ``sampling`` (``None``: uniform), from the
        fixed image this pair holds (a smoothed stage's own)."""
        if sampling == "uniform":
            return None
        if sampling != "gradient":
            raise ValueError(f"unknown sampling {sampling!r}")
        if self.sources is None:
            raise ValueError("gradient sampling needs the pair's mask voxels: a pair made by prepare_pair")
        inside = torch.as_tensor(self.sources[2], device=self.fixed.device)
        return gradient_weights(self.fixed, inside, self.fixed_geometry.spacing)

    def normalised_to_fixed_index(self) -> np.ndarray:
        """4×4 float64: the network frame → fixed voxel indices."""
        return np.linalg.inv(self.world_to_normalised @ self.fixed_geometry.index_to_world())

    def moving_index_affine(self):
        """``(lin (3, 3), off (3,))`` on the device with ``index = Φ @ lin + off`` (normalised → moving voxels)."""
        n2mi = torch.as_tensor(self.normalised_to_moving_index, dtype=self.points.dtype, device=self.points.device)
        return n2mi[:3, :3].T.contiguous(), n2mi[:3, 3].contiguous()


def prepare_pair(fixed: sitk.Image, moving: sitk.Image, mask: Optional[sitk.Image], *,
                 normalisation: str = "isotropic", device=torch.device("cpu"), dtype=torch.float32,
                 world_affine: Optional[np.ndarray] = None, moving_mask: Optional[sitk.Image] = None,
                 names=("fixed", "moving")) -> PreparedPair:
    """Validate a pair (overlap, non-constant intensities) and move what the loop needs to ``device``.

    Args:
        world_affine: 4×4 fixed-world → moving-world map applied after Φ (``None``: identity).
        moving_mask: a mask on the moving image's grid: only points mapped inside it count in the similarity.
        names: the argument names of the two images in error messages.
    """
    fg, mg = ImageGeometry.from_sitk(fixed), ImageGeometry.from_sitk(moving)
    A = np.eye(4) if world_affine is None else np.asarray(world_affine, dtype=np.float64)
    if not boxes_overlap(fg, mg, A):
        lo_f, hi_f = fg.world_extent_box()
        lo_m, hi_m = mg.world_extent_box()
        via = " (after the starting/affine transform)" if world_affine is not None else ""
        raise InputError(f"'{names[0]}' and '{names[1]}' do not overlap in world space (LPS mm){via}: "
                         f"{names[0]} spans {np.round(lo_f, 1).tolist()}..{np.round(hi_f, 1).tolist()}, "
                         f"{names[1]} spans {np.round(lo_m, 1).tolist()}..{np.round(hi_m, 1).tolist()}")
    fixed_arr = sitk.GetArrayViewFromImage(fixed)
    if mask is not None:
        inside = np.flatnonzero(sitk.GetArrayViewFromImage(mask).ravel() > 0)
    else:
        inside = np.arange(fixed_arr.size)
    fixed_values = np.asarray(fixed_arr).ravel()[inside]
    if fixed_values.size < 2 or float(np.std(fixed_values)) == 0.0:
        raise InputError(f"'{names[0]}' is constant inside the mask: NCC is undefined for a constant image")
    moving_arr = sitk.GetArrayFromImage(moving)
    if float(np.std(moving_arr)) == 0.0:
        raise InputError(f"'{names[1]}' is constant: NCC is undefined for a constant image")

    w2n = fg.world_to_normalised(normalisation)
    n2mi = compose(mg.world_to_index(), A, np.linalg.inv(w2n))
    kk, jj, ii = np.unravel_index(inside, fg.shape_zyx)  # voxel indices of the mask only (never the full grid)
    index_inside = torch.from_numpy(np.stack([ii, jj, kk], axis=1).astype(np.float64))
    points = apply_affine(fg.index_to_normalised(normalisation), index_inside)
    weights = None
    if moving_mask is not None:
        weights = torch.as_tensor((sitk.GetArrayViewFromImage(moving_mask) > 0).astype(np.float32), dtype=dtype,
                                  device=device)
    return PreparedPair(
        fixed_geometry=fg, moving_geometry=mg, world_to_normalised=w2n, normalised_to_moving_index=n2mi,
        moving=torch.as_tensor(moving_arr, dtype=dtype, device=device),
        points=points.to(device=device, dtype=dtype),
        fixed_values=torch.as_tensor(fixed_values, dtype=dtype, device=device),
        world_affine=A, moving_weights=weights, sources=(fixed, moving, inside),
        fixed=torch.as_tensor(np.array(fixed_arr), dtype=dtype, device=device),
    )
