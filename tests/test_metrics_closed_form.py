"""Every output metric against an independent computation: det J of the written map by finite differences of the
written field, det J / hyperelastic energy of general (non-diagonal) affine and quadratic maps by NumPy, folding
counts on a map with a known folded region, SDlogJ on a map with a known log-det spread."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from idir_fast.backends.reference import field_derivatives
from idir_fast.core import objectives
from idir_fast.core.geometry import ImageGeometry
from idir_fast.core.metrics import folding, sdlogj
from idir_fast.core.siren import Siren
from idir_fast.registration import Registration

GENERAL = np.array([[1.10, 0.25, -0.05], [0.08, 0.92, 0.30], [-0.12, 0.04, 1.05]])  # no symmetry, det > 0


def _points(n=200, seed=0):
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def _numpy_hyperelastic(J, al=1.0, aa=1.0, av=1.0):
    cof = np.linalg.det(J) * np.linalg.inv(J).T  # independent of the package's cross-product cofactor
    det = np.linalg.det(J)
    length = 0.5 * ((J - np.eye(3)) ** 2).sum()
    area = (np.maximum((cof ** 2).sum(axis=0) - 1.0, 0.0) ** 2).sum()  # columns: Σ_j cof_ji²
    volume = (det - 1.0) ** 4 / det ** 2
    return al * length + aa * area + av * volume


def test_determinant_and_hyperelastic_of_a_general_affine_map():
    A = torch.tensor(GENERAL, dtype=torch.float64)
    d = field_derivatives(lambda x: x @ (A - torch.eye(3, dtype=torch.float64)).T, _points(), 1)
    np.testing.assert_allclose(objectives.determinant(d.J).detach().numpy(), np.linalg.det(GENERAL), rtol=1e-12)
    expected = _numpy_hyperelastic(GENERAL)
    assert objectives.hyperelastic_penalty(d.J).item() == pytest.approx(expected, rel=1e-12)
    # the rows of cof(J) give another number: the test tells the two axes apart
    cof = np.linalg.det(GENERAL) * np.linalg.inv(GENERAL).T
    assert abs((cof ** 2).sum(axis=0) - (cof ** 2).sum(axis=1)).max() > 1e-2


def test_determinant_of_a_shear_and_of_a_quadratic_map():
    k = 0.7
    d = field_derivatives(lambda x: torch.stack([k * x[:, 1], torch.zeros_like(x[:, 0]), torch.zeros_like(x[:, 0])],
                                                1), _points(), 1)
    np.testing.assert_allclose(objectives.determinant(d.J).detach().numpy(), 1.0, atol=1e-14)  # a shear keeps volume
    a, b = 0.3, -0.2
    x = _points(seed=1)
    d = field_derivatives(lambda p: torch.stack([a * p[:, 0] ** 2, b * p[:, 1] * p[:, 2], torch.zeros_like(p[:, 0])],
                                                1), x, 1)
    # J = [[1 + 2a x, 0, 0], [0, 1 + b z, b y], [0, 0, 1]] → det = (1 + 2a x)(1 + b z)
    expected = (1 + 2 * a * x[:, 0]) * (1 + b * x[:, 2])
    np.testing.assert_allclose(objectives.determinant(d.J).detach().numpy(), expected.numpy(), rtol=1e-12)


def _registration(world_affine=None, omega=3.0, seed=0):
    g = ImageGeometry((23, 21, 19), (1.3, 1.1, 1.7), (10.0, -5.0, 3.0), tuple(np.eye(3).ravel()))
    torch.manual_seed(seed)
    siren = Siren((24, 24), omega=omega, init="siren", dtype=torch.float64)
    with torch.no_grad():
        siren.weights[-1].mul_(0.25)  # a clearly non-affine map without folds
    return Registration.of_network(siren, g.world_to_normalised(), g, device="cpu", world_affine=world_affine), g


@pytest.mark.parametrize("affine", [None, "general"])
def test_jacobian_map_equals_finite_differences_of_the_written_field(affine):
    A = None
    if affine:
        A = np.eye(4)
        A[:3, :3], A[:3, 3] = GENERAL, (4.0, -2.0, 1.0)
    reg, g = _registration(A)
    u = sitk.GetArrayFromImage(reg.displacement_field()).astype(np.float64)  # (z, y, x, 3) mm
    det = sitk.GetArrayFromImage(reg.jacobian_determinant())
    sx, sy, sz = g.spacing
    du = [np.gradient(u, s, axis=ax) for s, ax in ((sx, 2), (sy, 1), (sz, 0))]  # ∂u/∂x, ∂u/∂y, ∂u/∂z
    J = np.stack(du, axis=-1) + np.eye(3)  # J[..., c, i] = δ + ∂u_c/∂x_i
    fd = np.linalg.det(J)
    inner = (slice(2, -2),) * 3
    assert np.abs(det[inner] - fd[inner]).max() < 2e-3 * np.abs(fd[inner]).max()
    assert det.std() > 0.05  # not a near-constant map, so scaling errors of ∂u show


def test_folding_counts_a_known_folded_region():
    det = np.full((10, 12, 14), 1.2, dtype=np.float32)
    det[2:4, 3:7, 5:10] = -0.3  # 2·4·5 = 40 folded voxels
    det[8, 8, 8] = 0.0  # det = 0 counts as folded
    img = sitk.GetImageFromArray(det)
    mask = sitk.GetImageFromArray((np.arange(det.size).reshape(det.shape) % 2).astype(np.uint8))
    f = folding(img)
    assert f == {"count": 41, "fraction": pytest.approx(41 / det.size), "voxels": det.size}
    inside = (np.arange(det.size).reshape(det.shape) % 2).astype(bool)
    assert folding(img, mask)["count"] == int(((det <= 0) & inside).sum())


def test_sdlogj_of_a_known_log_det_spread():
    rng = np.random.default_rng(0)
    log_det = rng.normal(0.0, 0.2, size=(20, 20, 20))
    img = sitk.GetImageFromArray(np.exp(log_det).astype(np.float64))
    assert sdlogj(img) == pytest.approx(float(log_det.std()), rel=1e-9)
    with_folds = np.exp(log_det)
    with_folds[0, 0, :5] = -1.0  # folded voxels have no logarithm: left out of the "true" variant
    assert sdlogj(sitk.GetImageFromArray(with_folds)) == pytest.approx(float(np.log(with_folds[with_folds > 0]).std()))
    plus3 = np.log(np.clip(with_folds + 3.0, 1e-9, 1e9)).std()
    assert sdlogj(sitk.GetImageFromArray(with_folds), variant="learn2reg+3") == pytest.approx(float(plus3))
