"""A lung mask from HU thresholds, for CT scans that come without one."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError


def lung_mask_from_hu(image: sitk.Image, threshold_hu: float = -400.0) -> sitk.Image:
    """A simple lung mask from HU thresholds and connected components.

    Air below ``threshold_hu`` is split into connected components. A component that touches the image border
    and is as dark as outside air (median below −960 HU; lung parenchyma is about −850) is taken as the air
    around the body; the others are lung (scans cropped through the lungs keep them). Components smaller than
    2 % of the largest are dropped; the rest is closed (3 mm) and hole-filled so vessels are inside.
    """
    arr = sitk.GetArrayViewFromImage(image)
    air = sitk.BinaryThreshold(image, -1e9, threshold_hu, 1, 0)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(air), sortByObjectSize=True)
    lab = sitk.GetArrayFromImage(cc)
    if lab.max() == 0:
        raise InputError("lung_mask_from_hu(): no voxel below the threshold; pass a mask")
    border = set(np.unique(np.concatenate([lab[[0, -1]].ravel(), lab[:, [0, -1]].ravel(),
                                           lab[:, :, [0, -1]].ravel()])).tolist())
    labels, counts = np.unique(lab[lab > 0], return_counts=True)
    keep = []
    for label, n in zip(labels, counts):
        if label in border and float(np.median(arr[lab == label])) < -960.0:
            continue  # air outside the body
        keep.append((label, n))
    if not keep:
        raise InputError("lung_mask_from_hu(): found only air outside the body; pass a mask")
    big = max(n for _, n in keep)
    mask = sitk.GetImageFromArray(np.isin(lab, [l for l, n in keep if n >= 0.02 * big]).astype(np.uint8))
    mask.CopyInformation(image)
    radius = [max(1, int(round(3.0 / s))) for s in image.GetSpacing()]
    mask = sitk.BinaryMorphologicalClosing(mask, radius)
    mask = sitk.BinaryFillhole(mask)
    return sitk.Cast(mask, sitk.sitkUInt8)
