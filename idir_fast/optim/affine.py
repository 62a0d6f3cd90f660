"""The affine stage before the SIREN: SimpleITK's registration framework, the way ANTs and elastix start.

A 12-parameter affine transform (fixed → moving world) is fitted by gradient descent on the correlation metric
(same-modality images; the fixed mask, and the moving mask when given, restrict it), in a three-level
shrink/smoothing pyramid, starting from the given transform or from the alignment of the images' intensity
centres of mass (moments of the intensities shifted to be ≥ 0, so CT air counts as nothing). The SIREN then
models the residual: the total map is ``A(x + u(x))``.
"""
from __future__ import annotations

import time
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..io.transforms import matrix_to_transform, transform_matrix

SHRINK = (4, 2, 1)
SMOOTHING_MM = (4.0, 2.0, 0.0)
ITERATIONS = 200
SAMPLING = 0.1
MAX_SAMPLES = 50_000
"""The metric's random samples per iteration: :data:`SAMPLING` of each level's voxels, at most this many — a
stochastic gradient, as elastix's random sampler: the full-resolution level of a 1 mm brain would otherwise
draw ~0.7 million points per iteration."""


def _non_negative(image: sitk.Image) -> sitk.Image:
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    return sitk.Cast(image, sitk.sitkFloat32) - float(stats.GetMinimum())


POSE_LIMITS = {"offset_mm": 10.0, "scale": 0.07, "shape": 0.1}
"""When the moments of the images' foregrounds differ by more than these, their poses differ (``affine="detect"``
then runs the affine stage): the centres further apart than ``offset_mm``, the linear size (the inertia's
determinant to the power 1/6) off by more than ``scale``, or the inertia's shape (normalised by its trace) off by
more than ``shape`` (Frobenius) — a rotation or an anisotropic scaling."""


def _moments(image: sitk.Image, step: int = 2):
    """Centre and inertia (world mm) of the image's foreground — the voxels above its Otsu threshold, on every
    ``step``-th voxel: the object's shape, not its intensities (noise and contrast do not move it)."""
    foreground = sitk.GetArrayFromImage(sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1))
    kk, jj, ii = np.nonzero(foreground[::step, ::step, ::step])
    weights = np.ones(len(kk))
    idx = np.stack([ii, jj, kk], axis=1).astype(np.float64) * step
    d = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    p = np.asarray(image.GetOrigin()) + (idx * np.asarray(image.GetSpacing())) @ d.T
    total = weights.sum()
    centre = (weights[:, None] * p).sum(0) / total
    q = p - centre
    inertia = (weights[:, None, None] * (q[:, :, None] * q[:, None, :])).sum(0) / total
    return centre, inertia


def pose_difference(fixed: sitk.Image, moving: sitk.Image) -> dict:
    """How far the two images' poses differ by the moments of their foregrounds: ``offset_mm`` (centres),
    ``scale`` (relative difference of their linear sizes), ``shape`` (of their normalised inertia), and
    ``differs`` against :data:`POSE_LIMITS`."""
    cf, inf = _moments(fixed)
    cm, inm = _moments(moving)
    size = (lambda m: float(np.linalg.det(m)) ** (1.0 / 6.0))
    out = {"offset_mm": float(np.linalg.norm(cm - cf)), "scale": abs(size(inm) / size(inf) - 1.0),
           "shape": float(np.linalg.norm(inm / np.trace(inm) - inf / np.trace(inf)))}
    out["differs"] = any(out[k] > v for k, v in POSE_LIMITS.items())
    return out


def sampling_per_level(fixed: sitk.Image) -> list:
    """The metric's sampling fraction at each level of :data:`SHRINK`: :data:`SAMPLING`, capped at
    :data:`MAX_SAMPLES` points of the level's grid."""
    voxels = [float(np.prod([max(1, s // f) for s in fixed.GetSize()])) for f in SHRINK]
    return [min(SAMPLING, MAX_SAMPLES / v) for v in voxels]


def affine_stage(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image] = None,
                 moving_mask: Optional[sitk.Image] = None, initial: Optional[np.ndarray] = None,
                 seed: int = 0) -> Tuple[np.ndarray, dict]:
    """Fit an affine fixed → moving map.

    Args:
        initial: 4×4 starting matrix (default: centres of mass aligned, no rotation or scaling).
        seed: seeds the metric's random sampling (same seed, same result).

    Returns:
        ``(A, info)``: the 4×4 matrix and ``{"metric": final correlation, "iterations", "seconds", "stop"}``.
    """
    t0 = time.perf_counter()
    f32, m32 = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    if initial is None:
        centred = sitk.CenteredTransformInitializer(_non_negative(f32), _non_negative(m32), sitk.AffineTransform(3),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
        start = sitk.AffineTransform(centred)
    else:
        start = matrix_to_transform(initial)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentagePerLevel(sampling_per_level(fixed), seed=int(seed) % (2 ** 31) or 1)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(sitk.Cast(fixed_mask > 0, sitk.sitkUInt8))
    if moving_mask is not None:
        reg.SetMetricMovingMask(sitk.Cast(moving_mask > 0, sitk.sitkUInt8))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=ITERATIONS,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(SHRINK))
    reg.SetSmoothingSigmasPerLevel(list(SMOOTHING_MM))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(start, inPlace=False)
    result = reg.Execute(f32, m32)
    A = transform_matrix(result, "affine stage result")
    info = {"metric": float(reg.GetMetricValue()), "iterations": int(reg.GetOptimizerIteration()),
            "seconds": time.perf_counter() - t0, "stop": reg.GetOptimizerStopConditionDescription()}
    return A, info
