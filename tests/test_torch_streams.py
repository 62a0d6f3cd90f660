"""The torch backend (analytic derivative streams) against the autograd reference."""
import pytest
import torch

from helpers import derivatives, random_points, rel_err
from helpers import random_siren as _random_siren
from idir_fast import backends
from idir_fast.core import objectives

# float32 tolerances (relative to the largest magnitude), measured with ω = 32, width 64: see README
F32_TOL = {"phi": 1e-5, "J": 1e-4, "H6": 1e-3, "reg": 1e-3, "grad": 2e-3}


def random_siren(hidden, omega, scale, dtype, seed):
    return _random_siren(hidden, omega, scale, dtype, seed)[0]


CASES = [((16,), 1.0, 1.0), ((32, 32), 8.0, 1.0), ((17, 40, 23), 32.0, 0.7), ((64, 64, 64), 32.0, 1.3)]


@pytest.mark.parametrize("hidden,omega,scale", CASES)
@pytest.mark.parametrize("n", [1, 17, 1000])
def test_streams_equal_autograd_float64(hidden, omega, scale, n):
    siren = random_siren(hidden, omega, scale, torch.float64, seed=n)
    x = random_points(n, torch.float64, seed=n + 1)
    ref = derivatives("reference", siren, x, 2)
    fast = derivatives("torch", siren, x, 2)
    for name, a, b in zip(("phi", "J", "H6"), fast, ref):
        assert rel_err(a, b) < 1e-10, f"{name}: relative error {rel_err(a, b):.3g}"
    for order in (0, 1):
        lower = derivatives("torch", siren, x, order)
        assert torch.allclose(lower.phi, fast.phi, rtol=0, atol=1e-14)
        assert (lower.J is None) == (order == 0) and lower.H6 is None


def _loss_and_grads(backend, siren, x, regularizer, weights):
    order = objectives.derivative_order(regularizer)
    d = derivatives(backend, siren, x, order)
    # a loss that touches Φ (random upstream weights) and the regulariser, as the engine does
    loss = (d.phi * weights).sum() + objectives.regularization(regularizer, d.J, d.H6)
    grads = torch.autograd.grad(loss, siren.parameter_list())
    return loss.detach(), grads


@pytest.mark.parametrize("regularizer", ["jacobian", "hyperelastic", "bending"])
@pytest.mark.parametrize("hidden,omega,n", [((16,), 4.0, 1), ((32, 32), 16.0, 17), ((24, 40, 32), 32.0, 1000)])
def test_regularizer_values_and_parameter_gradients_float64(regularizer, hidden, omega, n):
    siren = random_siren(hidden, omega, 0.3 if regularizer == "hyperelastic" else 1.0, torch.float64, seed=7)
    x = random_points(n, torch.float64, seed=8, spread=1.0)
    w = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    la, ga = _loss_and_grads("reference", siren, x, regularizer, w)
    lb, gb = _loss_and_grads("torch", siren, x, regularizer, w)
    assert lb.item() == pytest.approx(la.item(), rel=1e-9)
    for i, (a, b) in enumerate(zip(gb, ga)):
        assert rel_err(a, b) < 1e-9, f"parameter {i}: relative error {rel_err(a, b):.3g}"


@pytest.mark.parametrize("regularizer", ["jacobian", "bending"])
def test_float32_within_documented_tolerance(regularizer):
    s64 = random_siren((64, 64, 64), 32.0, 1.0, torch.float64, seed=11)
    s32 = random_siren((64, 64, 64), 32.0, 1.0, torch.float32, seed=11)
    with torch.no_grad():
        for a, b in zip(s32.parameters(), s64.parameters()):
            a.copy_(b.float())
    x64 = random_points(500, torch.float64, seed=12, spread=1.0)
    ref = derivatives("reference", s64, x64, 2)
    fast = derivatives("torch", s32, x64.float(), 2)
    for name, a, b in zip(("phi", "J", "H6"), fast, ref):
        assert rel_err(a.double(), b) < F32_TOL[name], f"{name}: {rel_err(a.double(), b):.3g}"
    w = torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    la, ga = _loss_and_grads("reference", s64, x64, regularizer, w)
    lb, gb = _loss_and_grads("torch", s32, x64.float(), regularizer, w.float())
    assert lb.item() == pytest.approx(la.item(), rel=F32_TOL["reg"])
    for a, b in zip(gb, ga):
        assert rel_err(a.double(), b) < F32_TOL["grad"]


