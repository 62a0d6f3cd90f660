"""The CPU allocator policy (:func:`idir_fast.keep_freed_memory`) on and off, with the fused stream kernels on and
off, interleaved in one run.

    python benchmarks/malloc_policy.py [--sizes 1500:48x48x48,2000:128x128x128,10000:256x256x256] [--rounds 3]
                                       [--no-registration] [--paper-epochs N]

Each probe is a fresh process (glibc's malloc state is per process and depends on what ran before): the
``torch`` backend's bending step on the synthetic problem of ``python -m benchmarks``, median step time and minor
page faults per step (``getrusage``); and, unless ``--no-registration``, a whole ``register()`` with the package
defaults on the shared chest CT with an 18 mm motion, timing the steps of its last stage inside the run. Policy
``system`` is glibc as it comes; ``keep`` is ``IDIR_FAST_MALLOC=keep`` + :func:`keep_freed_memory` (what the
``idir-fast`` command and ``register()`` on a CPU do). ``--paper-epochs N`` adds ``register()`` with
``schedule="paper"`` cut to N steps, one round of ``--paper-configs`` (default: ``system`` and ``keep``, both with
PyTorch's ops, the size rule's choice at that size): whole-run wall time, per-step time and TRE. Writes
``results/malloc_policy_<timestamp>.json``.
"""
import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from idir_fast.environment import machine_info

HERE = Path(__file__).resolve().parent
CT = HERE.parent.parent / "shared" / "data" / "ct" / "chest_ct_1p5mm.nii.gz"

PROBE = r'''
import json, resource, statistics, sys, time, torch
torch.set_num_threads(2)
from idir_fast.environment import keep_freed_memory, malloc_policy
keep_freed_memory(keep=False)  # IDIR_FAST_MALLOC decides
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
mode = sys.argv[1]
if mode == "step":
    from idir_fast.apps.bench import make_step
    n, hidden, steps = int(sys.argv[2]), tuple(int(h) for h in sys.argv[3].split("x")), int(sys.argv[4])
    step, pair = make_step("torch", "bending", n, hidden, "cpu")
    x, f = pair.points[None], pair.fixed_values[None]
    for _ in range(3):
        step(x, f)
    times, f0 = [], faults()
    for _ in range(steps):
        t = time.perf_counter(); step(x, f); times.append(time.perf_counter() - t)
    per_step = (faults() - f0) / steps
else:
    import SimpleITK as sitk, idir_fast
    from idir_fast.data import deformed_pair
    from idir_fast.optim import step as step_module
    p = deformed_pair(sitk.ReadImage(sys.argv[2]), amplitude_mm=18.0, num_landmarks=100, seed=0)
    plain, seen = step_module.PairStep.__call__, []
    def timed(self, x, f):
        f0, t = faults(), time.perf_counter()
        out = plain(self, x, f)
        seen.append((time.perf_counter() - t, faults() - f0, x.shape[1]))
        return out
    step_module.PairStep.__call__ = timed
    extra = dict(schedule="paper", epochs=int(sys.argv[3])) if len(sys.argv) > 3 else {}
    t = time.perf_counter()
    reg = idir_fast.register(p.fixed, p.moving, p.mask, fixed_landmarks=p.fixed_landmarks,
                             moving_landmarks=p.moving_landmarks, progress=False, **extra)
    seconds, tre = time.perf_counter() - t, reg.metrics["tre"]["mean"]
    last = [s for s in seen if s[2] == seen[-1][2]][10:]
    times, per_step = [s[0] for s in last], statistics.mean(s[1] for s in last)
print(json.dumps({"ms": 1000 * statistics.median(times), "faults_per_step": per_step, "malloc": malloc_policy(),
                  **({"seconds": seconds, "tre_mean": tre} if mode == "register" else {})}))
'''


def probe(args, policy: str, fused: str) -> dict:
    env = dict(os.environ, IDIR_FAST_MALLOC=policy, IDIR_FAST_CPU_FUSED=fused)
    out = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1500:48x48x48,2000:128x128x128,10000:256x256x256")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ct", default=str(CT))
    ap.add_argument("--no-registration", action="store_true")
    ap.add_argument("--paper-epochs", type=int, default=0)
    ap.add_argument("--paper-configs", default="system/0,keep/0",
                    help="policy/fused pairs for the paper case (fused 0 = PyTorch ops, the size rule's choice there)")
    a = ap.parse_args()
    cases = []
    for spec in filter(None, a.sizes.split(",")):
        n, hidden = spec.split(":")
        steps = 6 if int(n) * max(int(h) for h in hidden.split("x")) > 1_000_000 else 40
        cases.append((f"step {n} points, {hidden}", ["step", n, hidden, str(steps)]))
    if not a.no_registration:
        cases.append(("register() defaults, ct-18mm, last stage", ["register", a.ct]))
    every = [(policy, fused) for policy in ("system", "keep") for fused in ("1", "0")]
    cases = [(label, args, every, a.rounds) for label, args in cases]
    if a.paper_epochs:  # before and after this policy, one round (each run is minutes)
        cases.append((f"register() schedule=paper, {a.paper_epochs} steps, ct-18mm",
                      ["register", a.ct, str(a.paper_epochs)],
                      [tuple(c.split("/")) for c in a.paper_configs.split(",")], 1))
    rows = []
    for label, args, configs, rounds in cases:
        runs = {}
        for _ in range(rounds):  # alternate the configurations within each round
            for policy, fused in configs:
                r = probe(args, policy, fused)
                runs.setdefault(f"{policy}/fused={fused}", []).append(r)
                print(label, policy, f"fused={fused}", r, flush=True)
        med = {k: {key: statistics.median(r[key] for r in v) for key in v[0] if key != "malloc"}
               for k, v in runs.items()}
        row = {"case": label, "runs": runs, "median": med}
        for fused in ("1", "0"):
            if f"keep/fused={fused}" in med and f"system/fused={fused}" in med:
                row[f"system_over_keep_fused={fused}"] = (med[f"system/fused={fused}"]["ms"]
                                                          / med[f"keep/fused={fused}"]["ms"])
        if "system/fused=0" in med and "keep/fused=1" in med:
            row["system_ops_over_keep_fused"] = med["system/fused=0"]["ms"] / med["keep/fused=1"]["ms"]
        print(label, json.dumps(med), {k: round(v, 2) for k, v in row.items() if k.startswith("system_")},
              flush=True)
        rows.append(row)
    out = {"command": sys.argv, "machine": machine_info("cpu"), "rows": rows}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = HERE / "results" / f"malloc_policy_{stamp}.json"
    path.write_text(json.dumps(out, indent=1))
    print("written", path)


if __name__ == "__main__":
    main()
