"""One optimisation step of two source trees, timed alternately in one run (before and after a change).

    git worktree add /tmp/before <commit>    # and build its extension: python setup.py build_ext --inplace
    python benchmarks/step_ab.py --before /tmp/before [--after .] [--sizes 1500:48x48x48,10000:256x256x256]
                                 [--regularizers bending] [--rounds 5] [--steps 10] [--threads 2]
    python benchmarks/step_ab.py --before . --env-before IDIR_FAST_CPU_FUSED=1 --env-after IDIR_FAST_CPU_FUSED=0

Each round starts one fresh process per tree (alternating which goes first), each importing ``idir_fast`` from its
tree (``PYTHONPATH``, run from a neutral folder), building the ``torch`` backend's step on the benchmark's
synthetic problem (:func:`idir_fast.apps.bench.make_step`), warming up and timing ``--steps`` steps. The medians
over rounds are compared as after/before; ``--env-before``/``--env-after`` set environment variables of one side
(one tree under two settings). Writes ``results/step_ab_<stamp>.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent


def probe(regularizer: str, n: int, hidden: str, threads: int, steps: int) -> None:
    """In a tree's process: the median step time (ms) and where ``idir_fast`` came from, as one JSON line."""
    import torch

    import idir_fast
    from idir_fast.apps.bench import make_step

    torch.set_num_threads(threads)
    step, pair = make_step("torch", None if regularizer == "none" else regularizer, n,
                           tuple(int(h) for h in hidden.split("x")), "cpu")
    x, f = pair.points[None], pair.fixed_values[None]
    for _ in range(2):
        step(x, f)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(x, f)
        times.append(time.perf_counter() - t)
    print(json.dumps({"ms": 1000 * statistics.median(times), "package": idir_fast.__file__}))


def _run_probe(tree: str, args: list, work: str, extra_env: Optional[dict] = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()), **(extra_env or {}))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", *map(str, args)], cwd=work,
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="the earlier source tree")
    ap.add_argument("--after", default=str(HERE.parent), help="the later source tree (default: this checkout)")
    ap.add_argument("--sizes", default="1500:48x48x48,2000:128x128x128,10000:256x256x256")
    ap.add_argument("--regularizers", default="bending")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--env-before", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--env-after", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--probe", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.probe:
        reg, n, hidden, threads, steps = a.probe
        probe(reg, int(n), hidden, int(threads), int(steps))
        return 0
    if not a.before:
        ap.error("--before is required")
    from idir_fast.environment import machine_info

    trees = {"before": a.before, "after": a.after}
    envs = {"before": dict(kv.split("=", 1) for kv in a.env_before),
            "after": dict(kv.split("=", 1) for kv in a.env_after)}
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for item in a.sizes.split(","):
            n, hidden = item.split(":")
            for reg in a.regularizers.split(","):
                times = {"before": [], "after": []}
                for r in range(a.rounds):
                    for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                        got = _run_probe(trees[name], [reg, n, hidden, a.threads, a.steps], work, envs[name])
                        times[name].append(got["ms"])
                med = {k: statistics.median(v) for k, v in times.items()}
                rows.append({"points": int(n), "hidden": hidden, "regularizer": reg, "ms": times, "median_ms": med,
                             "after_over_before": med["after"] / med["before"]})
                print(f"{n:>6} × {hidden:12s} {reg:8s} before {med['before']:8.1f} ms, after {med['after']:8.1f} ms "
                      f"→ {med['after'] / med['before']:.2f}×", flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(a.out) / f"step_ab_{stamp}.json"
    path.write_text(json.dumps({"trees": trees, "environment": envs, "rounds": a.rounds, "steps": a.steps, "threads": a.threads,
                                "machine": machine_info("cpu"), "rows": rows}, indent=2) + "\n")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
