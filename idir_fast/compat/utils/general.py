"""Mirrors the released code's ``utils/general.py``: the DIR-LAB loader and the landmark evaluation, with the
released conventions (so published numbers can be reproduced) — see ``shared/notes/released-idir-code.md``.

* :func:`compute_landmarks` maps voxel indices (array order ``(z, y, x)``) with the released scale ``N/2``
  (``c = i / (N/2) − 1``), not the ``(N−1)/2`` the network was trained in: a fraction of a voxel off, as published.
* :func:`compute_landmark_accuracy` rounds both landmark sets to whole voxels before the distance, and returns
  ``[Euclidean, x, y, z]`` means and standard deviations in mm, rounded to 2 decimals.
* :func:`load_image_DIRLab` reads a DIR-LAB case (raw ``.img`` volumes, the T00 mask, the 300 landmarks) into
  tensors in array order, landmarks ``(z, y, x)`` without subtracting 1 from their 1-based indices.

A correct evaluation (1-based → 0-based, one mapping, no rounding) is :func:`idir_fast.core.metrics.tre` on world
points, as ``idir-fast dirlab`` reports it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import SimpleITK as sitk
import torch



def compute_landmarks(network, landmarks_pre, image_size) -> Tuple[np.ndarray, np.ndarray]:
    """``(landmarks + δ, δ)``: voxel landmarks ``(N, 3)`` in array order moved by the network, with the released
    scale ``N/2`` per axis (``δ = u(i / (N/2) − 1) · N/2``)."""
    pts = np.asarray(landmarks_pre, dtype=np.float64)
    scale = 0.5 * np.asarray(image_size, dtype=np.float64)
    with torch.no_grad():
        u = network(torch.as_tensor(pts / scale - 1.0, dtype=torch.float32))
    delta = np.asarray(torch.as_tensor(u).detach().cpu().numpy(), dtype=np.float64) * scale
    return pts + delta, delta


def compute_landmark_accuracy(landmarks_pred, landmarks_gt, voxel_size):
    """The released TRE: both sets rounded to whole voxels, ``|difference| × voxel size`` per axis; returns
    ``(means, stds)``, each ``[Euclidean, x, y, z]`` in mm rounded to 2 decimals (axes as the landmarks' array order
    reversed)."""
    pred = np.round(np.asarray(landmarks_pred, dtype=np.float64))
    gt = np.round(np.asarray(landmarks_gt, dtype=np.float64))
    diff = np.abs(pred - gt) * np.asarray(voxel_size, dtype=np.float64)
    means = list(diff.mean(axis=0)) + [float(np.linalg.norm(diff, axis=1).mean())]
    stds = list(diff.std(axis=0)) + [float(np.linalg.norm(diff, axis=1).std())]
    return [round(float(v), 2) for v in reversed(means)], [round(float(v), 2) for v in reversed(stds)]


def load_image_DIRLab(variation: int = 1, folder: str = "."):  # noqa: N802 — the released name
    """``(img_insp, img_exp, landmarks_insp, landmarks_exp, mask, voxel_size)`` of DIR-LAB case ``variation``
    from ``folder`` (searched below it for the raw volumes, ``case{n}_T00*.mhd`` mask and landmark files):
    int16 intensities as float tensors ``(z, y, x)``, the T00 mask (0/1, array order; a HU-threshold lung mask
    when the case has none), landmarks ``(z, y, x)`` as in the files (1-based), voxel size ``(z, y, x)`` mm."""
    from ...data.lung_mask import lung_mask_from_hu
    from ...io import dirlab

    case = dirlab.check_case(variation)
    found = dirlab.find_case(folder, case)
    insp, exp = found.images()
    masks = sorted(Path(folder).rglob(f"case{case}_T00*.mhd")) + sorted(Path(folder).rglob(f"Case{case}_T00*.mhd"))
    mask = sitk.ReadImage(str(masks[0])) if masks else lung_mask_from_hu(insp)
    spacing = np.asarray(insp.GetSpacing(), dtype=np.float64)

    def index_zyx(world_xyz):  # the files' 1-based (x, y, z) indices, reordered as the released loader does
        return (np.asarray(world_xyz) / spacing + 1.0)[:, ::-1]

    tensor = (lambda img: torch.as_tensor(sitk.GetArrayFromImage(img).astype(np.float32)))
    return (tensor(insp), tensor(exp), index_zyx(found.fixed_landmarks), index_zyx(found.moving_landmarks),
            np.clip(sitk.GetArrayFromImage(mask), 0, 1), spacing[::-1].copy())


def make_coordinate_tensor(dims=(28, 28, 28), gpu: bool = False) -> torch.Tensor:
    """Normalised coordinates ``(Π dims, 3)`` of every voxel of a grid (array order, ``−1 + 2 i / (N − 1)``)."""
    axes = [torch.linspace(-1.0, 1.0, int(n)) for n in dims]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    return grid.cuda() if gpu else grid


def make_masked_coordinate_tensor(mask, dims=(28, 28, 28)) -> torch.Tensor:
    """The coordinates of :func:`make_coordinate_tensor` where ``mask`` > 0."""
    grid = make_coordinate_tensor(dims)
    return grid[torch.as_tensor(np.asarray(mask).ravel() > 0)]
