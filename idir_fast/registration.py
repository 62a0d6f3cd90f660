"""The result of a registration: a trained SIREN plus its frame, evaluated in world coordinates.

``Registration`` is a thin stateful wrapper over stateless functions of :mod:`idir_fast.ops.siren_streams` and
:mod:`idir_fast.core.geometry`. It evaluates on the device it was trained on (or the one given to :func:`load`),
in chunks of points generated on that device, so writing the fields of a large grid after a GPU optimisation
neither moves work to the CPU nor materialises the grid. A saved model file holds the weights, the
world→normalised affine and the fixed image's grid, so it maps world points and writes fields without the images.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch

from .core.geometry import ImageGeometry, apply_affine
from .core.inverse import newton_inverse
from .core.metrics import folding, sdlogj
from .core.objectives import determinant
from .core.sampling import trilinear
from .core.siren import Siren
from .errors import InputError
from . import memory
from .io.figures import run_figures
from .io.files import IMAGE_FORMATS, check_writable_prefix
from .io.images import as_image
from .io.transforms import matrix_to_transform, write_itk_transform_to
from .io.model_file import model_bytes, model_state, read_model_state, write_model_state
from .io.outputs import OutputSet, new_run_id
from .ops.siren_streams import StreamWorkspace, evaluate_streams, fused_available

from .memory import CHUNK_POINTS  # noqa: E402


class Registration:
    """A trained transform Φ: fixed world points (LPS mm) → moving world points.

    Attributes:
        siren: the trained network (evaluation only), on :attr:`device`.
        device: where fields and points are evaluated.
        world_to_normalised: 4×4 affine of the network frame.
        world_affine: 4×4 fixed-world → moving-world map applied after the network (an affine stage or a
            starting transform; the identity without one): the transform is ``Φ(x) = A(x + u(x))``.
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
                 mask: Optional[sitk.Image] = None, device=None, world_affine: Optional[np.ndarray] = None,
                 moving_geometry: Optional[ImageGeometry] = None):
        self.device = torch.device(device) if device is not None else next(siren.parameters()).device
        self.siren = siren.to(self.device).eval()
        for p in self.siren.parameters():
            p.requires_grad_(False)
        self.world_to_normalised = np.asarray(world_to_normalised, dtype=np.float64)
        self.world_affine = np.eye(4) if world_affine is None else np.asarray(world_affine, dtype=np.float64)
        self.moving_geometry = moving_geometry
        if moving_geometry is None and isinstance(moving, sitk.Image):
            self.moving_geometry = ImageGeometry.from_sitk(moving)
        self.backward: Optional[Siren] = None  # Ψ: moving → fixed, in symmetric registration
        self.backward_world_to_normalised: Optional[np.ndarray] = None
        self.fixed_geometry = fixed_geometry
        self.settings = dict(settings)
        self.history = {k: np.asarray(v) for k, v in (history or {}).items()}
        self.timings = dict(timings or {})
        self.moving = moving
        self.mask = mask
        self.metrics = dict(metrics or {})
        self._workspaces: dict = {}

    # ------------------------------------------------------------------------------------------- evaluation
    @property
    def _chunk(self) -> int:
        return CHUNK_POINTS.get(self.device.type, 1 << 16)

    def _u_streams(self, x_normalised: torch.Tensor, order: int, siren: Optional[Siren] = None) -> torch.Tensor:
        siren = siren or self.siren
        params = siren.parameter_list()
        x = x_normalised.to(params[0].dtype)
        key = (id(siren), order)
        if key not in self._workspaces and fused_available(x):
            # chunk after chunk of a grid reuse these buffers: nothing large is allocated per chunk
            self._workspaces[key] = StreamWorkspace(siren.hidden, order, params[0].dtype)
        return evaluate_streams(params, siren.omega, x, order, self._workspaces.get(key)).double()

    def set_backward(self, siren: Siren, world_to_normalised: np.ndarray) -> None:
        """Attach the backward network Ψ (moving → fixed) of a symmetric registration, with its frame (the moving
        image's)."""
        self.backward = siren.to(self.device).eval()
        for p in self.backward.parameters():
            p.requires_grad_(False)
        self.backward_world_to_normalised = np.asarray(world_to_normalised, dtype=np.float64)

    def _backward_points(self, points_world: np.ndarray) -> np.ndarray:
        """Ψ(y) for moving world points: its network in the moving frame, then the inverse of the affine part."""
        w2n = self.backward_world_to_normalised
        y = torch.from_numpy(apply_affine(w2n, points_world)).to(self.device)
        out = [(yc + self._u_streams(yc, 0, self.backward)[0]).cpu().numpy() for yc in y.split(self._chunk)]
        psi_n = np.concatenate(out) if out else np.zeros((0, 3))
        return apply_affine(np.linalg.inv(self.world_affine) @ np.linalg.inv(w2n), psi_n)

    def _newton_inverse(self, points_world: np.ndarray, tolerance_mm: float = 1e-3):
        """Φ⁻¹ of moving world points by Newton's method on the network (:mod:`idir_fast.core.inverse`), chunked on
        :attr:`device`. Returns ``(fixed world points, residual mm, converged)``."""
        n2w = np.linalg.inv(self.world_to_normalised)
        mm_per_unit = float(np.abs(np.linalg.det(n2w[:3, :3])) ** (1.0 / 3.0))
        t = torch.from_numpy(apply_affine(self.world_to_normalised @ np.linalg.inv(self.world_affine),
                                          points_world)).to(self.device)
        eye = torch.eye(3, dtype=torch.float64, device=self.device)

        def phi_and_jacobian(x):
            u = self._u_streams(x, 1)
            return x + u[0], u[1:4].permute(1, 2, 0) + eye

        xs, res, conv = [], [], []
        for tc in t.split(self._chunk):
            r = newton_inverse(phi_and_jacobian, tc, tolerance=tolerance_mm, scale=mm_per_unit)
            xs.append(r.x.cpu().numpy())
            res.append(r.residual.cpu().numpy())
            conv.append(r.converged.cpu().numpy())
        cat = (lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape))
        return apply_affine(n2w, cat(xs, (0, 3))), cat(res, (0,)), cat(conv, (0,)).astype(bool)

    def grid_chunks(self, order: int = 0) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
        """``(start, x (n, 3) normalised float64, u streams (S, n, 3))`` over the fixed grid in array (C) order,
        chunk by chunk; voxel indices are generated on :attr:`device` per chunk (the grid is never built)."""
        g = self.fixed_geometry
        nx, ny, _ = g.size
        total = int(np.prod(g.size))
        idx_to_n = torch.as_tensor(self.world_to_normalised @ g.index_to_world(), dtype=torch.float64,
                                   device=self.device)
        for start in range(0, total, self._chunk):
            flat = torch.arange(start, min(start + self._chunk, total), device=self.device)
            ijk = torch.stack([flat % nx, (flat // nx) % ny, flat // (nx * ny)], dim=-1).to(torch.float64)
            x = ijk @ idx_to_n[:3, :3].T + idx_to_n[:3, 3]
            yield start, x, self._u_streams(x, order)

    def _grid_image(self, values_per_chunk, components: int = 1) -> sitk.Image:
        g = self.fixed_geometry
        out = np.empty((int(np.prod(g.size)), components), dtype=np.float32)
        for start, block in values_per_chunk:
            out[start:start + block.shape[0]] = block.reshape(block.shape[0], components).cpu().numpy()
        arr = out.reshape(g.shape_zyx + ((components,) if components > 1 else ()))
        img = sitk.GetImageFromArray(arr, isVector=components > 1)
        g.apply_to(img)
        return img

    def transform_points(self, points, inverse: bool = False) -> np.ndarray:
        """Map fixed-image world points (LPS mm) ``(N, 3)`` to moving-image world points ``(N, 3)``; with
        ``inverse=True`` moving points to fixed points: by the backward network of a symmetric registration,
        else by Newton inversion of Φ (see :meth:`inverse_consistency` for where that did not converge)."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise InputError(f"'points' must have shape (N, 3) in world LPS mm, got {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise InputError("'points' contains NaN/Inf")
        if inverse:
            return self._backward_points(pts) if self.backward is not None else self._newton_inverse(pts)[0]
        x = torch.from_numpy(apply_affine(self.world_to_normalised, pts)).to(self.device)
        phi = [(xc + self._u_streams(xc, 0)[0].double()).cpu().numpy() for xc in x.split(self._chunk)]
        phi_n = np.concatenate(phi) if phi else np.zeros((0, 3))
        return apply_affine(self.world_affine @ np.linalg.inv(self.world_to_normalised), phi_n)

    def displacement_field(self) -> sitk.Image:
        """Forward field ``u(x) = Φ(x) − x`` on the fixed grid, mm in the LPS world frame (VectorFloat32).

        Cast to ``sitk.sitkVectorFloat64`` to build a ``sitk.DisplacementFieldTransform``.
        """
        n2w = np.linalg.inv(self.world_to_normalised)
        total = torch.as_tensor(self.world_affine @ n2w, device=self.device)  # normalised Φ → moving world
        n2w = torch.as_tensor(n2w, device=self.device)

        def displacements():
            for start, x, u in self.grid_chunks(0):
                moved = (x + u[0].double()) @ total[:3, :3].T + total[:3, 3]
                yield start, moved - (x @ n2w[:3, :3].T + n2w[:3, 3])

        return self._grid_image(displacements(), components=3)

    def jacobian_determinant(self) -> sitk.Image:
        """``det ∂Φ/∂x`` on the fixed grid (Float32). The world and normalised frames differ by an affine map,
        so the network's determinant is the same in both; an affine stage multiplies it by ``det A``."""
        eye = torch.eye(3, dtype=torch.float64, device=self.device)
        det_affine = float(np.linalg.det(self.world_affine[:3, :3]))

        def dets():
            for start, _, u in self.grid_chunks(1):
                yield start, det_affine * determinant(u[1:4].permute(1, 2, 0).double() + eye)

        return self._grid_image(dets())

    def warped(self, moving=None, default_value: float = 0.0) -> sitk.Image:
        """The moving image resampled into the fixed grid, ``M(Φ(x))``, trilinear.

        Points that fall more than half a voxel outside the moving image get ``default_value`` (as
        ``sitk.Resample``); within that half voxel the border value is used.
        """
        if moving is None:
            moving = self.moving
        if moving is None:
            raise InputError("warped(): 'moving' is required (this Registration was loaded without its moving "
                             "image)")
        moving = as_image(moving, "moving", check_values=False)
        mg = ImageGeometry.from_sitk(moving)
        vol = torch.from_numpy(sitk.GetArrayFromImage(moving).astype(np.float64)).to(self.device)
        n2mi = torch.as_tensor(mg.world_to_index() @ self.world_affine @ np.linalg.inv(self.world_to_normalised),
                               device=self.device)
        hi = [n - 0.5 for n in mg.size]

        def values():
            for start, x, u in self.grid_chunks(0):
                idx = (x + u[0].double()) @ n2mi[:3, :3].T + n2mi[:3, 3]
                val = trilinear(vol, idx)
                outside = torch.zeros_like(val, dtype=torch.bool)
                for a in range(3):
                    outside |= (idx[:, a] < -0.5) | (idx[:, a] > hi[a])
                yield start, torch.where(outside, torch.full_like(val, default_value), val)

        return self._grid_image(values())

    # ------------------------------------------------------------------------------------ inverse, consistency
    def _moving_grid(self) -> ImageGeometry:
        if self.moving_geometry is None:
            raise InputError("the moving image's grid is unknown (this model file does not store it); pass "
                             "moving= to idir_fast.load")
        return self.moving_geometry

    @staticmethod
    def _grid_world_blocks(g: ImageGeometry, block: int = 1 << 20):
        """``(start, world points (n, 3))`` over a grid in array order, a block at a time (host memory bounded)."""
        total = int(np.prod(g.size))
        for start in range(0, total, block):
            kk, jj, ii = np.unravel_index(np.arange(start, min(start + block, total)), g.shape_zyx)
            yield start, apply_affine(g.index_to_world(), np.stack([ii, jj, kk], axis=1).astype(np.float64))

    def inverse_displacement_field(self) -> sitk.Image:
        """``v(y) = Φ⁻¹(y) − y`` on the moving grid, mm, LPS (VectorFloat32; ANTs' ``0InverseWarp``): maps moving
        points back to fixed points. By the backward network of a symmetric registration, else by Newton
        inversion of Φ."""
        g = self._moving_grid()
        out = np.empty((int(np.prod(g.size)), 3), dtype=np.float32)
        for start, y in self._grid_world_blocks(g):
            out[start:start + len(y)] = self.transform_points(y, inverse=True) - y
        img = sitk.GetImageFromArray(out.reshape(g.shape_zyx + (3,)), isVector=True)
        g.apply_to(img)
        return img

    def inverse_consistency(self, points_moving: Optional[np.ndarray] = None) -> dict:
        """How well the inverse inverts: ``‖Φ(Φ⁻¹(y)) − y‖`` (mm: mean, p95, max) over every 8th voxel of the moving grid (or
        ``points_moving``), and the share of points where Newton's method did not converge (folded or
        non-invertible regions; with a backward network: where the error exceeds 0.5 mm)."""
        if points_moving is None:  # every 8th voxel of the moving grid: a fair sample, a fraction of the time
            y = np.concatenate([b for _, b in self._grid_world_blocks(self._moving_grid())])[::8]
        else:
            y = np.asarray(points_moving, dtype=np.float64)
        if self.backward is not None:
            x = self._backward_points(y)
            converged = None
        else:
            x, _, converged = self._newton_inverse(y)
        err = np.linalg.norm(self.transform_points(x) - y, axis=1)
        if converged is None:
            converged = err <= 0.5
        return {"mean_mm": float(err.mean()), "p95_mm": float(np.percentile(err, 95)), "max_mm": float(err.max()),
                "not_converged_fraction": float(1.0 - converged.mean()), "points": int(err.size)}

    def consistency_errors(self) -> np.ndarray:
        """Cycle error ``‖Ψ(Φ(x)) − x‖`` (mm) at every voxel of the fixed grid, array order (needs a backward
        network: ``symmetric=True``)."""
        if self.backward is None:
            raise InputError("the consistency map needs a symmetric registration (symmetric=True)")
        g = self.fixed_geometry
        out = np.empty(int(np.prod(g.size)), dtype=np.float32)
        for start, x in self._grid_world_blocks(g):
            out[start:start + len(x)] = np.linalg.norm(self._backward_points(self.transform_points(x)) - x, axis=1)
        return out.reshape(g.shape_zyx)

    def consistency_image(self) -> sitk.Image:
        """:meth:`consistency_errors` as a Float32 image on the fixed grid (``{prefix}Consistency``): a per-voxel
        uncertainty, high where the two directions disagree."""
        img = sitk.GetImageFromArray(self.consistency_errors().astype(np.float32))
        self.fixed_geometry.apply_to(img)
        return img

    def consistency_summary(self, flag_mm: float = 2.0) -> dict:
        """Cycle error inside the fixed mask (the whole grid without one): mean, p95, max (mm) and ``flagged``
        when p95 exceeds ``flag_mm`` — a registration to look at."""
        e = self.consistency_errors()
        if self.mask is not None:
            e = e[sitk.GetArrayViewFromImage(self.mask) > 0]
        p95 = float(np.percentile(e, 95))
        return {"mean_mm": float(e.mean()), "p95_mm": p95, "max_mm": float(e.max()), "flag_mm": float(flag_mm),
                "flagged": bool(p95 > flag_mm)}

    def itk_transform(self) -> sitk.Transform:
        """Φ as an ITK transform: the composite ``A ∘ (x + u(x))`` (the affine part exact, the network's own
        displacement as a field on the fixed grid), or that field alone without an affine part."""
        n2w = np.linalg.inv(self.world_to_normalised)
        lin = torch.as_tensor(n2w[:3, :3], device=self.device)
        own = self._grid_image(((s, u[0] @ lin.T) for s, _, u in self.grid_chunks(0)), components=3)
        field = sitk.DisplacementFieldTransform(sitk.Cast(own, sitk.sitkVectorFloat64))
        if np.allclose(self.world_affine, np.eye(4)):
            return field
        return sitk.CompositeTransform([matrix_to_transform(self.world_affine), field])  # applied right to left

    # ------------------------------------------------------------------------------------------- persistence
    def report(self) -> dict:
        final = {k: float(v[-1]) for k, v in self.history.items() if len(v)}
        return {"settings": self.settings, "timings": self.timings, "final_losses": final,
                "metrics": self.metrics, "fixed_geometry": self.fixed_geometry.to_dict(),
                "world_to_normalised": self.world_to_normalised.tolist()}

    def _model_state(self) -> dict:
        state = model_state(self.siren, self.world_to_normalised, self.fixed_geometry, self.settings, self.history,
                            self.timings, self.metrics)
        state["world_affine"] = self.world_affine.tolist()
        if self.moving_geometry is not None:
            state["moving_geometry"] = self.moving_geometry.to_dict()
        if self.backward is not None:
            state["backward"] = {"siren": self.backward.config(),
                                 "parameters": [p.detach().cpu().clone() for p in self.backward.parameter_list()],
                                 "world_to_normalised": self.backward_world_to_normalised.tolist()}
        return state

    def save_model(self, path: Union[str, os.PathLike], run_id: Optional[str] = None) -> Path:
        """Write ``model.pt`` alone (atomically, with its checksum and a run id)."""
        return write_model_state(self._model_state(), path, run_id=run_id or new_run_id())

    def output_memory(self, itk_transform: bool = False, write_inverse: bool = False) -> dict:
        """Estimated peak memory of :meth:`save` (:func:`idir_fast.memory.output_bytes`)."""
        moving = self.moving_geometry or (ImageGeometry.from_sitk(self.moving) if isinstance(self.moving, sitk.Image)
                                          else None)
        return memory.output_bytes(int(np.prod(self.fixed_geometry.size)),
                                   None if moving is None else int(np.prod(moving.size)), self.siren.hidden,
                                   next(self.siren.parameters()).element_size(), self.device,
                                   itk_transform=itk_transform, inverse=write_inverse or self.backward is not None)

    def save(self, prefix: Union[str, os.PathLike], *, field_format: str = ".nii.gz",
             write_warped: bool = True, write_jacobian: bool = True, itk_transform: bool = False,
             figures: bool = False, write_inverse: bool = False, report_extra: Optional[dict] = None) -> dict:
        """Write the outputs with ANTs-style names, as one consistent set (:class:`idir_fast.io.outputs.OutputSet`).

        Writes ``{prefix}0Warp{ext}`` (the whole map fixed → moving as one displacement field, affine part
        included), ``{prefix}Warped{ext}`` (when the moving image is known), ``{prefix}JacDet{ext}``,
        ``{prefix}model.pt`` and ``{prefix}report.json``; with an affine stage or a starting transform also
        ``{prefix}Affine.mat`` (that linear part alone, an ITK transform file); with ``itk_transform``
        ``{prefix}Transform.h5`` (the ITK composite: affine ∘ displacement field of the network); with
        ``write_inverse`` (always in symmetric mode) ``{prefix}0InverseWarp{ext}`` on the moving grid; in symmetric
        mode ``{prefix}Consistency{ext}`` (the cycle error, mm); with ``figures`` the PNG figures of
        :mod:`idir_fast.io.figures`. A prefix ending in a separator, or naming an existing folder, writes inside
        that folder (``out/0Warp.nii.gz``).

        Every file is written under a temporary name and checked first; only when all are complete are they
        renamed into place, the report last. Every file carries one run id (image metadata, ``model.pt``, the
        report); the report lists every file with its size and SHA-256. Files of an earlier run of the same prefix
        that this one does not write are removed (or, when not provably idir_fast's, kept and listed); temporary
        files of a killed run are removed. A failure to write (a full disk) raises
        :class:`~idir_fast.errors.OutputError` and leaves the previous outputs as they were.

        Args:
            field_format: one of :data:`idir_fast.io.files.IMAGE_FORMATS`.
            report_extra: more top-level entries for the report (e.g. the cohort's settings hash).

        Returns:
            dict of output kind → path.
        """
        if field_format not in IMAGE_FORMATS:
            raise InputError(f"'field_format' must be one of {IMAGE_FORMATS}, got {field_format!r}")
        prefix = check_writable_prefix(prefix, "prefix")  # "out/" or an existing folder writes out/0Warp.nii.gz, …
        memory.check_outputs(self.output_memory(itk_transform, write_inverse), self.device,
                             enabled=self.settings.get("memory_check"))
        with OutputSet(prefix) as outs:
            outs.image("field", "0Warp" + field_format, self.displacement_field())
            if not np.allclose(self.world_affine, np.eye(4)):
                affine = matrix_to_transform(self.world_affine)
                outs.written("affine", "Affine.mat",
                             lambda tmp: write_itk_transform_to(tmp, affine, outs.final("Affine.mat")))
            if itk_transform:
                composite = self.itk_transform()
                outs.written("transform", "Transform.h5",
                             lambda tmp: write_itk_transform_to(tmp, composite, outs.final("Transform.h5")))
                del composite
            if write_inverse or self.backward is not None:
                outs.image("inverse_field", "0InverseWarp" + field_format, self.inverse_displacement_field())
                self.metrics["inverse_consistency"] = self.inverse_consistency()
            if self.backward is not None:
                outs.image("consistency", "Consistency" + field_format, self.consistency_image())
            if write_warped and self.moving is not None:
                outs.image("warped", "Warped" + field_format, self.warped())
            jac = None
            if write_jacobian:
                jac = self.jacobian_determinant()
                if "folding" not in self.metrics:
                    self.metrics["folding"] = folding(jac, self.mask)
                    self.metrics["sdlogj"] = sdlogj(jac, self.mask)
                outs.image("jacobian", "JacDet" + field_format, jac)
            outs.data("model", "model.pt", model_bytes(self._model_state(), outs.run_id))
            if figures:
                for kind, (name, data) in run_figures(self.metrics, jac, self.mask, self.history,
                                                            outs.run_id).items():
                    outs.data(f"figure_{kind}", name, data)
            report = self.report()
            report.update(report_extra or {})
            return outs.commit(report)

    def __repr__(self):
        s = self.settings
        return (f"Registration(regularizer={s.get('regularizer')!r}, epochs={s.get('epochs')}, "
                f"backend={s.get('backend')!r}, grid={self.fixed_geometry.size})")


def load(path: Union[str, os.PathLike], moving=None, device=None) -> Registration:
    """Load a model file written by :meth:`Registration.save` (``{prefix}model.pt``) or a prefix.

    Args:
        moving: the moving image, for :meth:`Registration.warped`.
        device: where to evaluate (default CPU).
    """
    state = read_model_state(path)
    cfg = state["siren"]
    params = state["parameters"]
    siren = Siren(hidden=cfg["hidden"], omega=cfg["omega"], init=cfg["init"], dtype=params[0].dtype)
    with torch.no_grad():
        for dst, src in zip(siren.parameter_list(), params):
            dst.copy_(src)
    history = {k: v.numpy() for k, v in state.get("history", {}).items()}
    moving_geometry = ImageGeometry.from_dict(state["moving_geometry"]) if "moving_geometry" in state else None
    reg = Registration(siren, np.asarray(state["world_to_normalised"]),
                       ImageGeometry.from_dict(state["fixed_geometry"]), state.get("settings", {}), history,
                       state.get("timings", {}), moving=moving, metrics=state.get("metrics", {}),
                       device=device or "cpu", world_affine=state.get("world_affine"),
                       moving_geometry=moving_geometry)
    if "backward" in state:
        b = state["backward"]
        back = Siren(hidden=b["siren"]["hidden"], omega=b["siren"]["omega"], init=b["siren"]["init"],
                     dtype=b["parameters"][0].dtype)
        with torch.no_grad():
            for dst, src in zip(back.parameter_list(), b["parameters"]):
                dst.copy_(src)
        reg.set_backward(back, np.asarray(b["world_to_normalised"]))
    return reg
