"""The ``idir-fast`` command: ``register``, ``demo``, ``cohort``, ``dirlab``, ``report``, ``bench``."""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional

from .. import backends
from ..core.objectives import REGULARIZERS
from ..errors import BackendError, DivergenceError, InputError, OutputError
from ..io.files import IMAGE_FORMATS, check_writable_prefix, ensure_folder, prepare_prefix
from ..settings import add_cli_options, options_from_cli, parse_hidden

_LOADED = time.perf_counter()
EXIT_OK = 0
EXIT_PAIRS_FAILED = 1
EXIT_INPUT = 2
EXIT_DIVERGED = 3
EXIT_OUTPUT = 4
_STATUS_TEXT = {
    EXIT_OK: "0 done",
    EXIT_INPUT: "2 usage or input error (a bad option or value, a missing, unreadable or corrupt input, an unusable "
                "output place, not enough memory{lock}), reported before any work where it can be",
    EXIT_DIVERGED: "3 the optimisation diverged (non-finite loss)",
    EXIT_OUTPUT: "4 an output could not be written (disk full, I/O error): the previous outputs of that name are kept",
}
_STATUS_ONE = {"cohort": "1 some pairs failed or diverged (the count is printed and in summary.json)",
               "doctor": "1 a check failed (the report names it)"}
# the statuses each command can end with (1 means something else to cohort and doctor; the others never return it)
_COMMAND_STATUSES = {"register": (0, 2, 3, 4), "apply": (0, 2, 4), "demo": (0, 2, 3, 4), "report": (0, 2, 4),
                     "dirlab": (0, 2, 3, 4), "cohort": (0, 1, 2, 4), "doctor": (0, 1, 2, 4), "bench": (0, 2, 4)}


