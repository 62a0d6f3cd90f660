"""Cohort throughput as cohort users run it: N pairs, the whole job timed from the command to its last output, on
an idle machine and beside one busy background process, idir_fast and ANTs SyN in one run.

    python -m benchmarks.throughput [--pairs 8] [--conditions idle,busy] [--modes ...] [--baseline TREE]
                                    [--data DIR] [--out DIR] [--quick]

Pairs: the shared chest CT deformed by :func:`idir_fast.data.deformed_pair` with a different known motion each
(amplitudes 10–30 mm, a seed per pair; 100 landmarks in the lungs), written as NIfTI files with a manifest.

Modes (each one command, a fresh process tree, the wall time of the whole job):

* ``cohort`` — ``idir-fast cohort`` with no thread flags (the package's plan: workers × threads);
* ``cohort-WxT`` — ``idir-fast cohort --workers W --threads T`` for every W·T ≤ the usable cores;
* ``cohort-jacobian``, ``cohort-hyperelastic``, ``cohort-ncc``, ``cohort-gradient``, ``cohort-jacobian-gradient``,
  ``cohort-share``, ``cohort-share-gradient`` — ``cohort`` with ``--regularizer jacobian``, ``--regularizer
  hyperelastic``, ``--similarity ncc``, ``--sampling gradient``, both of jacobian and gradient,
  ``--regularizer-share 0.3333`` (the bending energy at a third of each step's points), or that and gradient
  sampling (:data:`COHORT_SETTINGS`);
* ``cohort-passive`` — ``cohort`` with ``OMP_WAIT_POLICY=passive`` (OpenMP's threads sleep instead of spinning
  while they wait: the runtime's other wait policy, settable only before the process starts);
* ``baseline`` — ``idir-fast cohort`` of another source tree (``--baseline``: e.g. a worktree of an earlier
  commit with its extension built), the same command as ``cohort``;
* ``register_many`` — one process: :func:`idir_fast.register_many` over all pairs (batched steps), then each
  saved;
* ``register``, ``register-T``, ``register-ncc`` (``--similarity ncc``: the similarity before the local NCC) —
  ``idir-fast register`` of the first pair: the time of its :func:`idir_fast.register`
  call (``timings.total_s`` of the report: a pipeline's single registration), with the default thread policy
  or ``OMP_NUM_THREADS=T``; ``baseline-…`` — any of the package's modes with the ``--baseline`` tree;
* ``ants-PxT`` — ANTs SyN (antspyx defaults) the way its users run a cohort: P processes side by side, each with
  T ITK threads, the pairs split among them.

Conditions: ``idle``, and ``busy`` — a CPU-bound loop of this script (``--burn``) runs beside the job from its
start to its end (one runnable process at normal priority, as another job on a shared node).

Reported per mode and condition: pairs per hour, mean TRE per pair (mm), failures, the peak resident memory of
the job's process tree (sampled every 0.25 s). One record ``results/throughput_<stamp>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .common import RESULTS, machine_info, thread_environment, write_record

AMPLITUDES_MM = (10.0, 14.0, 18.0, 22.0, 26.0, 30.0, 12.0, 16.0, 20.0, 24.0)
ALL_CONDITIONS = ("idle", "busy")


# ------------------------------------------------------------------------------------------------ the cohort
def write_cohort(folder: Path, pairs: int, data: Optional[str], quick: bool) -> Path:
    """The pairs as NIfTI files and landmark files (world mm) with a manifest; returns the manifest."""
    import SimpleITK as sitk

    from idir_fast.io.landmarks import write_points

    from .cases import ct_case, phantom_case

    folder.mkdir(parents=True, exist_ok=True)
    rows = ["pair_id,fixed,moving,mask,fixed_landmarks,moving_landmarks"]
    for i in range(pairs):
        case = phantom_case() if quick else ct_case(AMPLITUDES_MM[i % len(AMPLITUDES_MM)], data, seed=i)
        pid = f"pair{i:02d}"
        for kind, image in (("fixed", case.fixed), ("moving", case.moving), ("mask", case.mask)):
            sitk.WriteImage(image, str(folder / f"{pid}_{kind}.nii.gz"))
        write_points(case.fixed_landmarks, folder / f"{pid}_fixed_landmarks.txt")
        write_points(case.moving_landmarks, folder / f"{pid}_moving_landmarks.txt")
        rows.append(",".join([pid] + [f"{pid}_{k}{'.nii.gz' if k in ('fixed', 'moving', 'mask') else '.txt'}"
                                      for k in ("fixed", "moving", "mask", "fixed_landmarks", "moving_landmarks")]))
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _manifest_rows(manifest: Path) -> List[dict]:
    import csv

    with open(manifest, newline="") as fh:
        return [{k: (str(manifest.parent / v) if k != "pair_id" and v else v) for k, v in row.items()}
                for row in csv.DictReader(fh)]


# ------------------------------------------------------------------------------------------------ workers
def burn(seconds: float) -> None:
    """A CPU-bound loop for at most ``seconds`` (the busy background process)."""
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        for _ in range(100_000):
            x += 1


def run_many(manifest: Path, out: Path, quick: bool) -> None:
    """``register_many`` over every pair of ``manifest``, each saved to ``out/<pair_id>/``; a summary with TRE."""
    import idir_fast

    rows = _manifest_rows(manifest)
    pairs = [{"fixed": r["fixed"], "moving": r["moving"], "mask": r["mask"],
              "fixed_landmarks": r["fixed_landmarks"], "moving_landmarks": r["moving_landmarks"]} for r in rows]
    regs = idir_fast.register_many(pairs, progress=False, **(QUICK_SETTINGS if quick else {}))
    summary = []
    for r, reg in zip(rows, regs):
        (out / r["pair_id"]).mkdir()
        reg.save(str(out / r["pair_id"]) + os.sep)
        summary.append({"pair_id": r["pair_id"], "status": "ok", "tre_after_mean": reg.metrics["tre"]["mean"]})
    (out / "summary.json").write_text(json.dumps({"pairs": summary}))  # many/summary.json


def run_ants_share(manifest: Path, out: Path, share: int, shares: int, threads: int) -> None:
    """ANTs SyN on pairs ``share, share + shares, …`` of ``manifest``; their TRE into ``out/ants_<share>.json``."""
    import SimpleITK as sitk

    from idir_fast.core.metrics import tre
    from idir_fast.io.landmarks import read_points

    from .peers import ants

    rows = _manifest_rows(manifest)[share::shares]
    results = []
    for r in rows:
        fixed, moving, mask = (sitk.ReadImage(r[k], sitk.sitkFloat32) for k in ("fixed", "moving", "mask"))
        try:
            result = ants.register(fixed, moving, mask, threads=threads)
            mapped = result.map_points(read_points(r["fixed_landmarks"], "fixed_landmarks"))
            results.append({"pair_id": r["pair_id"], "status": "ok",
                            "tre_after_mean": tre(mapped, read_points(r["moving_landmarks"], "moving"))["mean"]})
        except Exception as err:  # noqa: BLE001 — a failed pair is counted, the others go on
            results.append({"pair_id": r["pair_id"], "status": "failed", "error": f"{type(err).__name__}: {err}"})
    (out / f"ants_{share}.json").write_text(json.dumps({"pairs": results}))


QUICK_SETTINGS = dict(epochs=20, batch_size=300, hidden=(16, 16))
QUICK_FLAGS = ["--epochs", "20", "--batch-size", "300", "--hidden", "16,16"]


# ------------------------------------------------------------------------------------------------ measuring
class TreeMemory:
    """The peak resident memory (MiB) of a process and all its descendants, sampled every 0.25 s."""

    def __init__(self, pids):
        self.pids, self.peak, self._stop = list(pids), 0.0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _tree_rss(self) -> float:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        tree, frontier = set(self.pids), list(self.pids)
        while frontier:
            p = frontier.pop()
            children = [c for c, pp in parents.items() if pp == p and c not in tree]
            tree.update(children)
            frontier += children
        total = 0
        for p in tree:
            try:
                with open(f"/proc/{p}/statm") as fh:
                    total += int(fh.read().split()[1]) * self._page
            except (OSError, ValueError, IndexError):
                continue
        return total / 2 ** 20

    def _run(self):
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self._tree_rss())

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _python(*args) -> List[str]:
    return [sys.executable, *args]


COHORT_SETTINGS = {"cohort-jacobian": ("--regularizer", "jacobian"),
                   "cohort-hyperelastic": ("--regularizer", "hyperelastic"),
                   "cohort-ncc": ("--similarity", "ncc"),
                   "cohort-gradient": ("--sampling", "gradient"),
                   "cohort-jacobian-gradient": ("--regularizer", "jacobian", "--sampling", "gradient"),
                   "cohort-share": ("--regularizer-share", "0.3333"),
                   "cohort-share-gradient": ("--regularizer-share", "0.3333", "--sampling", "gradient")}
"""The ``cohort-<setting>`` modes: ``idir-fast cohort`` with no thread flags and these flags added."""


def mode_commands(mode: str, manifest: Path, out: Path, quick: bool, baseline: Optional[str]) -> List[dict]:
    """The processes of one mode: ``[{"argv", "env", "cwd"}]`` run side by side. The package's own commands run
    from the work folder (so ``python -m idir_fast`` imports the installed package, or the ``--baseline`` tree on
    ``PYTHONPATH``); the benchmark's workers run from this checkout."""
    flags = ["--no-progress"] + (QUICK_FLAGS if quick else [])
    work, repo = str(out), str(Path(__file__).resolve().parents[1])
    base = mode.startswith("baseline")
    if base and not baseline:
        raise ValueError(f"mode {mode!r} needs --baseline (a source tree with its extension built)")
    env = {"PYTHONPATH": str(Path(baseline).resolve())} if base else {}
    if base:
        mode = mode[len("baseline"):].lstrip("-") or "cohort"
    cohort = _python("-m", "idir_fast", "cohort", str(manifest), "--out", str(out / "cohort"), *flags)
    if mode in ("cohort", "cohort-passive"):
        extra = {"OMP_WAIT_POLICY": "passive"} if mode == "cohort-passive" else {}
        return [{"argv": cohort, "env": dict(env, **extra), "cwd": work}]
    if mode in COHORT_SETTINGS:  # the default plan with one setting changed (what a throughput user may choose)
        return [{"argv": cohort + list(COHORT_SETTINGS[mode]), "env": env, "cwd": work}]
    if mode.startswith("cohort-"):
        w, t = mode.split("-", 1)[1].split("x")
        return [{"argv": cohort + ["--workers", w, "--threads", t], "env": env, "cwd": work}]
    if mode == "register" or mode.startswith("register-"):
        row = _manifest_rows(manifest)[0]
        argv = _python("-m", "idir_fast", "register", row["fixed"], row["moving"], "--mask", row["mask"],
                       "--fixed-landmarks", row["fixed_landmarks"], "--moving-landmarks", row["moving_landmarks"],
                       "--out", str(out / "register") + os.sep, *flags)
        if mode == "register-ncc":  # the global NCC in every stage: the similarity before the local NCC
            argv += ["--similarity", "ncc"]
        elif mode.startswith("register-"):  # the thread count every version honours: OpenMP's own variable
            env = dict(env, OMP_NUM_THREADS=mode.split("-", 1)[1])
        return [{"argv": argv, "env": env, "cwd": work}]
    if mode == "register_many":
        return [{"argv": _python("-m", "benchmarks.throughput", "--run-many", str(manifest), str(out / "many"))
                 + (["--quick"] if quick else []), "env": {}, "cwd": repo}]
    if mode.startswith("ants-"):
        p, t = (int(v) for v in mode.split("-", 1)[1].split("x"))
        return [{"argv": _python("-m", "benchmarks.throughput", "--run-ants", str(manifest), str(out / "ants"), str(k),
                                 str(p), str(t)), "env": thread_environment(t), "cwd": repo} for k in range(p)]
    raise ValueError(f"unknown mode {mode!r}")


