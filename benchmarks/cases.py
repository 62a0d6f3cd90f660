"""The registration cases of the benchmarks, each with an exact answer: fixed landmarks ``x`` and moving landmarks
``Φ(x)`` of a known map Φ (fixed → moving world points, LPS mm).

* ``ct-<A>mm`` — the shared real chest CT deformed by :func:`idir_fast.data.deformed_pair` (breathing-like motion
  of amplitude A; 100 landmarks in the lungs; ``seed`` varies the motion);
* ``ct-followup-<A>mm`` — the same motion plus the lungs' density change it implies (mass-preserving) and noise:
  intensities that differ locally, as in a real inhale/exhale pair; lung and vessel Dice beside the TRE;
* ``ct-followup-<A>mm-pose`` — the follow-up case with the moving image also in another pose (a rigid turn and
  shift, as a patient lies differently at a later scan; :func:`posed_case`);
* any CT case name ending in ``@<s>mm`` (e.g. ``ct-followup-18mm-pose@1mm``): the same case made from the CT
  resampled to ``s`` mm voxels (:func:`read_ct`) — the same anatomy on a finer grid, for how each tool's time
  grows with the voxel count;
* ``phantom`` — :func:`idir_fast.data.phantom_pair` (the demo phantom);
* ``blobs`` — a smooth non-lung texture (Gaussian blobs in an ellipsoidal body, 36×44×40 voxels of 2 mm) deformed
  by a known sine displacement of 3 mm amplitude;
* ``brain-<A>mm`` — the shared real T1 brain MRI deformed by a known smooth (sine) displacement of amplitude A:
  landmarks at high gradient in the brain, and its label map carried along, so the label Dice of a result is
  against the exact answer;
* ``brain-icbm`` — a real inter-subject pair: the shared T1 (fixed, brain mask from its labels) and the ICBM152
  2009a template (moving; from the installed ``nilearn`` package, no download), affine + deformable; Dice of the
  subject's cortex and white matter against the template's grey/white-matter maps thresholded at 0.5, carried
  onto the subject. No landmarks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from idir_fast.core.geometry import ImageGeometry, apply_affine
from idir_fast.data import deformed_pair, phantom_pair, warp_image

from .common import data_file

ALL_CASES = ("ct-10mm", "ct-18mm", "ct-30mm", "ct-followup-18mm", "ct-followup-18mm-pose", "phantom", "blobs",
             "brain-4mm", "brain-icbm")
CT_FILE = ("ct", "chest_ct_1p5mm.nii.gz")
BRAIN_FILES = (("brain", "brain_t1_1mm.nii.gz"), ("brain", "brain_t1_1mm_aseg.nii.gz"))
BRAIN_STRUCTURES = {"cortex": (3, 42), "white matter": (2, 41), "hippocampus": (17, 53), "thalamus": (10, 49),
                    "caudate": (11, 50), "putamen": (12, 51), "lateral ventricles": (4, 43)}
"""FreeSurfer aseg labels (left, right) of the structures whose Dice the brain cases report."""
TISSUES = {"cortex": (1,), "white matter": (2,)}
"""The inter-subject case's two tissue labels (subject aseg → 1 cortex, 2 white matter; template GM/WM > 0.5)."""


