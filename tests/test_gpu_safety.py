"""GPU hazards checked on a CPU: every step is capture-safe (no host reads, no tensors from host data, no
data-dependent shapes, no tensor made off the tensors' device), the backend actually used is recorded, the
compiled op warns when it cannot serve a CUDA device, and output evaluation is chunked with bounded memory."""
import os

import numpy as np
import pytest
import torch

import idir_fast
from idir_fast import backends
from idir_fast.apps.bench import make_step, synthetic_pair
from idir_fast.core import objectives
from idir_fast.core.siren import Siren
from idir_fast.optim.points import PointSampler
from idir_fast.optim.safety import HostSyncDetector, check_step
from idir_fast.optim.step import BatchedStep
from idir_fast.settings import RunSettings

REGULARIZERS = list(objectives.REGULARIZERS)
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def _sampler(pairs, batch=150):
    return PointSampler([p.points for p in pairs], [p.fixed_values for p in pairs], batch, seed=0)


@pytest.mark.parametrize("regularizer", REGULARIZERS, ids=lambda r: r or "none")
@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_every_step_is_capture_safe(backend, regularizer):
    if backend == "triton" and not (INTERPRETER or torch.cuda.is_available()):
        pytest.skip("needs a GPU or the Triton interpreter")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    step, pair = make_step(backend, regularizer, 400, (16, 16), device)
    violations = check_step(step, _sampler([pair]))
    if backend == "triton" and INTERPRETER:  # the interpreter itself copies tensors to NumPy on the host
        violations = [v for v in violations if "_local_scalar_dense" not in v and "meta" not in v]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("regularizer", [r for r in REGULARIZERS if r])
@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_a_step_with_the_fold_guard_is_capture_safe(backend, regularizer):
    if backend == "triton" and not (INTERPRETER or torch.cuda.is_available()):
        pytest.skip("needs a GPU or the Triton interpreter")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    step, pair = make_step(backend, regularizer, 400, (16, 16), device, fold_guard=5.0)
    assert step.objective.fold_guard == 5.0
    violations = check_step(step, _sampler([pair]))
    if backend == "triton" and INTERPRETER:
        violations = [v for v in violations if "_local_scalar_dense" not in v and "meta" not in v]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("regularizer", REGULARIZERS, ids=lambda r: r or "none")
def test_the_batched_step_is_capture_safe(regularizer):
    pairs = [synthetic_pair(300, "cpu", seed=s, size=16) for s in (0, 1)]
    settings = RunSettings(regularizer=regularizer, hidden=(16, 16), backend="torch", device="cpu").resolved()
    sirens = [Siren((16, 16)) for _ in pairs]
    step = BatchedStep(sirens, pairs, backends.select("torch", "cpu"), settings)
    assert not check_step(step, _sampler(pairs))


def test_the_check_fails_on_the_old_bending_step(monkeypatch):
    """Before this version, bending built its pair weights with torch.tensor(...) inside the step."""
    def old_bending(J, H6, compat):
        w = [1.0, 1.0, 1.0, 2.0, 2.0, 1.0 if compat == "idir-2022" else 2.0]
        weights = torch.tensor(w, dtype=H6.dtype, device=H6.device)
        return (H6 * H6 * weights).sum(-1).sum(-1).mean()

    old = objectives.Regularizer("bending", 2, old_bending)
    monkeypatch.setitem(objectives.REGULARIZERS, "bending", old)
    step, pair = make_step("torch", "bending", 400, (16, 16), "cpu")
    violations = check_step(step, _sampler([pair]))
    assert any("lift_fresh" in v for v in violations), violations


def test_the_check_finds_host_reads_and_tensors_off_the_device():
    detector = HostSyncDetector()
    x = torch.randn(10)
    with detector:
        float(x.sum())
        x[x > 0]
    assert any("_local_scalar_dense" in v for v in detector.violations)
    assert any("nonzero" in v or "boolean" in v for v in detector.violations)


