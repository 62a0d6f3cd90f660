"""Peers side by side: the same registration pairs through ANTs SyN, elastix and idir_fast, in one run.

    python benchmarks/peers.py [--cases ct-18mm,blobs] [--tools ants-syn,elastix,idir]
                               [--idir-profiles default,cpu-small] [--threads 2] [--quick] [--check-conventions]
                               [--ct PATH] [--out benchmarks/results]

The peers come with ``pip install -e ".[peers]"`` (antspyx, itk-elastix); a tool that is not installed is skipped
with a message.

Every case has an exact ground truth: the fixed landmarks ``x`` and the moving landmarks ``Φ(x)`` with the known
map Φ (fixed → moving world points, LPS mm). Each tool's transform maps the fixed landmarks into the moving image;
the target registration error (TRE) is the Euclidean distance to ``Φ(x)``, in mm, with no rounding.

Cases:
    ``ct-10mm``, ``ct-18mm``, ``ct-30mm``: the shared real chest CT deformed by
        ``idir_fast.data.deformed_pair`` (breathing-like motion of that amplitude; 100 landmarks in the lungs).
    ``phantom``: ``idir_fast.data.phantom_pair()`` (the demo phantom).
    ``blobs``: a smooth non-lung texture (Gaussian blobs inside an ellipsoidal body, 36×44×40 voxels of 2 mm)
        deformed by a known sine displacement of 3 mm amplitude (built here, see :func:`blobs_case`).

Tools (each skipped with a message when its package is missing):
    ``ants-syn``: ``ants.registration(type_of_transform='SyN')`` with antspyx defaults (affine + SyN, Mattes MI).
    ``ants-syncc``: ``type_of_transform='SyNCC'`` (CC metric, many more iterations: slow; not run by default).
    ``elastix``: itk-elastix affine + B-spline (10 mm grid), AdvancedNormalizedCorrelation, 4 resolutions × 500
        iterations each stage, default maps otherwise (no bending penalty: see :func:`elastix_parameter_object`).
    ``idir``: ``idir_fast.register`` with every selected settings profile of :data:`IDIR_PROFILES`.

ANTs and elastix get no mask (their defaults); idir_fast samples its loss inside the fixed mask (its design).
Folding is counted inside the case's mask for every tool.

Coordinate conventions are verified before any TRE is trusted: ``--check-conventions`` registers an image to a
copy of itself shifted by a known amount in mm (SimpleITK resampling) and checks that every tool maps the fixed
points to ``point + shift`` within a fraction of a voxel. Every benchmark run performs this check first and
aborts when it fails.

Results: a table on stdout, ``<out>/peers_<UTC timestamp>.json`` (all rows, the convention check, machine info
and versions) and ``<out>/peers_<UTC timestamp>.png`` (TRE vs wall time, one panel per case). ``--quick`` runs
tiny settings on the small ``blobs`` case (files ``peers_quick_<timestamp>.*``) as a smoke test.
"""
from __future__ import annotations

import os
import sys