def exit_status_help(command: Optional[str] = None) -> str:
    """The exit statuses ``command`` can end with (every command's with ``None``), for its --help."""
    codes = _COMMAND_STATUSES[command] if command else (0, 1, 2, 3, 4)
    parts = []
    for code in codes:
        if code == EXIT_PAIRS_FAILED:
            parts.append(_STATUS_ONE[command] if command else
                         "1 cohort: some pairs failed; doctor: a check failed")
        else:
            lock = ", another cohort run holding the folder" if command in (None, "cohort") else ""
            parts.append(_STATUS_TEXT[code].format(lock=lock))
    return "exit status: " + "; ".join(parts) + ". Failure behaviour in full: docs/failure-behaviour.md."


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    add_cli_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _engine_kwargs(a) -> dict:
    return dict(options_from_cli(a), progress=not a.no_progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idir-fast", epilog=exit_status_help(),
        description="Implicit-neural-representation deformable image registration (IDIR), fast. Φ maps fixed-image "
                    "world points (LPS mm) to moving-image points; outputs load in SimpleITK, ANTs and Slicer.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_parser = sub.add_parser

    def add_parser(name, *args, **kwargs):  # every command's --help ends with its exit statuses
        kwargs.setdefault("epilog", exit_status_help(name))
        return _add_parser(name, *args, **kwargs)

    sub.add_parser = add_parser

    r = sub.add_parser("register", help="register MOVING to FIXED and write field, warped image, det J, model, "
                                        "report", description="Register MOVING to FIXED.")
    r.add_argument("fixed", help="fixed image: NIfTI, MetaImage, NRRD file or a DICOM folder")
    r.add_argument("moving", help="moving image (same formats)")
    r.add_argument("--mask", help="fixed-image mask; points are drawn where mask > 0 (default: whole image)")
    r.add_argument("--out", required=True,
                   help="output prefix, e.g. out/case1_ → out/case1_0Warp.nii.gz, …Warped.nii.gz, …JacDet.nii.gz, "
                        "…model.pt, …report.json; a folder (out/ with a trailing /, or an existing folder) means "
                        "inside it: out/0Warp.nii.gz, … Missing folders are created. Earlier outputs of the same "
                        "prefix are replaced as a whole set (see docs/failure-behaviour.md)")
    r.add_argument("--format", default=".nii.gz", choices=IMAGE_FORMATS,
                   help="image format of the outputs (default: %(default)s)")
    r.add_argument("--itk-transform", action="store_true",
                   help="also write {prefix}Transform.h5, an ITK DisplacementFieldTransform")
    r.add_argument("--figures", action="store_true",
                   help="also write PNG figures: cumulative TRE, det J on a slice, loss curves")
    r.add_argument("--moving-mask", help="mask on the moving image: only points mapped inside it count in the "
                                         "similarity (e.g. to leave out a structure present in one image only)")
    r.add_argument("--initial-transform", help="starting fixed → moving transform: an ITK .tfm/.txt/.h5 or ANTs .mat "
                                               "file (linear); with --affine auto the affine stage starts from it")
    r.add_argument("--write-inverse", action="store_true",
                   help="also write {prefix}0InverseWarp (moving → fixed, on the moving grid; always written with "
                        "--symmetric) and report the inverse-consistency error")
    r.add_argument("--fixed-landmarks", help="landmark file of the fixed image (3 numbers per row)")
    r.add_argument("--moving-landmarks", help="corresponding landmarks of the moving image")
    r.add_argument("--landmarks-frame", default="world", choices=("world", "index0", "index1"),
                   help="landmark coordinates: world LPS mm, or 0-/1-based voxel indices (x y z) of their "
                        "image (default: %(default)s)")
    _add_engine_options(r)

    ap = sub.add_parser("apply", help="apply a saved registration to an image, a label map or a point file "
                                      "(as antsApplyTransforms / transformix)",
                        description="Resample IMAGE (moving side) onto the fixed grid through a saved registration, "
                                    "or map a point file fixed → moving; --inverse maps the other way. TRANSFORM is "
                                    "a run's model.pt (or its prefix or folder) or a 0Warp displacement field "
                                    "(+ --affine, a linear transform applied after it, as ANTs' -t 1Warp -t "
                                    "0GenericAffine.mat).")
    ap.add_argument("transform", help="model.pt, a run prefix/folder, or a 0Warp displacement-field image")
    ap.add_argument("input", help="an image or label map (.nii.gz, .mha, .nrrd, …) or a point file (.txt/.csv: "
                                  "x y z per row)")
    ap.add_argument("--out", required=True, help="output image or point file (folders are created)")
    ap.add_argument("--interpolation", default="linear", choices=("linear", "bspline", "nearest", "label"),
                    help="linear (default), bspline, nearest or label (label-Gaussian): the last two keep the "
                         "values and pixel type of a label map")
    ap.add_argument("--reference", help="the output grid (default: the fixed grid; with --inverse the moving grid "
                                        "stored in model.pt)")
    ap.add_argument("--inverse", action="store_true", help="map moving → fixed (the inverse of Φ)")
    ap.add_argument("--affine", help="with a displacement field that leaves its linear part out (ANTs' 1Warp): "
                         "that ITK/ANTs linear transform file, applied after the field. idir_fast's own 0Warp "
                         "already holds its run's Affine.mat, so it needs none")
    ap.add_argument("--default-value", type=float, default=0.0, help="value outside the input image (default 0)")
    ap.add_argument("--points-frame", default="world", choices=("world", "index0", "index1"),
                    help="input points: world LPS mm (default) or 0-/1-based voxel indices (x y z) of the fixed "
                         "image (with --inverse: the moving image); output points are world LPS mm")

    d = sub.add_parser("demo", help="register a procedural lung phantom with a known breathing motion and print "
                                    "the landmark TRE (no download needed)",
                       description="Generate a lung-like phantom and a known smooth breathing deformation, "
                                   "register them and print initial/final TRE against the exact ground truth.")
    d.add_argument("--out", default="idir_fast_demo", help="output folder (default: %(default)s)")
    d.add_argument("--full", action="store_true",
                   help="the paper's schedule (3×256, 10,000 points × 2500 steps; about an hour on a 2-core CPU) on a "
                        "larger phantom, instead of the package defaults")
    d.add_argument("--steps", "--epochs", dest="epochs", type=int, default=None,
                   help="optimisation steps in all (default: the schedule's)")
    d.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    d.add_argument("--backend", default="auto", choices=("auto",) + backends.names(), help="compute backend")
    d.add_argument("--regularizer", default="bending", choices=[r_.label for r_ in REGULARIZERS.values()])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    rp = sub.add_parser("report", help="make the figures of saved runs (cumulative TRE, det J slice, loss curves)",
                        description="Write PNG figures for every saved run (*report.json) in RUN_DIR, or for one "
                                    "run prefix.")
    rp.add_argument("run_dir", help="folder with saved runs, or a run prefix such as out/case1_")

    dl = sub.add_parser("dirlab", help="register DIR-LAB 4DCT cases (T00 → T50) and report TRE per case",
                        description="Register DIR-LAB cases: fixed = T00 (inhale), moving = T50 (exhale); the "
                                    "lung mask is built from HU thresholds unless --mask-dir gives one "
                                    "(caseN_mask.nii.gz). Raw .img volumes and Case{N}_300_T{00,50}_xyz.txt "
                                    "landmark files are found anywhere under --data.")
    dl.add_argument("--data", required=True, help="folder holding the DIR-LAB case folders")
    dl.add_argument("--case", type=int, nargs="+", required=True, help="case number(s), 1–10")
    dl.add_argument("--out", default=None, help="output folder (default: no files, TRE only)")
    dl.add_argument("--mask-dir", default=None, help="folder with caseN_mask.nii.gz lung masks")
    dl.add_argument("--identity", action="store_true", help="only report the identity transform's TRE")
    _add_engine_options(dl)

    co = sub.add_parser("cohort", help="register every pair of a manifest CSV into its own folder (resumable)",
                        description="Register a cohort: MANIFEST.csv has columns pair_id,fixed,moving and optionally "
                                    "mask,fixed_landmarks,moving_landmarks (world mm),moving_mask,initial_transform (paths relative to the "
                                    "manifest). Each pair writes DIR/<pair_id>/ atomically; rerunning skips "
                                    "completed pairs; failures are recorded in DIR/summary.csv and the others go "
                                    "on. One run at a time per output folder (a lock); a rerun with other "
                                    "settings stops unless --force. Exit status 1 when any pair failed.")
    co.add_argument("manifest", help="manifest CSV")
    co.add_argument("--out", required=True, help="output folder")
    co.add_argument("--executor", default="local", choices=("local", "ray"),
                    help="local: on this machine, in worker processes when the plan (--workers) has more than "
                         "one; ray: one Ray task per pair, asking for the threads of --threads as CPUs and for one "
                         "GPU where the cluster has GPUs (pip install 'idir-fast[ray]')")
    co.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")
    co.add_argument("--workers", type=int, default=None,
                    help="registrations side by side (default: one per usable core with one thread each, fewer when "
                         "memory is short; --threads sets the threads of each)")
    co.add_argument("--wait", action="store_true",
                    help="when another cohort run holds the output folder, wait for it (default: stop with exit "
                         "status 2)")
    co.add_argument("--force", action="store_true",
                    help="redo completed pairs that were made with other settings (default: stop with exit status 2 "
                         "and the differences)")
    _add_engine_options(co)
    co.add_argument("--figures", action="store_true", help="write PNG figures for every pair")

    dr = sub.add_parser("doctor", help="check this machine: environment, every fast path against the reference, "
                                       "capture safety, step time; --gpu-acceptance for a first GPU session",
                        description=__import__("idir_fast.apps.doctor", fromlist=["x"]).__doc__.split("\n\n")[1])
    dr.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    dr.add_argument("--full", action="store_true",
                    help="also time the step at a realistic size (a few minutes on a CPU; default: small sizes, "
                         "about half a minute)")
    dr.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    dr.add_argument("--gpu-acceptance", action="store_true",
                    help="also run the GPU acceptance checks (test suite, graph capture, CUDA vs CPU op, TRE per "
                         "precision, benchmark, throughput); on a CPU, what a CPU can run")
    dr.add_argument("--no-tests", action="store_true", help="with --gpu-acceptance: skip the test suite")
    dr.add_argument("--tests", default=None,
                    help="with --gpu-acceptance: the test folder to run (default: this source checkout's tests/; "
                         "an installed package has none)")
    dr.add_argument("--out", default=None,
                    help="write the JSON + Markdown report into this folder (default: no files, the summary printed; "
                         "with --gpu-acceptance: benchmarks/results of this source checkout, or the current folder "
                         "outside one)")

    b = sub.add_parser("bench", help="time one optimisation step per regulariser × backend, side by side",
                       description="Benchmark: backward passes per step, ms per step, projected s per 2500-step "
                                   "registration, peak memory, speed-up vs reference and the GEMM floor, for each "
                                   "regulariser × backend, measured in one run on this machine. Appends the rows "
                                   "to RESULTS_DIR/results.csv and a JSON file.")
    b.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke test)")
    b.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    b.add_argument("--backends", default=None,
                   help="comma-separated backends (default: reference and the device's automatic choices: "
                        + "; ".join(f"{k}: {','.join(v)}" for k, v in backends.DEVICE_PREFERENCE.items()) + ")")
    b.add_argument("--regularizers", default="none,jacobian,hyperelastic,bending",
                   help="comma-separated regularisers (default: %(default)s)")
    b.add_argument("--sizes", default="10000:256x256x256,2000:128x128x128,1500:48x48x48",
                   help="comma-separated POINTS:HIDDEN sizes (default: the paper's, a mid size and the CPU "
                        "default schedule's last stage: %(default)s)")
    b.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (default: %(default)s)")
    b.add_argument("--throughput", type=int, default=0, metavar="PAIRS",
                   help="also measure pairs/hour of register() one at a time vs register_many() with PAIRS pairs")
    b.add_argument("--profile", action="store_true",
                   help="also print where a step's time goes (per operator/kernel) for the fastest backend")
    b.add_argument("--results-dir", default=None,
                   help="folder to append results to (default: none; the repository uses benchmarks/results)")
    return parser


