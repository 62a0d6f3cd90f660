"""Plant known bugs one at a time in a copy of the tree and check that the test suite catches each.

    python tests/mutations/run_mutations.py [--only NAME ...] [--report tests/mutations/REPORT.md]

Each mutation in ``MUTATIONS`` names a file, an exact snippet and its replacement (a bug that once survived the
suite, or one planted to probe a module; ``also`` holds further snippet/replacement pairs of one bug that spans
several places), and the tests that must then fail. The script copies the tracked tree
(plus the built extension) into a temporary folder, applies one mutation, runs those tests there with
``PYTHONPATH`` pointing at the copy, and records "killed" (the tests failed) or "SURVIVED". The working tree is
never modified. Mutations that only a GPU can see are listed with ``needs="cuda"`` and reported as skipped on a
CPU-only machine, with the check that catches them on a GPU.
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: Sequence[str]
    why: str
    needs: Optional[str] = None
    also: Sequence[Tuple[str, str, str]] = ()  # (file, old, new): more edits of the same bug


# The cohort's save of one pair: into a temporary folder, then renamed into place (and the plant that skips both).
_COHORT_SWAP = """\
        reg.save(os.path.join(tmp, ""), figures=bool(options.get("figures")), report_extra=extra)
        pause_for_tests("cohort-pair-saved")  # the pair is whole in its temporary folder, not yet renamed
        if final.exists():  # redone (--force, or incomplete): move the old folder aside, then swap
            aside = tempfile.mkdtemp(prefix=f".{pair.pair_id}.old-{os.getpid()}-", dir=out_dir)
            os.replace(final, os.path.join(aside, "old"))
        os.replace(tmp, final)  # the pair appears whole or not at all
        tmp = None
"""
_COHORT_DIRECT = """\
        final.mkdir(exist_ok=True)
        reg.save(os.path.join(final, ""), figures=bool(options.get("figures")), report_extra=extra)
        pause_for_tests("cohort-pair-saved")  # the pair is whole in its temporary folder, not yet renamed