def _early_threads(argv) -> int:
    """Thread count from ``--threads`` (default 2), read before numpy/torch/ITK start their thread pools."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 2


def set_thread_environment(threads: int) -> None:
    """Set every thread-count variable the tools read (ITK/ANTs/elastix, OpenMP, BLAS) to ``threads``."""
    for name in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


if __name__ == "__main__":
    set_thread_environment(_early_threads(sys.argv))

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_CT = HERE.parent.parent / "shared" / "data" / "ct" / "chest_ct_1p5mm.nii.gz"
DEFAULT_OUT = HERE / "results"

# ------------------------------------------------------------------------------------------ settings
#: idir_fast settings profiles: name → keyword arguments of ``idir_fast.register`` ("default" passes nothing,
#: i.e. whatever the package's defaults are). Add a profile here and select it with ``--idir-profiles``.
IDIR_PROFILES: Dict[str, dict] = {
    "default": {},
    "default+affine": dict(affine="auto"),
    "paper": dict(schedule="paper"),
    "cpu-small-2025": dict(schedule="paper", hidden=(64, 64, 64), batch_size=2000, epochs=1000),
    # one change each from the CPU default (the sensitivity behind the defaults; README, "Time to accuracy")
    "hidden96": dict(hidden=(96, 96, 96)),
    "points3000": dict(batch_size=3000),
    "epochs800": dict(epochs=800),
    "lr2e-4": dict(lr=2e-4),
    "lr1e-3": dict(lr=1e-3),
    "omega16": dict(omega=16.0),
    "one-stage": dict(schedule="paper", hidden=(48, 48, 48), batch_size=1500, epochs=400, lr=5e-4, init="identity"),
}
#: profiles run when ``--idir-profiles`` is not given, per device type (the paper schedule takes ~1 h per pair on
#: a 2-core CPU: run it with --idir-profiles paper on one case).
DEFAULT_IDIR_PROFILES = {"cpu": ("default", "default+affine"), "cuda": ("default", "paper")}
#: ``--quick``: the profile used when no ``--idir-profiles`` is given, and the caps applied to named profiles.
IDIR_QUICK_PROFILE = {"quick": dict(hidden=(32, 32, 32), batch_size=1000, epochs=30)}
IDIR_QUICK_CAPS = dict(batch_size=1000, epochs=30)

#: antspyx keyword arguments per tool (empty: antspyx defaults), and the ``--quick`` overrides.
ANTS_TOOLS = {"ants-syn": ("SyN", {}), "ants-syncc": ("SyNCC", {})}
ANTS_QUICK = dict(aff_iterations=(100, 50, 0, 0), reg_iterations=(10, 5, 0))

#: elastix: affine + B-spline, NCC, 4 resolutions × 500 iterations, 10 mm final grid spacing.
ELASTIX_SETTINGS = dict(stages=("affine", "bspline"), resolutions=4, iterations=500, grid_spacing_mm=10.0,
                        metric="AdvancedNormalizedCorrelation")
ELASTIX_QUICK = dict(ELASTIX_SETTINGS, resolutions=2, iterations=40)

ALL_CASES = ("ct-10mm", "ct-18mm", "ct-30mm", "phantom", "blobs")
ALL_TOOLS = ("ants-syn", "ants-syncc", "elastix", "idir")
DEFAULT_TOOLS = ("ants-syn", "elastix", "idir")
QUICK_CASES = ("blobs",)

#: convention check: the known shift (mm, LPS; no two components alike so sign/axis errors show) and the pass
#: thresholds as fractions of the smallest voxel spacing.
CHECK_SHIFT_MM = (4.5, -3.0, 6.0)
CHECK_MEAN_VOXELS = 0.25
CHECK_MAX_VOXELS = 0.5


# ------------------------------------------------------------------------------------------ package helpers
def _idir_module(name: str):
    """Import ``idir_fast.<name>`` (the package's public helpers), trying the refactored layout too."""
    candidates = {"data": ("idir_fast.data", "idir_fast.data.synthetic"),
                  "bench": ("idir_fast.bench", "idir_fast.apps.bench")}[name]
    errors = []
    for mod in candidates:
        try:
            return importlib.import_module(mod)
        except ImportError as err:  # noqa: PERF203
            errors.append(f"{mod}: {err}")
    raise ImportError("; ".join(errors))


def idir_data():
    """The module holding ``deformed_pair``, ``phantom_pair`` and ``warp_image``."""
    mod = _idir_module("data")
    for name in ("deformed_pair", "phantom_pair", "warp_image"):
        if not hasattr(mod, name):
            mod = importlib.import_module("idir_fast.data.synthetic")
            break
    return mod


def package_version(dist: str) -> Optional[str]:
    """Installed version of distribution ``dist`` or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """``idir_fast``'s machine info when available, else platform/library versions gathered here; plus peers."""
    try:
        info = dict(_idir_module("bench").machine_info("cpu"))
    except Exception as err:  # noqa: BLE001 — the package may be mid-refactor; gather what we can
        info = {"python": platform.python_version(), "platform": platform.platform(),
                "torch": torch.__version__, "numpy": np.__version__,
                "SimpleITK": sitk.Version_VersionString(), "cores": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(),
                "idir_fast": package_version("idir_fast"), "machine_info_error": f"{type(err).__name__}: {err}"}
    info.update({"antspyx": package_version("antspyx"), "itk-elastix": package_version("itk-elastix"),
                 "itk": package_version("itk"), "idir_fast_dist": package_version("idir_fast")})
    return info


def configure_threads(threads: int) -> None:
    """Use ``threads`` threads in every tool (environment variables, torch, SimpleITK; ITK when loaded)."""
    set_thread_environment(threads)
    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


class Stopwatch:
    """Wall and process CPU seconds of a ``with`` block (CPU time counts every thread of this process, so
    ``cpu / wall`` well below the thread count hints at contention from other work on the machine)."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        return False


# ------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """A registration pair with an exact answer.

    Attributes:
        name: short name used on the command line and in the results.
        fixed, moving: Float32 images.
        mask: UInt8 mask of the fixed image (folding is counted inside it; idir_fast samples inside it).
        fixed_landmarks, moving_landmarks: ``(N, 3)`` world points (LPS mm); ``moving = Φ(fixed)`` exactly.
        description: one line saying how the pair was made.
    """

    name: str
    fixed: sitk.Image
    moving: sitk.Image
    mask: sitk.Image
    fixed_landmarks: np.ndarray
    moving_landmarks: np.ndarray
    description: str = ""
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Geometry and landmark count, for the results file."""
        return {"name": self.name, "description": self.description, "size": list(self.fixed.GetSize()),
                "spacing": list(self.fixed.GetSpacing()), "origin": list(self.fixed.GetOrigin()),
                "direction": list(self.fixed.GetDirection()), "landmarks": int(len(self.fixed_landmarks)),
                "mask_voxels": int(np.count_nonzero(sitk.GetArrayViewFromImage(self.mask))), **self.extra}


class SineDeformation:
    """A smooth, invertible map ``Φ(p) = p + d(p)`` (world mm) with a sine displacement.

    Each component of ``d`` varies along a different axis: ``d_x = A sin(k (p_y − c_y) + φ_0)``,
    ``d_y = A sin(k (p_z − c_z) + φ_1)``, ``d_z = A sin(k (p_x − c_x) + φ_2)``, ``k = 2π / wavelength``. Then
    ``det ∂Φ/∂p = 1 + ∂_y d_x ∂_z d_y ∂_x d_z ≥ 1 − (A k)³ > 0`` and ``|∂d/∂p| ≤ A k < 1``, so Φ is fold-free and
    the fixed-point iteration ``p ← q − d(p)`` converges to ``Φ⁻¹(q)``.
    """

    def __init__(self, centre: Sequence[float], amplitude_mm: float = 3.0, wavelength_mm: float = 50.0,
                 phases: Sequence[float] = (0.3, 1.1, 2.0)):
        self.centre = np.asarray(centre, dtype=np.float64)
        self.amplitude = float(amplitude_mm)
        self.k = 2.0 * np.pi / float(wavelength_mm)
        self.phases = np.asarray(phases, dtype=np.float64)
        if self.amplitude * self.k >= 0.9:
            raise ValueError("SineDeformation: amplitude × 2π / wavelength must stay below 0.9 (invertibility)")

    def displacement(self, p: np.ndarray) -> np.ndarray:
        """``d(p)`` for ``(..., 3)`` world points."""
        q = np.asarray(p, dtype=np.float64) - self.centre
        a, k, ph = self.amplitude, self.k, self.phases
        return np.stack([a * np.sin(k * q[..., 1] + ph[0]), a * np.sin(k * q[..., 2] + ph[1]),
                         a * np.sin(k * q[..., 0] + ph[2])], axis=-1)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        return p + self.displacement(p)

    def inverse(self, q: np.ndarray, iterations: int = 60) -> np.ndarray:
        """``Φ⁻¹(q)`` by fixed-point iteration (a contraction since ``|∂d/∂p| < 1``)."""
        q = np.asarray(q, dtype=np.float64)
        p = q.copy()
        for _ in range(iterations):
            p = q - self.displacement(p)
        return p


def world_points(image: sitk.Image, index_xyz: np.ndarray) -> np.ndarray:
    """World points (LPS mm) of continuous ``(N, 3)`` indices in (x, y, z) order: ``origin + D·diag(s)·i``."""
    d = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    s = np.asarray(image.GetSpacing(), dtype=np.float64)
    return np.asarray(image.GetOrigin(), dtype=np.float64) + (np.asarray(index_xyz, float) * s) @ d.T


def blob_texture(size_xyz=(36, 44, 40), spacing=(2.0, 2.0, 2.0), origin=None, direction=None, blobs: int = 160,
                 seed: int = 0):
    """A smooth random texture: Gaussian blobs inside an ellipsoidal body, constant background outside.

    Args:
        size_xyz: voxels (x, y, z). spacing: mm. origin: world origin; default centres the volume at 0.
        direction: 9 direction cosines (row-major); default identity.
        blobs: number of blobs. seed: random seed.

    Returns:
        ``(image, mask)``: Float32 image (body 100 + blobs of ±40–120, background 0) and the UInt8 body mask.
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    sp = np.asarray(spacing, float)
    ext = (np.asarray(size_xyz) - 1) * sp
    kk, jj, ii = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    p = np.stack([ii, jj, kk], -1) * sp  # local mm (x, y, z), array order (z, y, x)
    c = ext / 2.0
    semi = 0.44 * ext
    body = np.sum(((p - c) / semi) ** 2, axis=-1) < 1.0
    values = np.zeros(p.shape[:3])
    for _ in range(blobs):
        centre = c + semi * rng.uniform(-0.9, 0.9, size=3)
        sigma = rng.uniform(2.0, 5.0)
        amp = rng.choice([-1.0, 1.0]) * rng.uniform(40.0, 120.0)
        values += amp * np.exp(-np.sum((p - centre) ** 2, axis=-1) / (2.0 * sigma ** 2))
    arr = np.where(body, 100.0 + values, 0.0).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in sp))
    img.SetDirection(tuple(float(v) for v in (direction if direction is not None else np.eye(3).ravel())))
    if origin is None:  # put the volume's centre at the world origin
        centre_world = world_points(img, ((np.asarray(size_xyz) - 1) / 2.0)[None])[0]
        origin = -centre_world
    img.SetOrigin(tuple(float(v) for v in origin))
    mask = sitk.GetImageFromArray(body.astype(np.uint8))
    mask.CopyInformation(img)
    return img, mask


def pick_landmarks(image: sitk.Image, mask: sitk.Image, n: int, rng, margin_mm: float = 6.0) -> np.ndarray:
    """``n`` world points at high image gradient inside ``mask`` eroded by ``margin_mm``.

    The ``4 n`` voxels with the largest gradient magnitude (Gaussian derivative, σ = 1.5 × the smallest spacing)
    inside the eroded mask are candidates; ``n`` of them are drawn at random.
    """
    radius = [max(1, int(round(margin_mm / s))) for s in image.GetSpacing()]
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.Cast(mask > 0, sitk.sitkUInt8), radius)) > 0
    grad = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(image, 1.5 * min(image.GetSpacing())))
    candidates = np.flatnonzero(inner.ravel())
    top = candidates[np.argsort(grad.ravel()[candidates])[::-1][: 4 * n]]
    chosen = rng.choice(top, size=min(n, top.size), replace=False)
    kk, jj, ii = np.unravel_index(chosen, inner.shape)
    return world_points(image, np.stack([ii, jj, kk], 1).astype(float))


def blobs_case(amplitude_mm: float = 3.0, num_landmarks: int = 100, noise: float = 2.0, seed: int = 0) -> Case:
    """The smooth non-lung pair: :func:`blob_texture` deformed by :class:`SineDeformation`.

    As ``idir_fast.data.deformed_pair``: ``moving(y) = fixed(Φ⁻¹(y))`` (fixed-point inversion), so the fixed
    landmarks ``x`` correspond exactly to ``Φ(x)``; independent noise (σ = ``noise``) is added to the moving image.
    """
    data = idir_data()
    rng = np.random.default_rng(seed)
    fixed, mask = blob_texture(seed=seed)
    centre = world_points(fixed, ((np.asarray(fixed.GetSize()) - 1) / 2.0)[None])[0]
    phi = SineDeformation(centre, amplitude_mm=amplitude_mm)
    moving = data.warp_image(fixed, phi.inverse, background=0.0)
    if noise > 0:
        arr = sitk.GetArrayFromImage(moving) + rng.normal(scale=noise, size=moving.GetSize()[::-1])
        noisy = sitk.GetImageFromArray(arr.astype(np.float32))
        noisy.CopyInformation(moving)
        moving = noisy
    fixed_lm = pick_landmarks(fixed, mask, num_landmarks, rng)
    return Case("blobs", fixed, moving, mask, fixed_lm, phi(fixed_lm),
                f"Gaussian-blob texture {fixed.GetSize()} at {fixed.GetSpacing()} mm, sine displacement "
                f"{amplitude_mm} mm amplitude, 50 mm wavelength, {len(fixed_lm)} landmarks at high gradient in "
                f"the body")


def ct_case(ct_path: Path, amplitude_mm: float) -> Case:
    """The shared chest CT deformed by ``idir_fast.data.deformed_pair`` at ``amplitude_mm`` (100 landmarks)."""
    pair = idir_data().deformed_pair(sitk.ReadImage(str(ct_path)), amplitude_mm=amplitude_mm, num_landmarks=100,
                                     seed=0)
    return Case(f"ct-{amplitude_mm:g}mm", pair.fixed, pair.moving, pair.mask, pair.fixed_landmarks,
                pair.moving_landmarks, f"{ct_path.name} deformed by deformed_pair(amplitude_mm={amplitude_mm:g}, "
                                       f"num_landmarks=100, seed=0); lung mask")


def phantom_case() -> Case:
    """The demo pair ``idir_fast.data.phantom_pair()``."""
    pair = idir_data().phantom_pair()
    return Case("phantom", pair.fixed, pair.moving, pair.mask, pair.fixed_landmarks, pair.moving_landmarks,
                "idir_fast.data.phantom_pair() (procedural lung phantom, 15 mm breathing motion); lung mask")


def build_case(name: str, ct_path: Path) -> Case:
    """Make the case called ``name`` (one of :data:`ALL_CASES`)."""
    m = re.fullmatch(r"ct-(\d+(?:\.\d+)?)mm", name)
    if m:
        if not ct_path.exists():
            raise FileNotFoundError(f"chest CT not found at {ct_path} (pass --ct)")
        return ct_case(ct_path, float(m.group(1)))
    if name == "phantom":
        return phantom_case()
    if name == "blobs":
        return blobs_case()
    raise ValueError(f"unknown case {name!r}; known: {', '.join(ALL_CASES)} (ct-<amplitude>mm for any amplitude)")


# ------------------------------------------------------------------------------------------ metrics
def tre_stats(predicted: np.ndarray, target: np.ndarray) -> dict:
    """TRE statistics (mm, Euclidean, no rounding) of ``(N, 3)`` predicted vs target world points."""
    e = np.linalg.norm(np.asarray(predicted, float) - np.asarray(target, float), axis=1)
    return {"mean": float(e.mean()), "std": float(e.std()), "median": float(np.median(e)),
            "p95": float(np.percentile(e, 95)), "max": float(e.max()), "n": int(e.size)}


def folding_stats(det_zyx: np.ndarray, mask: sitk.Image) -> dict:
    """Count and fraction of voxels with ``det J ≤ 0`` inside ``mask`` (arrays in (z, y, x) order)."""
    m = sitk.GetArrayViewFromImage(mask) > 0
    if det_zyx.shape != m.shape:
        raise ValueError(f"Jacobian determinant shape {det_zyx.shape} does not match the mask {m.shape}")
    d = np.asarray(det_zyx, dtype=np.float64)[m]
    n = int(np.count_nonzero(d <= 0))
    return {"count": n, "fraction": float(n / max(d.size, 1)), "voxels": int(d.size),
            "min_det": float(d.min()) if d.size else float("nan")}


# ------------------------------------------------------------------------------------------ ANTs
def to_ants(image: sitk.Image):
    """SimpleITK → ANTs image with the same voxels, spacing, origin and direction (both are ITK, LPS)."""
    import ants

    arr = np.ascontiguousarray(sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0))  # (x, y, z)
    return ants.from_numpy(arr, origin=tuple(image.GetOrigin()), spacing=tuple(image.GetSpacing()),
                           direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3))


def ants_map_points(points: np.ndarray, transforms: Sequence[str], whichtoinvert: Sequence[bool]) -> np.ndarray:
    """Map ``(N, 3)`` LPS world points through an ANTs transform list (antsApplyTransformsToPoints)."""
    import ants
    import pandas as pd

    df = pd.DataFrame(np.asarray(points, dtype=np.float64), columns=["x", "y", "z"])
    out = ants.apply_transforms_to_points(3, df, list(transforms), whichtoinvert=list(whichtoinvert))
    return out[["x", "y", "z"]].to_numpy(dtype=np.float64)


def ants_fixed_to_moving(points: np.ndarray, reg: dict) -> np.ndarray:
    """Fixed-image world points → moving-image world points for an ``ants.registration`` result.

    The recipe verified by :func:`check_conventions`: points in ITK/LPS world mm (no RAS flip), transform list
    ``reg['fwdtransforms']`` (``[…Warp.nii.gz, …GenericAffine.mat]``, the list that warps IMAGES moving → fixed),
    nothing inverted. Point mapping runs opposite to image mapping, so the image list moving → fixed maps points
    fixed → moving. (The ``invtransforms`` list with ``[True, False]`` maps moving points to the fixed image.)
    """
    fwd = list(reg["fwdtransforms"])
    return ants_map_points(points, fwd, [False] * len(fwd))


def ants_register(fixed: sitk.Image, moving: sitk.Image, type_of_transform: str, workdir: str,
                  seed: int = 1, **kwargs):
    """``ants.registration`` on SimpleITK images; returns ``(result dict, fixed ANTs image, Stopwatch)``."""
    import ants

    try:  # antspyx passes --random-seed to antsRegistration when this is set (Mattes sampling is random)
        ants.config._random_seed = int(seed)
    except AttributeError:
        pass
    fa, ma = to_ants(fixed), to_ants(moving)
    with Stopwatch() as sw:
        reg = ants.registration(fa, ma, type_of_transform=type_of_transform,
                                outprefix=os.path.join(workdir, "ants_"), **kwargs)
    return reg, fa, sw


def run_ants(case: Case, tool: str = "ants-syn", quick: bool = False) -> dict:
    """ANTs (antspyx) on one case: TRE via :func:`ants_fixed_to_moving`, folding of the SyN warp.

    Folding: ``ants.create_jacobian_determinant_image`` of the forward warp field (``fwdtransforms[0]``) on the
    fixed grid; the affine part has a positive determinant and does not change the sign.
    """
    import ants

    transform_type, kwargs = ANTS_TOOLS[tool]
    kwargs = dict(kwargs, **(ANTS_QUICK if quick else {}))
    with tempfile.TemporaryDirectory(prefix="peers_ants_") as work:
        reg, fa, sw = ants_register(case.fixed, case.moving, transform_type, work, **kwargs)
        mapped = ants_fixed_to_moving(case.fixed_landmarks, reg)
        warps = [t for t in reg["fwdtransforms"] if t.endswith("Warp.nii.gz")]
        fold = None
        if warps:
            jac = ants.create_jacobian_determinant_image(fa, warps[0], do_log=False, geom=False)
            fold = folding_stats(jac.numpy().transpose(2, 1, 0), case.mask)
    return {"tool": tool, "profile": transform_type + (" quick" if quick else ""), "version": ants.__version__,
            "settings": {"type_of_transform": transform_type, **{k: list(v) if isinstance(v, tuple) else v
                                                                   for k, v in kwargs.items()},
                         "mask": "none (antspyx default)"},
            "seconds": sw.wall, "cpu_seconds": sw.cpu, "mapped": mapped, "folding": fold}


# ------------------------------------------------------------------------------------------ elastix
def to_itk(image: sitk.Image):
    """SimpleITK → ITK Float32 image with the same spacing, origin and direction."""
    import itk

    out = itk.image_from_array(np.ascontiguousarray(sitk.GetArrayFromImage(image).astype(np.float32)))
    out.SetSpacing(tuple(float(s) for s in image.GetSpacing()))
    out.SetOrigin(tuple(float(s) for s in image.GetOrigin()))
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)))
    return out


def elastix_parameter_object(stages=("affine", "bspline"), resolutions: int = 4, iterations: int = 500,
                             grid_spacing_mm: float = 10.0, metric: str = "AdvancedNormalizedCorrelation",
                             seed: int = 121212):
    """elastix parameter maps: the default 'affine' and 'bspline' maps with the metric and schedule changed.

    The default B-spline map pairs Mattes MI with ``TransformBendingEnergyPenalty`` in a multi-metric registration;
    here it becomes a single-metric ``MultiResolutionRegistration`` with NCC (NCC + bending energy as a
    multi-metric segfaulted in itk-elastix 0.25.4).
    """
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


def elastix_register(fixed: sitk.Image, moving: sitk.Image, threads: int, **settings):
    """Run elastix; returns ``(transform parameter object, moving ITK image, Stopwatch)``."""
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    po = elastix_parameter_object(**settings)
    fi, mi = to_itk(fixed), to_itk(moving)
    with Stopwatch() as sw:
        method = itk.ElastixRegistrationMethod.New(fi, mi, parameter_object=po, log_to_console=False)
        method.SetNumberOfThreads(int(threads))
        method.UpdateLargestPossibleRegion()
    return method.GetTransformParameterObject(), mi, sw


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """Whether two images share size, spacing, origin and direction (to ``tol``)."""
    return (a.GetSize() == b.GetSize()
            and all(np.allclose(getattr(a, g)(), getattr(b, g)(), atol=tol)
                    for g in ("GetSpacing", "GetOrigin", "GetDirection")))


def transformix_points(points: np.ndarray, transform, moving_itk, workdir: str, jacobian: bool = False,
                       reference: Optional[sitk.Image] = None):
    """Map fixed world points (LPS mm) to the moving image with transformix; optionally det J on the fixed grid.

    elastix's transform maps fixed-image points to moving-image points (pull convention), which is the direction
    TRE needs. Points go in as an elastix ``point`` file (world coordinates) and come back from
    ``outputpoints.txt`` (``OutputPoint``). The determinant image (``spatialJacobian``) lies on the fixed grid
    stored in the transform; when ``reference`` is given and its grid differs, it is resampled onto it.

    Returns:
        ``(mapped (N, 3), det J (z, y, x) array or None)``.
    """
    import itk

    pts = np.asarray(points, dtype=np.float64)
    infile = os.path.join(workdir, "fixed_points.txt")
    with open(infile, "w") as fh:
        fh.write(f"point\n{len(pts)}\n")
        for p in pts:
            fh.write(" ".join(repr(float(v)) for v in p) + "\n")
    tf = itk.TransformixFilter.New(moving_itk)
    tf.SetTransformParameterObject(transform)
    tf.SetFixedPointSetFileName(infile)
    tf.SetOutputDirectory(workdir if workdir.endswith("/") else workdir + "/")
    tf.SetLogToConsole(False)
    if jacobian:
        tf.SetComputeDeterminantOfSpatialJacobian(True)
    tf.UpdateLargestPossibleRegion()
    text = Path(workdir, "outputpoints.txt").read_text()
    found = re.findall(r"OutputPoint\s*=\s*\[([^\]]*)\]", text)
    mapped = np.array([[float(v) for v in s.split()] for s in found], dtype=np.float64)
    if mapped.shape != pts.shape:
        raise RuntimeError(f"transformix returned {mapped.shape} points for {pts.shape}")
    det = None
    if jacobian:
        det_files = sorted(Path(workdir).glob("spatialJacobian.*"))
        if not det_files:
            raise RuntimeError("transformix wrote no spatialJacobian image")
        det_img = sitk.ReadImage(str(det_files[0]), sitk.sitkFloat32)
        if reference is not None and not same_grid(det_img, reference):
            det_img = sitk.Resample(det_img, reference, sitk.Transform(), sitk.sitkLinear, 1.0, sitk.sitkFloat32)
        det = sitk.GetArrayFromImage(det_img)
    return mapped, det


def run_elastix(case: Case, threads: int, quick: bool = False) -> dict:
    """elastix affine + B-spline (NCC) on one case; TRE and det J from transformix."""
    settings = dict(ELASTIX_QUICK if quick else ELASTIX_SETTINGS)
    with tempfile.TemporaryDirectory(prefix="peers_elastix_") as work:
        transform, mi, sw = elastix_register(case.fixed, case.moving, threads, **settings)
        mapped, det = transformix_points(case.fixed_landmarks, transform, mi, work, jacobian=True,
                                         reference=case.fixed)
    return {"tool": "elastix", "profile": "affine+bspline NCC" + (" quick" if quick else ""),
            "version": package_version("itk-elastix"),
            "settings": {**{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
                         "mask": "none (elastix default)"},
            "seconds": sw.wall, "cpu_seconds": sw.cpu, "mapped": mapped,
            "folding": folding_stats(det, case.mask)}


# ------------------------------------------------------------------------------------------ idir_fast
def idir_settings(profiles: Sequence[str], quick: bool, explicit: bool) -> Dict[str, dict]:
    """Settings per selected profile; in quick mode the quick profile, or the named ones capped in size."""
    if quick and not explicit:
        return dict(IDIR_QUICK_PROFILE)
    out = {}
    for name in profiles:
        if name not in IDIR_PROFILES:
            raise ValueError(f"unknown idir profile {name!r}; known: {', '.join(IDIR_PROFILES)}")
        kw = dict(IDIR_PROFILES[name])
        if quick:
            kw.update({k: min(kw.get(k, v), v) for k, v in IDIR_QUICK_CAPS.items()})
        out[name] = kw
    return out


def run_idir(case: Case, profile: str, settings: dict, device: str = "cpu") -> dict:
    """``idir_fast.register`` with one settings profile; TRE from ``transform_points``, det J on the fixed grid."""
    import idir_fast

    with Stopwatch() as sw:
        reg = idir_fast.register(case.fixed, case.moving, case.mask, fixed_landmarks=case.fixed_landmarks,
                                 moving_landmarks=case.moving_landmarks, progress=False, device=device, **settings)
    mapped = np.asarray(reg.transform_points(case.fixed_landmarks), dtype=np.float64)
    det = sitk.GetArrayFromImage(reg.jacobian_determinant())
    used = {k: v for k, v in getattr(reg, "settings", {}).items() if k != "versions"}
    row = {"tool": "idir", "profile": profile, "version": getattr(idir_fast, "__version__", None),
           "settings": {"requested": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
                        "used": used, "mask": "fixed mask (loss sampled inside)"},
           "seconds": sw.wall, "cpu_seconds": sw.cpu, "mapped": mapped,
           "folding": folding_stats(det, case.mask)}
    own = getattr(reg, "metrics", {}).get("tre")
    if own:
        row["tre_reported_by_package"] = {k: own[k] for k in ("mean", "p95", "max") if k in own}
    return row


# ------------------------------------------------------------------------------------------ conventions
def check_geometries():
    """Two test geometries: identity direction with anisotropic spacing, and flipped x/y axes (like a
    RAS-stored NIfTI read into LPS) with another origin."""
    return [
        dict(name="identity direction, 2×2×2.5 mm", size_xyz=(36, 40, 32), spacing=(2.0, 2.0, 2.5),
             origin=(-31.0, 47.5, 12.0), direction=None),
        dict(name="x/y flipped direction, 2.2×2×2 mm", size_xyz=(34, 40, 36), spacing=(2.2, 2.0, 2.0),
             origin=(40.0, -12.5, -80.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)),
    ]


def shifted_pair(geometry: dict, shift_mm: Sequence[float], seed: int = 3):
    """A blob image and a copy shifted by ``shift_mm`` (world): ``moving(y) = fixed(y − shift)``; so a fixed point
    ``x`` corresponds to the moving point ``x + shift``. Returns ``(fixed, moving, mask, fixed points (N, 3))``."""
    fixed, mask = blob_texture(geometry["size_xyz"], geometry["spacing"], geometry["origin"],
                               geometry["direction"], blobs=120, seed=seed)
    moving = sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, tuple(-float(s) for s in shift_mm)),
                           sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    rng = np.random.default_rng(seed)
    points = pick_landmarks(fixed, mask, 30, rng, margin_mm=8.0)
    return fixed, moving, mask, points


def _residual_summary(mapped: np.ndarray, points: np.ndarray, shift: np.ndarray, spacing) -> dict:
    """Residuals of mapped points against ``points + shift`` (mm and voxels) and the mean displacement found."""
    r = np.linalg.norm(mapped - (points + shift), axis=1)
    voxel = float(min(spacing))
    return {"mean_mm": float(r.mean()), "max_mm": float(r.max()), "mean_voxels": float(r.mean() / voxel),
            "max_voxels": float(r.max() / voxel),
            "mean_displacement_mm": [float(v) for v in np.mean(mapped - points, axis=0)]}


def _passes(res: dict) -> bool:
    return res["mean_voxels"] <= CHECK_MEAN_VOXELS and res["max_voxels"] <= CHECK_MAX_VOXELS


def check_conventions(tools: Sequence[str], threads: int, include_idir: bool = True,
                      include_bspline: bool = True) -> dict:
    """Verify every tool's point mapping on a known pure translation (see the module docstring).

    ANTs: SyN (the benchmark's transform type, affine + warp) and the recipe of :func:`ants_fixed_to_moving`
    must map the fixed points to ``point + shift``; the other recipe (``invtransforms``, ``[True, False]``) and
    RAS-flipped points are reported to show that the check tells them apart. elastix: the benchmark's affine +
    B-spline run is reported; the gate is an affine-only run through the same transformix point code (the
    unregularised B-spline stage adds registration error on a pure shift that is not a convention matter).
    idir_fast: a small fixed setting (3×64, 2000 points, 300 epochs). ``include_idir``/``include_bspline``
    switch the two slower parts off (``--quick``).

    Returns:
        ``{"passed": bool, "shift_mm": …, "results": [ … ]}``.
    """
    shift = np.asarray(CHECK_SHIFT_MM, dtype=np.float64)
    results, passed = [], True
    flip = np.array([-1.0, -1.0, 1.0])
    for geom in check_geometries():
        fixed, moving, mask, pts = shifted_pair(geom, shift)
        sp = fixed.GetSpacing()
        print(f"  [{geom['name']}] shift {shift.tolist()} mm, {len(pts)} points", flush=True)
        if any(t.startswith("ants") for t in tools) and _available("ants"):
            with tempfile.TemporaryDirectory(prefix="peers_check_ants_") as work:
                reg, _, sw = ants_register(fixed, moving, "SyN", work)
                used = _residual_summary(ants_fixed_to_moving(pts, reg), pts, shift, sp)
                inv = list(reg["invtransforms"])
                other = _residual_summary(ants_map_points(pts, inv, [t.endswith(".mat") for t in inv]),
                                          pts, shift, sp)
                ras = _residual_summary(ants_fixed_to_moving(pts * flip, reg) * flip, pts, shift, sp)
            ok = _passes(used)
            passed &= ok
            results.append({"geometry": geom["name"], "tool": "ants-syn", "passed": ok, "seconds": sw.wall,
                            "recipe": "LPS points, fwdtransforms, whichtoinvert all False", "residual": used,
                            "wrong_recipe_invtransforms_TrueFalse": other, "wrong_frame_RAS": ras})
            print(f"    ANTs SyN  fwdtransforms/LPS: residual mean {used['mean_mm']:.3f} mm, max "
                  f"{used['max_mm']:.3f} mm -> {'PASS' if ok else 'FAIL'}  (invtransforms: mean "
                  f"{other['mean_mm']:.2f} mm; RAS points: mean {ras['mean_mm']:.2f} mm)", flush=True)
        if "elastix" in tools and _available("itk"):
            runs = [("affine", dict(ELASTIX_SETTINGS, stages=("affine",)), True)]
            if include_bspline:
                runs.append(("affine+bspline", dict(ELASTIX_SETTINGS), False))
            for label, settings, gate in runs:
                with tempfile.TemporaryDirectory(prefix="peers_check_elx_") as work:
                    tp, mi, sw = elastix_register(fixed, moving, threads, **settings)
                    mapped, _ = transformix_points(pts, tp, mi, work)
                res = _residual_summary(mapped, pts, shift, sp)
                ok = _passes(res)
                if gate:
                    passed &= ok
                results.append({"geometry": geom["name"], "tool": f"elastix {label}", "passed": ok, "gate": gate,
                                "seconds": sw.wall, "recipe": "transformix point file (world), OutputPoint",
                                "residual": res})
                print(f"    elastix {label:15s}: residual mean {res['mean_mm']:.3f} mm, max {res['max_mm']:.3f} "
                      f"mm -> {'PASS' if ok else 'FAIL'}{'' if gate else ' (informative)'}", flush=True)
        if include_idir and "idir" in tools:
            import idir_fast

            with Stopwatch() as sw:
                reg = idir_fast.register(fixed, moving, mask, progress=False, device="cpu", hidden=(64, 64, 64),
                                         batch_size=2000, epochs=300)
            res = _residual_summary(np.asarray(reg.transform_points(pts)), pts, shift, sp)
            ok = _passes(res)
            passed &= ok
            results.append({"geometry": geom["name"], "tool": "idir", "passed": ok, "seconds": sw.wall,
                            "recipe": "Registration.transform_points", "residual": res})
            print(f"    idir_fast (3×64, 300 ep): residual mean {res['mean_mm']:.3f} mm, max {res['max_mm']:.3f} "
                  f"mm -> {'PASS' if ok else 'FAIL'}", flush=True)
    return {"passed": bool(passed), "shift_mm": shift.tolist(),
            "thresholds": {"mean_voxels": CHECK_MEAN_VOXELS, "max_voxels": CHECK_MAX_VOXELS}, "results": results}


# ------------------------------------------------------------------------------------------ running
def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001
        return False


def tool_available(tool: str) -> Optional[str]:
    """None when the tool can run, else why not."""
    need = {"ants-syn": "ants", "ants-syncc": "ants", "elastix": "itk", "idir": "idir_fast"}[tool]
    if not _available(need):
        pkg = {"ants": "antspyx", "itk": "itk-elastix", "idir_fast": "idir_fast"}[need]
        return f"{pkg} is not importable (pip install {pkg})"
    if tool == "elastix":
        import itk

        if not hasattr(itk, "ElastixRegistrationMethod"):
            return "itk is installed without elastix (pip install itk-elastix)"
    return None


def finish_row(case: Case, row: dict, threads: int) -> dict:
    """Add case, TRE (from the mapped landmarks), initial TRE and threads to a tool's row."""
    mapped = row.pop("mapped")
    row.update({"case": case.name, "threads": threads,
                "tre_initial": tre_stats(case.fixed_landmarks, case.moving_landmarks),
                "tre": tre_stats(mapped, case.moving_landmarks)})
    return row


def run_case(case: Case, tools: Sequence[str], idir_profiles: Dict[str, dict], threads: int, quick: bool,
             device: str) -> List[dict]:
    """Every selected tool (and idir profile) on one case; failures become rows with an ``error``."""
    jobs: List[tuple] = []
    for tool in tools:
        if tool.startswith("ants"):
            jobs.append((tool, tool, lambda t=tool: run_ants(case, t, quick)))
        elif tool == "elastix":
            jobs.append((tool, tool, lambda: run_elastix(case, threads, quick)))
        elif tool == "idir":
            for name, kw in idir_profiles.items():
                jobs.append((tool, f"idir {name}", lambda n=name, k=kw: run_idir(case, n, k, device)))
    rows = []
    for tool, label, job in jobs:
        print(f"  {case.name}: {label} …", flush=True)
        try:
            row = finish_row(case, job(), threads)
        except Exception as err:  # noqa: BLE001 — record the failure, keep comparing the others
            row = {"case": case.name, "tool": tool, "profile": label, "threads": threads,
                   "error": f"{type(err).__name__}: {err}"}
            print(f"    failed: {row['error']}", flush=True)
        else:
            print(f"    TRE {row['tre_initial']['mean']:.2f} → {row['tre']['mean']:.2f} mm "
                  f"(p95 {row['tre']['p95']:.2f}), {row['seconds']:.1f} s (CPU {row['cpu_seconds']:.1f} s)",
                  flush=True)
        rows.append(row)
    return rows


def format_table(rows: List[dict]) -> str:
    """A fixed-width text table of the rows."""
    head = (f"{'case':10s} {'tool':10s} {'profile':22s} {'TRE0':>6s} {'mean':>6s} {'p95':>6s} {'max':>6s} "
            f"{'fold':>7s} {'fold%':>8s} {'sec':>8s} {'cpu s':>8s} {'thr':>3s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:10s} {r['tool']:10s} {str(r['profile'])[:22]:22s}  ERROR {r['error'][:70]}")
            continue
        f = r.get("folding") or {}
        lines.append(f"{r['case']:10s} {r['tool']:10s} {str(r['profile'])[:22]:22s} "
                     f"{r['tre_initial']['mean']:6.2f} {r['tre']['mean']:6.2f} {r['tre']['p95']:6.2f} "
                     f"{r['tre']['max']:6.2f} {f.get('count', -1):7d} {100 * f.get('fraction', float('nan')):7.3f}% "
                     f"{r['seconds']:8.1f} {r['cpu_seconds']:8.1f} {r['threads']:3d}")
    lines.append("TRE0: initial mean TRE; mean/p95/max: TRE after registration (mm); fold: voxels with det J ≤ 0 "
                 "inside the mask; sec: wall time of the registration call only; cpu s: its process CPU time.")
    return "\n".join(lines)


def plot(rows: List[dict], cases: List[Case], path: Path, title: str) -> None:
    """TRE (mean, with a bar up to p95) against registration wall time (log axis), one panel per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    n = max(len(cases), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    labels = sorted({f"{r['tool']} {r['profile']}" if r["tool"] == "idir" else r["tool"] for r in ok})
    markers = dict(zip(labels, "osD^v<>pPX*h"))
    colours = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for ax, case in zip(axes[0], cases):
        sel = [r for r in ok if r["case"] == case.name]
        for r in sel:
            lab = f"{r['tool']} {r['profile']}" if r["tool"] == "idir" else r["tool"]
            ax.plot([r["seconds"]], [r["tre"]["mean"]], markers[lab], color=colours[lab], label=lab)
            ax.vlines(r["seconds"], r["tre"]["mean"], r["tre"]["p95"], color=colours[lab], lw=1)
        ax.axhline(tre_stats(case.fixed_landmarks, case.moving_landmarks)["mean"], ls="--", color="grey", lw=1,
                   label="initial")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title(case.name)
        ax.set_xlabel("registration wall time (s)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("TRE mean, bar to p95 (mm)")
    handles, names = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in names:
                handles.append(h)
                names.append(lab)
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)


def _split(value: Optional[str]) -> Optional[List[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="ANTs SyN, elastix and idir_fast on the same pairs with exact "
                                             "ground truth (TRE, folding, time).")
    ap.add_argument("--cases", help=f"comma-separated; default {','.join(ALL_CASES)} ({','.join(QUICK_CASES)} "
                                    f"with --quick)")
    ap.add_argument("--tools", help=f"comma-separated from {','.join(ALL_TOOLS)}; default {','.join(DEFAULT_TOOLS)}")
    ap.add_argument("--idir-profiles", help=f"comma-separated from {','.join(IDIR_PROFILES)}; default "
                                            f"{','.join(DEFAULT_IDIR_PROFILES['cpu'])} on CPU")
    ap.add_argument("--device", default="cpu", help="idir_fast device (default cpu)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every tool (default 2)")
    ap.add_argument("--quick", action="store_true", help="tiny settings, the small blobs case: a smoke test")
    ap.add_argument("--check-conventions", action="store_true",
                    help="only run the known-translation check of every tool's point mapping")
    ap.add_argument("--ct", default=str(DEFAULT_CT), help="the chest CT for the ct-* cases")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON and PNG results")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    configure_threads(a.threads)
    tools = _split(a.tools) or list(DEFAULT_TOOLS)
    bad = [t for t in tools if t not in ALL_TOOLS]
    if bad:
        raise SystemExit(f"unknown tools {bad}; known: {', '.join(ALL_TOOLS)}")
    runnable = []
    for tool in tools:
        why = tool_available(tool)
        if why:
            print(f"skipping {tool}: {why}")
        else:
            runnable.append(tool)
    print(f"threads {a.threads}; tools {', '.join(runnable)}; antspyx {package_version('antspyx')}, "
          f"itk-elastix {package_version('itk-elastix')}, idir_fast {package_version('idir_fast')}", flush=True)

    t0 = time.perf_counter()
    print("convention check (known translation):", flush=True)
    slow_parts = a.check_conventions or not a.quick
    check = check_conventions(runnable, a.threads, include_idir=slow_parts, include_bspline=slow_parts)
    check["seconds"] = time.perf_counter() - t0
    print(f"convention check {'PASSED' if check['passed'] else 'FAILED'} ({check['seconds']:.0f} s)", flush=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if a.check_conventions:
        path = out_dir / f"peers_check_{stamp}.json"
        path.write_text(json.dumps({"mode": "check-conventions", "command": sys.argv, "threads": a.threads,
                                    "machine": machine_info(), "convention_check": check},
                                   indent=2, default=_jsonable) + "\n")
        print(f"written {path}")
        return 0 if check["passed"] else 1
    if not check["passed"]:
        print("aborting: a tool's point mapping failed the known-translation check; no TRE would be trustworthy")
        return 1

    case_names = _split(a.cases) or list(QUICK_CASES if a.quick else ALL_CASES)
    explicit = a.idir_profiles is not None
    device_type = torch.device(a.device).type
    profiles = idir_settings(_split(a.idir_profiles) or DEFAULT_IDIR_PROFILES.get(device_type, ("default",)),
                             a.quick, explicit)
    cases, rows = [], []
    for name in case_names:
        try:
            case = build_case(name, Path(a.ct))
        except Exception as err:  # noqa: BLE001
            print(f"skipping case {name}: {type(err).__name__}: {err}")
            continue
        cases.append(case)
        print(f"case {case.name}: {case.description}", flush=True)
        rows += run_case(case, runnable, profiles, a.threads, a.quick, a.device)

    print()
    print(format_table(rows))
    base = out_dir / f"peers_{'quick_' if a.quick else ''}{stamp}"
    report = {"mode": "quick" if a.quick else "full", "command": sys.argv, "threads": a.threads,
              "device": a.device, "machine": machine_info(), "convention_check": check,
              "cases": [c.summary() for c in cases], "idir_profiles": profiles,
              "elastix_settings": ELASTIX_QUICK if a.quick else ELASTIX_SETTINGS,
              "ants_settings": {t: {"type_of_transform": v[0], **v[1], **(ANTS_QUICK if a.quick else {})}
                                for t, v in ANTS_TOOLS.items() if t in runnable},
              "rows": rows, "total_seconds": time.perf_counter() - t0}
    base.with_suffix(".json").write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    if cases:
        plot(rows, cases, base.with_suffix(".png"),
             f"{'quick ' if a.quick else ''}peers, {a.threads} threads, {platform.machine()} "
             f"({report['machine'].get('cpu', '')})")
    print(f"written {base.with_suffix('.json')}" + (f" and {base.with_suffix('.png')}" if cases else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
