"""The compiled fused sampling + NCC op (csrc/) against the PyTorch reference on every device it was built for
(the CPU here; the same tests run the CUDA kernel on a GPU machine); nvcc compile checks."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from idir_fast import backends
from idir_fast.core import objectives
from idir_fast.core.sampling import trilinear, trilinear_with_gradient
from idir_fast.ops import sample_ncc as fused_ncc

ROOT = Path(__file__).resolve().parents[1]
ext = fused_ncc.extension()
needs_ext = pytest.mark.skipif(ext is None, reason=f"compiled extension not built: {fused_ncc.extension_error()}")
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and fused_ncc.extension_has_cuda() else [])
if torch.cuda.is_available() and not fused_ncc.extension_has_cuda():
    DEVICES.append(pytest.param("cuda", marks=pytest.mark.xfail(strict=True, reason="_C was built without CUDA")))


def _problem(dtype, n=1000, shape=(7, 13, 29), seed=0, device="cpu"):
    vol, idx, f = _problem_cpu(dtype, n, shape, seed)
    return vol.to(device), idx.to(device), f.to(device)


def _problem_cpu(dtype, n=1000, shape=(7, 13, 29), seed=0):
    g = torch.Generator().manual_seed(seed)
    vol = torch.randn(shape, generator=g, dtype=dtype)
    nz, ny, nx = shape
    hi = torch.tensor([nx - 1, ny - 1, nz - 1], dtype=dtype)
    idx = (torch.rand(n, 3, generator=g, dtype=dtype) * 1.4 - 0.2) * hi  # ~ a third outside somewhere
    idx[: n // 10] = torch.round(idx[: n // 10])  # exactly on voxel borders
    idx[n // 10: n // 5, 0] = hi[0]  # on the last plane
    f = torch.randn(n, generator=g, dtype=dtype)
    return vol, idx, f


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 17, 1000, 4099])
def test_forward_values_gradients_and_sums(dtype, n, device):
    vol, idx, f = _problem(dtype, n, device=device)
    values, grads, sums = ext.sample_ncc_forward(vol, idx, f)
    assert values.device.type == grads.device.type == sums.device.type == device
    vol, idx, f, values, grads, sums = (t.cpu() for t in (vol, idx, f, values, grads, sums))
    ref_v, ref_g = trilinear_with_gradient(vol, idx)
    assert torch.allclose(values, ref_v, rtol=0, atol=TOL[dtype] * 10)
    assert torch.allclose(grads, ref_g, rtol=0, atol=TOL[dtype] * 10)
    fd, md = f.double(), ref_v.double()
    expected = torch.stack([fd.sum(), md.sum(), (fd * fd).sum(), (md * md).sum(), (fd * md).sum()])
    assert torch.allclose(sums, expected, rtol=1e-9 if dtype == torch.float64 else 1e-5)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("compat", [None, "idir-2022"])
def test_ncc_and_gradient_match_autograd_reference(dtype, compat, device):
    vol, idx, f = _problem(dtype, 777, seed=1)
    a = idx.clone().requires_grad_(True)
    ref = objectives.ncc(f, trilinear(vol, a), compat)
    (g_ref,) = torch.autograd.grad(ref * 1.7, a)
    b = idx.clone().to(device).requires_grad_(True)
    out = fused_ncc.fused_ncc(vol.to(device), b, f.to(device), compat)
    (g_out,) = torch.autograd.grad(out * 1.7, b)
    out, g_out = out.cpu(), g_out.cpu()
    assert out.dtype == dtype
    assert out.item() == pytest.approx(ref.item(), rel=TOL[dtype], abs=TOL[dtype])
    scale = g_ref.abs().max()
    assert ((g_out - g_ref).abs().max() / scale).item() < TOL[dtype] * 10


@needs_ext
def test_non_contiguous_inputs_are_handled_by_the_wrapper_and_rejected_by_the_op():
    vol, idx, f = _problem(torch.float64, 50)
    idx_t = idx.T.contiguous().T  # same values, non-contiguous
    assert not idx_t.is_contiguous()
    a = fused_ncc.fused_ncc(vol, idx_t, f)
    b = fused_ncc.fused_ncc(vol, idx, f)
    assert a.item() == b.item()
    with pytest.raises(RuntimeError, match="must be contiguous"):
        ext.sample_ncc_forward(vol, idx_t, f)


@needs_ext
@pytest.mark.parametrize("args,pattern", [
    (lambda v, i, f: (v.float(), i, f), "must have the dtype of 'moving'"),
    (lambda v, i, f: (v.int(), i.int(), f.int()), "must be float32 or float64"),
    (lambda v, i, f: (v[0], i, f), "must be a 3-D volume"),
    (lambda v, i, f: (v, i[:, :2].contiguous(), f), "'index' must have shape \\(N, 3\\)"),
    (lambda v, i, f: (v, i, f[:-1]), "'fixed_values' must have shape \\(N,\\)"),
    (lambda v, i, f: (v[:1].contiguous(), i, f), "at least 2 voxels per axis"),
])
def test_bad_input_gets_a_clear_error(args, pattern):
    vol, idx, f = _problem(torch.float64, 20)
    with pytest.raises(RuntimeError, match=pattern):
        ext.sample_ncc_forward(*args(vol, idx, f))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 17, 4099])
def test_sampling_op_matches_the_interpolant_and_its_gradient(dtype, n, device):
    """``_C.trilinear_forward`` (the local NCC's sampling) is the interpolant of sampling.py: values and index
    gradients at interior points, on voxel planes, on the last plane and outside (border value, zero slope)."""
    vol, idx, _ = _problem(dtype, n, device=device)
    values, grads = ext.trilinear_forward(vol, idx)
    assert values.shape == (n,) and grads.shape == (n, 3) and values.device.type == device
    ref_v, ref_g = trilinear_with_gradient(vol.cpu(), idx.cpu())
    assert torch.allclose(values.cpu(), ref_v, rtol=0, atol=TOL[dtype] * 10)
    assert torch.allclose(grads.cpu(), ref_g, rtol=0, atol=TOL[dtype] * 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_trilinear_has_the_reference_value_and_index_gradient(dtype, device):
    """The backends' ``sample`` (compiled op where built) against autograd through the plain interpolant."""
    vol, idx, _ = _problem(dtype, 500, seed=4)
    a = idx.clone().requires_grad_(True)
    ref = trilinear(vol, a)
    (g_ref,) = torch.autograd.grad((ref * ref).sum(), a)
    b = idx.clone().to(device).requires_grad_(True)
    out = backends.get("torch").sample(vol.to(device), b)
    (g_out,) = torch.autograd.grad((out * out).sum(), b)
    assert torch.allclose(out.detach().cpu(), ref.detach(), rtol=0, atol=TOL[dtype] * 10)
    assert torch.allclose(g_out.cpu(), g_ref, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


@needs_ext
@pytest.mark.parametrize("args,pattern", [
    (lambda v, i: (v.float(), i), "'index' must have the dtype of 'volume'"),
    (lambda v, i: (v.int(), i.int()), "must be float32 or float64"),
    (lambda v, i: (v[0], i), "'volume' must be a 3-D volume"),
    (lambda v, i: (v, i[:, :2].contiguous()), "'index' must have shape \\(N, 3\\)"),
    (lambda v, i: (v[:1].contiguous(), i), "at least 2 voxels per axis"),
    (lambda v, i: (v, i.T.contiguous().T), "must be contiguous"),
])
def test_sampling_op_bad_input_gets_a_clear_error(args, pattern):
    vol, idx, _ = _problem(torch.float64, 20)
    with pytest.raises(RuntimeError, match=pattern):
        ext.trilinear_forward(*args(vol, idx))


@needs_ext
def test_backward_checks_coefficients():
    vol, idx, f = _problem(torch.float64, 20)
    v, g, _ = ext.sample_ncc_forward(vol, idx, f)
    with pytest.raises(RuntimeError, match="'coef' must be a contiguous float64 tensor of shape \\(4,\\)"):
        ext.sample_ncc_backward(f, v, g, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_backend_uses_the_op_and_matches_reference_loss(device, monkeypatch):
    """When built, the torch backend's similarity goes through the compiled op (a spy counts the calls), and
    equals the reference's plain-PyTorch NCC."""
    calls = []
    real = fused_ncc._FusedSampleNCC.apply
    monkeypatch.setattr(fused_ncc._FusedSampleNCC, "apply", lambda *a: calls.append(1) or real(*a))
    vol, idx, f = _problem(torch.float64, 300, seed=3, device=device)
    a = backends.get("torch").similarity(vol, idx, f)
    b = backends.get("reference").similarity(vol.cpu(), idx.cpu(), f.cpu())
    assert a.item() == pytest.approx(b.item(), rel=1e-10)
    assert len(calls) == (1 if ext is not None else 0)


def _nvcc_resources(source: str, arch: str, out) -> tuple:
    """``(registers per kernel, spill byte counts)`` of ``nvcc -c`` of ``csrc/<source>`` for ``sm_<arch>``."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    proc = subprocess.run([nvcc, "-c", "-O3", "-std=c++17", f"-arch=sm_{arch}", "--resource-usage",
                           str(ROOT / "csrc" / source), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = proc.stdout + proc.stderr
    print(report)
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    registers = [int(x) for x in re.findall(r"Used (\d+) registers", report)]
    return registers, spills


# source, kernels (float and double each), register limit: the NCC forward/backward and sampling at 256 threads per
# block; the local NCC's forward/backward at 128 threads per block (up to 255 registers per thread)
@pytest.mark.parametrize("source,kernels,max_registers", [("sample_ncc.cu", 6, 64), ("local_ncc.cu", 4, 128)])
@pytest.mark.parametrize("arch", ["80", "90"])
def test_cuda_sources_compile_without_spills(arch, source, kernels, max_registers, tmp_path):
    registers, spills = _nvcc_resources(source, arch, tmp_path / "k.o")
    assert len(registers) == kernels and spills and max(spills) == 0
    assert max(registers) <= max_registers


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_ext", [False, True, "sampling"])
def test_nan_points_propagate_instead_of_crashing(use_ext, device):
    if use_ext and ext is None:
        pytest.skip("compiled extension not built")
    vol, idx, f = _problem(torch.float64, 40)
    idx[3, 1] = float("nan")
    idx[5, 0] = float("inf")
    vol, idx, f = vol.to(device), idx.to(device), f.to(device)
    if use_ext == "sampling":
        values, grads = ext.trilinear_forward(vol, idx)
    elif use_ext:
        values, grads, _ = ext.sample_ncc_forward(vol, idx, f)
    else:
        values, grads = trilinear_with_gradient(vol, idx)
    vol, idx, values, grads = vol.cpu(), idx.cpu(), values.cpu(), grads.cpu()
    assert torch.isnan(values[3]) and torch.isnan(grads[3]).all()
    assert torch.isfinite(values[5]) and grads[5, 0] == 0  # +inf is outside: border value, zero derivative
    assert torch.isfinite(values[torch.arange(40) != 3]).all()
    assert torch.isnan(trilinear(vol, idx)[3])
