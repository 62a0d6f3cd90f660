"""Learn2Reg: dataset JSON + keypoints, and the voxel-unit displacement exporter."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from idir_fast import InputError
from idir_fast.core.geometry import ImageGeometry
from idir_fast.io.learn2reg import (displacement_voxels, export_learn2reg_displacement_voxels, read_dataset,
                                 read_keypoints_world)
from idir_fast.registration import Registration
from idir_fast.core.siren import Siren


def _image(size=(12, 10, 8), spacing=(1.5, 2.0, 2.5)):
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=tuple(reversed(size))).astype(np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -20.0, 5.0))
    return img


def test_dataset_json_and_keypoints(tmp_path):
    for sub in ("imagesTr", "keypointsTr", "masksTr"):
        (tmp_path / sub).mkdir()
    img = _image()
    for name in ("P_0001_0000", "P_0001_0001"):
        sitk.WriteImage(img, str(tmp_path / "imagesTr" / f"{name}.nii.gz"))
        sitk.WriteImage(sitk.Cast(img > 0, sitk.sitkUInt8), str(tmp_path / "masksTr" / f"{name}.nii.gz"))
        (tmp_path / "keypointsTr" / f"{name}.csv").write_text("1.0,2.0,3.0\n4.5,5.5,6.5\n")
    meta = {"registration_val": [{"fixed": "./imagesTr/P_0001_0000.nii.gz", "moving": "./imagesTr/P_0001_0001.nii.gz"}]}
    (tmp_path / "Data_dataset.json").write_text(json.dumps(meta))
    pairs = read_dataset(tmp_path / "Data_dataset.json")
    assert len(pairs) == 1 and pairs[0]["fixed_keypoints"].name == "P_0001_0000.csv"
    assert pairs[0]["moving_mask"].parent.name == "masksTr"
    world = read_keypoints_world(pairs[0]["fixed_keypoints"], img)
    np.testing.assert_allclose(world[0], [10.0 + 1.5, -20.0 + 4.0, 5.0 + 7.5])
    with pytest.raises(InputError, match="'split'"):
        read_dataset(tmp_path / "Data_dataset.json", "registration_test")


def test_voxel_exporter_convention(tmp_path):
    """A pure translation of (3, −2, 5) mm is (2, −1, 2) voxels at spacing (1.5, 2, 2.5), array order (i, j, k, 3)."""
    img = _image()
    g = ImageGeometry.from_sitk(img)
    w2n = g.world_to_normalised("isotropic")
    siren = Siren((8,), omega=1.0)
    shift_world = np.array([3.0, -2.0, 5.0])
    with torch.no_grad():
        siren.weights[-1].zero_()
        siren.biases[-1].copy_(torch.as_tensor(w2n[:3, :3] @ shift_world, dtype=torch.float32))
    reg = Registration.of_network(siren, w2n, g)
    d = displacement_voxels(reg)
    assert d.shape == (12, 10, 8, 3)
    np.testing.assert_allclose(d[3, 4, 5], [2.0, -1.0, 2.0], atol=1e-4)
    path = export_learn2reg_displacement_voxels(reg, tmp_path / "disp_0001_0001.nii.gz")
    back = sitk.ReadImage(str(path))
    assert back.GetSize() == (12, 10, 8, 3)  # NiBabel loads this as (12, 10, 8, 3)
    arr = sitk.GetArrayFromImage(back)  # (3, nz, ny, nx)
    np.testing.assert_allclose(arr[:, 5, 4, 3], [2.0, -1.0, 2.0], atol=1e-4)
