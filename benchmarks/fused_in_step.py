"""The fused CPU stream kernels inside the whole optimisation step, on and off, interleaved in one run.

    python benchmarks/fused_in_step.py [--sizes 1500:48x48x48,…] [--regularizers bending,jacobian] [--rounds 6]
    python benchmarks/fused_in_step.py --registration [--rounds 3]

``benchmarks/backward_choice.py`` times the stream op alone; this times what a user runs — the ``torch``
backend's full step (streams, sampling + NCC, regulariser, backward, Adam) — with the compiled kernels allowed
(``FUSED_MAX_ELEMENTS`` unlimited) and forbidden (0), each round in fresh processes, alternating.
``--registration`` times what decides it in the end: whole ``register()`` runs with the package defaults on the
shared chest CT with an 18 mm breathing motion (the CPU schedule: 750 then 1,500 points × 3×48), with
``IDIR_FAST_CPU_FUSED=1`` and ``=0``, alternating fresh processes. The
crossover :data:`idir_fast.ops.siren_streams.FUSED_MAX_ELEMENTS` is set from this table. Writes
``results/fused_in_step_<timestamp>.json``.
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

PROBE = r'''
import sys, time, statistics, torch
reg, n, hidden, limit, steps = sys.argv[1], int(sys.argv[2]), tuple(int(h) for h in sys.argv[3].split("x")), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(2)
import idir_fast.ops.siren_streams as ss
ss.FUSED_MAX_ELEMENTS = limit
from idir_fast.apps.bench import make_step
step, pair = make_step("torch", None if reg == "none" else reg, n, hidden, "cpu")
x, f = pair.points[None], pair.fixed_values[None]
times = []
for _ in range(steps + 8):
    t = time.perf_counter(); step(x, f); times.append(time.perf_counter() - t)
print(1000 * statistics.median(times[8:]))
'''


REGISTRATION = r'''
import json, time
import SimpleITK as sitk
import idir_fast
from idir_fast.data import deformed_pair
p = deformed_pair(sitk.ReadImage(sys.argv[1]), amplitude_mm=18.0, num_landmarks=100, seed=0)
t = time.perf_counter()
reg = idir_fast.register(p.fixed, p.moving, p.mask, fixed_landmarks=p.fixed_landmarks,
                         moving_landmarks=p.moving_landmarks, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "tre_mean": reg.metrics["tre"]["mean"],
                  "stage_seconds": [s["seconds"] for s in reg.settings["stages"]]}))
'''


def registration_rows(rounds: int, ct: str) -> list:
    runs = {"fused": [], "pytorch": []}
    for _ in range(rounds):
        for label, flag in (("fused", "1"), ("pytorch", "0")):
            env = dict(os.environ, IDIR_FAST_CPU_FUSED=flag)
            out = subprocess.run([sys.executable, "-c", "import sys\n" + REGISTRATION, ct], env=env,
                                 capture_output=True, text=True, check=True).stdout
            runs[label].append(json.loads(out.strip().splitlines()[-1]))
            print(label, runs[label][-1], flush=True)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    print(f"register() on ct-18mm, defaults: fused {med['fused']:.1f} s, PyTorch ops {med['pytorch']:.1f} s, "
          f"speed-up {med['pytorch'] / med['fused']:.2f}×")
    return [{"case": "ct-18mm", "runs": runs, "fused_s": med["fused"], "pytorch_s": med["pytorch"],
             "pytorch_over_fused": med["pytorch"] / med["fused"]}]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1500:48x48x48,4000:48x48x48,2000:128x128x128,10000:256x256x256")
    ap.add_argument("--regularizers", default="bending,jacobian")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--registration", action="store_true", help="whole register() runs instead of steps")
    ap.add_argument("--ct", default=str(HERE.parent.parent / "shared" / "data" / "ct" / "chest_ct_1p5mm.nii.gz"))
    a = ap.parse_args()
    rows = []
    if a.registration:
        rows = registration_rows(a.rounds, a.ct)
        a.sizes = ""
    for size in filter(None, a.sizes.split(",")):
        n, hidden = size.split(":")
        for reg in a.regularizers.split(","):
            ms = {"fused": [], "pytorch": []}
            for _ in range(a.rounds):
                for label, limit in (("fused", 1 << 62), ("pytorch", 0)):
                    out = subprocess.run([sys.executable, "-c", PROBE, reg, n, hidden, str(limit), str(a.steps)],
                                         capture_output=True, text=True, check=True).stdout
                    ms[label].append(float(out.strip().splitlines()[-1]))
            row = {"points": int(n), "hidden": hidden, "regularizer": reg, "rounds": ms,
                   "fused_ms": statistics.median(ms["fused"]), "pytorch_ms": statistics.median(ms["pytorch"])}
            row["pytorch_over_fused"] = row["pytorch_ms"] / row["fused_ms"]
            rows.append(row)
            print(f"{n:>6} pts {hidden:>11} {reg:>12}: fused {row['fused_ms']:7.1f} ms, PyTorch ops "
                  f"{row['pytorch_ms']:7.1f} ms, speed-up of the fused kernels {row['pytorch_over_fused']:.2f}×",
                  flush=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = HERE / "results" / f"fused_in_step_{stamp}.json"
    out.write_text(json.dumps({"command": ["benchmarks/fused_in_step.py", *sys.argv[1:]],
                               "machine": machine_info("cpu"), "rows": rows}, indent=1) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
