"""The result of a registration: a :class:`~idir_fast.transform.Transform` and its
:class:`~idir_fast.record.RunRecord`, with the images it came from.

``Registration`` only composes: evaluation is the transform's (:mod:`idir_fast.transform`,
:mod:`idir_fast.consistency`), the record is made once by :func:`idir_fast.register` (:meth:`evaluate` returns a new
result with more metrics, never changes this one), files are :mod:`idir_fast.io.outputs` and
:mod:`idir_fast.io.model_file`.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from . import consistency
from .core.metrics import folding, sdlogj
from .errors import InputError
from .record import RunRecord
from .transform import Transform


class Registration:
    """A trained transform Φ (fixed world points, LPS mm → moving world points) and the record of its run.

    Attributes:
        transform: the networks, frames and grids (:class:`~idir_fast.transform.Transform`).
        record: settings, what the run used, history, timings, metrics (:class:`~idir_fast.record.RunRecord`).
        moving: the moving image, when known (:meth:`warped` needs it unless one is passed).
        mask: the fixed-image mask, when known (folding and consistency are then counted inside it).
    """

    def __init__(self, transform: Transform, record: RunRecord, moving: Optional[sitk.Image] = None,
                 mask: Optional[sitk.Image] = None, jacobian: Optional[sitk.Image] = None):
        self.transform, self.record, self.moving, self.mask = transform, record, moving, mask
        self._jacobian = jacobian  # det J on the fixed grid once computed (evaluate, save)

    @classmethod
    def of_network(cls, siren, world_to_normalised, fixed_geometry, *, world_affine=None, moving_geometry=None,
                   device=None, settings=None, moving=None, mask=None) -> "Registration":
        """A result around a network of one's own (e.g. trained elsewhere), with an empty record."""
        import torch

        from .settings import RunSettings
        from .transform import Network

        device = torch.device(device) if device is not None else next(siren.parameters()).device
        t = Transform(Network(siren, np.asarray(world_to_normalised, dtype=np.float64)), fixed_geometry,
                      world_affine=np.eye(4) if world_affine is None else np.asarray(world_affine, dtype=np.float64),
                      moving_geometry=moving_geometry, device=device)
        return cls(t, RunRecord(settings or RunSettings(), {}, {}, {}, {}), moving=moving, mask=mask)

    # ------------------------------------------------------------------------------------------ the record
    settings = property(lambda self: self.record.settings, doc="the resolved RunSettings of the run")
    run = property(lambda self: self.record.run, doc="what the run used beside its settings (backend, stages, …)")
    history = property(lambda self: self.record.history, doc="per-step loss, similarity, regularization")
    timings = property(lambda self: self.record.timings, doc="seconds per phase, ms per step")
    metrics = property(lambda self: self.record.metrics, doc="TRE, consistency; folding, SDlogJ after evaluate()")

    # ------------------------------------------------------------------------------------------ the transform
    siren = property(lambda self: self.transform.forward.siren)
    device = property(lambda self: self.transform.device)
    fixed_geometry = property(lambda self: self.transform.fixed_geometry)
    moving_geometry = property(lambda self: self.transform.moving_geometry)
    world_to_normalised = property(lambda self: self.transform.forward.world_to_normalised)
    world_affine = property(lambda self: self.transform.world_affine)
    backward = property(lambda self: None if self.transform.backward is None else self.transform.backward.siren)

    def transform_points(self, points, inverse: bool = False) -> np.ndarray:
        """Fixed world points ``(N, 3)`` (LPS mm) → moving world points; with ``inverse=True`` moving → fixed (by
        the backward network of a symmetric registration, else by Newton inversion of Φ)."""
        if inverse:
            return consistency.inverse_points(self.transform, points)
        return self.transform.transform_points(points)

    def displacement_field(self) -> sitk.Image:
        """``u(x) = Φ(x) − x`` on the fixed grid, mm, LPS (VectorFloat32)."""
        return self.transform.displacement_field()

    def jacobian_determinant(self) -> sitk.Image:
        """``det ∂Φ/∂x`` on the fixed grid (Float32)."""
        if self._jacobian is None:
            self._jacobian = self.transform.jacobian_determinant()
        return self._jacobian

    def warped(self, moving=None, default_value: float = 0.0) -> sitk.Image:
        """The moving image resampled into the fixed grid, ``M(Φ(x))``, trilinear (``sitk.Resample``'s
        convention outside the image)."""
        return self.transform.warped(self.warped_input(moving), default_value)

    def warped_input(self, moving=None) -> sitk.Image:
        """The image :meth:`warped` resamples: ``moving`` or the run's moving image, checked."""
        from .io.images import as_image

        moving = self.moving if moving is None else moving
        if moving is None:
            raise InputError("warped(): 'moving' is required (this Registration was loaded without its moving "
                             "image)")
        return as_image(moving, "moving", check_values=False)

    def itk_transform(self) -> sitk.Transform:
        """Φ as an ITK (composite) transform."""
        return self.transform.itk_transform()

    def inverse_displacement_field(self) -> sitk.Image:
        """``Φ⁻¹(y) − y`` on the moving grid (ANTs' ``0InverseWarp``)."""
        return consistency.inverse_displacement_field(self.transform)

    def inverse_consistency(self, points_moving=None) -> dict:
        """``‖Φ(Φ⁻¹(y)) − y‖`` statistics (:func:`idir_fast.consistency.inverse_consistency`)."""
        return consistency.inverse_consistency(self.transform, points_moving)

    def consistency_errors(self) -> np.ndarray:
        return consistency.consistency_errors(self.transform)

    def consistency_image(self) -> sitk.Image:
        return consistency.consistency_image(self.transform)

    def consistency_summary(self, flag_mm: float = 2.0) -> dict:
        return consistency.consistency_summary(self.transform, self.mask, flag_mm)

    # ------------------------------------------------------------------------------------------ more metrics
    def evaluate(self, jacobian: bool = True, inverse: bool = False, det: Optional[sitk.Image] = None) -> "Registration":
        """A new result whose metrics add ``folding`` and ``sdlogj`` of det J inside the mask (``jacobian``; ``det``:
        the det J map when already computed) and the ``inverse_consistency`` (``inverse``); this one is left as it
        is."""
        if det is not None and self._jacobian is None:
            self._jacobian = det
        metrics = dict(self.metrics)
        if jacobian and "folding" not in metrics:
            jac = self.jacobian_determinant()
            metrics.update(folding=folding(jac, self.mask), sdlogj=sdlogj(jac, self.mask))
        if inverse and "inverse_consistency" not in metrics:
            metrics["inverse_consistency"] = self.inverse_consistency()
        record = dataclasses.replace(self.record, metrics=metrics)
        return Registration(self.transform, record, self.moving, self.mask, self._jacobian)

    # ------------------------------------------------------------------------------------------ files
    def report(self) -> dict:
        """The run's report: settings, timings, final losses, metrics, the grid and the network frame."""
        return {**self.record.report(), "fixed_geometry": self.fixed_geometry.to_dict(),
                "world_to_normalised": np.asarray(self.world_to_normalised).tolist()}

    def save(self, prefix: Union[str, os.PathLike], **options) -> dict:
        """Write the output set (:func:`idir_fast.io.outputs.write_outputs`: ``0Warp``, ``Warped``, ``JacDet``,
        ``model.pt``, ``report.json``, …); returns output kind → path."""
        from .io.outputs import write_outputs

        return write_outputs(self, prefix, **options)

    def save_model(self, path: Union[str, os.PathLike], run_id: Optional[str] = None) -> Path:
        """Write ``model.pt`` alone (atomically, with its checksum and a run id)."""
        from .io.model_file import write_model

        return write_model(self, path, run_id=run_id)

    def output_memory(self, itk_transform: bool = False, write_inverse: bool = False) -> dict:
        """Estimated peak memory of :meth:`save` (:func:`idir_fast.memory.output_bytes`)."""
        from .io.outputs import output_memory

        return output_memory(self, itk_transform, write_inverse)

    def __repr__(self):
        s = self.settings
        return (f"Registration(regularizer={s.regularizer!r}, epochs={s.epochs}, backend={self.run.get('backend')!r}, "
                f"grid={self.fixed_geometry.size})")


def load(path: Union[str, os.PathLike], moving=None, device=None) -> Registration:
    """Load a model file written by :meth:`Registration.save` (``{prefix}model.pt``) or a prefix.

    Args:
        moving: the moving image, for :meth:`Registration.warped`.
        device: where to evaluate (default CPU).
    """
    import torch

    from .io.model_file import read_model
    from .transform import Network

    saved = read_model(path)
    transform = Transform(Network(*saved.forward), saved.fixed_geometry, world_affine=saved.world_affine,
                          moving_geometry=saved.moving_geometry,
                          backward=None if saved.backward is None else Network(*saved.backward),
                          device=torch.device(device or "cpu"))
    record = RunRecord.from_saved(saved.settings, saved.history, saved.timings, saved.metrics)
    return Registration(transform, record, moving=moving)


__all__ = ["Registration", "load"]