@dataclass
class Case:
    """A registration pair with an exact answer.

    Attributes:
        name: short name used on the command line and in the results.
        fixed, moving: Float32 images.
        mask: UInt8 mask of the fixed image (folding is counted inside it; idir_fast samples inside it).
        fixed_landmarks, moving_landmarks: ``(N, 3)`` world points (LPS mm); ``moving = Φ(fixed)`` exactly.
        description: one line saying how the pair was made.
        moving_labels, fixed_labels: label maps of each image, made the same way on each (``structures``: name →
            label values), for the Dice of a result.
        mapping: the exact map Φ, ``(N, 3)`` fixed world points → moving world points, where the case knows it
            everywhere (not only at the landmarks): the summary then holds ``dice_exact``, what Φ itself scores
            (labels are thresholded and resampled, so even Φ stops short of 1).
    """

    name: str
    fixed: sitk.Image
    moving: sitk.Image
    mask: sitk.Image
    fixed_landmarks: Optional[np.ndarray]
    moving_landmarks: Optional[np.ndarray]
    description: str = ""
    extra: dict = field(default_factory=dict)
    moving_labels: Optional[sitk.Image] = None
    fixed_labels: Optional[sitk.Image] = None
    structures: dict = field(default_factory=dict)
    mapping: Optional[Callable[[np.ndarray], np.ndarray]] = None

    def summary(self) -> dict:
        """Geometry and landmark count (and the exact map's Dice: a warp of the whole label grid, so this costs
        seconds on a 1 mm case), for the results file."""
        extra = dict(self.extra)
        if self.mapping is not None and self.moving_labels is not None:
            extra["dice_exact"] = label_dice(warp_labels(self.moving_labels, self.mapping, self.fixed_labels),
                                             self.fixed_labels, self.structures)
        return {"name": self.name, "description": self.description, "size": list(self.fixed.GetSize()),
                "spacing": list(self.fixed.GetSpacing()), "origin": list(self.fixed.GetOrigin()),
                "direction": list(self.fixed.GetDirection()), "landmarks": 0 if self.fixed_landmarks is None else int(len(self.fixed_landmarks)),
                "structures": {k: list(v) for k, v in self.structures.items()},
                "mask_voxels": int(np.count_nonzero(sitk.GetArrayViewFromImage(self.mask))), **extra}


def label_dice(warped: sitk.Image, truth: sitk.Image, structures: dict) -> dict:
    """Dice per structure (each a union of label values) of a warped label map against the truth on one grid,
    and their mean."""
    a, b = sitk.GetArrayViewFromImage(warped), sitk.GetArrayViewFromImage(truth)
    out = {}
    for name, values in structures.items():
        x, y = np.isin(a, values), np.isin(b, values)
        total = int(x.sum()) + int(y.sum())
        out[name] = float(2.0 * np.logical_and(x, y).sum() / total) if total else float("nan")
    out["mean"] = float(np.nanmean(list(out.values())))
    return out


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


def image_centre(image: sitk.Image) -> np.ndarray:
    """The world point (LPS mm) at the centre of ``image``'s voxel grid."""
    return world_points(image, ((np.asarray(image.GetSize()) - 1) / 2.0)[None])[0]


def deformed_with_noise(fixed: sitk.Image, phi, noise: float, rng: np.random.Generator) -> sitk.Image:
    """``fixed`` warped by the known map ``phi`` (``moving(Φ(x)) = fixed(x)``), plus Gaussian noise σ = ``noise``."""
    moving = warp_image(fixed, phi.inverse, background=0.0)
    if noise > 0:
        arr = sitk.GetArrayFromImage(moving) + rng.normal(scale=noise, size=moving.GetSize()[::-1])
        noisy = sitk.GetImageFromArray(arr.astype(np.float32))
        noisy.CopyInformation(moving)
        moving = noisy
    return moving


def blobs_case(amplitude_mm: float = 3.0, num_landmarks: int = 100, noise: float = 2.0, seed: int = 0) -> Case:
    """The smooth non-lung pair: :func:`blob_texture` deformed by :class:`SineDeformation`.

    As ``idir_fast.data.deformed_pair``: ``moving(y) = fixed(Φ⁻¹(y))`` (fixed-point inversion), so the fixed
    landmarks ``x`` correspond exactly to ``Φ(x)``; independent noise (σ = ``noise``) is added to the moving image.
    """
    rng = np.random.default_rng(seed)
    fixed, mask = blob_texture(seed=seed)
    centre = image_centre(fixed)
    phi = SineDeformation(centre, amplitude_mm=amplitude_mm)
    moving = deformed_with_noise(fixed, phi, noise, rng)
    fixed_lm = pick_landmarks(fixed, mask, num_landmarks, rng)
    return Case("blobs", fixed, moving, mask, fixed_lm, phi(fixed_lm),
                f"Gaussian-blob texture {fixed.GetSize()} at {fixed.GetSpacing()} mm, sine displacement "
                f"{amplitude_mm} mm amplitude, 50 mm wavelength, {len(fixed_lm)} landmarks at high gradient in "
                f"the body")


