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
def test_torch_backend_uses_the_fused_cpu_kernels_where_the_rule_says(monkeypatch):
    """Up to FUSED_MAX_ELEMENTS (points × widest layer), PyTorch ops beyond, whatever the allocator policy;
    IDIR_FAST_CPU_FUSED=1/0 overrides."""
    import idir_fast.environment as environment

    calls = []
    real = _ops._CpuStreamsFunction.apply
    monkeypatch.setattr(_ops._CpuStreamsFunction, "apply", lambda *a: calls.append(1) or real(*a))
    monkeypatch.delenv(_ops.ENV_CPU_FUSED, raising=False)
    monkeypatch.setattr(environment, "_malloc_policy", "system")
    siren = random_siren((16, 16), 8.0, 1.0, torch.float32, seed=1)
    monkeypatch.setattr(_ops, "FUSED_MAX_ELEMENTS", 10 * 16)
    derivatives("torch", siren, random_points(10, torch.float32), 2)
    assert calls == [1]
    derivatives("torch", siren, random_points(11, torch.float32), 2)  # 11 × 16 > 160: PyTorch ops
    assert calls == [1]
    monkeypatch.setattr(environment, "_malloc_policy", "keep-freed")  # the rule waits for an accuracy record
    derivatives("torch", siren, random_points(11, torch.float32), 2)
    assert calls == [1]
    monkeypatch.setenv(_ops.ENV_CPU_FUSED, "1")
    derivatives("torch", siren, random_points(1000, torch.float32), 2)
    assert calls == [1, 1]
    monkeypatch.setenv(_ops.ENV_CPU_FUSED, "0")
    derivatives("torch", siren, random_points(10, torch.float32), 2)
    assert calls == [1, 1]


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
