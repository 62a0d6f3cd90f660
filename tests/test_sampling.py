"""Trilinear sampling: exactness on linear functions, borders, and the analytic gradient."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from idir_fast.core.sampling import trilinear, trilinear_with_gradient
from idir_fast.ops.sample_ncc import trilinear_fast


def _linear_volume(shape=(7, 13, 29), coef=(0.5, -1.25, 2.0), c0=3.0):
    nz, ny, nx = shape
    k, j, i = torch.meshgrid(torch.arange(nz), torch.arange(ny), torch.arange(nx), indexing="ij")
    return (c0 + coef[0] * i + coef[1] * j + coef[2] * k).double()


def test_linear_function_is_reproduced_with_exact_gradient():
    vol = _linear_volume()
    g = torch.Generator().manual_seed(0)
    idx = torch.rand(1000, 3, generator=g, dtype=torch.float64) * torch.tensor([28.0, 12.0, 6.0])
    idx[:10] = torch.round(idx[:10])  # exactly on voxel centres / planes
    value, grad = trilinear_with_gradient(vol, idx)
    expected = 3.0 + idx @ torch.tensor([0.5, -1.25, 2.0], dtype=torch.float64)
    assert torch.allclose(value, expected, atol=1e-12)
    assert torch.allclose(grad, torch.tensor([0.5, -1.25, 2.0], dtype=torch.float64).expand(1000, 3), atol=1e-12)


def test_outside_points_take_border_values_and_zero_gradient_along_clamped_axes():
    vol = _linear_volume()
    idx = torch.tensor([[-3.0, 5.0, 2.0], [40.0, 5.0, 2.0], [5.0, -0.5, 7.5], [28.0, 12.0, 6.0]], dtype=torch.float64)
    value, grad = trilinear_with_gradient(vol, idx)
    clamped = torch.stack([idx[:, 0].clamp(0, 28), idx[:, 1].clamp(0, 12), idx[:, 2].clamp(0, 6)], 1)
    assert torch.allclose(value, 3.0 + clamped @ torch.tensor([0.5, -1.25, 2.0], dtype=torch.float64))
    assert grad[0, 0] == 0 and grad[1, 0] == 0 and grad[2, 1] == 0 and grad[2, 2] == 0
    assert grad[0, 1] == -1.25 and grad[3, 0] == 0.5  # on the last plane: the cell below


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_analytic_gradient_equals_autograd_and_fast_path(dtype):
    g = torch.Generator().manual_seed(1)
    vol = torch.randn(7, 13, 29, generator=g, dtype=dtype)
    idx = (torch.rand(500, 3, generator=g, dtype=dtype) * 1.2 - 0.1) * torch.tensor([28.0, 12.0, 6.0], dtype=dtype)
    idx[:50] = torch.round(idx[:50])  # exactly on voxel planes, including the first and last
    idx[50:60, 0] = 28.0
    idx[60:70, 1] = 0.0
    idx.requires_grad_(True)
    w = torch.randn(500, generator=g, dtype=dtype)
    (ga,) = torch.autograd.grad((trilinear(vol, idx) * w).sum(), idx)
    (gb,) = torch.autograd.grad((trilinear_fast(vol, idx) * w).sum(), idx)
    v, grad = trilinear_with_gradient(vol, idx.detach())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(ga, gb, atol=tol) and torch.allclose(gb, w[:, None] * grad, atol=tol)
    assert torch.allclose(v, trilinear(vol, idx.detach()), atol=tol)


def test_matches_simpleitk_linear_interpolation_inside():
    rng = np.random.default_rng(2)
    arr = rng.normal(size=(5, 6, 7))
    img = sitk.GetImageFromArray(arr)
    idx = rng.uniform(0, 1, size=(50, 3)) * np.array([6, 5, 4])
    ours = trilinear(torch.from_numpy(arr), torch.from_numpy(idx)).numpy()
    interp = [img.EvaluateAtContinuousIndex(tuple(p), sitk.sitkLinear) for p in idx]
    np.testing.assert_allclose(ours, interp, atol=1e-10)