def read_ct(data: Optional[str] = None, spacing_mm: Optional[float] = None) -> Tuple[sitk.Image, str]:
    """The shared chest CT (HU), resampled (linear, no smoothing: for finer voxels) to ``spacing_mm`` isotropic
    voxels over the same extent when given (the first face kept; the far one within half a voxel), and a phrase
    saying which."""
    ct = data_file(data, *CT_FILE)
    image = sitk.ReadImage(str(ct))
    if spacing_mm is None:
        return image, ct.name
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    size = [int(round(e / spacing_mm)) for e in extent]
    # the same corner of the grid: the first voxel's outer face stays where it was
    first = [(spacing_mm / sp - 1.0) / 2.0 for sp in image.GetSpacing()]  # the new first centre, old index units
    origin = image.TransformContinuousIndexToPhysicalPoint(first)
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, (spacing_mm,) * 3,
                              image.GetDirection(), -1000.0, sitk.sitkFloat32)
    return resampled, f"{ct.name} resampled to {spacing_mm:g} mm {tuple(size)}"


def ct_case(amplitude_mm: float, data: Optional[str] = None, seed: int = 0, num_landmarks: int = 100,
            spacing_mm: Optional[float] = None) -> Case:
    """The shared chest CT deformed by :func:`idir_fast.data.deformed_pair` at ``amplitude_mm``."""
    image, made = read_ct(data, spacing_mm)
    pair = deformed_pair(image, amplitude_mm=amplitude_mm, num_landmarks=num_landmarks, seed=seed)
    name = f"ct-{amplitude_mm:g}mm" + (f"-s{seed}" if seed else "") + (f"@{spacing_mm:g}mm" if spacing_mm else "")
    return Case(name, pair.fixed, pair.moving, pair.mask, pair.fixed_landmarks, pair.moving_landmarks,
                f"{made} deformed by deformed_pair(amplitude_mm={amplitude_mm:g}, num_landmarks={num_landmarks}, "
                f"seed={seed}); lung mask")


LUNG_STRUCTURES = {"lungs": (1, 2), "vessels": (2,)}
"""The follow-up case's labels: 1 lung parenchyma, 2 vessels and airway walls (HU > −500 inside the lungs)."""
VESSEL_HU = -500.0


def lung_labels(image: sitk.Image, lungs: sitk.Image) -> sitk.Image:
    """1 inside ``lungs``, 2 where the image is also above :data:`VESSEL_HU` there (vessels): a CT user's lung and
    vessel masks, made the same way on either image of a pair."""
    inside = sitk.GetArrayViewFromImage(lungs) > 0
    dense = sitk.GetArrayViewFromImage(image) > VESSEL_HU
    out = sitk.GetImageFromArray((inside * (1 + dense)).astype(np.uint8))
    out.CopyInformation(image)
    return out


