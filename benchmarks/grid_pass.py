"""The output pass over the fixed grid (field, det J and warped image from one network evaluation per chunk) at
several chunk sizes, alternated in one run, with 1 or more processes side by side (a cohort's workers).

    python -m benchmarks.grid_pass [--chunks 65536,16384,4096,2048] [--processes 1,2] [--threads 1]
                                   [--rounds 3] [--data DIR] [--out DIR] [--quick]

Each process registers the shared chest CT under an 18 mm motion briefly (the pass's cost does not depend on the
weights), then times :meth:`idir_fast.transform.Transform.output_images` once per chunk size per round, the order
of the sizes rotating each round. Reported per process count and chunk size: the median seconds over rounds and
processes, and its ratio to the package's own choice (:func:`idir_fast.memory.chunk_points`). One record
``results/grid_pass_<stamp>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from .common import machine_info, thread_environment, write_record

HERE = Path(__file__).resolve().parent


def probe(chunks: List[int], rounds: int, data: Optional[str], quick: bool) -> Dict[str, List[float]]:
    """In one process: seconds of the output pass per chunk size (``"package"``: the package's choice)."""
    import torch

    import idir_fast
    import idir_fast.transform as transform_module

    from .cases import ct_case, phantom_case

    case = phantom_case() if quick else ct_case(18.0, data, seed=0)
    settings = idir_fast.RunSettings(epochs=20, seed=0, device="cpu")
    reg = idir_fast.register(case.fixed, case.moving, case.mask, settings=settings, progress=False)
    moving = reg.warped_input()
    own = transform_module.chunk_points
    sizes = ["package"] + [str(c) for c in chunks]
    times: Dict[str, List[float]] = {s: [] for s in sizes}
    try:
        for r in range(rounds):
            for size in sizes[r % len(sizes):] + sizes[:r % len(sizes)]:
                transform_module.chunk_points = own if size == "package" else (lambda n: lambda _d: n)(int(size))
                reg.transform._workspaces.clear()
                t = time.perf_counter()
                reg.transform.output_images(moving, field=True, jacobian=True)
                times[size].append(time.perf_counter() - t)
    finally:
        transform_module.chunk_points = own
    return {"times": times, "package_chunk": own("cpu"), "threads": torch.get_num_threads()}


def _side_by_side(processes: int, threads: int, args: List[str]) -> List[dict]:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), **thread_environment(threads))
    cmd = [sys.executable, "-m", "benchmarks.grid_pass", "--probe", *args]
    procs = [subprocess.Popen(cmd, env=env, cwd=str(HERE.parent), stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a grid-pass probe failed: return codes {[p.returncode for p in procs]}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", default="65536,16384,4096,2048")
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="a small phantom, one round (tests)")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    chunks = [int(c) for c in a.chunks.split(",")]
    rounds = 1 if a.quick else a.rounds
    if a.probe:
        print(json.dumps(probe(chunks, rounds, a.data, a.quick)))
        return 0
    child = ["--chunks", a.chunks, "--rounds", str(rounds)] + (["--data", a.data] if a.data else []) + \
        (["--quick"] if a.quick else [])
    rows = []
    for processes in (int(p) for p in a.processes.split(",")):
        results = _side_by_side(processes, a.threads, child)
        for size in results[0]["times"]:
            seconds = statistics.median(t for r in results for t in r["times"][size])
            rows.append({"processes": processes, "threads": a.threads, "chunk": size, "median_s": seconds,
                         "package_chunk": results[0]["package_chunk"]})
        base = next(r["median_s"] for r in rows if r["processes"] == processes and r["chunk"] == "package")
        for r in rows:
            if r["processes"] == processes:
                r["ratio_to_package"] = r["median_s"] / base
    for r in rows:
        print(f"{r['processes']} process(es) × {r['threads']} thread(s)  chunk {r['chunk']:>8}  "
              f"{r['median_s']:.3f} s  ×{r['ratio_to_package']:.2f}")
    path = write_record("grid_pass_quick" if a.quick else "grid_pass",
                        {"command": "python -m benchmarks.grid_pass " + " ".join(argv or sys.argv[1:]),
                         "machine": machine_info(), "rounds": rounds, "rows": rows}, a.out)
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
