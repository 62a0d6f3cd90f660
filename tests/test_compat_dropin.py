"""The drop-in for the released IDIR code: its example's call pattern (``models.ImplicitRegistrator`` →
``fit`` → ``general.compute_landmarks`` → ``general.compute_landmark_accuracy``) runs with only the imports changed,
and trains exactly what ``register(..., compat="idir-2022")`` trains with the same seed."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import idir_fast
from idir_fast import InputError
from idir_fast.compat.models import models
from idir_fast.compat.utils import general


def _released_inputs(pair):
    """The demo pair as the released loader gives a case: tensors in array order, a 0/1 mask, voxel landmarks
    in array order, the voxel size."""
    to_tensor = (lambda img: torch.from_numpy(sitk.GetArrayFromImage(img).astype(np.float32)))
    index = (lambda img, pts: np.asarray([img.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in pts])[:, ::-1])
    return (to_tensor(pair.fixed), to_tensor(pair.moving), index(pair.fixed, pair.fixed_landmarks),
            index(pair.moving, pair.moving_landmarks), sitk.GetArrayFromImage(pair.mask),
            np.asarray(pair.fixed.GetSpacing())[::-1])


def test_the_released_example_runs_unchanged_and_matches_register(tiny_pair, tmp_path):
    img_insp, img_exp, landmarks_insp, landmarks_exp, mask_exp, voxel_size = _released_inputs(tiny_pair)
    # --- the released run.py, its settings as it sets them (plus a short run for the test) ---
    kwargs = {}
    kwargs["verbose"] = False
    kwargs["hyper_regularization"] = False
    kwargs["jacobian_regularization"] = False
    kwargs["bending_regularization"] = True
    kwargs["network_type"] = "SIREN"  # Options are "MLP" and "SIREN"
    kwargs["save_folder"] = str(tmp_path / "out")
    kwargs["mask"] = mask_exp
    kwargs.update(epochs=40, batch_size=300, layers=[3, 16, 16, 3], gpu=False)
    ImpReg = models.ImplicitRegistrator(img_exp, img_insp, **kwargs)
    ImpReg.fit()
    new_landmarks_orig, _ = general.compute_landmarks(ImpReg.network, landmarks_insp, image_size=img_insp.shape)
    accuracy_mean, accuracy_std = general.compute_landmark_accuracy(new_landmarks_orig, landmarks_exp,
                                                                    voxel_size=voxel_size)
    assert len(accuracy_mean) == len(accuracy_std) == 4
    # --- the same through the package's own API, same seed (the released code's seed is 1) ---
    image = (lambda arr: sitk.GetImageFromArray(arr.numpy()))
    mask = sitk.Cast(sitk.GetImageFromArray(mask_exp), sitk.sitkUInt8)
    reg = idir_fast.register(image(img_insp), image(img_exp), mask, compat="idir-2022", epochs=40, batch_size=300,
                             hidden=(16, 16), regularizer="bending", seed=1, device="cpu", progress=False)
    for a, b in zip(ImpReg.registration.siren.parameter_list(), reg.siren.parameter_list()):
        assert torch.equal(a, b)
    assert (reg.settings.lr, reg.settings.alpha, reg.settings.normalisation) == (1e-5, 10.0, "per-axis")
    # compute_landmarks: the released mapping (scale N/2) of the same network
    shape = np.asarray(img_insp.shape, dtype=np.float64)
    c = landmarks_insp / (0.5 * shape) - 1.0  # released frame, array order
    x = torch.as_tensor(c[:, ::-1].copy(), dtype=torch.float32)  # idir_fast's (x, y, z) order
    with torch.no_grad():
        u = reg.siren.displacement(x).numpy()[:, ::-1]
    np.testing.assert_allclose(new_landmarks_orig, landmarks_insp + u * 0.5 * shape, rtol=1e-6, atol=1e-6)
    # the network in the released frame is idir_fast's Φ: away from the N/2 quirk, the landmarks map as
    # transform_points maps them (world = voxel indices here)
    exact = ImpReg.network(torch.as_tensor(-1.0 + 2.0 * landmarks_insp / (shape - 1), dtype=torch.float32)).numpy()
    world = reg.transform_points(landmarks_insp[:, ::-1].copy())[:, ::-1]
    np.testing.assert_allclose(landmarks_insp + exact * (shape - 1) / 2, world, atol=1e-4)


def test_the_registrator_evaluates_warped_slices_and_samples_like_the_released_class(tiny_pair):
    fixed, moving, *_ , mask, _ = _released_inputs(tiny_pair)
    reg = models.ImplicitRegistrator(moving, fixed, mask=mask, epochs=5, batch_size=200, layers=[3, 8, 3],
                                     gpu=False, verbose=True, network_type="SIREN")
    reg.fit()
    assert reg.loss_list.shape == (5,) and reg.data_loss_list.shape == (5,)
    nz, ny, nx = fixed.shape
    assert reg(output_shape=(ny, nx), dimension=0, slice_pos=3).shape == (ny, nx)
    grid = general.make_coordinate_tensor(fixed.shape)
    np.testing.assert_allclose(reg.transform_no_add(grid).reshape(fixed.shape).numpy(), moving.numpy(), atol=1e-3)
    assert reg.possible_coordinate_tensor.shape == (int((mask > 0).sum()), 3)


@pytest.mark.parametrize("kwargs,name", [
    (dict(learning_rate=1e-4), "learning_rate"),
    (dict(network_type="MLP"), "'network_type'"),
    (dict(loss_function="mse"), "'loss_function'"),
    (dict(optimizer="SGD"), "'optimizer'"),
    (dict(jacobian_regularization=True, bending_regularization=True), "one regulariser at a time"),
    (dict(layers=[2, 16, 3]), "'layers'"),
])
def test_unknown_keywords_and_unimplemented_values_are_named(tiny_pair, kwargs, name):
    fixed, moving, *_ = _released_inputs(tiny_pair)
    with pytest.raises(InputError, match=name):
        models.ImplicitRegistrator(moving, fixed, **{"network_type": "SIREN", **kwargs})
    with pytest.raises(InputError, match="'network_type'"):  # the released default is a ReLU MLP
        models.ImplicitRegistrator(moving, fixed)
