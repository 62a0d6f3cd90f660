"""A registration pair made ready for the loop: checked, in the network's frame, on the training device."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk
import torch

from ..core.geometry import ImageGeometry, apply_affine, boxes_overlap, compose
from ..errors import InputError


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
    """

    fixed_geometry: ImageGeometry
    moving_geometry: ImageGeometry
    world_to_normalised: np.ndarray
    normalised_to_moving_index: np.ndarray
    moving: torch.Tensor
    points: torch.Tensor
    fixed_values: torch.Tensor

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    def moving_index_affine(self):
        """``(lin (3, 3), off (3,))`` on the device with ``index = Φ @ lin + off`` (normalised → moving voxels)."""
        n2mi = torch.as_tensor(self.normalised_to_moving_index, dtype=self.points.dtype, device=self.points.device)
        return n2mi[:3, :3].T.contiguous(), n2mi[:3, 3].contiguous()


def prepare_pair(fixed: sitk.Image, moving: sitk.Image, mask: Optional[sitk.Image], *,
                 normalisation: str = "isotropic", device=torch.device("cpu"),
                 dtype=torch.float32) -> PreparedPair:
    """Validate a pair (overlap, non-constant intensities) and move what the loop needs to ``device``."""
    fg, mg = ImageGeometry.from_sitk(fixed), ImageGeometry.from_sitk(moving)
    if not boxes_overlap(fg, mg):
        lo_f, hi_f = fg.world_extent_box()
        lo_m, hi_m = mg.world_extent_box()
        raise InputError("'fixed' and 'moving' do not overlap in world space (LPS mm): fixed spans "
                         f"{np.round(lo_f, 1).tolist()}..{np.round(hi_f, 1).tolist()}, moving spans "
                         f"{np.round(lo_m, 1).tolist()}..{np.round(hi_m, 1).tolist()}")
    fixed_arr = sitk.GetArrayViewFromImage(fixed)
    if mask is not None:
        inside = np.flatnonzero(sitk.GetArrayViewFromImage(mask).ravel() > 0)
    else:
        inside = np.arange(fixed_arr.size)
    fixed_values = np.asarray(fixed_arr).ravel()[inside]
    if fixed_values.size < 2 or float(np.std(fixed_values)) == 0.0:
        raise InputError("'fixed' is constant inside the mask: NCC is undefined for a constant image")
    moving_arr = sitk.GetArrayFromImage(moving)
    if float(np.std(moving_arr)) == 0.0:
        raise InputError("'moving' is constant: NCC is undefined for a constant image")

    w2n = fg.world_to_normalised(normalisation)
    n2mi = compose(mg.world_to_index(), np.linalg.inv(w2n))
    index_all = fg.voxel_grid_index(dtype=torch.float64)[torch.from_numpy(inside)]
    points = apply_affine(fg.index_to_normalised(normalisation), index_all)
    return PreparedPair(
        fixed_geometry=fg, moving_geometry=mg, world_to_normalised=w2n, normalised_to_moving_index=n2mi,
        moving=torch.as_tensor(moving_arr, dtype=dtype, device=device),
        points=points.to(device=device, dtype=dtype),
        fixed_values=torch.as_tensor(fixed_values, dtype=dtype, device=device),
    )
