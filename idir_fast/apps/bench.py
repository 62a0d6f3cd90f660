"""Benchmark of one optimisation step per backend and regulariser, measured side by side in one run.

Each configuration times the same :class:`idir_fast.optim.step.PairStep` the registration loop runs (forward,
NCC + α·R, backward, Adam) on a synthetic problem of ``n`` points, and reports the backward passes per step,
ms per step (median and inter-quartile range), the projected seconds for a 2500-step registration, peak memory,
the speed-up over ``reference``, and the machine's floor: the step's matrix-product FLOPs divided by the GEMM
rate measured at the same shapes in the same run.

Run it with ``idir-fast bench`` or ``python -m benchmarks``.
"""
from __future__ import annotations

import csv
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np
import torch

from .. import backends
from ..core import objectives
from ..core.derivatives import num_streams
from ..core.geometry import ImageGeometry
from ..core.siren import Siren
from ..environment import machine_info
from ..io.files import write_json
from ..optim.prepare import PreparedPair
from .gpu_model import H100, model_step_ms
from ..optim.step import PairStep
from ..settings import RunSettings

REGULARIZERS = tuple(objectives.REGULARIZERS)


def synthetic_pair(n_points: int, device="cpu", dtype=torch.float32, seed: int = 0, size: int = 48) -> PreparedPair:
    """Smooth random fixed and moving volumes and ``n_points`` random normalised points with random fixed values
    (the fixed volume serves the local NCC's neighbourhoods)."""
    g = torch.Generator().manual_seed(seed)
    vol = torch.randn(1, 1, size, size, size, generator=g, dtype=torch.float32)
    vol = torch.nn.functional.avg_pool3d(vol, 5, stride=1, padding=2)[0, 0]
    geom = ImageGeometry((size,) * 3, (2.0,) * 3, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    w2n = geom.world_to_normalised("isotropic")
    n2mi = geom.world_to_index() @ np.linalg.inv(w2n)
    points = (torch.rand(n_points, 3, generator=g) * 1.8 - 0.9)
    values = torch.randn(n_points, generator=g)
    fixed = torch.nn.functional.avg_pool3d(torch.randn(1, 1, size, size, size, generator=g), 5, stride=1,
                                           padding=2)[0, 0]  # drawn last: the other tensors are as before
    return PreparedPair(geom, geom, w2n, n2mi, vol.to(device=device, dtype=dtype),
                        points.to(device=device, dtype=dtype), values.to(device=device, dtype=dtype),
                        fixed=fixed.to(device=device, dtype=dtype))


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(n_points: int, hidden: Sequence[int], order: int) -> float:
    """Matrix-product FLOPs of one training step with derivative streams (forward + backward).

    Forward: the first layer's value stream (the derivative streams there are per-point constants), then one
    product over all S streams per later layer. Backward: two products per forward product (input adjoint and
    weight gradient), except the first layer which needs only the weight gradient.
    """
    S = num_streams(order)
    widths = (3,) + tuple(hidden) + (3,)
    first = 2.0 * n_points * widths[0] * widths[1]
    rest = sum(2.0 * S * n_points * a * b for a, b in zip(widths[1:-1], widths[2:]))
    return first * 2 + rest * 3


def gemm_rate(n_points: int, hidden: Sequence[int], order: int, device="cpu", repeats: int = 5) -> float:
    """FLOP/s of the step's largest matrix products (the three orientations of a hidden layer) on ``device``."""
    S = num_streams(order)
    h = int(max(hidden))
    a = torch.randn(S * n_points, h, device=device)
    w = torch.randn(h, h, device=device)
    for _ in range(2):
        a @ w.T, a @ w, a.T @ a
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ w.T
        a @ w
        a.T @ a
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 3 * 2.0 * S * n_points * h * h / statistics.median(times)


def make_step(backend_name: str, regularizer: Optional[str], n_points: int, hidden: Sequence[int], device="cpu",
              seed: int = 0, precision: Optional[str] = None, similarity: str = "ncc", **settings):
    """The registration loop's step on a synthetic problem: ``(step, pair)``; the backend must be available.
    ``settings``: more :class:`~idir_fast.settings.RunSettings` fields (e.g. ``fold_guard``)."""
    device = torch.device(device)
    settings = RunSettings(regularizer=regularizer, hidden=tuple(hidden), batch_size=n_points, backend=backend_name,
                           device=str(device), precision=precision, lr=1e-4, similarity=similarity,
                           **settings).resolved()
    pair = synthetic_pair(n_points, device, seed=seed)
    torch.manual_seed(seed)
    siren = Siren(hidden).to(device)
    return PairStep(siren, pair, backends.select(backend_name, device), settings), pair


class _RssPeak:
    """The largest resident set size of this process while the block runs (MiB), sampled every 5 ms from
    ``/proc/self/statm`` — unlike ``ru_maxrss``, which keeps the whole process's high-water mark, so every row
    after the largest one would report it."""

    def __init__(self):
        self.peak_mib, self._stop = float("nan"), threading.Event()

    def _rss_mib(self) -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak_mib = max(self.peak_mib, self._rss_mib())

    def __enter__(self):
        try:
            self.peak_mib = self._rss_mib()
        except OSError:  # not Linux: no figure
            return self
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join()
            self.peak_mib = max(self.peak_mib, self._rss_mib())


def time_step(backend_name: str, regularizer: Optional[str], n_points: int, hidden: Sequence[int],
              device="cpu", warmup: int = 2, repeats: int = 10, seed: int = 0) -> dict:
    """Time one full optimisation step; returns a result row."""
    device = torch.device(device)
    step, pair = make_step(backend_name, regularizer, n_points, hidden, device, seed)
    x, f = pair.points[None], pair.fixed_values[None]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss = _RssPeak()
    with rss:
        for _ in range(warmup):
            step(x, f)
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step(x, f)
            _sync(device)
            times.append(time.perf_counter() - t0)
    ms = 1000.0 * np.asarray(times)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else rss.peak_mib
    order = objectives.derivative_order(regularizer)
    return {"backend": step.backend.name, "regularizer": regularizer or "none", "points": n_points,
            "hidden": "x".join(map(str, hidden)), "passes": step.backend.backward_passes(order),
            "ms_median": float(np.median(ms)), "ms_q25": float(np.percentile(ms, 25)),
            "ms_q75": float(np.percentile(ms, 75)), "s_per_2500": float(np.median(ms)) * 2.5,
            "peak_mib": float(peak),
            "peak_kind": "cuda_allocated" if device.type == "cuda" else "cpu_rss_during_row",
            "repeats": repeats}


def profile_step(backend_name: str, regularizer: Optional[str], n_points: int, hidden: Sequence[int], device="cpu",
                 steps: int = 3, rows: int = 15) -> str:
    """Where one step's time goes, per operator/kernel (torch.profiler), for one backend."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    step, pair = make_step(backend_name, regularizer, n_points, hidden, device)
    x, f = pair.points[None], pair.fixed_values[None]
    for _ in range(2):
        step(x, f)
    _sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step(x, f)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    title = (f"profile: backend {step.backend.name}, regularizer {regularizer or 'none'}, {n_points} points, hidden "
             f"{'x'.join(map(str, hidden))}, {steps} steps on {device}")
    return title + "\n" + prof.key_averages().table(sort_by=key, row_limit=rows)


def throughput(n_pairs: int, epochs: int, n_points: int, hidden: Sequence[int], regularizer: Optional[str] = "bending",
               device="cpu", size=(40, 36, 32)) -> dict:
    """Pairs per hour: ``register`` one pair after another vs ``register_many`` with all pairs in one batch,
    measured in the same run on phantom pairs (the same work: ``epochs`` × ``n_points`` per pair)."""
    from ..api import register, register_many
    from ..data import phantom_pair

    pairs = [phantom_pair(size=size, spacing=(4.0, 4.0, 4.0), seed=i, num_landmarks=10) for i in range(n_pairs)]
    kw = dict(regularizer=regularizer, epochs=epochs, batch_size=n_points, hidden=tuple(hidden), device=device,
              progress=False)
    t = time.perf_counter()
    for p in pairs:
        register(p.fixed, p.moving, p.mask, backend="torch", **kw)
    _sync(device)
    sequential = time.perf_counter() - t
    t = time.perf_counter()
    register_many([(p.fixed, p.moving, p.mask) for p in pairs], pairs_per_batch=n_pairs, **kw)
    _sync(device)
    batched = time.perf_counter() - t
    row = {"pairs": n_pairs, "epochs": epochs, "points": n_points, "hidden": "x".join(map(str, hidden)),
           "regularizer": regularizer or "none", "sequential_s": sequential, "batched_s": batched,
           "sequential_pairs_per_hour": 3600 * n_pairs / sequential, "batched_pairs_per_hour": 3600 * n_pairs / batched,
           "speedup": sequential / batched}
    print(f"throughput, {n_pairs} pairs × {epochs} epochs × {n_points} points, SIREN {row['hidden']}, "
          f"{row['regularizer']}, {device}: one at a time {row['sequential_pairs_per_hour']:.0f} pairs/h, "
          f"batched {row['batched_pairs_per_hour']:.0f} pairs/h ({row['speedup']:.2f}×)")
    return row


def run(sizes: Iterable[tuple] = ((10_000, (256, 256, 256)),), backend_names: Sequence[str] = ("reference", "torch"),
        regularizers: Sequence[Optional[str]] = REGULARIZERS, device="cpu", repeats: int = 5, warmup: int = 2,
        results_dir: Optional[str] = None, print_table: bool = True, profile: bool = False) -> List[dict]:
    """Benchmark every (size, regulariser, backend) side by side; append rows to ``results_dir``."""
    info = machine_info(device)
    rows = []
    for n, hidden in sizes:
        for reg in regularizers:
            order = objectives.derivative_order(reg)
            flops = matmul_flops(n, hidden, order)
            rate = gemm_rate(n, hidden, order, device)
            base = None
            for name in backend_names:
                try:
                    row = time_step(name, reg, n, hidden, device, warmup=warmup, repeats=repeats)
                except Exception as err:  # noqa: BLE001 — report, keep benchmarking the others
                    row = {"backend": name, "regularizer": reg or "none", "points": n,
                           "hidden": "x".join(map(str, hidden)), "error": f"{type(err).__name__}: {err}"}
                    rows.append(row)
                    continue
                row["gflop_per_step"] = flops / 1e9
                row["gemm_gflops"] = rate / 1e9
                row["floor_ms"] = 1000.0 * flops / rate
                row["x_floor"] = row["ms_median"] / row["floor_ms"]
                row["precision"] = backends.check_precision(None)
                row["h100_model_ms"] = model_step_ms(n, hidden, order, row["backend"], row["precision"])
                if name == "reference":
                    base = row["ms_median"]
                row["speedup_vs_reference"] = (base / row["ms_median"]) if base else None
                row.update({k: info[k] for k in ("device_name", "cpu", "torch", "commit", "timestamp")})
                row["device"] = str(device)
                rows.append(row)
    if print_table:
        print(format_table(rows, info))
    if results_dir:
        save_rows(rows, info, results_dir)
    if profile:
        timed = [r for r in rows if "error" not in r]
        if timed:
            heaviest = max({r["regularizer"] for r in timed}, key=lambda g: ("none", "jacobian", "hyperelastic",
                                                                             "bending").index(g))
            first_size = (timed[0]["points"], timed[0]["hidden"])  # the first (paper) size
            best = min((r for r in timed if r["regularizer"] == heaviest
                        and (r["points"], r["hidden"]) == first_size), key=lambda r: r["ms_median"])
            n, hidden = best["points"], tuple(int(h) for h in best["hidden"].split("x"))
            print()
            print(profile_step(best["backend"], None if heaviest == "none" else heaviest, n, hidden, device))
    return rows


def format_table(rows: List[dict], info: dict) -> str:
    head = (f"device {info.get('device_name')} ({info.get('cpu')}, {info.get('cores')} cores), torch "
            f"{info.get('torch')}, commit {info.get('commit')}, {info.get('timestamp')}")
    cols = ["points", "hidden", "regularizer", "backend", "passes", "ms/step (median [IQR])", "s/2500",
            "peak MiB", "speed-up", "floor ms", "× floor", f"{H100.name.split(' (')[0]} model ms"]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([str(r["points"]), r["hidden"], r["regularizer"], r["backend"], "-", r["error"][:60],
                          "", "", "", "", "", ""])
            continue
        sp = r.get("speedup_vs_reference")
        lines.append([str(r["points"]), r["hidden"], r["regularizer"], r["backend"], str(r["passes"]),
                      f"{r['ms_median']:.1f} [{r['ms_q25']:.1f}–{r['ms_q75']:.1f}]", f"{r['s_per_2500']:.1f}",
                      f"{r['peak_mib']:.0f}", f"{sp:.2f}×" if sp else "–", f"{r['floor_ms']:.1f}",
                      f"{r['x_floor']:.2f}",
                      "–" if r["h100_model_ms"] != r["h100_model_ms"] else f"{r['h100_model_ms']:.2f}"])
    widths = [max(len(c), *(len(x[i]) for x in lines)) if lines else len(c) for i, c in enumerate(cols)]
    out = [head, "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(x.ljust(w) for x, w in zip(line, widths)) + " |" for line in lines]
    return "\n".join(out)


def save_rows(rows: List[dict], info: dict, results_dir: str) -> Path:
    """Append rows to ``results.csv`` and one JSON file per run under ``results_dir``."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    stamp = info["timestamp"].replace(":", "").replace("-", "")
    dev = "".join(ch if ch.isalnum() else "-" for ch in str(info.get("device_name", "cpu")))[:40]
    write_json({"machine": info, "rows": rows}, d / f"{stamp}_{dev}.json")
    csv_path = d / "results.csv"
    keys = ["timestamp", "commit", "device_name", "cpu", "torch", "device", "points", "hidden", "regularizer",
            "backend", "passes", "ms_median", "ms_q25", "ms_q75", "s_per_2500", "peak_mib", "peak_kind",
            "speedup_vs_reference", "gflop_per_step", "gemm_gflops", "floor_ms", "x_floor", "precision",
            "h100_model_ms", "error"]
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**{k: info.get(k) for k in ("timestamp", "commit", "device_name", "cpu", "torch")}, **r})
    return csv_path
