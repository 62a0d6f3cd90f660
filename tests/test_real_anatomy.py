"""Real-anatomy pairs: the shared chest CT with a known breathing deformation (skipped without shared data)."""
import numpy as np
import pytest
import SimpleITK as sitk

import idir_fast
from idir_fast.data import BreathingDeformation, deformed_pair, lung_mask_from_hu
from idir_fast.core.metrics import folding


@pytest.fixture(scope="module")
def ct_pair(request):
    from conftest import SHARED_DATA

    path = SHARED_DATA / "ct" / "chest_ct_1p5mm.nii.gz"
    if not path.is_file():
        pytest.skip(f"shared chest CT not found at {path}")
    ct = sitk.ReadImage(str(path))
    return ct, deformed_pair(ct, amplitude_mm=18.0, num_landmarks=60, seed=0)


def test_lung_mask_from_hu_on_a_cropped_chest_ct(ct_pair):
    ct, pair = ct_pair
    m = sitk.GetArrayFromImage(pair.mask) > 0
    a = sitk.GetArrayFromImage(ct)
    assert 0.2 < m.mean() < 0.6  # both lungs, not the mediastinum
    assert np.median(a[m]) < -700 and np.median(a[~m]) > -200


def test_ground_truth_is_exact(ct_pair):
    ct, pair = ct_pair
    phi = pair.mapping
    q = phi(pair.fixed_landmarks)
    np.testing.assert_allclose(phi.inverse(q), pair.fixed_landmarks, atol=1e-6)
    np.testing.assert_allclose(q, pair.moving_landmarks)
    assert np.linalg.norm(q - pair.fixed_landmarks, axis=1).mean() >= 5.0


def test_short_registration_on_real_anatomy(ct_pair):
    ct, pair = ct_pair
    reg = idir_fast.register(pair.fixed, pair.moving, pair.mask, epochs=150, batch_size=2000,
                             hidden=(64, 64, 64), progress=False, fixed_landmarks=pair.fixed_landmarks,
                             moving_landmarks=pair.moving_landmarks)
    before, after = reg.metrics["tre_initial"]["mean"], reg.metrics["tre"]["mean"]
    assert after < 0.5 * before, f"{before:.2f} → {after:.2f} mm"
    assert folding(reg.jacobian_determinant(), pair.mask)["count"] == 0


def test_breathing_deformation_is_smooth_and_invertible():
    phi = BreathingDeformation(np.array([0.0, 0.0, 0.0]), np.array([200.0, 150.0, 250.0]), 15.0)
    rng = np.random.default_rng(0)
    p = rng.uniform(-50, 300, size=(500, 3))
    h = 1e-4
    J = np.stack([(phi(p + h * e) - phi(p - h * e)) / (2 * h) for e in np.eye(3)], axis=-1)
    assert np.linalg.det(J).min() > 0.8
    np.testing.assert_allclose(phi.inverse(phi(p)), p, atol=1e-8)


def test_lung_mask_rejects_images_without_lungs():
    img = sitk.GetImageFromArray(np.full((10, 10, 10), 40.0, dtype=np.float32))
    with pytest.raises(ValueError, match="no voxel below the threshold"):
        lung_mask_from_hu(img)
