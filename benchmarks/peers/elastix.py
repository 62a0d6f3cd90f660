"""elastix (itk-elastix): affine + B-spline (10 mm final grid), AdvancedNormalizedCorrelation, 4 resolutions × 500
iterations per stage, the default maps otherwise (no bending penalty: NCC + bending energy as a multi-metric
segfaulted in itk-elastix 0.25.4). Points and ``det J`` through transformix (``OutputPoint``, world mm: elastix's
transform maps fixed-image points to moving-image points, the direction TRE needs)."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..common import Stopwatch, importable, package_version
from . import Registered

SETTINGS = dict(stages=("affine", "bspline"), resolutions=4, iterations=500, grid_spacing_mm=10.0,
                metric="AdvancedNormalizedCorrelation")
PROFILES = {"default": SETTINGS, "quick": dict(SETTINGS, resolutions=2, iterations=40),
            "affine": dict(SETTINGS, stages=("affine",))}


def unavailable() -> Optional[str]:
    if not importable("itk"):
        return "itk-elastix is not importable (pip install itk-elastix)"
    import itk

    if not hasattr(itk, "ElastixRegistrationMethod"):
        return "itk is installed without elastix (pip install itk-elastix)"
    return None


def to_itk(image: sitk.Image):
    """SimpleITK → ITK Float32 image with the same spacing, origin and direction."""
    import itk

    out = itk.image_from_array(np.ascontiguousarray(sitk.GetArrayFromImage(image).astype(np.float32)))
    out.SetSpacing(tuple(float(s) for s in image.GetSpacing()))
    out.SetOrigin(tuple(float(s) for s in image.GetOrigin()))
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)))
    return out


def parameter_object(stages=("affine", "bspline"), resolutions: int = 4, iterations: int = 500,
                     grid_spacing_mm: float = 10.0, metric: str = "AdvancedNormalizedCorrelation", seed: int = 121212):
    """The default 'affine'/'bspline' maps with the metric and schedule changed: a single-metric
    ``MultiResolutionRegistration`` (the default B-spline map pairs Mattes MI with a bending penalty)."""
    import itk

    po = itk.ParameterObject.New()
    for stage in stages:
        if stage == "bspline":
            pm = po.GetDefaultParameterMap("bspline", int(resolutions), float(grid_spacing_mm))
        else:
            pm = po.GetDefaultParameterMap(stage, int(resolutions))
        pm["Registration"] = ["MultiResolutionRegistration"]
        pm["Metric"] = [metric]
        for key in ("Metric0Weight", "Metric1Weight"):
            if key in pm:
                del pm[key]
        pm["NumberOfResolutions"] = [str(int(resolutions))]
        pm["MaximumNumberOfIterations"] = [str(int(iterations))]
        pm["WriteResultImage"] = ["false"]
        pm["RandomSeed"] = [str(int(seed))]
        po.AddParameterMap(pm)
    return po


def transformix(transform, moving_itk, points: Optional[np.ndarray] = None, jacobian: bool = False):
    """transformix on fixed world points (an elastix ``point`` file) and/or ``det J`` (``spatialJacobian``, on
    the fixed grid stored in the transform). Returns ``(mapped (N, 3) or None, det J image or None)``."""
    import itk

    with tempfile.TemporaryDirectory(prefix="peers_transformix_") as work:
        tf = itk.TransformixFilter.New(moving_itk)
        tf.SetTransformParameterObject(transform)
        if points is not None:
            pts = np.asarray(points, dtype=np.float64)
            infile = Path(work, "fixed_points.txt")
            infile.write_text(f"point\n{len(pts)}\n" + "".join(" ".join(repr(float(v)) for v in p) + "\n"
                                                                for p in pts))
            tf.SetFixedPointSetFileName(str(infile))
        tf.SetOutputDirectory(work + "/")
        tf.SetLogToConsole(False)
        if jacobian:
            tf.SetComputeDeterminantOfSpatialJacobian(True)
        tf.UpdateLargestPossibleRegion()
        mapped = det = None
        if points is not None:
            found = re.findall(r"OutputPoint\s*=\s*\[([^\]]*)\]", Path(work, "outputpoints.txt").read_text())
            mapped = np.array([[float(v) for v in s.split()] for s in found], dtype=np.float64)
            if mapped.shape != np.asarray(points).shape:
                raise RuntimeError(f"transformix returned {mapped.shape} points for {np.asarray(points).shape}")
        if jacobian:
            files = sorted(Path(work).glob("spatialJacobian.*"))
            if not files:
                raise RuntimeError("transformix wrote no spatialJacobian image")
            det = sitk.ReadImage(str(files[0]), sitk.sitkFloat32)
    return mapped, det


def register(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, *, threads: int,
             profile: str = "default") -> Registered:
    """One elastix registration (no mask: elastix's default)."""
    import itk

    settings = PROFILES[profile]
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    po = parameter_object(**settings)
    fi, mi = to_itk(fixed), to_itk(moving)
    with Stopwatch() as sw:
        method = itk.ElastixRegistrationMethod.New(fi, mi, parameter_object=po, log_to_console=False)
        method.SetNumberOfThreads(int(threads))
        method.UpdateLargestPossibleRegion()
    transform = method.GetTransformParameterObject()

    def warp_labels(labels):
        nearest = itk.ParameterObject.New()
        for i in range(transform.GetNumberOfParameterMaps()):
            pm = transform.GetParameterMap(i)
            pm["ResampleInterpolator"] = ["FinalNearestNeighborInterpolator"]
            pm["FinalBSplineInterpolationOrder"] = ["0"]
            nearest.AddParameterMap(pm)
        tf = itk.TransformixFilter.New(to_itk(labels))
        tf.SetTransformParameterObject(nearest)
        tf.SetLogToConsole(False)
        tf.UpdateLargestPossibleRegion()
        out = sitk.GetImageFromArray(np.rint(itk.array_from_image(tf.GetOutput())).astype(np.uint8))
        out.CopyInformation(fixed)
        return out

    return Registered(lambda points: transformix(transform, mi, points)[0],
                      lambda: transformix(transform, mi, jacobian=True)[1], sw.wall, sw.cpu,
                      {**{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
                       "mask": "none (elastix default)", "threads": threads},
                      package_version("itk-elastix"), extra={"recipe": "transformix point file (world), OutputPoint"},
                      warp_labels=warp_labels)
