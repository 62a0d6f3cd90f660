"""Fused Triton kernels against the torch backend and the autograd reference (interpreter on CPU, real kernels
on CUDA), plus the ahead-of-time compile of every shipped configuration for sm_80 and sm_90."""
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

from helpers import derivatives, rel_err, random_siren  # noqa: E402
from idir_fast import backends  # noqa: E402
from idir_fast.core import objectives  # noqa: E402
from idir_fast.core.siren import Siren  # noqa: E402
from idir_fast.ops.siren_streams import siren_streams  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not set", allow_module_level=True)

from idir_fast.kernels.siren_streams import siren_streams_triton  # noqa: E402

# relative to the largest magnitude; float32 with "ieee" dots (interpreter: full float32; GPU: IEEE FMA)
TOL = {torch.float64: {"out": 1e-11, "grad": 1e-10},
       torch.float32: {"out": 2e-5, "grad": 5e-4}}
GPU_TOL = {"ieee": TOL[torch.float32], "tf32x3": TOL[torch.float32], "tf32": {"out": 2e-2, "grad": 5e-2}}


def _fresh(hidden, omega, dtype):
    """Random parameters, fresh each run (the seed is reported on failure); no exact zeros."""
    return random_siren(hidden, omega, 1.0, dtype, device=DEVICE)


CASES = [((16,), 1), ((16, 16, 16), 17), ((64, 64, 64), 1000), ((256,), 17), ((256, 256, 256), 17),
         ((48, 80), 33)]


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("hidden,n", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32] if DEVICE.type == "cpu" else [torch.float32])
def test_kernels_match_torch_streams_and_reference(order, hidden, n, dtype):
    siren, seed = _fresh(hidden, 32.0 if hidden[0] >= 64 else 8.0, dtype)
    x = (torch.rand(n, 3, dtype=dtype, device=DEVICE) * 2.2 - 1.1)
    params = siren.parameter_list()
    u_tri = siren_streams_triton(params, siren.omega, x, order)
    u_ref = siren_streams([p.double() for p in params], siren.omega, x.double(), order)
    up = torch.randn(u_tri.shape, dtype=dtype, device=DEVICE)
    up = up + 0.1 * torch.sign(up)  # no zeros
    g_tri = torch.autograd.grad((u_tri * up).sum(), params)
    g_ref = torch.autograd.grad((u_ref * up.double()).sum(), params)
    tol = TOL[dtype]
    for k in range(u_ref.shape[0]):  # each stream (value, ∂, ∂²) against its own scale, not the Hessian's ~ω²
        err = rel_err(u_tri[k].double(), u_ref[k])
        assert err < tol["out"], f"stream {k} (seed {seed}): {err:.3g}"
    for i, (a, b) in enumerate(zip(g_tri, g_ref)):
        assert rel_err(a.double(), b) < tol["grad"], f"parameter {i} (seed {seed}): {rel_err(a.double(), b):.3g}"


@pytest.mark.parametrize("regularizer", list(objectives.REGULARIZERS), ids=lambda r: r or "none")
def test_triton_backend_equals_autograd_reference_on_the_objective(regularizer):
    dtype = torch.float64 if DEVICE.type == "cpu" else torch.float32
    siren, seed = _fresh((32, 32, 32), 16.0, dtype)
    x = torch.rand(17, 3, dtype=dtype, device=DEVICE) * 2 - 1
    order = objectives.derivative_order(regularizer)
    assert backends.select("triton", DEVICE).name == "triton"
    out = []
    for backend in ("triton", "reference"):
        d = derivatives(backend, siren, x, order)
        loss = d.phi.square().sum() + objectives.regularization(regularizer, d.J, d.H6).to(d.phi.dtype)
        out.append((d, loss, torch.autograd.grad(loss, siren.parameter_list())))
    (d1, l1, g1), (d2, l2, g2) = out
    tol = TOL[dtype]
    for name in ("phi", "J", "H6"):
        a, b = getattr(d1, name), getattr(d2, name)
        if b is not None:
            assert rel_err(a, b) < tol["out"], f"{name} (seed {seed})"
    assert rel_err(l1, l2) < tol["out"]
    for a, b in zip(g1, g2):
        assert rel_err(a, b) < tol["grad"], f"seed {seed}"


def test_bad_arguments():
    siren, _ = _fresh((16,), 4.0, torch.float32)
    x = torch.rand(5, 3, device=DEVICE)
    with pytest.raises(ValueError, match="'precision' must be one of"):
        siren_streams_triton(siren.parameter_list(), 4.0, x, 1, precision="fp16")
    with pytest.raises(ValueError, match="'x' must have shape"):
        siren_streams_triton(siren.parameter_list(), 4.0, x[:, :2], 1)
    bad = Siren((24,)).to(DEVICE)
    with pytest.raises(ValueError, match="multiples of 16"):
        siren_streams_triton(bad.parameter_list(), 4.0, x, 1)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="[device] precision modes differ only on a GPU")
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_precision_modes_on_gpu(precision):
    siren, seed = _fresh((256, 256, 256), 32.0, torch.float32)
    x = torch.rand(1000, 3, device=DEVICE) * 2 - 1
    params = siren.parameter_list()
    u = siren_streams_triton(params, siren.omega, x, 2, precision)
    ref = siren_streams([p.double() for p in params], siren.omega, x.double(), 2)
    assert rel_err(u.double(), ref) < GPU_TOL[precision]["out"], f"seed {seed}"