def test_backward_pass_counts():
    assert [backends.get("reference").backward_passes(k) for k in (0, 1, 2)] == [1, 4, 13]
    assert [backends.get("torch").backward_passes(k) for k in (0, 1, 2)] == [1, 1, 1]


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("hidden,n", [((16,), 1), ((32, 32), 17), ((17, 40, 23), 1000)])
def test_hand_written_backward_equals_autograd(order, hidden, n):
    from benchmarks.backward_choice import siren_streams_manual
    from idir_fast.ops.siren_streams import siren_streams

    siren = random_siren(hidden, 16.0, 1.0, torch.float64, seed=order + n)
    x = random_points(n, torch.float64, seed=3)
    p = siren.parameter_list()
    a = siren_streams(p, siren.omega, x, order)
    b = siren_streams_manual(p, siren.omega, x, order)
    up = torch.randn(a.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ga = torch.autograd.grad((a * up).sum(), p)
    gb = torch.autograd.grad((b * up).sum(), p)
    assert rel_err(b, a) < 1e-12
    for i, (u, v) in enumerate(zip(gb, ga)):
        assert rel_err(u, v) < 1e-10, f"parameter {i}: {rel_err(u, v):.3g}"


# ------------------------------------------------------------------------ the compiled CPU stream kernels
from idir_fast.ops import siren_streams as _ops  # noqa: E402

needs_fused = pytest.mark.skipif(not _ops.fused_available(torch.zeros(1, 3), [torch.zeros(16, 3)]),
                                 reason="compiled extension without the stream kernels")


@needs_fused
@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("hidden,n", [((16,), 1), ((17, 40, 23), 17), ((64, 64, 64), 1000)])
def test_fused_cpu_streams_equal_the_reference_float64(order, hidden, n):
    """The compiled element-wise kernels (forward and their adjoint): Φ/J/H and every parameter gradient against
    nested autograd, each stream against its own scale."""
    siren = random_siren(hidden, 16.0, 1.0, torch.float64, seed=order + n)
    x = random_points(n, torch.float64, seed=4)
    p = siren.parameter_list()
    u = _ops.siren_streams_fused(p, siren.omega, x, order)
    from idir_fast.core.derivatives import derivatives_from_streams

    fast = derivatives_from_streams(x, u, order)
    ref = derivatives("reference", siren, x, order)
    for name, a, b in zip(("phi", "J", "H6"), fast, ref):
        if b is not None:
            assert rel_err(a, b) < 1e-10, f"{name}: {rel_err(a, b):.3g}"
    w = [torch.randn(t.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) for t in ref
         if t is not None]
    ga = torch.autograd.grad(sum((t * wi).sum() for t, wi in zip([t for t in fast if t is not None], w)), p)
    gb = torch.autograd.grad(sum((t * wi).sum() for t, wi in zip([t for t in ref if t is not None], w)), p)
    for i, (a, b) in enumerate(zip(ga, gb)):
        assert rel_err(a, b) < 1e-9, f"parameter {i}: {rel_err(a, b):.3g}"


@needs_fused
def test_torch_backend_uses_the_fused_cpu_kernels_unless_the_workspace_says_ops(monkeypatch):
    """On a CPU the compiled kernels run at every size (with the step's workspace or without one);
    ``cpu_kernels="ops"`` (a workspace with ``fused=False``) runs PyTorch's ops."""
    from idir_fast import backends

    calls = []
    real = _ops._CpuStreamsFunction.apply
    monkeypatch.setattr(_ops._CpuStreamsFunction, "apply", lambda *a: calls.append(1) or real(*a))
    siren = random_siren((16, 16), 8.0, 1.0, torch.float32, seed=1)
    p = siren.parameter_list()
    torch_backend = backends.get("torch")
    for n in (10, 5000):
        torch_backend.derivatives(p, siren.omega, random_points(n, torch.float32), 2)
    assert calls == [1, 1]
    fused = torch_backend.workspace((16, 16), 2, torch.float32, torch.device("cpu"), "fused")
    ops = torch_backend.workspace((16, 16), 2, torch.float32, torch.device("cpu"), "ops")
    assert fused.fused and not ops.fused
    torch_backend.derivatives(p, siren.omega, random_points(10, torch.float32), 2, workspace=fused)
    assert calls == [1, 1, 1]
    torch_backend.derivatives(p, siren.omega, random_points(10, torch.float32), 2, workspace=ops)
    assert calls == [1, 1, 1]


@needs_fused
@pytest.mark.parametrize("order", [0, 1, 2])
def test_workspace_streams_equal_the_allocating_ones_bit_for_bit_and_reuse_their_buffers(order):
    """With a workspace the fused streams and every parameter gradient are the same numbers as without one (the
    same operations, written into buffers), across point counts and repeated steps, and the buffers are reused:
    the second step of a size allocates no new large tensor."""
    siren = random_siren((17, 40, 23), 16.0, 1.0, torch.float32, seed=order)
    ws = _ops.StreamWorkspace((17, 40, 23), order, torch.float32)
    for n in (33, 7, 33):
        x = random_points(n, torch.float32, seed=n)
        got, want = [], []
        for workspace, out in ((ws, got), (None, want)):
            p = [t.detach().clone().requires_grad_(True) for t in siren.parameter_list()]
            u = _ops.siren_streams_fused(p, siren.omega, x, order, workspace)
            g = torch.randn(u.shape, generator=torch.Generator().manual_seed(n))
            out += [u.detach().clone()] + list(torch.autograd.grad((u * g).sum(), p))
        for k, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a, b), f"tensor {k} (0: u, then gradients) differs at n={n}"
    held = ws.nbytes()
    ptrs = {id(t): t.data_ptr() for t in ws.forward_buffers(33)["a"]}
    x = random_points(33, torch.float32, seed=99)
    p = [t.detach().clone().requires_grad_(True) for t in siren.parameter_list()]
    u = _ops.siren_streams_fused(p, siren.omega, x, order, ws)
    torch.autograd.grad(u.sum(), p)
    assert ws.nbytes() == held
    assert {id(t): t.data_ptr() for t in ws.forward_buffers(33)["a"]} == ptrs


