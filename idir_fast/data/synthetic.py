"""Test pairs with an exact ground truth: a procedural lung phantom, a breathing-like deformation, lung masks.

A pair is made from one image ``F`` (fixed, "inhale") and a smooth analytic map ``Φ`` (fixed → moving world
points, "exhale": the lung bases move up). The moving image is ``M(y) = F(Φ⁻¹(y))`` with ``Φ⁻¹`` found by
fixed-point iteration, so ``M(Φ(x)) = F(x)`` and the true correspondence of every landmark is ``Φ`` itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from ..core.geometry import ImageGeometry, apply_affine
from ..core.sampling import trilinear
from .lung_mask import lung_mask_from_hu


@dataclass
class SyntheticPair:
    """A registration problem with a known answer.

    Attributes:
        fixed, moving: images (Float32, HU).
        mask: lung mask of the fixed image (UInt8).
        fixed_landmarks, moving_landmarks: ``(N, 3)`` corresponding world points (LPS mm); exact.
        mapping: the true Φ, ``(N, 3)`` world → ``(N, 3)`` world.
    """

    fixed: sitk.Image
    moving: sitk.Image
    mask: sitk.Image
    fixed_landmarks: np.ndarray
    moving_landmarks: np.ndarray
    mapping: Callable[[np.ndarray], np.ndarray]


class BreathingDeformation:
    """Smooth breathing-like map Φ(p) = p + d(p) in world LPS mm.

    The displacement points superior (+z in LPS) with amplitude ``amplitude_mm`` at the lung base (diaphragm),
    a Gaussian decay upwards (length ``0.45 ×`` the lung height) and laterally around the lungs' centre, plus a
    small posterior component (``0.15 ×``). Its largest displacement gradient is about 0.1–0.15, so Φ is
    invertible and fold-free.
    """

    def __init__(self, lung_lo: np.ndarray, lung_hi: np.ndarray, amplitude_mm: float = 15.0):
        lo, hi = np.asarray(lung_lo, float), np.asarray(lung_hi, float)
        self.amplitude = float(amplitude_mm)
        self.base_z = lo[2]
        self.centre = 0.5 * (lo + hi)
        ext = np.maximum(hi - lo, 1.0)
        self.length_z = 0.45 * ext[2]
        self.length_xy = 0.6 * ext[:2]

    def displacement(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        gz = np.exp(-0.5 * ((p[..., 2] - self.base_z) / self.length_z) ** 2)
        gxy = np.exp(-0.5 * (((p[..., 0] - self.centre[0]) / self.length_xy[0]) ** 2
                             + ((p[..., 1] - self.centre[1]) / self.length_xy[1]) ** 2))
        g = self.amplitude * gz * gxy
        return np.stack([np.zeros_like(g), 0.15 * g, g], axis=-1)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        return p + self.displacement(p)

    def inverse(self, q: np.ndarray, iterations: int = 60) -> np.ndarray:
        """Φ⁻¹(q) by the fixed-point iteration ``p ← q − d(p)`` (a contraction: |∇d| < 1)."""
        q = np.asarray(q, dtype=np.float64)
        p = q.copy()
        for _ in range(iterations):
            p = q - self.displacement(p)
        return p


def warp_image(image: sitk.Image, mapping_inverse: Callable[[np.ndarray], np.ndarray],
               background: float) -> sitk.Image:
    """``M(y) = F(Φ⁻¹(y))`` on the grid of ``image`` (trilinear; ``background`` outside ``F``)."""
    g = ImageGeometry.from_sitk(image)
    idx = g.voxel_grid_index(dtype=torch.float64).numpy()
    src_world = mapping_inverse(apply_affine(g.index_to_world(), idx))
    src_idx = torch.from_numpy(apply_affine(g.world_to_index(), src_world))
    vol = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float64))
    val = trilinear(vol, src_idx)
    size = torch.tensor(g.size, dtype=torch.float64)
    outside = ((src_idx < -0.5) | (src_idx > size - 0.5)).any(-1)
    val = torch.where(outside, torch.full_like(val, background), val)
    out = sitk.GetImageFromArray(val.numpy().astype(np.float32).reshape(g.shape_zyx))
    out.CopyInformation(image)
    return out


# ------------------------------------------------------------------------------------------------- phantom
def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def _vessel_tree(rng, start, direction, length, radius, generations, lung_test):
    """Segments ``(a, b, radius)`` and bifurcation points of a random binary tree that stays in the lung."""
    segments, nodes = [], []
    stack = [(np.asarray(start, float), np.asarray(direction, float), length, radius, 0)]
    while stack:
        a, d, ln, r, gen = stack.pop()
        d = d / np.linalg.norm(d)
        b = a + d * ln
        if not lung_test(b):
            b = a + d * ln * 0.5
            if not lung_test(b):
                continue
        segments.append((a, b, r))
        if gen + 1 < generations:
            nodes.append(b)
            for sign in (-1.0, 1.0):
                ortho = np.cross(d, rng.normal(size=3))
                ortho /= np.linalg.norm(ortho) + 1e-12
                nd = d * np.cos(0.55) + sign * ortho * np.sin(0.55)
                stack.append((b, nd, ln * 0.78, max(r * 0.75, 0.6), gen + 1))
    return segments, nodes


def lung_phantom(size: Tuple[int, int, int] = (80, 72, 64), spacing: Tuple[float, float, float] = (3.0, 3.0, 3.0),
                 seed: int = 0, noise_hu: float = 20.0) -> Tuple[sitk.Image, sitk.Image, np.ndarray]:
    """A procedural chest CT: body, two lungs, a branching vessel tree in each, a spine, noise.

    Args:
        size: voxels ``(nx, ny, nz)``; spacing: mm.

    Returns:
        ``(image, lung_mask, bifurcations)``: Float32 HU image, UInt8 mask, ``(K, 3)`` world points of vessel
        bifurcations (good landmarks).
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    sp = np.asarray(spacing, float)
    ext = (np.asarray(size) - 1) * sp
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    p = np.stack([i, j, k], -1).reshape(-1, 3) * sp  # world (origin 0, identity direction)
    c = ext / 2
    body = ((p[:, 0] - c[0]) / (0.46 * ext[0])) ** 2 + ((p[:, 1] - c[1]) / (0.42 * ext[1])) ** 2 < 1
    lung_c = [np.array([c[0] - 0.2 * ext[0], c[1], c[2] + 0.02 * ext[2]]),
              np.array([c[0] + 0.2 * ext[0], c[1], c[2] + 0.02 * ext[2]])]
    lung_r = np.array([0.16 * ext[0], 0.3 * ext[1], 0.4 * ext[2]])

    def in_lung(q):
        q = np.atleast_2d(q)
        return np.any([np.sum(((q - lc) / lung_r) ** 2, axis=1) < 1 for lc in lung_c], axis=0)

    lung = in_lung(p) & body
    hu = np.full(p.shape[0], -1000.0)
    hu[body] = 40.0
    hu[lung] = -850.0
    spine = ((p[:, 0] - c[0]) ** 2 + (p[:, 1] - (c[1] + 0.3 * ext[1])) ** 2) < (0.07 * ext[0]) ** 2
    hu[spine & body] = 400.0
    heart = np.sum(((p - np.array([c[0] + 0.03 * ext[0], c[1] - 0.12 * ext[1], c[2] - 0.12 * ext[2]]))
                    / np.array([0.12 * ext[0], 0.16 * ext[1], 0.2 * ext[2]])) ** 2, axis=1) < 1
    hu[heart & body] = 60.0

    nodes_all = []
    for side, lc in enumerate(lung_c):
        start = lc + np.array([(1 if side == 0 else -1) * 0.4 * lung_r[0], 0.0, 0.35 * lung_r[2]])
        direction = np.array([(-1 if side == 0 else 1) * 0.3, 0.1, -1.0])
        segs, nodes = _vessel_tree(rng, start, direction, 0.35 * lung_r[2], 1.6 * sp.min(), 6,
                                   lambda q: bool(in_lung(q)[0]))
        nodes_all += nodes
        for a, b, r in segs:
            lo = np.floor((np.minimum(a, b) - r - sp) / sp).astype(int).clip(0, np.asarray(size) - 1)
            hi = np.ceil((np.maximum(a, b) + r + sp) / sp).astype(int).clip(0, np.asarray(size) - 1)
            sel = np.all((p / sp >= lo - 0.5) & (p / sp <= hi + 0.5), axis=1) & lung
            ids = np.flatnonzero(sel)
            if ids.size:
                dist = _segment_distance(p[ids], a, b)
                # soft-edged tube (partial volume)
                w = np.clip(r + 0.5 * sp.min() - dist, 0.0, sp.min()) / sp.min()
                hu[ids] = np.maximum(hu[ids], -850.0 + w * 900.0)
    hu = hu + rng.normal(scale=noise_hu, size=hu.shape)
    img = sitk.GetImageFromArray(hu.reshape(nz, ny, nx).astype(np.float32))
    img.SetSpacing(tuple(float(s) for s in sp))
    m = sitk.GetImageFromArray(lung.reshape(nz, ny, nx).astype(np.uint8))
    m.CopyInformation(img)
    nodes = np.asarray(nodes_all) if nodes_all else np.zeros((0, 3))
    return img, m, nodes


