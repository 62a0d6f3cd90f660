"""Learn2Reg datasets (dataset JSON + keypoint CSVs) and the voxel-unit displacement exporter.

Learn2Reg works in *array order* as NiBabel loads NIfTI files: axis 0 is the NIfTI ``i`` axis, which is
SimpleITK's ``x`` index. Keypoint CSVs therefore hold voxel indices ``(i, j, k)`` — SimpleITK's index order — and
submissions hold displacements in voxels of the fixed grid, shape ``(i, j, k, 3)`` in NiBabel order. This module
is the only place where that voxel convention appears; everything else in idir_fast is world LPS mm.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Union

import numpy as np
import SimpleITK as sitk
import torch

from ..core.geometry import ImageGeometry, apply_affine
from ..errors import InputError
from .images import write_image
from .landmarks import read_points


def read_dataset(json_path: Union[str, os.PathLike], split: str = "registration_val") -> List[dict]:
    """Pairs of a Learn2Reg dataset JSON, with paths resolved against the JSON's folder.

    Args:
        split: a key of the JSON holding ``[{"fixed": …, "moving": …}, …]`` (e.g. ``registration_val``,
            ``training_paired_images``).

    Returns:
        list of dicts with ``fixed``, ``moving`` and, when present beside the images, ``fixed_mask``,
        ``moving_mask``, ``fixed_keypoints``, ``moving_keypoints`` (``masksTr``/``keypointsTr`` siblings).
    """
    p = Path(json_path)
    if not p.is_file():
        raise InputError(f"'json_path': Learn2Reg dataset file not found: {str(p)!r}")
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"'json_path': {str(p)!r} is not valid JSON ({err})") from None
    if split not in meta or not isinstance(meta[split], list):
        keys = [k for k, v in meta.items() if isinstance(v, list)]
        raise InputError(f"'split': {split!r} is not a list in {p.name}; available: {keys}")
    root = p.parent
    pairs = []
    for item in meta[split]:
        if not isinstance(item, dict) or "fixed" not in item or "moving" not in item:
            raise InputError(f"'json_path': entries of {split!r} must have 'fixed' and 'moving'; got {item!r}")
        pair = {"fixed": (root / item["fixed"]).resolve(), "moving": (root / item["moving"]).resolve()}
        for role in ("fixed", "moving"):
            img = pair[role]
            for kind, folder, ext in (("mask", "masks", ".nii.gz"), ("keypoints", "keypoints", ".csv")):
                cand = img.parent.parent / img.parent.name.replace("images", folder) / img.name
                cand = cand.with_name(cand.name.replace(".nii.gz", ext))
                if cand.is_file():
                    pair[f"{role}_{kind}"] = cand
        pairs.append(pair)
    return pairs


def read_keypoints_world(csv_path: Union[str, os.PathLike], image: sitk.Image) -> np.ndarray:
    """Keypoints (voxel indices in array order) → world points (LPS mm) of ``image``."""
    idx = read_points(csv_path, "keypoints")
    return apply_affine(ImageGeometry.from_sitk(image).index_to_world(), idx)


def displacement_voxels(reg) -> np.ndarray:
    """Φ(x) − x in voxels of the fixed grid, NiBabel array order: ``(nx, ny, nz, 3)`` with components
    ``(di, dj, dk)``."""
    g = reg.fixed_geometry
    idx = g.voxel_grid_index(dtype=torch.float64).numpy()
    world = apply_affine(g.index_to_world(), idx)
    moved_idx = apply_affine(g.world_to_index(), reg.transform_points(world))
    disp = (moved_idx - idx).reshape(g.shape_zyx + (3,))  # (nz, ny, nx, 3)
    return np.ascontiguousarray(disp.transpose(2, 1, 0, 3))


def export_learn2reg_displacement_voxels(reg, path: Union[str, os.PathLike]) -> Path:
    """Write the Learn2Reg submission field: a 4-D NIfTI that NiBabel loads as ``(nx, ny, nz, 3)`` float32
    voxel displacements on the fixed grid (spacing/origin/direction copied from the fixed image)."""
    disp = displacement_voxels(reg).astype(np.float32)  # (nx, ny, nz, 3)
    components = []
    for c in range(3):
        comp = sitk.GetImageFromArray(np.ascontiguousarray(disp[..., c].transpose(2, 1, 0)))  # (nz, ny, nx)
        reg.fixed_geometry.apply_to(comp)
        components.append(comp)
    img = sitk.JoinSeries(components, 0.0, 1.0)  # size (nx, ny, nz, 3)
    return write_image(img, path)