def ct_followup_case(amplitude_mm: float = 18.0, data: Optional[str] = None, seed: int = 0,
                     spacing_mm: Optional[float] = None) -> Case:
    """The shared chest CT as a baseline/follow-up-like pair: the breathing motion of :func:`ct_case` and the
    density change it implies. Lung parenchyma keeps its mass, so its ``HU + 1000`` scales with the volume change:
    ``moving(y) = (fixed(Φ⁻¹y) + 1000) · det ∂Φ⁻¹/∂y − 1000`` where the warped fixed is at most
    :data:`VESSEL_HU` (vessels and walls keep their density; parenchyma is kept below that threshold), then 10 HU
    noise. Unlike the other CT cases the intensities of the two images then differ, locally, as in a real
    inhale/exhale pair. Dice of the lungs and of the vessels (HU > −500 inside the lungs, thresholded on each
    image as a user would) beside the landmarks' TRE."""
    image, made = read_ct(data, spacing_mm)
    return followup_case(image, amplitude_mm, seed,
                         f"ct-followup-{amplitude_mm:g}mm" + (f"@{spacing_mm:g}mm" if spacing_mm else ""),
                         f"{made} deformed by deformed_pair(amplitude_mm={amplitude_mm:g}, seed={seed})")


def followup_case(image: sitk.Image, amplitude_mm: float, seed: int, name: str, made: str,
                  mask: Optional[sitk.Image] = None) -> Case:
    """:func:`ct_followup_case` of any CT ``image`` (HU; ``mask``: its lungs, else thresholded)."""
    pair = deformed_pair(image, mask, amplitude_mm=amplitude_mm, noise_hu=0.0, seed=seed)
    g = ImageGeometry.from_sitk(pair.moving)
    world = apply_affine(g.index_to_world(), g.voxel_grid_index(dtype=torch.float64).numpy())
    source = pair.mapping.inverse(world).reshape(g.shape_zyx + (3,))
    # det of the inverse map's Jacobian on the moving grid (central differences, per voxel index → world mm)
    grads = [np.gradient(source[..., c], axis=(2, 1, 0)) for c in range(3)]  # d source_c / d (i, j, k)
    jac = np.stack([np.stack(gc, -1) for gc in grads], -2) @ np.linalg.inv(g.index_to_world()[:3, :3])
    det = np.linalg.det(jac)
    lungs = warp_labels(pair.mask, pair.mapping.inverse)
    arr = sitk.GetArrayFromImage(pair.moving).astype(np.float64)
    parenchyma = (sitk.GetArrayViewFromImage(lungs) > 0) & (arr <= VESSEL_HU)
    arr[parenchyma] = np.minimum((arr[parenchyma] + 1000.0) * det[parenchyma] - 1000.0, VESSEL_HU - 0.5)
    arr += np.random.default_rng(seed + 1).normal(scale=10.0, size=arr.shape)
    moving = sitk.GetImageFromArray(arr.astype(np.float32))
    moving.CopyInformation(pair.moving)
    return Case(name, pair.fixed, moving, pair.mask, pair.fixed_landmarks, pair.moving_landmarks,
                f"{made} with the lung density change of the motion (mass-preserving, volume ratio "
                f"{det[parenchyma].min():.2f}–{det[parenchyma].max():.2f}) and 10 HU noise; lung and vessel Dice",
                moving_labels=lung_labels(moving, lungs), fixed_labels=lung_labels(pair.fixed, pair.mask),
                structures=LUNG_STRUCTURES, mapping=pair.mapping)


FOLLOWUP_POSE = {"rotation_deg": (2.0, -1.5, 3.0), "translation_mm": (4.0, -6.0, -8.0)}
"""The later scan's pose in ``ct-followup-<A>mm-pose`` (:func:`posed_case`): Euler angles about x, y, z (LPS;
3.9° in all) through the moving image's centre, then a shift (10.8 mm at the centre), of the size a patient's
position differs by between two scans on one table."""