@pytest.mark.parametrize("similarity", ["ncc", "ncc+lncc"])
def test_cpu_step_makes_no_large_allocation_after_its_first(similarity):
    """A whole training step of the default CPU path (fused kernels, the step's workspace; the global NCC of the
    blurred stage and the global + local NCC of the sharp one) allocates nothing of the size of the network's
    stream tensors (S·N·width) once it has run — only per-point tensors of the objective (J, H: N·18 floats; the
    local NCC's neighbourhood indices, N·27) — so glibc has no large block to map and zero-fill afresh every
    step, whatever the process's malloc settings (``register()`` no longer changes them)."""
    from torch.profiler import ProfilerActivity, profile

    from idir_fast.apps.bench import make_step

    if not _ops.fused_available(torch.zeros(1, 3)):
        pytest.skip("compiled extension without the stream kernels")
    step, pair = make_step("torch", "bending", 2000, (64, 64, 64), "cpu", similarity=similarity)
    x, f = pair.points[None], pair.fixed_values[None]
    step(x, f)
    step(x, f)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(x, f)
    stream_tensor = 10 * 2000 * 64 * 4  # one layer's S·N·width float32
    assert max(e.cpu_memory_usage for e in prof.events()) > 0  # the profiler saw the step's small allocations
    big = [(e.name, e.cpu_memory_usage) for e in prof.events() if e.cpu_memory_usage >= stream_tensor // 8]
    assert not big, f"large allocations inside a step: {big[:8]}"


@needs_fused
def test_fused_cpu_kernels_reject_bad_arguments():
    from idir_fast.ops.sample_ncc import extension

    ext = extension()
    z = torch.zeros(4, 5, 6)
    sc = torch.zeros(5, 6)
    with pytest.raises(RuntimeError, match="'order' must be 0, 1 or 2"):
        ext.sine_streams_forward(z, torch.empty(0), sc, sc, 1.0, 3)
    with pytest.raises(RuntimeError, match="must hold 10 streams"):
        ext.sine_streams_forward(z, torch.empty(0), sc, sc, 1.0, 2)
    with pytest.raises(RuntimeError, match="must have the dtype of 'z'"):
        ext.sine_streams_forward(z, torch.empty(0), sc.double(), sc, 1.0, 1)


def test_cpu_kernels_auto_resolves_by_the_measured_size_rule():
    from idir_fast.ops.siren_streams import FUSED_MAX_ELEMENTS, FUSED_MAX_WIDTH, fused_pays
    from idir_fast.errors import InputError
    from idir_fast.settings import RunSettings

    assert RunSettings().cpu_kernels == "auto"
    assert RunSettings().resolved().cpu_kernels == "fused"  # the CPU default: 1,500 points × 3×48
    assert RunSettings(schedule="paper").resolved().cpu_kernels == "ops"  # 10,000 × 3×256
    assert RunSettings(cpu_kernels="fused", schedule="paper").resolved().cpu_kernels == "fused"  # explicit wins
    assert RunSettings(cpu_kernels="ops").resolved().cpu_kernels == "ops"
    assert fused_pays(10**6, FUSED_MAX_WIDTH) and not fused_pays(FUSED_MAX_ELEMENTS // 128 + 1, 128)
    assert fused_pays(FUSED_MAX_ELEMENTS // 128, 128)
    with pytest.raises(InputError, match="'cpu_kernels' must be one of"):
        RunSettings(cpu_kernels="fast")
