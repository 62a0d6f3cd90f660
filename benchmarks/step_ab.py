"""Time one optimisation step of two source trees alternately, in one run (e.g. before and after a change).

    git worktree add /tmp/before <commit>   # and build or copy its idir_fast/_C*.so
    python benchmarks/step_ab.py --before /tmp/before --after . [--sizes 10000:256x256x256] [--rounds 5]

Each round starts one fresh process per tree (alternating), builds the step of the ``torch`` backend on the
benchmark's synthetic problem, warms up and times ``--steps`` steps; the medians over rounds are compared. Understands the
layout before and after the package was split into layers (``idir_fast.engine.StepFunction`` vs
``idir_fast.apps.bench.make_step``). Writes ``results/step_ab_<timestamp>.json``.
"""
import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROBE = r'''
import sys, time, statistics, torch
reg, n, hidden = sys.argv[1], int(sys.argv[2]), tuple(int(h) for h in sys.argv[3].split("x"))
reg = None if reg == "none" else reg
torch.set_num_threads(int(sys.argv[4]))
try:
    from idir_fast.apps.bench import make_step
    step, pair = make_step("torch", reg, n, hidden, "cpu")
    x, f = pair.points[None], pair.fixed_values[None]
    call = lambda: step(x, f)
except ImportError:
    from idir_fast import objectives
    from idir_fast.backends import resolve_backend
    from idir_fast.bench import synthetic_pair
    from idir_fast.engine import StepFunction
    from idir_fast.siren import Siren
    pair = synthetic_pair(n, "cpu"); torch.manual_seed(0)
    step = StepFunction(Siren(hidden), pair, resolve_backend("torch", "cpu"), regularizer=reg,
                        alpha=objectives.default_alpha(reg), compat=None, lr=1e-4)
    call = lambda: step(pair.points, pair.fixed_values)
for _ in range(2):
    call()
times = []
for _ in range(int(sys.argv[5])):
    t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
import idir_fast
print(idir_fast.__file__)
print(1000 * statistics.median(times))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=str(HERE.parent))
    ap.add_argument("--sizes", default="10000:256x256x256,2000:128x128x128")
    ap.add_argument("--regularizers", default="bending")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=7, help="timed steps per process (after 2 warm-up steps)")
    a = ap.parse_args()
    rows = []
    for size in a.sizes.split(","):
        n, hidden = size.split(":")
        for reg in a.regularizers.split(","):
            ms = {"before": [], "after": []}
            for _ in range(a.rounds):
                for label in ("before", "after"):
                    env = dict(os.environ, PYTHONPATH=str(Path(getattr(a, label)).resolve()))
                    out = subprocess.run([sys.executable, "-c", PROBE, reg, n, hidden, str(a.threads), str(a.steps)], env=env,
                                         capture_output=True, text=True, cwd="/", check=True).stdout
                    *_, origin, value = out.strip().splitlines()
                    tree = str(Path(getattr(a, label)).resolve())
                    if not origin.startswith(tree):  # an installed copy shadowing PYTHONPATH would void the A/B
                        raise SystemExit(f"{label}: imported idir_fast from {origin}, not from {tree}")
                    ms[label].append(float(value))
            row = {"points": int(n), "hidden": hidden, "regularizer": reg,
                   "before_ms": statistics.median(ms["before"]), "after_ms": statistics.median(ms["after"]),
                   "rounds": ms}
            row["after_over_before"] = row["after_ms"] / row["before_ms"]
            rows.append(row)
            print(f"{n} pts {hidden} {reg}: before {row['before_ms']:.1f} ms, after {row['after_ms']:.1f} ms, "
                  f"after/before {row['after_over_before']:.3f}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=a.after, capture_output=True,
                            text=True).stdout.strip()
    before = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=a.before, capture_output=True,
                            text=True).stdout.strip()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = HERE / "results" / f"step_ab_{stamp}.json"
    from idir_fast.environment import machine_info

    out.write_text(json.dumps({"command": ["benchmarks/step_ab.py", *sys.argv[1:]], "machine": machine_info("cpu"),
                               "before": before, "after": commit, "threads": a.threads, "rows": rows},
                              indent=1) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