# ----------------------------------------------------------------------------------------------- pairs
def _pick_landmarks(image: sitk.Image, mask: sitk.Image, n: int, rng, preferred: Optional[np.ndarray] = None,
                    margin_mm: float = 6.0) -> np.ndarray:
    """World points inside the mask (at least ``margin_mm`` from its edge), preferring high image gradient."""
    g = ImageGeometry.from_sitk(image)
    radius = [max(1, int(round(margin_mm / s))) for s in g.spacing]
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.Cast(mask > 0, sitk.sitkUInt8), radius)) > 0
    if not inner.any():
        inner = sitk.GetArrayFromImage(mask) > 0
    pts = []
    if preferred is not None and len(preferred):
        idx = apply_affine(g.world_to_index(), preferred)
        r = np.round(idx).astype(int)
        ok = np.all((r >= 0) & (r < np.asarray(g.size)), axis=1)
        ok[ok] &= inner[r[ok, 2], r[ok, 1], r[ok, 0]]
        pts = list(preferred[ok][: n])
    if len(pts) < n:
        grad = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(image, 1.5 * min(g.spacing)))
        cand = np.flatnonzero(inner.ravel())
        score = grad.ravel()[cand]
        top = cand[np.argsort(score)[::-1][: max(4 * (n - len(pts)), 1)]]
        chosen = rng.choice(top, size=min(n - len(pts), top.size), replace=False)
        kk, jj, ii = np.unravel_index(chosen, inner.shape)
        pts += list(apply_affine(g.index_to_world(), np.stack([ii, jj, kk], 1).astype(float)))
    return np.asarray(pts, dtype=np.float64)