def test_automatic_backend_that_fails_falls_back_once_and_the_report_says_so(tiny_pair, monkeypatch):
    """An automatically chosen backend that fails its first use is replaced by the next one, with one warning;
    the report records the backend actually used and why; an explicit request raises instead."""
    def broken(params, omega, x, order, precision=None, workspace=None):
        raise RuntimeError("simulated compile failure")

    monkeypatch.setitem(backends.BACKENDS, "triton", backends.Backend(
        "triton", "broken", broken, backends.BACKENDS["torch"].similarity, lambda k: 1, lambda d: None))
    monkeypatch.setitem(backends.DEVICE_PREFERENCE, "cpu", ("triton", "torch"))
    monkeypatch.setattr(backends, "_verified", {})
    kw = dict(epochs=2, batch_size=100, hidden=(16,), progress=False)
    with pytest.warns(RuntimeWarning, match="backend 'triton' is not used"):
        reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, **kw)
    assert reg.run["backend"] == "torch" and reg.run["backend_requested"] == "auto"
    assert any("simulated compile failure" in n for n in reg.run["backend_notes"])
    with pytest.raises(idir_fast.BackendError, match="simulated compile failure"):
        idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, backend="triton", **kw)


def test_a_wrong_kernel_is_caught_by_the_first_use_self_check(tiny_pair, monkeypatch):
    """A backend whose numbers are wrong (here: J off by 1 %) never silently trains: auto falls back."""
    good = backends.BACKENDS["torch"]

    def wrong(params, omega, x, order, precision=None, workspace=None):
        d = good.derivatives(params, omega, x, order, precision, workspace=workspace)
        return d._replace(J=None if d.J is None else d.J * 1.01)

    monkeypatch.setitem(backends.BACKENDS, "triton", backends.Backend(
        "triton", "wrong", wrong, good.similarity, lambda k: 1, lambda d: None))
    monkeypatch.setitem(backends.DEVICE_PREFERENCE, "cpu", ("triton", "torch"))
    monkeypatch.setattr(backends, "_verified", {})
    with pytest.warns(RuntimeWarning, match="self-check"):
        reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, regularizer="jacobian",
                                 epochs=2, batch_size=100, hidden=(16,), progress=False)
    assert reg.run["backend"] == "torch"
    assert any("J rel. error" in n for n in reg.run["backend_notes"])


def test_compiled_op_without_cuda_warns_when_a_cuda_device_asks(monkeypatch):
    from idir_fast.ops import sample_ncc

    if sample_ncc.extension() is None:
        pytest.skip("compiled extension not built")

    class CpuOnly:
        with_cuda = False

    monkeypatch.setattr(sample_ncc, "_ext", CpuOnly())
    monkeypatch.setattr(sample_ncc, "_warned", set())
    with pytest.warns(RuntimeWarning, match="built without CUDA"):
        assert sample_ncc.available(torch.device("cuda")) is False
    assert sample_ncc.available(torch.device("cpu")) is True


def test_setup_builds_ptx_for_gpus_newer_than_the_cubins():
    import runpy

    ns = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "setup.py"),
                        init_globals={"IDIR_FAST_SETUP_IMPORT_ONLY": True}, run_name="idir_fast_setup_probe")
    flags = ns["nvcc_arch_flags"](["80", "90"])
    assert "-gencode=arch=compute_80,code=sm_80" in flags and "-gencode=arch=compute_90,code=sm_90" in flags
    assert "-gencode=arch=compute_90,code=compute_90" in flags  # PTX: newer GPUs JIT-compile it


def test_outputs_are_evaluated_in_chunks_with_bounded_memory():
    """Field, det J and warped image of a grid never hold more than a chunk of points per tensor: the grid is
    generated chunk by chunk on the evaluation device (a 512×512×400 grid needs no 1e8-point tensors)."""
    from idir_fast.core.geometry import ImageGeometry
    from idir_fast.memory import CHUNK_POINTS
    from idir_fast.registration import Registration

    g = ImageGeometry((70, 60, 50), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    reg = Registration.of_network(Siren((32, 32)), g.world_to_normalised(), g, device="cpu")
    limit = CHUNK_POINTS["cpu"] * 4 * 32  # order-1 streams × width per chunk
    biggest = {"numel": 0}

    class Largest(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor):
                    biggest["numel"] = max(biggest["numel"], t.numel())
            return out

    with Largest():
        field = reg.displacement_field()
        det = reg.jacobian_determinant()
    assert np.prod(g.size) > 3 * CHUNK_POINTS["cpu"]  # several chunks
    assert biggest["numel"] <= limit, biggest
    assert field.GetSize() == g.size and det.GetSize() == g.size