def posed_case(case: Case, rotation_deg: Sequence[float], translation_mm: Sequence[float],
               name: Optional[str] = None) -> Case:
    """``case`` with its moving side in another pose P (rigid, world mm): the moving image and labels become
    ``I(P⁻¹ y)`` on their own grid and the truth becomes ``P ∘ Φ``. A pair whose poses differ, as a real
    baseline/follow-up pair's do; the affine stage's reason to exist.

    ``rotation_deg`` are SimpleITK ``Euler3DTransform`` angles about x, y, z through the moving image's centre,
    composed as ``R = R_z R_x R_y`` (its default order), then ``translation_mm``. Anatomy that P moves out of the
    grid is lost; the strip it uncovers takes the image's minimum (air in a CT). The moving labels are the
    unposed ones carried by P (nearest neighbour), not thresholded again on the posed image."""
    pose = sitk.Euler3DTransform()
    pose.SetCenter(tuple(float(c) for c in image_centre(case.moving)))
    pose.SetRotation(*np.deg2rad(np.asarray(rotation_deg, dtype=np.float64)).tolist())
    pose.SetTranslation(tuple(float(t) for t in translation_mm))
    back = pose.GetInverse()  # Resample pulls: out(y) = in(back(y))
    background = float(np.min(sitk.GetArrayViewFromImage(case.moving)))  # air in a CT, 0 in most MR
    moving = sitk.Resample(case.moving, case.moving, back, sitk.sitkLinear, background, sitk.sitkFloat32)
    labels = None if case.moving_labels is None else sitk.Resample(
        case.moving_labels, case.moving_labels, back, sitk.sitkNearestNeighbor, 0)
    rot = np.asarray(pose.GetMatrix(), dtype=np.float64).reshape(3, 3)
    shift = np.asarray(pose.GetTranslation()) + np.asarray(pose.GetCenter()) - rot @ np.asarray(pose.GetCenter())
    move = (lambda p: np.asarray(p, dtype=np.float64) @ rot.T + shift)  # noqa: E731  P(p) = R (p − c) + c + t
    landmarks = None if case.moving_landmarks is None else move(case.moving_landmarks)
    mapping = None if case.mapping is None else (lambda p: move(case.mapping(p)))  # noqa: E731
    return Case(name or f"{case.name}-pose", case.fixed, moving, case.mask, case.fixed_landmarks, landmarks,
                f"{case.description}; the moving side then turned by {tuple(rotation_deg)}° (x, y, z) about its "
                f"centre and shifted by {tuple(translation_mm)} mm", extra=dict(case.extra),
                moving_labels=labels, fixed_labels=case.fixed_labels, structures=case.structures, mapping=mapping)


def phantom_case() -> Case:
    """The demo pair :func:`idir_fast.data.phantom_pair`."""
    pair = phantom_pair()
    return Case("phantom", pair.fixed, pair.moving, pair.mask, pair.fixed_landmarks, pair.moving_landmarks,
                "idir_fast.data.phantom_pair() (procedural lung phantom, 15 mm breathing motion); lung mask")


def warp_labels(labels: sitk.Image, mapping_inverse, grid: Optional[sitk.Image] = None) -> sitk.Image:
    """``L(Φ⁻¹(y))`` on the grid of ``grid`` (default: of ``labels``), nearest neighbour (0 outside): a label map
    carried by a known map (``mapping_inverse``: output world points → ``labels``' world points)."""
    g, src_g = ImageGeometry.from_sitk(grid if grid is not None else labels), ImageGeometry.from_sitk(labels)
    src = apply_affine(src_g.world_to_index(), mapping_inverse(apply_affine(
        g.index_to_world(), g.voxel_grid_index(dtype=torch.float64).numpy())))
    idx = np.rint(src).astype(np.int64)
    size = np.asarray(src_g.size)
    inside = np.all((idx >= 0) & (idx < size), axis=1)
    arr = sitk.GetArrayViewFromImage(labels)
    out = np.zeros(len(idx), dtype=arr.dtype)
    out[inside] = arr[idx[inside, 2], idx[inside, 1], idx[inside, 0]]
    img = sitk.GetImageFromArray(out.reshape(g.shape_zyx))
    img.CopyInformation(grid if grid is not None else labels)
    return img


LIA_DIRECTION = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, -1.0, 0.0)
"""The shared T1's voxel axes in LPS: i → left, j → inferior, k → anterior (FreeSurfer's conformed "LIA")."""