def _single_register(out: Path) -> Optional[dict]:
    """The report of a ``register`` mode: the call's own time (``timings.total_s``: reading the inputs and
    optimising, not the imports or writing) and its TRE."""
    path = out / "register" / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return {"seconds": report["timings"]["total_s"], "tre": report["metrics"]["tre"]["mean"],
            "threads_used": report["settings"].get("threads_used"),
            "torch_threads": report["settings"].get("versions", {}).get("torch_threads")}


def _pair_rows(out: Path) -> List[dict]:
    rows = []
    for path in sorted(out.glob("*/summary.json")) + sorted(out.glob("ants/ants_*.json")):
        rows += json.loads(path.read_text())["pairs"]
    return rows


def run_mode(mode: str, condition: str, manifest: Path, work: Path, quick: bool, baseline: Optional[str],
             pairs: int) -> dict:
    """One mode under one condition: the wall time of its processes (started together), their pairs' TRE, peak
    memory, and the busy process's CPU share."""
    out = Path(tempfile.mkdtemp(prefix=f"{mode}-{condition}-", dir=work))
    burner = None
    if condition == "busy":
        burner = subprocess.Popen(_python("-m", "benchmarks.throughput", "--burn", "3600"))
        time.sleep(0.5)  # let it be running before the job starts
    procs = []
    t0 = time.perf_counter()
    try:
        for sub in ("cohort", "many", "ants", "register"):
            (out / sub).mkdir()
        for cmd in mode_commands(mode, manifest, out, quick, baseline):
            env = dict(os.environ, **cmd["env"])
            procs.append(subprocess.Popen(cmd["argv"], env=env, cwd=cmd["cwd"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        with TreeMemory([p.pid for p in procs]) as mem:
            errors = [p.communicate()[1] for p in procs]
        wall = time.perf_counter() - t0
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    rows = _pair_rows(out)
    tre = [r["tre_after_mean"] for r in rows if r.get("status") == "ok" and r.get("tre_after_mean") is not None]
    single = _single_register(out)
    if single is not None:  # one register() call: its own time, one pair
        wall, pairs, tre = single["seconds"], 1, [single["tre"]]
    failed = pairs - len(tre)
    row = {"mode": mode, "condition": condition, "wall_s": wall, "pairs_per_hour": 3600.0 * len(tre) / wall,
           "pairs_ok": len(tre), "failed": failed, "tre_mean_mm": float(np.mean(tre)) if tre else None,
           "tre_per_pair_mm": tre, "peak_rss_mib": round(mem.peak, 1),
           "returncodes": [p.returncode for p in procs]}
    if failed:
        row["stderr_tail"] = [e[-800:] for e in errors]
    plan = out / "cohort" / "summary.json"
    if plan.is_file():
        row["plan"] = json.loads(plan.read_text()).get("plan")
    if single is not None:
        row.update(threads_used=single["threads_used"], torch_threads=single["torch_threads"])
    return row


def default_modes(cores: int, baseline: Optional[str]) -> List[str]:
    """``baseline`` (when given), ``cohort``, every ``cohort-WxT`` with W·T ≤ cores, ``cohort-passive``,
    ``register_many``, and ANTs as 1 process × all cores and one process per core."""
    modes = (["baseline"] if baseline else []) + ["cohort"]
    modes += [f"cohort-{w}x{t}" for w in range(1, cores + 1) for t in range(1, cores + 1) if w * t <= cores]
    modes += ["cohort-passive", "register_many", f"ants-1x{cores}"]
    if cores > 1:
        modes.append(f"ants-{cores}x1")
    return modes


def summarise(rows: List[dict]) -> List[dict]:
    """One row per (condition, mode): the median wall time over rounds (and its pairs/hour), the rounds' range."""
    out = []
    keys = []
    for r in rows:
        if (r["condition"], r["mode"]) not in keys:
            keys.append((r["condition"], r["mode"]))
    for condition, mode in keys:
        sel = [r for r in rows if (r["condition"], r["mode"]) == (condition, mode)]
        walls = sorted(r["wall_s"] for r in sel)
        mid = sel[[r["wall_s"] for r in sel].index(walls[(len(walls) - 1) // 2])]
        out.append(dict(mid, wall_s_rounds=walls, rounds=len(sel),
                        failed=sum(r["failed"] for r in sel), peak_rss_mib=max(r["peak_rss_mib"] for r in sel)))
    return out


def format_table(rows: List[dict]) -> str:
    w = max([22] + [len(r["mode"]) for r in rows])
    head = f"{'condition':9s} {'mode':{w}s} {'wall s':>8s} {'pairs/h':>8s} {'TRE mm':>7s} {'failed':>6s} {'peak MiB':>9s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        tre = "—" if r["tre_mean_mm"] is None else f"{r['tre_mean_mm']:.3f}"
        lines.append(f"{r['condition']:9s} {r['mode']:{w}s} {r['wall_s']:8.1f} {r['pairs_per_hour']:8.0f} {tre:>7s} "
                     f"{r['failed']:6d} {r['peak_rss_mib']:9.0f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8, help="pairs in the cohort (default 8)")
    ap.add_argument("--conditions", default="idle,busy", help="idle, busy or both (default)")
    ap.add_argument("--modes", default=None, help="comma-separated (default: see the module docstring)")
    ap.add_argument("--baseline", default=None, help="another source tree to run as mode 'baseline'")
    ap.add_argument("--data", default=None, help="the shared data folder (default: ../shared/data)")
    ap.add_argument("--out", default=str(RESULTS), help="folder of the record (default benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="2 phantom pairs, tiny settings: a smoke test")
    ap.add_argument("--work", default=None, help="folder for the pairs and outputs (default: a temporary one)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every mode this many times, in another order each round (default 1)")
    ap.add_argument("--burn", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--run-many", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--run-ants", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.burn is not None:
        burn(a.burn)
        return 0
    if a.run_many:
        run_many(Path(a.run_many[0]), Path(a.run_many[1]), a.quick)
        return 0
    if a.run_ants:
        m, o, share, shares, threads = a.run_ants
        run_ants_share(Path(m), Path(o), int(share), int(shares), int(threads))
        return 0

    from idir_fast.threads import usable_cores

    conditions = [c.strip() for c in a.conditions.split(",") if c.strip()]
    bad = [c for c in conditions if c not in ALL_CONDITIONS]
    if bad:
        raise SystemExit(f"unknown conditions {bad}; known: {', '.join(ALL_CONDITIONS)}")
    cores = usable_cores()
    modes = [m.strip() for m in a.modes.split(",")] if a.modes else default_modes(cores, a.baseline)
    if a.quick and not a.modes:
        modes = ["cohort", "cohort-1x1"]
    pairs = 2 if a.quick else a.pairs
    with tempfile.TemporaryDirectory(prefix="throughput_", dir=a.work) as tmp:
        work = Path(tmp)
        manifest = write_cohort(work / "pairs", pairs, a.data, a.quick)
        rows: List[Dict] = []
        for r in range(a.rounds):
            for condition in conditions:
                order = modes[r % len(modes):] + modes[:r % len(modes)] if r % 2 == 0 else \
                    list(reversed(modes[r % len(modes):] + modes[:r % len(modes)]))
                for mode in order:
                    print(f"{condition:5s} {mode} (round {r + 1}) …", flush=True)
                    row = dict(run_mode(mode, condition, manifest, work, a.quick, a.baseline, pairs), round=r + 1)
                    rows.append(row)
                    tre = "—" if row["tre_mean_mm"] is None else f"{row['tre_mean_mm']:.3f} mm"
                    print(f"      {row['wall_s']:.1f} s, {row['pairs_per_hour']:.0f} pairs/h, TRE {tre}, "
                          f"{row['failed']} failed, peak {row['peak_rss_mib']:.0f} MiB", flush=True)
    summary = summarise(rows)
    print()
    print(format_table(summary))
    record = {"command": sys.argv, "pairs": pairs, "cores": cores, "conditions": conditions, "modes": modes,
              "rounds": a.rounds, "summary": summary,
              "quick": a.quick, "baseline": a.baseline, "machine": machine_info(), "rows": rows,
              "cases": "quick phantom" if a.quick else
              f"chest CT, deformed_pair amplitudes {list(AMPLITUDES_MM[:pairs])} mm, seeds 0..{pairs - 1}"}
    path = write_record("throughput_quick" if a.quick else "throughput", record, a.out)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
