"""World frame: the written field round-trips through SimpleITK itself on an oblique, anisotropic, offset image."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from idir_fast.core.geometry import ImageGeometry, apply_affine
from idir_fast.registration import Registration
from idir_fast.core.siren import Siren

from conftest import oblique_image


def _random_registration(fixed, normalisation, seed=0, scale=0.05):
    torch.manual_seed(seed)
    siren = Siren((32, 32), omega=3.0)
    with torch.no_grad():
        siren.weights[-1].mul_(scale / siren.weights[-1].abs().max())
        siren.biases[-1].uniform_(-0.02, 0.02)
    g = ImageGeometry.from_sitk(fixed)
    return Registration.of_network(siren, g.world_to_normalised(normalisation), g)


def test_geometry_matches_simpleitk_index_to_physical():
    img = oblique_image()
    g = ImageGeometry.from_sitk(img)
    rng = np.random.default_rng(0)
    idx = rng.uniform(-2, 14, size=(20, 3))
    ours = apply_affine(g.index_to_world(), idx)
    theirs = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in idx])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(apply_affine(g.world_to_index(), theirs), idx, atol=1e-9)
    for norm in ("isotropic", "per-axis"):
        n = apply_affine(g.index_to_normalised(norm), np.array([[0, 0, 0], [12, 10, 8]], float))
        assert np.abs(n).max() == pytest.approx(1.0)


@pytest.mark.parametrize("normalisation", ["isotropic", "per-axis"])
def test_field_round_trip_through_simpleitk(normalisation, tmp_path):
    fixed = oblique_image()
    moving = oblique_image(size=(15, 12, 10), spacing=(1.1, 1.0, 1.9), origin=(-41.0, 24.0, 108.0), angle=0.25,
                           seed=5)
    reg = _random_registration(fixed, normalisation)
    reg.moving = moving
    out = reg.save(str(tmp_path / "rt_"))
    field = sitk.ReadImage(str(out["field"]))
    assert field.GetPixelID() == sitk.sitkVectorFloat32
    assert ImageGeometry.from_sitk(field).same_grid(ImageGeometry.from_sitk(fixed))
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    # TransformPoint at voxel centres (where the field is exact) vs the network in world coordinates
    g = ImageGeometry.from_sitk(fixed)
    centres = apply_affine(g.index_to_world(), g.voxel_grid_index(dtype=torch.float64).numpy()[::7])
    ours = reg.transform_points(centres)
    theirs = np.array([tx.TransformPoint(tuple(p)) for p in centres])
    assert np.abs(ours - theirs).max() < 0.01  # mm (float32 storage of the field)
    assert np.abs(ours - centres).max() > 0.5  # the transform is not trivial
    # sitk.Resample with that transform reproduces the package's warped image
    resampled = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    warped = sitk.ReadImage(str(out["warped"]))
    a, b = sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(warped)
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()
    assert np.count_nonzero(a) > 0.3 * a.size


def test_transform_points_commutes_with_frames(tmp_path):
    """Φ in world = N⁻¹ ∘ Φ_normalised ∘ N: a pure translation of the output bias is a world translation."""
    fixed = oblique_image()
    g = ImageGeometry.from_sitk(fixed)
    torch.manual_seed(0)
    siren = Siren((8,), omega=1.0)
    with torch.no_grad():
        siren.weights[-1].zero_()
        siren.biases[-1].copy_(torch.tensor([0.1, -0.05, 0.02]))
    reg = Registration.of_network(siren, g.world_to_normalised("isotropic"), g)
    p = np.array([[0.0, 0.0, 0.0], [10.0, -5.0, 3.0]])
    shift = np.linalg.inv(g.world_to_normalised("isotropic"))[:3, :3] @ np.array([0.1, -0.05, 0.02])
    np.testing.assert_allclose(reg.transform_points(p), p + shift, atol=1e-5)
