"""``idir-fast doctor``: what this machine has, and whether every fast path on it gives the reference's numbers.

Plain ``doctor`` (about half a minute on a 2-core CPU): the environment (torch, Triton, CUDA, the GPU, whether
``idir_fast._C`` is built and has CUDA), a self-check of every fast path available on the device against the
reference (values and parameter gradients, per precision mode; the compiled sampling/NCC op against the plain
interpolant), the capture-safety check of every backend × regulariser, and a small timing table; ``--full`` times
the step at a realistic size (a few minutes on a CPU).

``doctor --gpu-acceptance`` (a few minutes on an H100): everything a first GPU session must know — the test suite
with real kernels, that every regulariser's step is really captured as a CUDA graph and replays without a host
synchronisation, fast vs eager loop histories, the CUDA sampling/NCC op against the CPU one on odd shapes,
borders, NaN and the far corner of a 512×512×400 volume, the TRE of the demo pair per precision mode, the step
benchmark per backend and precision with kernels per step, peak memory and the roofline model per kernel, and
``register_many`` throughput. It writes one JSON and one Markdown report (device, versions, commit). On a CPU it
runs what a CPU can and lists what it skipped.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .. import backends
from ..core import objectives
from ..environment import machine_info
from ..io.files import ensure_folder, write_json, write_text
from ..ops import sample_ncc

ROOT = Path(__file__).resolve().parents[2]


def checkout_tests() -> Optional[Path]:
    """The test folder of the source checkout this package runs from, or ``None`` (an installed package)."""
    tests = ROOT / "tests"
    return tests if (ROOT / "setup.py").is_file() and tests.is_dir() else None


class Report:
    """Sections of named checks, each ``ok`` / ``FAIL`` / ``skipped`` with details; printed as it goes."""

    def __init__(self, title: str, echo: bool = True):
        self.title, self.echo = title, echo
        self.sections: Dict[str, List[dict]] = {}
        self.current = None

    def section(self, name: str) -> None:
        self.current = self.sections.setdefault(name, [])
        if self.echo:
            print(f"\n== {name}")

    def add(self, check: str, status: str, **details) -> dict:
        row = {"check": check, "status": status, **details}
        self.current.append(row)
        if self.echo:
            extra = ", ".join(f"{k}={_fmt(v)}" for k, v in details.items())
            print(f"  [{status:>7}] {check}{': ' + extra if extra else ''}", flush=True)
        return row

    def run(self, name: str, fn: Callable[[], dict]) -> dict:
        """Run one check; an exception is a failure with its message (the doctor goes on)."""
        try:
            out = fn() or {}
            status = out.pop("status", "ok")
            return self.add(name, status, **out)
        except Exception as err:  # noqa: BLE001 — a doctor reports, it does not stop
            return self.add(name, "FAIL", error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")

    @property
    def failures(self) -> List[dict]:
        return [r for rows in self.sections.values() for r in rows if r["status"] == "FAIL"]

    def markdown(self, info: dict) -> str:
        lines = [f"# {self.title}", "", f"device {info.get('device_name')}, torch {info.get('torch')}, triton "
                 f"{info.get('triton')}, CUDA {info.get('cuda')}, commit {info.get('commit')}, {info.get('timestamp')}",
                 ""]
        for name, rows in self.sections.items():
            lines += [f"## {name}", "", "| check | status | details |", "|---|---|---|"]
            for r in rows:
                details = "; ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k not in ("check", "status"))
                lines.append(f"| {r['check']} | {r['status']} | {details} |")
            lines.append("")
        return "\n".join(lines)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


# ---------------------------------------------------------------------------------------------------- checks
def environment_rows(report: Report, device: torch.device) -> None:
    report.section("environment")
    info = machine_info(device)
    report.add("versions", "ok", **{k: info.get(k) for k in ("idir_fast", "torch", "triton", "SimpleITK", "numpy",
                                                            "python", "commit")})
    report.add("device", "ok", device=str(device), model=info.get("device_name"), cuda=torch.version.cuda,
               gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    ext = sample_ncc.extension()
    status = "ok" if ext is not None and (device.type != "cuda" or sample_ncc.extension_has_cuda()) else "FAIL"
    report.add("compiled op idir_fast._C", status, built=ext is not None, cuda=sample_ncc.extension_has_cuda(),
               error=sample_ncc.extension_error() or "")
    for name in backends.names():
        why = backends.get(name).unavailable(device)
        report.add(f"backend {name}", "ok" if why is None else "skipped", available=why is None, why=why or "")
    report.add("auto choice", "ok", preference=",".join(backends.preference(device)),
               precision=backends.check_precision(None))


def self_check_rows(report: Report, device: torch.device, width: int = 64) -> None:
    """Every fast path on ``device`` against the reference (float64), per precision, orders 0–2."""
    from ..core.siren import Siren

    report.section(f"fast paths against the reference on {device} (values and parameter gradients)")
    torch.manual_seed(0)
    params = [p.detach().to(device) for p in Siren((width, width, width), omega=16.0).parameter_list()]
    for name in backends.names():
        backend = backends.get(name)
        if name == "reference" or backend.unavailable(device) is not None:
            continue
        if name == "triton" and device.type != "cuda":
            report.add("triton", "skipped", why="interpreter only on this machine (the test suite runs it)")
            continue
        for precision in (backends.PRECISIONS if name == "triton" else ("ieee",)):
            tol = backends.SELF_CHECK_TOLERANCE[precision]
            for order in (0, 1, 2):
                def one():
                    errors = backends.compare_with_reference(backend, params, 16.0, order, precision, n_points=257)
                    bad = [k for k, v in errors.items() if not v <= tol[k]]
                    return {"status": "FAIL" if bad else "ok", **errors}
                report.run(f"{name} {precision} order {order}", one)
    report.run(f"sampling + NCC on {device}", lambda: _sample_ncc_check(device))
    report.run(f"local NCC neighbourhoods on {device}", lambda: _local_moments_check(device))


def _local_moments_check(device: torch.device, n: int = 301) -> dict:
    """The local NCC's fused moving neighbourhoods (their two moments, ∂/∂Φ and ∂/∂J) on ``device`` against the
    PyTorch definition on the CPU (float64); some neighbourhoods reach outside the volume."""
    from ..core.objectives import stencil_offsets
    from ..ops.local_ncc import fused_available, local_moments_reference

    g = torch.Generator().manual_seed(2)
    vol = torch.randn(9, 11, 13, generator=g, dtype=torch.float64)
    phi = torch.rand(n, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    jac = torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(n, 3, 3, generator=g, dtype=torch.float64)
    fixed = torch.randn(n, 27, generator=g, dtype=torch.float64)
    consts = (fixed - fixed.mean(1, keepdim=True), stencil_offsets(2.0) * 0.07,
              torch.diag(torch.tensor([6.0, 5.0, 4.0], dtype=torch.float64)),
              torch.tensor([6.0, 5.0, 4.0], dtype=torch.float64))
    w = torch.randn(2, n, generator=g, dtype=torch.float64)

    def moments_and_grads(fn, dtype, dev):
        p, j = (t.to(dev, dtype).requires_grad_(True) for t in (phi, jac))
        cov, var = fn(vol.to(dev, dtype), p, j, *(c.to(dev, dtype) for c in consts))
        grads = torch.autograd.grad((w[0].to(dev, dtype) * cov).sum() + (w[1].to(dev, dtype) * var).sum(), (p, j))
        return [t.detach().double().cpu() for t in (cov, var, *grads)]

    ref = moments_and_grads(local_moments_reference, torch.float64, torch.device("cpu"))
    out = {}
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        got = moments_and_grads(backends.get("torch").local_moments, dtype, device)
        key = str(dtype).replace("torch.", "")
        out[f"{key} err"] = max(float(((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item())
                                for a, b in zip(got, ref))
        if out[f"{key} err"] > tol:
            out["status"] = "FAIL"
    out["compiled"] = fused_available(vol.to(device), phi.to(device))
    return out


def _sample_ncc_check(device: torch.device, shape=(7, 13, 29), n: int = 1999) -> dict:
    """The similarity op used on ``device`` against the plain interpolant + NCC on the CPU (value, ∂/∂index)."""
    g = torch.Generator().manual_seed(1)
    vol = torch.randn(shape, generator=g, dtype=torch.float64)
    hi = torch.tensor([shape[2] - 1, shape[1] - 1, shape[0] - 1], dtype=torch.float64)
    idx = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 1.4 - 0.2) * hi
    idx[: n // 10] = torch.round(idx[: n // 10])
    f = torch.randn(n, generator=g, dtype=torch.float64)
    out = {}
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        a = idx.clone().requires_grad_(True)
        ref = backends.get("reference").similarity(vol, a, f)
        (g_ref,) = torch.autograd.grad(ref, a)
        b = idx.to(device, dtype).requires_grad_(True)
        val = backends.get("torch").similarity(vol.to(device, dtype), b, f.to(device, dtype))
        (g_val,) = torch.autograd.grad(val, b)
        key = str(dtype).replace("torch.", "")
        out[f"{key} value err"] = abs(val.item() - ref.item())
        out[f"{key} grad err"] = float(((g_val.double().cpu() - g_ref).abs().max() / g_ref.abs().max()).item())
        if out[f"{key} value err"] > tol or out[f"{key} grad err"] > tol * 10:
            out["status"] = "FAIL"
    out["compiled"] = sample_ncc.available(device)
    return out


def capture_rows(report: Report, device: torch.device) -> None:
    from ..optim.points import PointSampler
    from ..optim.safety import check_step
    from .bench import make_step

    report.section(f"capture safety of every step on {device} (no host reads, host tensors, data-dependent "
                   "shapes, tensors off the device)")
    for name in backends.names():
        if backends.get(name).unavailable(device) is not None or (name == "triton" and device.type != "cuda"):
            report.add(f"{name}", "skipped", why="not available on this device (the test suite checks the "
                                                   "interpreter)")
            continue
        for reg in objectives.REGULARIZERS:
            def one():
                step, pair = make_step(name, reg, 600, (32, 32), device)
                sampler = PointSampler([pair.points], [pair.fixed_values], 200, 0)
                v = check_step(step, sampler)
                return {"status": "FAIL" if v else "ok", "violations": "; ".join(v)[:400]}
            report.run(f"{name} {objectives.get_regularizer(reg).label}", one)


def timing_rows(report: Report, device: torch.device, quick: bool) -> List[dict]:
    from .bench import run

    report.section(f"step time on {device}")
    n, hidden = ((64, (16, 16)) if quick else ((10_000, (256, 256, 256)) if device.type == "cuda"
                                               else (2000, (128, 128, 128))))
    rows = run([(n, hidden)], ["reference"] + list(backends.preference(device)), [None, "bending"], device=device,
               repeats=2 if quick else 10, warmup=1 if quick else 3, print_table=False)
    for r in rows:
        if "error" in r:
            report.add(f"{r['backend']} {r['regularizer']}", "FAIL", error=r["error"])
        else:
            report.add(f"{r['backend']} {r['regularizer']} {r['points']} pts {r['hidden']}", "ok",
                       ms_per_step=r["ms_median"], speedup=r.get("speedup_vs_reference"),
                       h100_model_ms=r.get("h100_model_ms"), peak_mib=r["peak_mib"])
    return rows


# ------------------------------------------------------------------------------------------- GPU acceptance
def run_gpu_acceptance(report: Report, device: torch.device, run_tests: bool = True,
                       tests: Optional[str] = None) -> None:
    cuda = device.type == "cuda"
    report.section("test suite")
    folder = Path(tests) if tests else checkout_tests()
    if not run_tests:
        report.add("the test suite", "skipped", why="--no-tests")
    elif folder is None or not folder.is_dir():
        report.add("the test suite", "skipped", why="no test folder: an installed package (pass --tests DIR)")
    else:
        report.run(f"python -m pytest -q {folder}", lambda: _pytest(folder))
    report.section("the loop on the device")
    for reg in objectives.REGULARIZERS:
        label = objectives.get_regularizer(reg).label
        if cuda:
            report.run(f"CUDA graph captured and replayed without host syncs: {label}",
                       lambda reg=reg: _graph_check(device, reg))
        else:
            report.add(f"CUDA graph captured: {label}", "skipped", why="no GPU")
    report.run("fast loop == eager loop (bending)", lambda: _fast_vs_eager(device))
    report.section("sampling + NCC: the device's op against the CPU op")
    if cuda and sample_ncc.extension_has_cuda():
        for shape in ((7, 13, 29), (2, 2, 2), (33, 1 + 16, 65)):
            report.run(f"odd shape {shape}, borders, NaN", lambda s=shape: _cuda_vs_cpu(device, s))
        report.run("512×512×400 volume, points at the far corner", lambda: _cuda_vs_cpu(device, (400, 512, 512),
                                                                                        corner=True))
    else:
        report.add("CUDA op against CPU op", "skipped", why="no GPU" if not cuda else "_C has no CUDA")
    report.section("accuracy per precision (demo pair, paper settings)")
    if cuda:
        for precision in backends.PRECISIONS:
            report.run(f"TRE, triton {precision}", lambda p=precision: _demo_tre(device, p))
    else:
        report.add("TRE per precision", "skipped", why="precision modes differ only on a GPU")
    report.section("step benchmark per backend and precision")
    if cuda:
        for precision in backends.PRECISIONS:
            for name in backends.preference(device) + ("reference",):
                report.run(f"{name} {precision} bending 10k × 3×256",
                           lambda n=name, p=precision: _profiled_step(device, n, p))
        report.run("register_many throughput (4 pairs)", lambda: _throughput(device))
    else:
        report.add("GPU step benchmark", "skipped", why="no GPU: see the step-time table above")


def _pytest(folder: Path) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", str(folder)], cwd=folder.parent,
                          capture_output=True, text=True, timeout=1800)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    return {"status": "ok" if proc.returncode == 0 else "FAIL", "summary": tail,
            "seconds": time.perf_counter() - t}


def _small_pair(seed=0):
    from ..data import phantom_pair

    return phantom_pair(size=(48, 44, 40), spacing=(5.0, 5.0, 5.0), num_landmarks=40, seed=seed)


def _graph_check(device, regularizer) -> dict:
    from ..api import register

    p = _small_pair()
    reg = register(p.fixed, p.moving, p.mask, regularizer=regularizer, epochs=60, batch_size=4000,
                   hidden=(128, 128, 128), device=str(device), progress=False)
    # run once more with sync debug "error": any host synchronisation of the replayed step raises
    from ..optim.prepare import prepare_pair
    from ..optim.run import optimise
    from ..settings import RunSettings

    s = RunSettings(regularizer=regularizer, epochs=30, batch_size=4000, hidden=(128, 128, 128),
                    device=str(device)).resolved()
    pair = prepare_pair(p.fixed, p.moving, p.mask, normalisation=s.normalisation, device=s.torch_device)
    trained = optimise([pair], s, sync_debug=True)
    ok = bool(reg.run["cuda_graph"]) and trained.loop.graph
    return {"status": "ok" if ok else "FAIL", "graph": reg.run["cuda_graph"], "backend": reg.run["backend"],
            "ms_per_epoch": reg.timings["ms_per_epoch"]}


def _fast_vs_eager(device) -> dict:
    from ..api import register

    p = _small_pair(1)
    kw = dict(regularizer="bending", epochs=12, batch_size=800, hidden=(32, 32), seed=3, device=str(device),
              progress=False)
    eager = register(p.fixed, p.moving, p.mask, loop="eager", **kw)
    fast = register(p.fixed, p.moving, p.mask, loop="fast", **kw)
    diff = float(np.max(np.abs(fast.history["loss"] - eager.history["loss"])
                        / np.maximum(np.abs(eager.history["loss"]), 1e-12)))
    return {"status": "ok" if diff < 1e-4 else "FAIL", "max_rel_diff": diff, "graph": fast.run["cuda_graph"]}


def _cuda_vs_cpu(device, shape, corner: bool = False) -> dict:
    ext = sample_ncc.extension()
    g = torch.Generator().manual_seed(2)
    nz, ny, nx = shape
    n = 5000
    hi = torch.tensor([nx - 1, ny - 1, nz - 1], dtype=torch.float32)
    if corner:
        vol = torch.rand(shape, generator=g, dtype=torch.float32)
        idx = hi - torch.rand(n, 3, generator=g) * 3.0 + 0.5  # the last cells and just outside
    else:
        vol = torch.randn(shape, generator=g, dtype=torch.float32)
        idx = (torch.rand(n, 3, generator=g) * 1.4 - 0.2) * hi
        idx[:500] = torch.round(idx[:500])
        idx[7, 1] = float("nan")
    f = torch.randn(n, generator=g)
    cpu = ext.sample_ncc_forward(vol, idx, f)
    gpu = [t.cpu() for t in ext.sample_ncc_forward(vol.to(device), idx.to(device), f.to(device))]
    errs = {name: float(torch.nan_to_num((a - b).abs(), nan=0.0).max()) for name, a, b in
            zip(("values", "gradients", "sums"), gpu, cpu)}
    nan_same = bool(torch.equal(torch.isnan(gpu[0]), torch.isnan(cpu[0])))
    rel_sums = float(((gpu[2] - cpu[2]).abs() / cpu[2].abs().clamp_min(1e-12)).max())
    ok = errs["values"] < 1e-4 and errs["gradients"] < 1e-3 and rel_sums < 1e-5 and nan_same
    return {"status": "ok" if ok else "FAIL", **errs, "sums_rel": rel_sums, "nan_positions_equal": nan_same}


def _demo_tre(device, precision) -> dict:
    from ..api import register
    from ..data import phantom_pair

    p = phantom_pair()
    reg = register(p.fixed, p.moving, p.mask, fixed_landmarks=p.fixed_landmarks, moving_landmarks=p.moving_landmarks,
                   backend="triton", precision=precision, device=str(device), progress=False)
    return {"tre_before": reg.metrics["tre_initial"]["mean"], "tre_after": reg.metrics["tre"]["mean"],
            "ms_per_epoch": reg.timings["ms_per_epoch"], "graph": reg.run["cuda_graph"]}


def _profiled_step(device, backend, precision) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from .bench import make_step
    from .gpu_model import H100, step_kernels

    n, hidden, order = 10_000, (256, 256, 256), 2
    step, pair = make_step(backend, "bending", n, hidden, device, precision=precision)
    x, f = pair.points[None], pair.fixed_values[None]
    for _ in range(3):
        step(x, f)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        step(x, f)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step(x, f)
        torch.cuda.synchronize(device)
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and getattr(e, "self_device_time_total",
                                                                                           0) > 0]
    per_step = sum(e.count for e in kernels) / 5
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:6]
    model = {k.name: round(k.ms(H100, precision), 4) for k in step_kernels(n, hidden, order, backend, precision)}
    return {"ms_per_step": 1000 * float(np.median(times)), "kernels_per_step": per_step,
            "peak_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20,
            "top_kernels_ms": {e.key[:60]: e.self_device_time_total / 5000 for e in top},
            "model_ms_per_kernel": model}


def _throughput(device) -> dict:
    from .bench import throughput

    return throughput(4, 100, 4000, (128, 128, 128), device=device)


# ------------------------------------------------------------------------------------------------------ main
def doctor(device: Optional[str] = None, *, quick: bool = True, gpu_acceptance: bool = False,
           run_tests: bool = True, tests: Optional[str] = None, out_dir: Optional[str] = None,
           echo: bool = True) -> Report:
    """Run the doctor (``quick``: small sizes; ``quick=False``: the step timed at a realistic size); with
    ``gpu_acceptance`` also the GPU checks and the test suite of ``tests`` (default: this source checkout's);
    write JSON + Markdown to ``out_dir`` when given. Returns the report."""
    from ..settings import resolve_device

    dev = resolve_device(device)
    title = "idir-fast doctor" + (" --gpu-acceptance" if gpu_acceptance else "")
    report = Report(title, echo)
    environment_rows(report, dev)
    self_check_rows(report, dev, width=32 if quick else 64)
    capture_rows(report, dev)
    timing_rows(report, dev, quick or gpu_acceptance)
    if gpu_acceptance:
        run_gpu_acceptance(report, dev, run_tests, tests)
    if out_dir:
        info = machine_info(dev)
        ensure_folder(out_dir, "--out")
        stamp = info["timestamp"].replace(":", "").replace("-", "")
        name = "gpu_acceptance" if gpu_acceptance else "doctor"
        write_json({"machine": info, "sections": report.sections, "failures": len(report.failures)},
                   Path(out_dir) / f"{name}_{stamp}.json")
        write_text(report.markdown(info) + "\n", Path(out_dir) / f"{name}_{stamp}.md")
        if echo:
            print(f"\nreport: {out_dir}/{name}_{stamp}.json and .md")
    if echo:
        skipped = sum(r["status"] == "skipped" for rows in report.sections.values() for r in rows)
        print(f"\n{len(report.failures)} failure(s), {skipped} check(s) skipped")
    return report

