"""Objective terms against closed forms and hand computations."""
import numpy as np
import pytest
import torch

from helpers import derivatives
from idir_fast.backends.reference import field_derivatives
from idir_fast.core import objectives



def _points(n=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1


def test_affine_field_has_zero_bending_and_constant_determinant():
    A = torch.tensor([[0.10, 0.02, -0.03], [0.01, -0.05, 0.04], [0.02, 0.03, 0.07]], dtype=torch.float64)
    t = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    def field(x):
        return x @ A.T + t

    d = field_derivatives(field, _points(), order=2)
    det = torch.linalg.det(torch.eye(3, dtype=torch.float64) + A)
    assert torch.allclose(objectives.determinant(d.J), det.expand(d.J.shape[0]), atol=1e-14)
    assert objectives.bending_penalty(d.H6).item() == pytest.approx(0.0, abs=1e-20)
    assert objectives.jacobian_penalty(d.J).item() == pytest.approx(abs(1 - det.item()), rel=1e-12)


def test_bending_energy_of_quadratic_field_matches_hand_integral():
    # u = (a x², b x z, c y²/2 + e y z): H_0,00 = 2a, H_1,02 = b, H_2,11 = c, H_2,12 = e.
    a, b, c, e = 0.3, -0.2, 0.5, 0.25
    def field(x):
        return torch.stack([a * x[:, 0] ** 2, b * x[:, 0] * x[:, 2], 0.5 * c * x[:, 1] ** 2 + e * x[:, 1] * x[:, 2]], 1)

    d = field_derivatives(field, _points(), order=2)
    expected = (2 * a) ** 2 + 2 * b ** 2 + c ** 2 + 2 * e ** 2  # eq. (3), constant integrand
    assert objectives.bending_penalty(d.H6).item() == pytest.approx(expected, rel=1e-12)
    # released-code variant: yz weight 1, mean over points and components, divided by N again
    n = d.H6.shape[0]
    compat = ((2 * a) ** 2 + 2 * b ** 2 + c ** 2 + 1 * e ** 2) / 3 / n
    assert objectives.bending_penalty(d.H6, "idir-2022").item() == pytest.approx(compat, rel=1e-12)


def test_bending_energy_of_sine_field_matches_numeric_integral():
    # u_0 = sin(x) sin(y): integrand sin²x sin²y + sin²x sin²y + 2 cos²x cos²y; exact mean over [-1, 1]².
    def field(x):
        return torch.stack([torch.sin(x[:, 0]) * torch.sin(x[:, 1]), torch.zeros_like(x[:, 0]),
                            torch.zeros_like(x[:, 0])], 1)

    g = (torch.arange(200, dtype=torch.float64) + 0.5) / 100 - 1  # midpoint rule
    X, Y, Z = torch.meshgrid(g, g, torch.zeros(1, dtype=torch.float64), indexing="ij")
    pts = torch.stack([X.ravel(), Y.ravel(), Z.ravel()], 1)
    d = field_derivatives(field, pts, order=2)
    # closed form of the mean over [-1,1]^2:  m(s²)=(1 - sin(2)/2)/2, m(c²)=(1 + sin(2)/2)/2
    ms, mc = (1 - np.sin(2) / 2) / 2, (1 + np.sin(2) / 2) / 2
    expected = 2 * ms * ms + 2 * mc * mc
    assert objectives.bending_penalty(d.H6).item() == pytest.approx(expected, rel=1e-4)  # midpoint quadrature


def test_hyperelastic_of_uniform_scaling():
    s = 1.2
    d = field_derivatives(lambda x: (s - 1) * x, _points(33), order=1)
    expected = 0.5 * 3 * (s - 1) ** 2 + 3 * (s ** 4 - 1) ** 2 + (s ** 3 - 1) ** 4 / s ** 6
    assert objectives.hyperelastic_penalty(d.J).item() == pytest.approx(expected, rel=1e-12)
    # compression: the area term is inactive (columns of cof shrink)
    s = 0.9
    d = field_derivatives(lambda x: (s - 1) * x, _points(33), order=1)
    expected = 0.5 * 3 * (s - 1) ** 2 + (s ** 3 - 1) ** 4 / s ** 6
    assert objectives.hyperelastic_penalty(d.J).item() == pytest.approx(expected, rel=1e-12)


def test_cofactor_and_determinant_match_linalg():
    J = torch.randn(50, 3, 3, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(objectives.determinant(J), torch.linalg.det(J), atol=1e-12)
    cof = torch.linalg.det(J)[:, None, None] * torch.linalg.inv(J).transpose(1, 2)
    assert torch.allclose(objectives.cofactor(J), cof, atol=1e-10)


def _ncc_numpy(f, m, ddof):
    f, m = np.asarray(f, float), np.asarray(m, float)
    cov = np.mean((f - f.mean()) * (m - m.mean()))
    return cov / (f.std(ddof=ddof) * m.std(ddof=ddof) + objectives.NCC_EPS)


def test_ncc_matches_hand_computation_and_its_gradient():
    f = torch.tensor([1.0, 4.0, 2.0, 8.0, 5.0], dtype=torch.float64)
    m = torch.tensor([2.0, 3.5, 2.5, 7.0, 6.0], dtype=torch.float64, requires_grad=True)
    value = objectives.ncc(f, m)
    assert value.item() == pytest.approx(_ncc_numpy(f, m.detach(), 0), rel=1e-12)
    assert objectives.ncc(f, m, "idir-2022").item() == pytest.approx(_ncc_numpy(f, m.detach(), 1), rel=1e-12)
    assert objectives.ncc(f, f).item() == pytest.approx(1.0, rel=1e-9)
    assert objectives.ncc(f, f, "idir-2022").item() == pytest.approx(4 / 5, rel=1e-9)  # (N-1)/N quirk
    (grad,) = torch.autograd.grad(value, m)
    # engine-math note: dNCC/dm_k = (1/N)[(f_k - f̄)/(σ_f σ_m) - NCC (m_k - m̄)/σ_m²]
    fn, mn = f.numpy(), m.detach().numpy()
    sf, sm, n = fn.std(), mn.std(), fn.size
    expected = ((fn - fn.mean()) / (sf * sm) - value.item() * (mn - mn.mean()) / sm ** 2) / n
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-8, atol=1e-12)


def test_regularizer_names_and_orders():
    assert objectives.derivative_order(None) == 0
    assert objectives.derivative_order("jacobian") == 1
    assert objectives.derivative_order("hyperelastic") == 1
    assert objectives.derivative_order("bending") == 2
    with pytest.raises(ValueError, match="regularizer"):
        objectives.check_regularizer("tv")


def test_torch_backend_on_analytic_sized_network_matches_reference_regularizers():
    from idir_fast.core.siren import Siren

    torch.manual_seed(3)
    siren = Siren((24, 24), omega=4.0, dtype=torch.float64)
    x = _points(31)
    for reg in ("jacobian", "hyperelastic", "bending"):
        k = objectives.derivative_order(reg)
        a = objectives.regularization(reg, *derivatives("reference", siren, x, k)[1:])
        b = objectives.regularization(reg, *derivatives("torch", siren, x, k)[1:])
        assert b.item() == pytest.approx(a.item(), rel=1e-12)