def _print_table(rows: List[List[str]], header: List[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))


def process_seconds() -> float:
    """Seconds since this process started (the wall time a user waits for the command), from the kernel where it
    tells; else since the command module was loaded."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _LOADED


def prepare_out(prefix: str, name: str = "--out") -> str:
    """The output prefix, its folder created when missing (never a system folder), then every output check."""
    return prepare_prefix(prefix, name)


def _switch_note(requested, settings) -> str:
    """What the schedule's probe may change, for the 'preparing' line."""
    from ..api import schedule_probe, switched_settings

    probe = schedule_probe(requested, settings)
    if probe is None:
        return ""
    finer = switched_settings(requested, probe)
    return (f" (on '{probe.schedule}', {finer.epochs} steps, SIREN {'×'.join(map(str, finer.hidden))}, if the pair "
            "is still far apart after the blurred stage)")


def cmd_register(a) -> int:
    from ..api import register
    from ..core.geometry import ImageGeometry
    from ..io.images import as_image
    from ..io.landmarks import read_points, to_world
    from ..settings import RunSettings

    requested = RunSettings(**options_from_cli(a))
    settings = requested.resolved()  # every setting checked before any file is read
    if bool(a.fixed_landmarks) != bool(a.moving_landmarks):
        raise InputError("'--fixed-landmarks' and '--moving-landmarks' must be given together")
    # a mistyped path fails before any image is read (a CT pair takes seconds to read)
    for name, path, what in (("fixed", a.fixed, "file"), ("moving", a.moving, "file"), ("--mask", a.mask, "file"),
                             ("--moving-mask", a.moving_mask, "file"),
                             ("--initial-transform", a.initial_transform, "transform file"),
                             ("--fixed-landmarks", a.fixed_landmarks, "landmark file"),
                             ("--moving-landmarks", a.moving_landmarks, "landmark file")):
        if path and not os.path.exists(path):
            raise InputError(f"'{name}': {what} not found: {path!r}")
    print("idir-fast register: reading and checking the inputs …", flush=True)
    fixed = as_image(a.fixed, "fixed")
    moving = as_image(a.moving, "moving")
    fl = ml = None
    if a.fixed_landmarks:
        fl = to_world(read_points(a.fixed_landmarks, "--fixed-landmarks"), a.landmarks_frame,
                      ImageGeometry.from_sitk(fixed))
        ml = to_world(read_points(a.moving_landmarks, "--moving-landmarks"), a.landmarks_frame,
                      ImageGeometry.from_sitk(moving))
    prefix = prepare_out(a.out)  # every output check before any work
    print(f"preparing: fixed {'×'.join(map(str, fixed.GetSize()))}, moving {'×'.join(map(str, moving.GetSize()))}"
          + (", mask" if a.mask else "") + (", affine stage" if settings.affine else "")
          + f"; {settings.epochs} steps of {settings.batch_size} points, SIREN "
          + "×".join(map(str, settings.hidden)) + f", {settings.threads} thread(s)"
          + _switch_note(requested, settings) + " …", flush=True)
    reg = register(fixed, moving, a.mask, fixed_landmarks=fl, moving_landmarks=ml, moving_mask=a.moving_mask,
                   initial_transform=a.initial_transform, **_engine_kwargs(a))
    t_written = process_seconds()
    print(f"writing the outputs to {prefix} …", flush=True)
    outputs = reg.save(prefix, field_format=a.format, itk_transform=a.itk_transform, figures=a.figures,
                       write_inverse=a.write_inverse)
    total = process_seconds()
    _summarise(outputs, {"total": total, "write": total - t_written})
    return 0