def brain_axes(labels: sitk.Image) -> str:
    """The anatomical direction in which each voxel axis of an aseg label map increases, from where its structures
    lie (left hemisphere labels 2/3 vs right 41/42; brainstem 16 below the brain's centre; cerebellum 8/47 behind
    the brainstem): e.g. ``"LIA"``."""
    arr = sitk.GetArrayViewFromImage(labels)
    centre = lambda values: np.argwhere(np.isin(arr, values))[:, ::-1].mean(axis=0)  # (i, j, k)  # noqa: E731
    brain = centre([v for v in np.unique(arr) if v > 0])
    axes = ["?"] * 3
    for offset, (pos, neg) in ((centre([2, 3]) - centre([41, 42]), "LR"), (centre([16]) - brain, "IS"),
                               (centre([16]) - centre([8, 47]), "AP")):
        axis = int(np.argmax(np.abs(offset)))
        axes[axis] = pos if offset[axis] > 0 else neg
    return "".join(axes)


def _brain(data: Optional[str]):
    """The shared T1, its labels and brain mask, in their true anatomical orientation.

    The files' header carries an identity affine (as the VoxelMorph project saved its arrays), which SimpleITK reads
    as "RAS"; the labels say the voxel axes are LIA. A self-pair does not care, an inter-subject pair with a template
    in its true frame does, so the direction is set from the anatomy (and checked, should the file change)."""
    t1 = sitk.Cast(sitk.ReadImage(str(data_file(data, *BRAIN_FILES[0]))), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(data_file(data, *BRAIN_FILES[1])))
    axes = brain_axes(labels)
    if axes != "LIA":
        raise ValueError(f"the shared brain labels lie along {axes}, not LIA as benchmarks/cases.py expects")
    for img in (t1, labels):
        img.SetDirection(LIA_DIRECTION)
    return t1, labels, sitk.Cast(labels > 0, sitk.sitkUInt8)


def brain_case(amplitude_mm: float = 4.0, data: Optional[str] = None, seed: int = 0, wavelength_mm: float = 60.0,
               num_landmarks: int = 100, noise: float = 0.01) -> Case:
    """The shared T1 deformed by a known :class:`SineDeformation` (amplitude × 2π/wavelength < 0.9: invertible),
    its labels carried by the same map; noise σ = ``noise`` (intensities in [0, 1]) on the moving image."""
    fixed, labels, mask = _brain(data)
    rng = np.random.default_rng(seed)
    centre = image_centre(fixed)
    phi = SineDeformation(centre, amplitude_mm=amplitude_mm, wavelength_mm=wavelength_mm,
                          phases=tuple(rng.uniform(0, 2 * np.pi, 3)))
    moving = deformed_with_noise(fixed, phi, noise, rng)
    fixed_lm = pick_landmarks(fixed, mask, num_landmarks, rng, margin_mm=4.0)
    return Case(f"brain-{amplitude_mm:g}mm", fixed, moving, mask, fixed_lm, phi(fixed_lm),
                f"brain T1 {fixed.GetSize()} at 1 mm deformed by a sine displacement of {amplitude_mm:g} mm "
                f"amplitude, {wavelength_mm:g} mm wavelength (seed {seed}); labels carried by the same map",
                moving_labels=warp_labels(labels, phi.inverse), fixed_labels=labels, structures=BRAIN_STRUCTURES,
                mapping=phi)


def icbm_template():
    """The ICBM152 2009a template of the installed ``nilearn`` (T1, grey- and white-matter probability maps) as
    SimpleITK images (LPS), read from the package's own files."""
    import tempfile

    try:
        from nilearn import datasets
    except ImportError:
        raise FileNotFoundError("the brain-icbm case needs nilearn (pip install nilearn): its wheel holds the "
                                "ICBM152 2009a template") from None
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, loader in (("t1", datasets.load_mni152_template), ("gm", datasets.load_mni152_gm_template),
                             ("wm", datasets.load_mni152_wm_template)):
            path = f"{tmp}/{name}.nii.gz"
            loader(resolution=1).to_filename(path)
            out.append(sitk.Cast(sitk.ReadImage(path), sitk.sitkFloat32))
    return tuple(out)


