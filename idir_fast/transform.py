"""A trained transform as data: Φ maps fixed-image world points (LPS mm) to moving-image world points.

:class:`Transform` holds the network(s) and their frames (the network, its world→normalised affine, the affine
part applied after it, the fixed and moving grids) and evaluates them — points, the fields on the fixed grid, the
warped moving image — on the device it was trained on, in chunks of points generated on that device, so writing
the fields of a large grid neither materialises the grid nor allocates per chunk (:class:`StreamWorkspace`). No
files, no metrics: inverses and consistency are in :mod:`idir_fast.consistency`, files in :mod:`idir_fast.io`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .core.geometry import ImageGeometry, apply_affine
from .core.objectives import determinant
from .core.sampling import trilinear
from .core.siren import Siren
from .errors import InputError
from .io.transforms import matrix_to_transform
from .memory import chunk_points
from .ops.siren_streams import StreamWorkspace, evaluate_streams, fused_available


@dataclass(frozen=True)
class Network:
    """A SIREN and the frame it lives in: ``world_to_normalised`` (4×4) takes world points to its input."""

    siren: Siren
    world_to_normalised: np.ndarray


@dataclass(frozen=True)
class Transform:
    """Φ(x) = A(N⁻¹(n(x) + u(n(x)))) with ``n`` the network frame and ``A`` the affine part (identity without an
    affine stage or starting transform); with a backward network Ψ (symmetric registration) the inverse too.

    Attributes:
        forward: the network of Φ (in the fixed image's frame).
        fixed_geometry: the grid fields are written on.
        world_affine: 4×4 fixed-world → moving-world map applied after the network.
        moving_geometry: the moving image's grid (for the inverse field), when known.
        backward: the network of Ψ (moving → fixed, in the moving image's frame), or ``None``.
        device: where it evaluates.
    """

    forward: Network
    fixed_geometry: ImageGeometry
    world_affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    moving_geometry: Optional[ImageGeometry] = None
    backward: Optional[Network] = None
    device: torch.device = torch.device("cpu")
    _workspaces: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        for net in (self.forward, self.backward):
            if net is not None:
                net.siren.to(self.device).eval()
                for p in net.siren.parameters():
                    p.requires_grad_(False)

    @property
    def chunk(self) -> int:
        return chunk_points(self.device.type)

    # ------------------------------------------------------------------------------------------- evaluation
    def streams(self, x_normalised: torch.Tensor, order: int, net: Optional[Network] = None) -> torch.Tensor:
        """``u`` and its derivatives ``(S, n, 3)`` (float64) of a network at normalised points ``x``."""
        siren = (net or self.forward).siren
        params = siren.parameter_list()
        x = x_normalised.to(params[0].dtype)
        key = (id(siren), order)
        if key not in self._workspaces and fused_available(x):
            self._workspaces[key] = StreamWorkspace(siren.hidden, order, params[0].dtype)
        return evaluate_streams(params, siren.omega, x, order, self._workspaces.get(key)).double()

    def map_normalised(self, net: Network, points_world: np.ndarray) -> np.ndarray:
        """``n⁻¹(n(p) + u(n(p)))`` for world points of a network's frame, chunked on the device."""
        x = torch.from_numpy(apply_affine(net.world_to_normalised, points_world)).to(self.device)
        out = [(xc + self.streams(xc, 0, net)[0]).cpu().numpy() for xc in x.split(self.chunk)]
        moved = np.concatenate(out) if out else np.zeros((0, 3))
        return apply_affine(np.linalg.inv(net.world_to_normalised), moved)

    def transform_points(self, points) -> np.ndarray:
        """Fixed world points ``(N, 3)`` → moving world points ``(N, 3)`` (LPS mm)."""
        pts = check_points(points)
        return apply_affine(self.world_affine, self.map_normalised(self.forward, pts))

    def grid_chunks(self, order: int = 0) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
        """``(start, x (n, 3) normalised float64, u streams (S, n, 3))`` over the fixed grid in array (C) order,
        chunk by chunk; voxel indices are generated on the device per chunk (the grid is never built)."""
        g = self.fixed_geometry
        nx, ny, _ = g.size
        total = int(np.prod(g.size))
        idx_to_n = torch.as_tensor(self.forward.world_to_normalised @ g.index_to_world(), dtype=torch.float64,
                                   device=self.device)
        step = self.chunk
        for start in range(0, total, step):
            flat = torch.arange(start, min(start + step, total), device=self.device)
            ijk = torch.stack([flat % nx, (flat // nx) % ny, flat // (nx * ny)], dim=-1).to(torch.float64)
            x = ijk @ idx_to_n[:3, :3].T + idx_to_n[:3, 3]
            yield start, x, self.streams(x, order)

    def grid_image(self, values_per_chunk, components: int = 1) -> sitk.Image:
        """A Float32 image (vector with ``components`` > 1) on the fixed grid from ``(start, values)`` chunks."""
        g = self.fixed_geometry
        out = np.empty((int(np.prod(g.size)), components), dtype=np.float32)
        for start, block in values_per_chunk:
            out[start:start + block.shape[0]] = block.reshape(block.shape[0], components).cpu().numpy()
        img = sitk.GetImageFromArray(out.reshape(g.shape_zyx + ((components,) if components > 1 else ())),
                                     isVector=components > 1)
        g.apply_to(img)
        return img

    def output_images(self, moving: Optional[sitk.Image] = None, field: bool = True, jacobian: bool = True,
                      default_value: float = 0.0) -> dict:
        """The images of the map on the fixed grid, from one pass over it (the network evaluated once per chunk):

        * ``field`` — ``u(x) = Φ(x) − x``, mm in the LPS world frame (VectorFloat32; cast to
          ``sitk.sitkVectorFloat64`` for a ``sitk.DisplacementFieldTransform``);
        * ``warped`` (when ``moving`` is given) — ``M(Φ(x))``, trilinear; points more than half a voxel outside the
          moving image get ``default_value`` (as ``sitk.Resample``), within that half voxel the border value;
        * ``jacobian`` — ``det ∂Φ/∂x`` (Float32): the network's determinant (the same in the world and normalised
          frames, which differ by an affine map) times ``det A``.

        (The value stream of a pass with derivatives is, bit for bit, that of a pass without, so the field is the
        same whichever images are asked for.)"""
        g = self.fixed_geometry
        n = int(np.prod(g.size))
        n2w = np.linalg.inv(self.forward.world_to_normalised)
        total = torch.as_tensor(self.world_affine @ n2w, device=self.device)  # normalised Φ → moving world
        n2w_t = torch.as_tensor(n2w, device=self.device)
        out = {}
        if field:
            out["field"] = np.empty((n, 3), np.float32)
        if moving is not None:
            mg = ImageGeometry.from_sitk(moving)
            vol = torch.from_numpy(sitk.GetArrayFromImage(moving).astype(np.float64)).to(self.device)
            n2mi = torch.as_tensor(mg.world_to_index() @ self.world_affine @ n2w, device=self.device)
            hi = [s - 0.5 for s in mg.size]
            out["warped"] = np.empty(n, np.float32)
        if jacobian:
            eye = torch.eye(3, dtype=torch.float64, device=self.device)
            det_affine = float(np.linalg.det(self.world_affine[:3, :3]))
            out["jacobian"] = np.empty(n, np.float32)
        for start, x, u in self.grid_chunks(1 if jacobian else 0):
            end = start + x.shape[0]
            phi = x + u[0]
            if field:
                moved = phi @ total[:3, :3].T + total[:3, 3]
                out["field"][start:end] = (moved - (x @ n2w_t[:3, :3].T + n2w_t[:3, 3])).cpu().numpy()
            if moving is not None:
                idx = phi @ n2mi[:3, :3].T + n2mi[:3, 3]
                val = trilinear(vol, idx)
                outside = torch.zeros_like(val, dtype=torch.bool)
                for a in range(3):
                    outside |= (idx[:, a] < -0.5) | (idx[:, a] > hi[a])
                out["warped"][start:end] = torch.where(outside, torch.full_like(val, default_value),
                                                       val).cpu().numpy()
            if jacobian:
                out["jacobian"][start:end] = (det_affine * determinant(u[1:4].permute(1, 2, 0) + eye)).cpu().numpy()
        images = {}
        for name, arr in out.items():
            vector = arr.ndim == 2
            img = sitk.GetImageFromArray(arr.reshape(g.shape_zyx + ((3,) if vector else ())), isVector=vector)
            g.apply_to(img)
            images[name] = img
        return images

    def displacement_field(self) -> sitk.Image:
        """``u(x) = Φ(x) − x`` on the fixed grid (:meth:`output_images`)."""
        return self.output_images(field=True, jacobian=False)["field"]

    def jacobian_determinant(self) -> sitk.Image:
        """``det ∂Φ/∂x`` on the fixed grid (:meth:`output_images`)."""
        return self.output_images(field=False, jacobian=True)["jacobian"]

    def warped(self, moving, default_value: float = 0.0) -> sitk.Image:
        """``M(Φ(x))`` on the fixed grid (:meth:`output_images`)."""
        return self.output_images(moving, field=False, jacobian=False, default_value=default_value)["warped"]

    def itk_transform(self) -> sitk.Transform:
        """Φ as an ITK transform: the composite ``A ∘ (x + u(x))`` (the affine part exact, the network's own
        displacement as a field on the fixed grid), or that field alone without an affine part."""
        lin = torch.as_tensor(np.linalg.inv(self.forward.world_to_normalised)[:3, :3], device=self.device)
        own = self.grid_image(((s, u[0] @ lin.T) for s, _, u in self.grid_chunks(0)), components=3)
        field_transform = sitk.DisplacementFieldTransform(sitk.Cast(own, sitk.sitkVectorFloat64))
        if np.allclose(self.world_affine, np.eye(4)):
            return field_transform
        return sitk.CompositeTransform([matrix_to_transform(self.world_affine), field_transform])


def check_points(points) -> np.ndarray:
    """``(N, 3)`` finite world points as float64; :class:`InputError` naming ``points`` otherwise."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"'points' must have shape (N, 3) in world LPS mm, got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InputError("'points' contains NaN/Inf")
    return pts


__all__ = ["Transform", "Network", "check_points"]