"""
_COHORT_RESUME_OLD = '            if not (folder / "report.json").is_file():\n'
_COHORT_RESUME_NEW = '            if not folder.is_dir():\n'

MUTATIONS = [
    Mutation("hyperelastic-area-axis", "idir_fast/core/objectives.py",
             "area = torch.clamp((cof ** 2).sum(dim=1) - 1.0", "area = torch.clamp((cof ** 2).sum(dim=2) - 1.0",
             ["tests/test_metrics_closed_form.py"], "area term summed over the rows of cof(J) instead of its columns"),
    Mutation("jacdet-half-gradient", "idir_fast/transform.py",
             "determinant(u[1:4].permute(1, 2, 0) + eye)",
             "determinant(0.5 * u[1:4].permute(1, 2, 0) + eye)",
             ["tests/test_metrics_closed_form.py"], "JacDet computed with ∂u × 0.5"),
    Mutation("zero-displacement-field", "idir_fast/transform.py",
             'out["field"][start:end] = (moved - (x @ n2w_t[:3, :3].T + n2w_t[:3, 3])).cpu().numpy()',
             'out["field"][start:end] = 0.0 * (moved - (x @ n2w_t[:3, :3].T + n2w_t[:3, 3])).cpu().numpy()',
             ["tests/test_world_space.py"],
             "the written 0Warp is all zeros"),
    Mutation("bending-cross-weight", "idir_fast/core/objectives.py",
             "return (diagonal + 2.0 * sq[..., 3:6].sum(-1)).sum(-1).mean()",
             "return (diagonal + 1.0 * sq[..., 3:6].sum(-1)).sum(-1).mean()",
             ["tests/test_objectives.py"], "bending cross terms weighted 1 instead of 2"),
    Mutation("ncc-ddof", "idir_fast/core/objectives.py",
             'ddof = COMPAT[compat].ncc_ddof if n > 1 else 0\n        var_f',
             'ddof = 1 if n > 1 else 0\n        var_f', ["tests/test_objectives.py"],
             "NCC always with N−1 standard deviations"),
    Mutation("stream-second-derivative", "idir_fast/ops/siren_streams.py",
             "term = q * (zi[a] * zi[b])", "term = 0.5 * q * (zi[a] * zi[b])", ["tests/test_torch_streams.py"],
             "the q z_a z_b term of the Hessian streams halved"),
    Mutation("cpu-kernel-adjoint", "csrc/sine_streams_cpu.cpp",
             "g0[j] = c[j] * g0in[j] + q * (z1[j] * b1[j] + z2[j] * b2[j] + z3[j] * b3[j]);",
             "g0[j] = c[j] * g0in[j] + (z1[j] * b1[j] + z2[j] * b2[j] + z3[j] * b3[j]);",
             ["tests/test_torch_streams.py"], "the fused CPU adjoint drops q in z̄, order 1 and 2 (needs a rebuild "
             "of _C)", needs="build",
             also=[("csrc/sine_streams_cpu.cpp", "T h0 = c[j] * g0in[j] + q * (x1 * b1[j] + x2 * b2[j] + x3 * b3[j]);",
                    "T h0 = c[j] * g0in[j] + (x1 * b1[j] + x2 * b2[j] + x3 * b3[j]);")]),
    Mutation("triton-adjoint", "idir_fast/kernels/siren_streams.py", "g0 += q * (z1 * ga1 + z2 * ga2 + z3 * ga3)",
             "g0 += (z1 * ga1 + z2 * ga2 + z3 * ga3)", ["tests/test_triton_kernels.py::test_kernels_match_torch_streams_and_reference"],
             "the Triton adjoint kernel drops q in z̄"),
    Mutation("int32-stream-offsets", "idir_fast/kernels/siren_streams.py", "return N.to(tl.int64) * M",
             "return N * M", ["tests/test_triton_kernels.py::test_stream_offsets_are_64_bit_where_int32_would_wrap"],
             "32-bit stream offsets"),
    Mutation("trilinear-border", "idir_fast/core/sampling.py",
             "torch.clamp(torch.floor(c), max=float(hi - 1))", "torch.floor(c)", ["tests/test_sampling.py"],
             "the last voxel plane's cell not clamped"),
    Mutation("bending-host-tensor", "idir_fast/core/objectives.py",
             "    sq = H6 * H6\n", "    sq = H6 * H6 * torch.tensor(1.0, dtype=H6.dtype, device=H6.device)\n",
             ["tests/test_gpu_safety.py::test_every_step_is_capture_safe"],
             "a tensor built from host data inside the step (breaks CUDA-graph capture)"),
    Mutation("atomic-path-direct-write", "idir_fast/io/files.py",
             "    tmp = temporary_path(path)\n    try:\n        yield tmp\n",
             "    tmp = os.fspath(path)\n    try:\n        yield tmp\n",
             ["tests/test_failures_kill.py::test_atomic_path_shows_nothing_under_the_final_name_until_the_write_completes",
              "tests/test_failures_kill.py::test_a_writer_killed_inside_an_atomic_write_leaves_the_previous_file"],
             "`atomic_path` writes directly to the final name"),
    Mutation("output-set-report-first", "idir_fast/io/outputs.py",
             '        out = {}\n        for kind, (name, tmp) in list(self.pending.items()):\n',
             '        out = {"report": commit_file(report_tmp, self.final("report.json"))}\n'
             '        for kind, (name, tmp) in list(self.pending.items()):\n',
             ["tests/test_failures_kill.py::test_register_killed_inside_its_save_leaves_no_half_written_output"
              "[output-set-renames]",
              "tests/test_failures_outputs.py::test_a_crash_while_moving_the_set_into_place_leaves_no_report_and_tells"
              "_the_files_apart"],
             "the output set renames the report into place before the other files",
             also=[("idir_fast/io/outputs.py",
                    '        out["report"] = commit_file(report_tmp, self.final("report.json"))\n'
                    '        del self.pending["report"]\n',
                    '        del self.pending["report"]\n')]),
    Mutation("cohort-pair-direct-write", "idir_fast/apps/cohort.py", _COHORT_SWAP, _COHORT_DIRECT,
             ["tests/test_failures_kill.py::test_cohort_killed_while_saving_a_pair_then_resumed"],
             "the cohort writes a pair straight into `runs/<id>`: no temporary folder, no rename"),
    Mutation("cohort-resume-by-folder", "idir_fast/apps/cohort.py", _COHORT_RESUME_OLD, _COHORT_RESUME_NEW,
             ["tests/test_failures_kill.py::test_a_pair_folder_without_its_report_is_redone_not_skipped"],
             "resume judged by the pair folder existing instead of its report"),
    Mutation("cohort-direct-write-and-resume-by-folder", "idir_fast/apps/cohort.py", _COHORT_SWAP, _COHORT_DIRECT,
             ["tests/test_failures_kill.py::test_cohort_killed_while_saving_a_pair_then_resumed",
              "tests/test_failures_kill.py::test_a_pair_folder_without_its_report_is_redone_not_skipped"],
             "both of the above (issue #16's plant)",
             also=[("idir_fast/apps/cohort.py", _COHORT_RESUME_OLD, _COHORT_RESUME_NEW)]),
    # issue #23: three plants of the kind a refactor introduces, each caught by the fast unit tests that run first
    Mutation("weighted-ncc-unweighted-mean", "idir_fast/core/objectives.py",
             "    m = moving - (weights * moving).sum() / n\n", "    m = moving - moving.mean()\n",
             ["tests/test_units.py"], "the masked (weighted) NCC centres the moving samples with the unweighted mean"),
    Mutation("write-image-direct", "idir_fast/io/images.py",
             "    with atomic_path(path) as tmp:\n        write_image_to(tmp, image, path, compress)\n",
             "    write_image_to(os.fspath(path), image, path, compress)\n",
             ["tests/test_units.py"], "write_image writes straight into the final file name (no temporary + rename)"),
    Mutation("direction-transposed", "idir_fast/core/geometry.py",
             "a[:3, :3] = self.direction_matrix @ np.diag(self.spacing)",
             "a[:3, :3] = self.direction_matrix.T @ np.diag(self.spacing)",
             ["tests/test_units.py"], "the direction matrix transposed in index → world"),
    Mutation("cuda-half-warp-partials", "csrc/sample_ncc.cu", "", "", [],
             "the CUDA kernel's second reduction stage reads half the warp partials", needs="cuda"),
]


def _copy_tree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file() and not src.is_symlink():
            target = dst / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    for so in glob.glob(str(ROOT / "idir_fast" / "_C*.so")):
        shutil.copy2(so, dst / "idir_fast")
    (dst / "kernels").symlink_to("idir_fast/kernels")


def run_one(m: Mutation, shared: Optional[Path]) -> dict:
    if m.needs == "cuda":
        return {"name": m.name, "result": "skipped (needs a GPU)", "why": m.why,
                "caught_by": "tests/test_csrc_sample_ncc.py on CUDA; idir-fast doctor --gpu-acceptance (CUDA op vs "
                             "CPU op)"}
    with tempfile.TemporaryDirectory(prefix="mutant-") as d:
        tree = Path(d) / "main"
        _copy_tree(tree)
        if shared is not None:
            (Path(d) / "shared").symlink_to(shared)
        for file, old, new in [(m.file, m.old, m.new), *m.also]:
            path = tree / file
            text = path.read_text()
            if old not in text:
                return {"name": m.name, "result": f"NOT APPLIED (snippet not found in {file})", "why": m.why}
            if m.name != "baseline":
                path.write_text(text.replace(old, new, 1))
        if m.needs == "build":
            b = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, capture_output=True,
                               text=True)
            if b.returncode:
                return {"name": m.name, "result": "NOT APPLIED (build failed)", "why": m.why}
        env = dict(os.environ, PYTHONPATH=str(tree), IDIR_FAST_STRICT_SKIPS="0")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
        if m.name == "baseline":
            return {"name": m.name, "result": "FAILS UNMUTATED" if proc.returncode else "passes", "why": m.why,
                    "caught_by": " ".join(m.tests), "pytest": last}
        return {"name": m.name, "result": "killed" if proc.returncode else "SURVIVED", "why": m.why,
                "caught_by": " ".join(m.tests), "pytest": last}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="mutation names")
    ap.add_argument("--report", default=str(ROOT / "tests" / "mutations" / "REPORT.md"))
    a = ap.parse_args(argv)
    shared = ROOT.parent / "shared"
    rows = []
    tests = sorted({t for m in MUTATIONS if m.needs is None for t in m.tests})
    base = run_one(Mutation("baseline", MUTATIONS[0].file, "", "", tests, "no mutation: the same tests must pass"),
                   shared if shared.is_dir() else None)
    print(f"{base['result']:>30}  baseline ({base.get('pytest', '')})", flush=True)
    if base["result"] != "passes":
        print("the tests fail without a mutation: fix that first", file=sys.stderr)
        return 2
    rows.append(base)
    for m in MUTATIONS:
        if a.only and m.name not in a.only:
            continue
        r = run_one(m, shared if shared.is_dir() else None)
        print(f"{r['result']:>30}  {m.name}: {m.why}", flush=True)
        rows.append(r)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = [f"# Planted mutations ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit})", "",
             "`python tests/mutations/run_mutations.py` — each bug planted alone in a copy of the tree.", "",
             "| mutation | planted bug | result | caught by |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['why']} | {r['result']} | {r.get('caught_by', '')} |" for r in rows]
    if not a.only:
        Path(a.report).write_text("\n".join(lines) + "\n")
    survived = [r for r in rows if r["result"] in ("SURVIVED",) or r["result"].startswith("NOT APPLIED")]
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