def deformed_pair(image: sitk.Image, mask: Optional[sitk.Image] = None, *, amplitude_mm: float = 15.0,
                  num_landmarks: int = 100, noise_hu: float = 10.0, seed: int = 0,
                  preferred_landmarks: Optional[np.ndarray] = None) -> SyntheticPair:
    """Make a registration pair from one real or synthetic CT with a known breathing-like deformation.

    Args:
        image: the fixed ("inhale") image, HU.
        mask: its lung mask; built with :func:`lung_mask_from_hu` when None.
        amplitude_mm: largest superior motion at the lung base.
        num_landmarks: landmarks inside the lungs (where the image has structure).
        noise_hu: independent noise added to the moving image.
    """
    rng = np.random.default_rng(seed)
    image = sitk.Cast(image, sitk.sitkFloat32)
    if mask is None:
        mask = lung_mask_from_hu(image)
    g = ImageGeometry.from_sitk(image)
    marr = sitk.GetArrayFromImage(mask) > 0
    kk, jj, ii = np.nonzero(marr)
    world = apply_affine(g.index_to_world(), np.stack([ii, jj, kk], 1).astype(float))
    phi = BreathingDeformation(world.min(0), world.max(0), amplitude_mm)
    background = float(np.percentile(sitk.GetArrayViewFromImage(image), 1))
    moving = warp_image(image, phi.inverse, background)
    if noise_hu > 0:
        arr = sitk.GetArrayFromImage(moving) + rng.normal(scale=noise_hu, size=g.shape_zyx).astype(np.float32)
        m2 = sitk.GetImageFromArray(arr)
        m2.CopyInformation(moving)
        moving = m2
    fixed_lm = _pick_landmarks(image, mask, num_landmarks, rng, preferred_landmarks)
    return SyntheticPair(fixed=image, moving=moving, mask=sitk.Cast(mask > 0, sitk.sitkUInt8),
                         fixed_landmarks=fixed_lm, moving_landmarks=phi(fixed_lm), mapping=phi)


def phantom_pair(size=(80, 72, 64), spacing=(3.0, 3.0, 3.0), amplitude_mm: float = 15.0, seed: int = 0,
                 num_landmarks: int = 100) -> SyntheticPair:
    """The demo pair: :func:`lung_phantom` deformed by :class:`BreathingDeformation` (landmarks at bifurcations)."""
    image, mask, nodes = lung_phantom(size, spacing, seed=seed)
    return deformed_pair(image, mask, amplitude_mm=amplitude_mm, num_landmarks=num_landmarks, seed=seed,
                         preferred_landmarks=nodes)
