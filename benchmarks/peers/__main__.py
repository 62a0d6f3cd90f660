"""``python -m benchmarks.peers``: ANTs SyN, elastix, FireANTs and idir_fast on the same cases in one run; one
record (``results/peers_<stamp>.json``) and one plot (``.png``). A tool whose package is missing is skipped with
the reason. The point-convention check runs first; a failure aborts (no TRE would be trustworthy)."""
from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import List, Optional

from ..cases import ALL_CASES, build_case
from ..common import RESULTS, configure_threads, machine_info, write_record
from . import adapters, evaluate
from .conventions import check_conventions
from .report import format_table, plot

DEFAULT_TOOLS = ("ants-syn", "elastix", "fireants", "idir")
DEFAULT_IDIR_PROFILES = ("default", "default+affine")


def _split(value: Optional[str]) -> Optional[List[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", help=f"comma-separated; default {','.join(ALL_CASES)} (blobs with --quick)")
    ap.add_argument("--tools", help=f"comma-separated; default {','.join(DEFAULT_TOOLS)}")
    ap.add_argument("--idir-profiles", help=f"default {','.join(DEFAULT_IDIR_PROFILES)} (see peers/idir.py)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every tool (default 2)")
    ap.add_argument("--quick", action="store_true", help="tiny settings on the small blobs case: a smoke test")
    ap.add_argument("--check-conventions", action="store_true", help="only the known-translation check")
    ap.add_argument("--data", default=None, help="the shared data folder (default: ../shared/data)")
    ap.add_argument("--out", default=str(RESULTS), help="folder of the record (default benchmarks/results)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    configure_threads(a.threads)
    known = adapters()
    tools = _split(a.tools) or list(DEFAULT_TOOLS)
    bad = [t for t in tools if t not in known]
    if bad:
        raise SystemExit(f"unknown tools {bad}; known: {', '.join(known)}")
    runnable = {}
    for name in tools:
        why = known[name].unavailable()
        if why:
            print(f"skipping {name}: {why}")
        else:
            runnable[name] = known[name]
    t0 = time.perf_counter()
    print("convention check (known translation):", flush=True)
    check = check_conventions(runnable, a.threads, quick=a.quick)
    check["seconds"] = time.perf_counter() - t0
    print(f"convention check {'PASSED' if check['passed'] else 'FAILED'} ({check['seconds']:.0f} s)", flush=True)
    record = {"command": sys.argv, "threads": a.threads, "machine": machine_info(), "convention_check": check,
              "skipped": {t: known[t].unavailable() for t in tools if t not in runnable}}
    if a.check_conventions:
        print(f"written {write_record('peers_check', record, a.out)}")
        return 0 if check["passed"] else 1
    if not check["passed"]:
        print("aborting: a tool's point mapping failed the known-translation check")
        return 1
    profiles = {"idir": _split(a.idir_profiles) or (["quick"] if a.quick else list(DEFAULT_IDIR_PROFILES))}
    cases, rows = [], []
    for name in _split(a.cases) or (["blobs"] if a.quick else list(ALL_CASES)):
        try:
            case = build_case(name, a.data)
        except (OSError, ValueError) as err:
            print(f"skipping case {name}: {err}")
            continue
        cases.append(case)
        print(f"case {case.name}: {case.description}", flush=True)
        for tool, adapter in runnable.items():
            for profile in profiles.get(tool, ["quick" if a.quick else "default"]):
                print(f"  {tool} {profile} …", flush=True)
                try:
                    row = evaluate(case, adapter.register(case.fixed, case.moving, case.mask, threads=a.threads,
                                                          profile=profile))
                except Exception as err:  # noqa: BLE001 — record the failure, keep comparing the others
                    row = {"case": case.name, "error": f"{type(err).__name__}: {err}"}
                    print(f"    failed: {row['error']}", flush=True)
                else:
                    said = []
                    if "tre" in row:
                        said.append(f"TRE {row['tre_initial']['mean']:.2f} → {row['tre']['mean']:.2f} mm "
                                    f"(p95 {row['tre']['p95']:.2f})")
                    if "dice" in row:
                        said.append(f"Dice {row['dice_initial']['mean']:.3f} → {row['dice']['mean']:.3f}")
                    print(f"    {', '.join(said)}, {row['seconds']:.1f} s", flush=True)
                row.update(tool=tool, profile=profile, threads=a.threads)
                rows.append(row)
    print()
    print(format_table(rows))
    record.update(cases=[c.summary() for c in cases], rows=rows, total_seconds=time.perf_counter() - t0)
    path = write_record("peers_quick" if a.quick else "peers", record, a.out)
    if cases:
        plot(rows, cases, path.with_suffix(".png"),
             f"{'quick ' if a.quick else ''}peers, {a.threads} threads, {platform.machine()} "
             f"({record['machine'].get('cpu', '')})")
    print(f"written {path}" + (f" and {path.with_suffix('.png')}" if cases else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
