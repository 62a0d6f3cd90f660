"""The result of a registration: a trained SIREN plus its frame, evaluated in world coordinates.

``Registration`` is a thin stateful wrapper over stateless functions of :mod:`idir_fast.backends.torch_streams`
and :mod:`idir_fast.geometry`. A saved model file holds the weights, the world→normalised affine and the fixed
image's grid, so it maps world points and writes fields without the images.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
import torch

from .backends.torch_streams import siren_streams
from .geometry import ImageGeometry, apply_affine
from .io import InputError, atomic_path, check_writable_prefix, write_image, write_json
from .siren import Siren

MODEL_FORMAT = "idir_fast-model"
MODEL_VERSION = 1
_CHUNK = 1 << 16


class Registration:
    """A trained transform Φ: fixed world points (LPS mm) → moving world points.

    Attributes:
        siren: the trained network (CPU, evaluation only).
        world_to_normalised: 4×4 affine of the network frame.
        fixed_geometry: grid on which fields are written.
        moving: the moving image, when known (needed by :meth:`warped` unless one is passed).
        mask: the fixed-image mask, when known (folding is then counted inside it).
        settings: every setting of the run (and library versions).
        history: per-epoch ``loss``, ``similarity`` (−NCC) and ``regularization`` arrays.
        timings: seconds spent per phase, and ms per epoch.
        metrics: landmark TRE and folding, when computed.
    """

    def __init__(self, siren: Siren, world_to_normalised: np.ndarray, fixed_geometry: ImageGeometry,
                 settings: dict, history: Optional[dict] = None, timings: Optional[dict] = None,
                 moving: Optional[sitk.Image] = None, metrics: Optional[dict] = None,
                 mask: Optional[sitk.Image] = None):
        self.siren = siren.cpu().eval()
        for p in self.siren.parameters():
            p.requires_grad_(False)
        self.world_to_normalised = np.asarray(world_to_normalised, dtype=np.float64)
        self.fixed_geometry = fixed_geometry
        self.settings = dict(settings)
        self.history = {k: np.asarray(v) for k, v in (history or {}).items()}
        self.timings = dict(timings or {})
        self.moving = moving
        self.mask = mask
        self.metrics = dict(metrics or {})

    # ------------------------------------------------------------------------------------------- evaluation
    def _streams(self, points_normalised: torch.Tensor, order: int):
        params = self.siren.parameter_list()
        for start in range(0, points_normalised.shape[0], _CHUNK):
            x = points_normalised[start:start + _CHUNK].to(params[0].dtype)
            with torch.no_grad():
                yield x, siren_streams(params, self.siren.omega, x, order)

    def transform_points(self, points) -> np.ndarray:
        """Map fixed-image world points (LPS mm) ``(N, 3)`` to moving-image world points ``(N, 3)``."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise InputError(f"'points' must have shape (N, 3) in world LPS mm, got {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise InputError("'points' contains NaN/Inf")
        n = torch.from_numpy(apply_affine(self.world_to_normalised, pts))
        out = [(x.double() + u[0].double()).numpy() for x, u in self._streams(n, 0)]
        phi_n = np.concatenate(out) if out else np.zeros((0, 3))
        return apply_affine(np.linalg.inv(self.world_to_normalised), phi_n)

    def _grid_normalised(self) -> torch.Tensor:
        g = self.fixed_geometry
        idx = g.voxel_grid_index(dtype=torch.float64)
        return apply_affine(self.world_to_normalised @ g.index_to_world(), idx)

    def displacement_field(self) -> sitk.Image:
        """Forward field ``u(x) = Φ(x) − x`` on the fixed grid, mm in the LPS world frame (VectorFloat32).

        Cast to ``sitk.sitkVectorFloat64`` to build a ``sitk.DisplacementFieldTransform``.
        """
        lin = np.linalg.inv(self.world_to_normalised)[:3, :3]
        parts = [(u[0].double().numpy() @ lin.T) for _, u in self._streams(self._grid_normalised(), 0)]
        field = np.concatenate(parts).astype(np.float32).reshape(self.fixed_geometry.shape_zyx + (3,))
        img = sitk.GetImageFromArray(field, isVector=True)
        self.fixed_geometry.apply_to(img)
        return img

    def jacobian_determinant(self) -> sitk.Image:
        """``det ∂Φ/∂x`` on the fixed grid (Float32). The world and normalised frames differ by an affine map,
        so the determinant is the same in both."""
        from .objectives import determinant

        parts = []
        for _, u in self._streams(self._grid_normalised(), 1):
            J = u[1:4].permute(1, 2, 0).double() + torch.eye(3, dtype=torch.float64)
            parts.append(determinant(J).numpy())
        det = np.concatenate(parts).astype(np.float32).reshape(self.fixed_geometry.shape_zyx)
        img = sitk.GetImageFromArray(det)
        self.fixed_geometry.apply_to(img)
        return img

    def warped(self, moving=None, default_value: float = 0.0) -> sitk.Image:
        """The moving image resampled into the fixed grid, ``M(Φ(x))``, trilinear.

        Points that fall more than half a voxel outside the moving image get ``default_value`` (as
        ``sitk.Resample``); within that half voxel the border value is used.
        """
        from .io import as_image
        from .sampling import trilinear

        if moving is None:
            moving = self.moving
        if moving is None:
            raise InputError("warped(): 'moving' is required (this Registration was loaded without its moving "
                             "image)")
        moving = as_image(moving, "moving", check_values=False)
        mg = ImageGeometry.from_sitk(moving)
        vol = torch.from_numpy(sitk.GetArrayFromImage(moving).astype(np.float64))
        n2mi = mg.world_to_index() @ np.linalg.inv(self.world_to_normalised)
        size = torch.tensor(mg.size, dtype=torch.float64)
        parts = []
        for x, u in self._streams(self._grid_normalised(), 0):
            idx = apply_affine(n2mi, x.double() + u[0].double())
            val = trilinear(vol, idx)
            outside = ((idx < -0.5) | (idx > size - 0.5)).any(-1)
            parts.append(torch.where(outside, torch.full_like(val, default_value), val).numpy())
        arr = np.concatenate(parts).astype(np.float32).reshape(self.fixed_geometry.shape_zyx)
        img = sitk.GetImageFromArray(arr)
        self.fixed_geometry.apply_to(img)
        return img

    # ------------------------------------------------------------------------------------------- persistence
    def report(self) -> dict:
        final = {k: float(v[-1]) for k, v in self.history.items() if len(v)}
        return {"settings": self.settings, "timings": self.timings, "final_losses": final,
                "metrics": self.metrics, "fixed_geometry": self.fixed_geometry.to_dict(),
                "world_to_normalised": self.world_to_normalised.tolist()}

    def save_model(self, path: Union[str, os.PathLike]) -> Path:
        state = {
            "format": MODEL_FORMAT, "version": MODEL_VERSION,
            "siren": self.siren.config(),
            "parameters": [p.detach().cpu().clone() for p in self.siren.parameter_list()],
            "world_to_normalised": self.world_to_normalised.tolist(),
            "fixed_geometry": self.fixed_geometry.to_dict(),
            "settings": json.loads(json.dumps(self.settings, default=str)),
            "history": {k: torch.as_tensor(v) for k, v in self.history.items()},
            "timings": self.timings, "metrics": json.loads(json.dumps(self.metrics, default=str)),
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return Path(path)

    def save(self, prefix: Union[str, os.PathLike], *, field_format: str = ".nii.gz",
             write_warped: bool = True, write_jacobian: bool = True, itk_transform: bool = False,
             figures: bool = False) -> dict:
        """Write the outputs with ANTs-style names; each file is written to a temporary name and renamed.

        Writes ``{prefix}0Warp{ext}`` (field), ``{prefix}Warped{ext}`` (when the moving image is known),
        ``{prefix}JacDet{ext}``, ``{prefix}model.pt`` and ``{prefix}report.json``; with ``itk_transform`` also
        ``{prefix}Transform.h5`` (an ITK DisplacementFieldTransform); with ``figures`` the PNG figures of
        :mod:`idir_fast.figures`.

        Args:
            field_format: ``".nii.gz"``, ``".mha"`` or ``".nrrd"``.

        Returns:
            dict of output kind → path.
        """
        if field_format not in (".nii.gz", ".nii", ".mha", ".nrrd"):
            raise InputError(f"'field_format' must be .nii.gz, .nii, .mha or .nrrd, got {field_format!r}")
        check_writable_prefix(prefix, "prefix")
        prefix = os.fspath(prefix)  # keep a trailing separator: "out/" writes out/0Warp.nii.gz, …
        out = {}
        field = self.displacement_field()
        out["field"] = write_image(field, prefix + "0Warp" + field_format)
        if itk_transform:
            tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
            with atomic_path(prefix + "Transform.h5") as tmp:
                sitk.WriteTransform(tx, tmp)
            out["transform"] = Path(prefix + "Transform.h5")
        if write_warped and self.moving is not None:
            out["warped"] = write_image(self.warped(), prefix + "Warped" + field_format)
        jac = None
        if write_jacobian:
            jac = self.jacobian_determinant()
            if "folding" not in self.metrics:
                from .metrics import folding, sdlogj

                self.metrics["folding"] = folding(jac, self.mask)
                self.metrics["sdlogj"] = sdlogj(jac, self.mask)
            out["jacobian"] = write_image(jac, prefix + "JacDet" + field_format)
        out["model"] = self.save_model(prefix + "model.pt")
        report = self.report()
        report["outputs"] = {k: str(v) for k, v in out.items()}
        out["report"] = write_json(report, prefix + "report.json")
        if figures:
            from .figures import figures_for_prefix

            out.update({f"figure_{k}": v for k, v in figures_for_prefix(prefix, self.mask).items()})
        return out

    def __repr__(self):
        s = self.settings
        return (f"Registration(regularizer={s.get('regularizer')!r}, epochs={s.get('epochs')}, "
                f"backend={s.get('backend')!r}, grid={self.fixed_geometry.size})")


def load(path: Union[str, os.PathLike], moving=None) -> Registration:
    """Load a model file written by :meth:`Registration.save` (``{prefix}model.pt``) or a prefix."""
    p = Path(path)
    if not p.exists() and Path(str(path) + "model.pt").exists():
        p = Path(str(path) + "model.pt")
    if not p.exists():
        raise InputError(f"'path': model file not found: {str(p)!r}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"'path': {str(p)!r} is not an idir_fast model file ({err})") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise InputError(f"'path': {str(p)!r} is not an idir_fast model file")
    cfg = state["siren"]
    params = state["parameters"]
    siren = Siren(hidden=cfg["hidden"], omega=cfg["omega"], init=cfg["init"], dtype=params[0].dtype)
    with torch.no_grad():
        for dst, src in zip(siren.parameter_list(), params):
            dst.copy_(src)
    history = {k: v.numpy() for k, v in state.get("history", {}).items()}
    return Registration(siren, np.asarray(state["world_to_normalised"]),
                        ImageGeometry.from_dict(state["fixed_geometry"]), state.get("settings", {}), history,
                        state.get("timings", {}), moving=moving, metrics=state.get("metrics", {}))