def test_ahead_of_time_compile_of_every_shipped_configuration():
    """No GPU needed: triton.compile for sm_80 and sm_90, shared memory within limits, ptxas reports 0 spills."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-m", "idir_fast.kernels.aot", "--arch", "80", "90"], env=env,
                          capture_output=True, text=True, timeout=1500)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '"failed": 0' in proc.stdout


# ---------------------------------------------------------------------------------- offsets, grid, precision
import triton.language as tl  # noqa: E402

from idir_fast.kernels import siren_streams as K  # noqa: E402


@triton.jit
def _stride_probe(out_ptr, N, M):
    tl.store(out_ptr, 9 * K._stream_stride(N, M))


@triton.jit
def _tile_probe(out_ptr, N, M, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_n, pid_m = K._tile_coordinates(N, M, BLOCK_N, BLOCK_M)
    tl.store(out_ptr + 2 * tl.program_id(0), pid_n)
    tl.store(out_ptr + 2 * tl.program_id(0) + 1, pid_m)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="[device] checks the interpreter's integer arithmetic")
def test_stream_offsets_are_64_bit_where_int32_would_wrap():
    """The last stream of a 10-stream activation at 1M points × width 256 starts at 9·N·M = 2.3e9 > 2³¹."""
    out = torch.zeros(1, dtype=torch.int64)
    _stride_probe[(1,)](out, 1_000_000, 256)
    assert out.item() == 9 * 1_000_000 * 256


@pytest.mark.skipif(DEVICE.type != "cpu", reason="[device] checks the launch order with the interpreter")
def test_column_tiles_of_a_row_block_are_consecutive_programs():
    n, m, cfg = 70, 256, dict(BLOCK_N=32, BLOCK_M=64)
    (programs,) = K.tile_grid(n, m, cfg)
    out = torch.full((2 * programs,), -1, dtype=torch.int64)
    _tile_probe[(programs,)](out, n, m, BLOCK_N=32, BLOCK_M=64)
    coords = out.view(-1, 2).tolist()
    assert programs == 3 * 4 and coords[:5] == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]]
    assert sorted(map(tuple, coords)) == [(i, j) for i in range(3) for j in range(4)]  # every tile once


def test_tf32_split_is_exact_and_three_tf32_products_reach_float32_accuracy():
    """``matmul(..., "tf32x3")``'s algorithm against a model of TF32 tensor cores (operands rounded to 10
    mantissa bits, products accumulated exactly): 3 products ≈ float32 accuracy, 1 product ≈ 1e-3."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 200, generator=g) * 3
    b = torch.randn(200, 48, generator=g)
    hi, lo = K.tf32_split(a)
    assert torch.equal(hi + lo, a) and torch.equal(K.tf32_split(hi)[0], hi)
    assert (lo.abs() <= a.abs() * 2.0 ** -10).all()

    def tf32_mm(x, y):  # a TF32 tensor-core product: round operands to TF32, accumulate in high precision
        return K.tf32_split(x)[0].double() @ K.tf32_split(y)[0].double()

    b_hi, b_lo = K.tf32_split(b)
    three = tf32_mm(hi, b_hi) + tf32_mm(hi, b_lo) + tf32_mm(lo, b_hi)
    exact = a.double() @ b.double()
    assert rel_err(three, exact) < 3e-6
    assert rel_err(tf32_mm(a, b), exact) > 1e-4  # one TF32 product is much worse: the split matters
    assert torch.equal(K.matmul(a.double(), b.double(), "tf32x3"), a.double() @ b.double())  # float64: exact


@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
@pytest.mark.parametrize("order", [1, 2])
def test_gradients_in_every_precision_mode(precision, order):
    """Outputs and all parameter gradients per precision mode (the interpreter computes every mode in full
    float32; on a GPU the tolerances are those of each mode)."""
    siren, seed = _fresh((64, 64), 16.0, torch.float32)
    x = torch.rand(257, 3, device=DEVICE) * 2 - 1
    params = siren.parameter_list()
    u = siren_streams_triton(params, siren.omega, x, order, precision)
    ref = siren_streams([p.double() for p in params], siren.omega, x.double(), order)
    up = torch.randn(u.shape, device=DEVICE)
    g = torch.autograd.grad((u * up).sum(), params)
    g_ref = torch.autograd.grad((ref * up.double()).sum(), params)
    tol = GPU_TOL[precision] if DEVICE.type == "cuda" else TOL[torch.float32]
    for s in range(u.shape[0]):  # each stream against its own scale
        assert rel_err(u[s].double(), ref[s]) < tol["out"], f"stream {s} (seed {seed})"
    for i, (a, b) in enumerate(zip(g, g_ref)):
        assert rel_err(a.double(), b) < tol["grad"], f"{precision}: parameter {i} (seed {seed})"