def icbm_case(data: Optional[str] = None) -> Case:
    """Subject (fixed) ↔ ICBM152 2009a template (moving): cortex/white matter Dice, no landmarks."""
    fixed, labels, mask = _brain(data)
    t1, gm, wm = icbm_template()
    # the template in MNI coordinates, the subject in its own: centre the template on the subject (a translation),
    # so every tool starts from the same pose, as users centre images before an affine stage
    shift = image_centre(fixed) - image_centre(t1)
    for img in (t1, gm, wm):
        img.SetOrigin(tuple(np.asarray(img.GetOrigin()) + shift))
    tissue = sitk.Cast(gm > 0.5, sitk.sitkUInt8) + 2 * sitk.Cast(wm > 0.5, sitk.sitkUInt8)
    tissue = sitk.Cast(sitk.Clamp(tissue, sitk.sitkUInt8, 0, 2), sitk.sitkUInt8)  # GM and WM > 0.5 cannot overlap
    arr = sitk.GetArrayViewFromImage(labels)
    subject = np.zeros(arr.shape, np.uint8)
    subject[np.isin(arr, BRAIN_STRUCTURES["cortex"])] = 1
    subject[np.isin(arr, BRAIN_STRUCTURES["white matter"])] = 2
    fixed_tissue = sitk.GetImageFromArray(subject)
    fixed_tissue.CopyInformation(labels)
    return Case("brain-icbm", fixed, t1, mask, None, None,
                f"brain T1 {fixed.GetSize()} (fixed) and the ICBM152 2009a template {t1.GetSize()} of nilearn "
                "(moving, centred on the subject), inter-subject; tissue Dice against the template's GM/WM maps > 0.5",
                moving_labels=tissue, fixed_labels=fixed_tissue, structures=TISSUES)


def build_case(name: str, data: Optional[str] = None) -> Case:
    """The case called ``name`` (:data:`ALL_CASES`; ``ct-<A>mm`` and ``brain-<A>mm`` for any amplitude, CT cases
    with ``@<s>mm`` on a resampled CT)."""
    m = re.fullmatch(r"(ct-.*)@(\d+(?:\.\d+)?)mm", name)
    base, spacing = (m.group(1), float(m.group(2))) if m else (name, None)
    if spacing is not None and spacing <= 0:
        raise ValueError(f"case {name!r}: the voxel size after '@' must be above 0 mm")
    if spacing is not None:
        name = f"{base}@{spacing:g}mm"  # one spelling per grid, as the other cases name themselves
    m = re.fullmatch(r"ct-(\d+(?:\.\d+)?)mm", base)
    if m:
        return ct_case(float(m.group(1)), data, spacing_mm=spacing)
    m = re.fullmatch(r"ct-followup-(\d+(?:\.\d+)?)mm(-pose)?", base)
    if m:
        case = ct_followup_case(float(m.group(1)), data, spacing_mm=spacing)
        return posed_case(case, **FOLLOWUP_POSE, name=name) if m.group(2) else case
    m = re.fullmatch(r"brain-(\d+(?:\.\d+)?)mm", name)
    if m:
        return brain_case(float(m.group(1)), data)
    if name == "brain-icbm":
        return icbm_case(data)
    if name == "phantom":
        return phantom_case()
    if name == "blobs":
        return blobs_case()
    raise ValueError(f"unknown case {name!r}; known: {', '.join(ALL_CASES)} (ct-<amplitude>mm, "
                     "ct-followup-<amplitude>mm[-pose] and brain-<amplitude>mm for any amplitude; CT cases with an "
                     "optional @<spacing>mm)")