SIMILARITY_MEANING = {
    "ncc": ("NCC", "the normalised cross-correlation of the fixed image and the warped moving image"),
    "lncc": ("local NCC", "the normalised cross-correlation of the fixed and warped moving image over each "
                          "point's neighbourhood, averaged"),
    "ncc+lncc": ("NCC + local NCC", "the mean of the normalised cross-correlation of the fixed and warped moving "
                                    "image over all points and over each point's neighbourhood"),
}
"""What the last stage's similarity is, for the summary line (the stage records name it)."""

REGULARISER_MEANING = {"bending": "the bending energy of Φ (its second derivatives; lower is smoother)",
                       "jacobian": "the mean |1 − det ∂Φ/∂x| (0 where Φ keeps volume)",
                       "hyperelastic": "the hyperelastic energy of Φ (length, area and volume changes)"}


def _summarise(outputs, wall: Optional[dict] = None) -> None:
    """The run's summary, from the report it wrote (what the files say, metrics of the written det J included),
    with what each number means; ``wall``: the command's ``total`` and ``write`` seconds."""
    import json

    report = json.loads(Path(outputs["report"]).read_text(encoding="utf-8"))
    s, t, m = report["settings"], report["timings"], report["metrics"]
    print(f"\nregistered: {t['optimise_s']:.1f} s optimising ({t['ms_per_epoch']:.1f} ms/step, backend {s['backend']}, "
          f"{s['backward_passes_per_epoch']} backward pass(es)/step, device {s['device']})")
    probe = s.get("schedule_probe")
    if probe and probe.get("escalated_to"):
        print(f"schedule: the pair was still far apart after the blurred stage (NCC {probe['ncc']:.3f} < "
              f"{probe['min_ncc']:g}, e.g. two subjects): run again on '{probe['escalated_to']}' "
              f"({probe['seconds']:.1f} s of the optimisation were that first try; --schedule fast skips the switch)")
    if wall:
        optimise = t["optimise_s"]
        print(f"total {wall['total']:.1f} s: prepare {wall['total'] - wall['write'] - optimise:.1f} s (start-up, "
              f"reading and checking, preparing the points), optimise {optimise:.1f} s, write "
              f"{wall['write']:.1f} s")
    final = report["final_losses"]
    last = (s.get("stages") or [{}])[-1].get("similarity", "ncc")
    name, meaning = SIMILARITY_MEANING.get(last, SIMILARITY_MEANING["ncc"])
    print(f"final: {name} {-final['similarity']:.4f} — {meaning} at the last step's points (1: identical up to "
          "brightness and contrast; a blurred first stage scores higher than the sharp last one)")
    if s.get("regularizer"):
        print(f"       regulariser {final['regularization']:.4g} — {REGULARISER_MEANING.get(s['regularizer'], '')}")
    if "tre" in m:
        rows = [[name, f"{m[key]['mean']:.2f}", f"{m[key]['std']:.2f}", f"{m[key]['median']:.2f}",
                 f"{m[key]['p95']:.2f}", f"{m[key]['max']:.2f}"] for name, key in
                (("before", "tre_initial"), ("after", "tre"))]
        print()
        _print_table(rows, ["TRE (mm)", "mean", "std", "median", "p95", "max"])
    if "folding" in m:
        print(f"\nfolding: {m['folding']['count']} voxel(s) with det J ≤ 0 "
              f"({100 * m['folding']['fraction']:.3f} % of {m['folding']['voxels']})")
    if "inverse_consistency" in m:
        ic = m["inverse_consistency"]
        print(f"inverse: ‖Φ(Φ⁻¹(y)) − y‖ mean {ic['mean_mm']:.3g} mm, p95 {ic['p95_mm']:.3g}, max {ic['max_mm']:.3g}; "
              f"not converged {100 * ic['not_converged_fraction']:.2f} %")
    if "consistency" in m:
        c = m["consistency"]
        print(f"cycle consistency: mean {c['mean_mm']:.2f} mm, p95 {c['p95_mm']:.2f} mm"
              + (f" — DOUBTFUL (p95 > {c['flag_mm']} mm): look at the Consistency map" if c["flagged"] else ""))
    for k, v in outputs.items():
        print(f"  {k:9s} {v}")


POINT_SUFFIXES = (".txt", ".csv", ".pts")


def cmd_apply(a) -> int:
    from ..apply import apply, read_saved
    from ..io.files import split_extension
    from ..io.images import SINGLE_FILE_FORMATS, write_image
    from ..io.landmarks import write_points

    is_points = Path(a.input).suffix.lower() in POINT_SUFFIXES
    out = Path(a.out)
    if out.is_dir():
        raise InputError(f"'--out': {a.out!r} is a folder; give the output file's name, e.g. "
                         f"{str(out / ('points.txt' if is_points else 'warped.nii.gz'))!r}")
    if is_points != (out.suffix.lower() in POINT_SUFFIXES):
        raise InputError(f"'--out': {a.out!r} must be a {'point file (.txt/.csv)' if is_points else 'image'} like "
                         f"the input {a.input!r}")
    if not is_points and split_extension(out)[1].lower() not in SINGLE_FILE_FORMATS:
        raise InputError(f"'--out': {a.out!r} must end in one of {', '.join(SINGLE_FILE_FORMATS)}")
    if not Path(a.input).exists():
        raise InputError(f"'input': file not found: {a.input!r}")
    ensure_folder(out.parent if str(out.parent) else ".", "--out")  # every check before any work
    check_writable_prefix(str(out), "--out")
    t0 = time.perf_counter()
    saved = read_saved(a.transform, a.affine)
    if is_points:
        moved = apply(saved, points=a.input, inverse=a.inverse, points_frame=a.points_frame)
        write_points(moved, out)
        what = f"{len(moved)} points {'moving → fixed' if a.inverse else 'fixed → moving'}"
    else:
        image = apply(saved, a.input, reference=a.reference, interpolation=a.interpolation,
                      default_value=a.default_value, inverse=a.inverse)
        write_image(image, out)
        what = f"image {'×'.join(map(str, image.GetSize()))} ({a.interpolation})"
    print(f"idir-fast apply: {what} → {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_demo(a) -> int:
    from ..api import register
    from ..data import phantom_pair
    from ..io.images import write_image
    from ..io.landmarks import write_points
    from ..settings import RunSettings, resolve_device

    # every setting checked here, before anything is made or written
    RunSettings(backend=a.backend, seed=a.seed, device=a.device,
                regularizer=None if a.regularizer == "none" else a.regularizer,
                **({} if a.epochs is None else {"epochs": a.epochs})).resolved()
    dev = resolve_device(a.device)
    out = ensure_folder(a.out, "--out")
    full = a.full or dev.type == "cuda"
    settings = dict(schedule="paper") if a.full else {}
    size, spacing = ((128, 112, 96), (2.0, 2.0, 2.0)) if full else ((80, 72, 64), (3.0, 3.0, 3.0))
    if a.epochs is not None:
        settings["epochs"] = a.epochs
    t0 = time.perf_counter()
    resolved = RunSettings(device=a.device, **settings).resolved()
    print(f"idir-fast demo: procedural lung phantom {size[0]}×{size[1]}×{size[2]} at {spacing[0]} mm, "
          f"breathing motion up to 15 mm; schedule {resolved.schedule} (SIREN {'×'.join(map(str, resolved.hidden))}, "
          f"{resolved.batch_size} points, {resolved.epochs} steps" + ("" if a.full else "; --full: the paper's") + ")")
    pair = phantom_pair(size, spacing)
    write_image(pair.fixed, out / "fixed.nii.gz")
    write_image(pair.moving, out / "moving.nii.gz")
    write_image(pair.mask, out / "mask.nii.gz")
    write_points(pair.fixed_landmarks, out / "fixed_landmarks.txt")
    write_points(pair.moving_landmarks, out / "moving_landmarks.txt")
    reg = register(pair.fixed, pair.moving, pair.mask, regularizer=None if a.regularizer == "none" else
                   a.regularizer, device=dev, backend=a.backend, seed=a.seed, progress=not a.no_progress,
                   fixed_landmarks=pair.fixed_landmarks, moving_landmarks=pair.moving_landmarks, **settings)
    outputs = reg.save(str(out / "demo_"), figures=True)
    _summarise(outputs)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s; outputs in {out}/")
    return 0


def cmd_report(a) -> int:
    from ..io.figures import report_run_dir

    for prefix, figs in report_run_dir(a.run_dir).items():
        print(prefix)
        for kind, path in figs.items():
            print(f"  {kind:9s} {path}")
    return 0


def cmd_dirlab(a) -> int:
    from ..api import register
    from ..core.metrics import tre
    from ..data import lung_mask_from_hu
    from ..io import dirlab

    from ..io.images import as_image

    cases = [dirlab.check_case(c) for c in a.case]
    out_dir = None
    if a.out:
        out_dir = ensure_folder(a.out, "--out")
    found = [dirlab.find_case(a.data, c) for c in cases]  # all inputs checked before any work
    masks = {}
    if a.mask_dir:
        if not Path(a.mask_dir).is_dir():
            raise InputError(f"'--mask-dir': folder not found: {a.mask_dir!r}")
        for c in found:
            path = Path(a.mask_dir) / f"case{c.case}_mask.nii.gz"
            if not path.is_file():
                raise InputError(f"'--mask-dir': {str(path)!r} not found (the mask of case {c.case}; "
                                 "expected caseN_mask.nii.gz)")
            masks[c.case] = as_image(str(path), f"--mask-dir case {c.case}")
    rows = []
    for c in found:
        t_before = tre(c.fixed_landmarks, c.moving_landmarks)
        if a.identity:
            rows.append([str(c.case), f"{t_before['mean']:.2f} ({t_before['std']:.2f})", "–", "–", "–"])
            continue
        fixed, moving = c.images()
        if a.mask_dir:
            mask = masks[c.case]
        else:
            mask = lung_mask_from_hu(fixed)
        reg = register(fixed, moving, mask, fixed_landmarks=c.fixed_landmarks,
                       moving_landmarks=c.moving_landmarks, **_engine_kwargs(a)).evaluate()  # + folding
        if out_dir is not None:
            reg.save(str(out_dir / f"case{c.case}_"), figures=True)
        m = reg.metrics
        rows.append([str(c.case), f"{m['tre_initial']['mean']:.2f} ({m['tre_initial']['std']:.2f})",
                     f"{m['tre']['mean']:.2f} ({m['tre']['std']:.2f})", f"{reg.timings['optimise_s']:.0f}",
                     str(m.get("folding", {}).get("count", "–"))])
    print()
    _print_table(rows, ["case", "TRE before mean (std) mm", "TRE after mean (std) mm", "time s", "folded"])
    return 0


def cmd_cohort(a) -> int:
    from .cohort import register_cohort

    kw = _engine_kwargs(a)
    progress = kw.pop("progress")
    summary = register_cohort(a.manifest, a.out, executor=a.executor, address=a.address, progress=progress,
                              figures=a.figures, wait=a.wait, force=a.force, workers=a.workers, **kw)
    rows = [[r["pair_id"], r["status"], _fmt(r.get("tre_before_mean")), _fmt(r.get("tre_after_mean")),
             str(r.get("folded_voxels", "")), _fmt(r.get("seconds"), 1), (r.get("error") or "")[:70]]
            for r in summary["pairs"]]
    print()
    _print_table(rows, ["pair", "status", "TRE before", "TRE after", "folded", "s", "error"])
    plan = summary.get("plan", {})
    resumed = f" ({summary['resumed']} of them by an earlier run, kept)" if summary.get("resumed") else ""
    print(f"\n{summary['completed']} completed{resumed}, {summary['failed']} failed ({plan.get('workers')} "
          f"worker(s) × {plan.get('threads')} thread(s): {plan.get('reason')}); summary in "
          f"{Path(a.out) / 'summary.csv'}")
    if summary.get("doubtful"):
        print(f"doubtful (cycle consistency p95 above the flag): {', '.join(summary['doubtful'])}")
    if summary["failed"]:
        print(f"idir-fast cohort: {summary['failed']} pair(s) failed (exit status {EXIT_PAIRS_FAILED}); their errors "
              "are in summary.csv", file=sys.stderr)
    return EXIT_PAIRS_FAILED if summary["failed"] else EXIT_OK


def _fmt(v, digits=2):
    return "" if v is None else f"{v:.{digits}f}"


def cmd_bench(a) -> int:
    from ..settings import resolve_device
    from .bench import run

    dev = resolve_device(a.device)
    names = ([n.strip() for n in a.backends.split(",") if n.strip()] if a.backends
             else ["reference"] + list(backends.preference(dev)))
    if not names:
        raise InputError("'--backends' names no backend")
    for n in names:  # a backend this build cannot run here is a row of the table; an unknown name is a usage error
        if n not in backends.names():
            raise InputError(f"'--backends': unknown backend {n!r}; known: {', '.join(backends.names())}")
    regs = [None if r.strip() == "none" else r.strip() for r in a.regularizers.split(",") if r.strip()]
    for r in regs:
        if r not in REGULARIZERS:
            raise InputError(f"'--regularizers': unknown regulariser {r!r}")
    if a.quick:
        sizes, repeats, warmup = [(64, (16, 16))], 2, 1
    else:
        sizes, repeats, warmup = [], a.repeats, 2
        for item in a.sizes.split(","):
            try:
                n, h = item.split(":")
                sizes.append((int(n), parse_hidden(h)))
            except ValueError:
                raise InputError(f"'--sizes': expected POINTS:HIDDEN like 10000:256x256x256, got {item!r}") from None
    run(sizes, names, regs, device=dev, repeats=repeats, warmup=warmup, results_dir=a.results_dir,
        profile=a.profile)
    if a.throughput:
        from .bench import throughput

        n, hidden = sizes[-1]
        row = throughput(a.throughput, 5 if a.quick else 50, min(n, 2000), hidden, device=dev)
        if a.results_dir:
            from ..environment import machine_info
            from ..io.files import write_json

            info = machine_info(dev)
            stamp = info["timestamp"].replace(":", "").replace("-", "")
            write_json({"machine": info, "throughput": row}, Path(a.results_dir) / f"throughput_{stamp}.json")
    return 0


def cmd_doctor(a) -> int:
    from .doctor import ROOT, checkout_tests, doctor

    out = a.out
    if out is None and a.gpu_acceptance:
        out = str(ROOT / "benchmarks" / "results") if checkout_tests() is not None else "."
    report = doctor(a.device, quick=not a.full, gpu_acceptance=a.gpu_acceptance, run_tests=not a.no_tests,
                    tests=a.tests, out_dir=out)
    return 1 if report.failures else 0


COMMANDS = {"register": cmd_register, "apply": cmd_apply, "demo": cmd_demo, "bench": cmd_bench, "report": cmd_report,
            "dirlab": cmd_dirlab, "cohort": cmd_cohort, "doctor": cmd_doctor}


# exception → (what the message says, exit status): the one table of the command's failure modes
FAILURES = ((InputError, "error", EXIT_INPUT), (BackendError, "error", EXIT_INPUT),
            (DivergenceError, "diverged", EXIT_DIVERGED), (OutputError, "output error", EXIT_OUTPUT))


def in_flag_terms(message: str, parser: argparse.ArgumentParser, command: str) -> str:
    """``message`` with the library's parameter names (``'epochs'``, ``'moving_mask'``) as the command's flags
    (``'--steps'``, ``'--moving-mask'``): the user of a command typed flags, not Python arguments."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {}
    for action in subparsers.choices[command]._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag and flag != "--help":
            flags[action.dest] = flag
    # only the names the message starts with ("'epochs' must …", "'batch_size'/'hidden': …", "'a' and 'b' …"):
    # quoted paths and values later in it stay as they are, even when they happen to spell a parameter's name
    lead = re.match(r"'\w+'(?:(?:/| and )'\w+')*", message)
    if lead is None:
        return message
    names = re.sub(r"'(\w+)'", lambda m: f"'{flags.get(m.group(1), m.group(1))}'", lead.group(0))
    return names + message[lead.end():]


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MemoryError:
        print(f"idir-fast {args.command}: error: out of memory (the estimate before the run did not foresee it); "
              "use smaller images, --batch-size or --hidden", file=sys.stderr)
        return EXIT_INPUT
    except tuple(kind for kind, _, _ in FAILURES) as err:
        label, status = next((lab, st) for kind, lab, st in FAILURES if isinstance(err, kind))
        print(f"idir-fast {args.command}: {label}: {in_flag_terms(str(err), parser, args.command)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
