"""Cohort runner: manifest checks, failure isolation, resume after kill -9, and the Ray executor."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from idir_fast import InputError
from idir_fast.apps.cli import main
from idir_fast.apps.cohort import read_manifest, register_cohort
from idir_fast.io.landmarks import write_points

FAST = ["--epochs", "15", "--batch-size", "300", "--hidden", "16,16", "--no-progress", "--device", "cpu"]
FAST_KW = dict(epochs=15, batch_size=300, hidden=(16, 16), device="cpu")


@pytest.fixture
def cohort_dir(tiny_pair, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    sitk.WriteImage(tiny_pair.fixed, str(d / "f.nii.gz"))
    sitk.WriteImage(tiny_pair.moving, str(d / "m.nii.gz"))
    sitk.WriteImage(tiny_pair.mask, str(d / "mask.nii.gz"))
    sitk.WriteImage(tiny_pair.mask * 0, str(d / "empty.nii.gz"))
    write_points(tiny_pair.fixed_landmarks, d / "fl.txt")
    write_points(tiny_pair.moving_landmarks, d / "ml.txt")
    rows = ["pair_id,fixed,moving,mask,fixed_landmarks,moving_landmarks"]
    for i in range(3):
        rows.append(f"p{i},f.nii.gz,m.nii.gz,mask.nii.gz,fl.txt,ml.txt")
    rows.append("bad_missing,f.nii.gz,nope.nii.gz,,,")
    rows.append("bad_mask,f.nii.gz,m.nii.gz,empty.nii.gz,,")
    (d / "manifest.csv").write_text("\n".join(rows) + "\n")
    return d


@pytest.mark.parametrize("content,pattern", [
    ("pair_id,fixed\na,b\n", "lacks required column"),
    ("pair_id,fixed,moving\na,f,m\na,f,m\n", "duplicate pair_id 'a'"),
    ("pair_id,fixed,moving\n../x,f,m\n", "must be letters"),
    ("pair_id,fixed,moving\n", "lists no pairs"),
    ("pair_id,fixed,moving,fixed_landmarks\na,f,m,l.txt\n", "needs both landmark files"),
])
def test_manifest_errors_before_any_work(tmp_path, content, pattern):
    p = tmp_path / "m.csv"
    p.write_text(content)
    with pytest.raises(InputError, match=pattern):
        read_manifest(p)


def test_output_folder_that_is_a_file(cohort_dir, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        register_cohort(cohort_dir / "manifest.csv", f, progress=False, **FAST_KW)


def test_failures_are_isolated_and_resume_skips_completed(cohort_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["cohort", str(cohort_dir / "manifest.csv"), "--out", str(out), *FAST])
    assert rc == 2  # two pairs failed
    summary = json.loads((out / "summary.json").read_text())
    status = {r["pair_id"]: r for r in summary["pairs"]}
    assert [status[f"p{i}"]["status"] for i in range(3)] == ["ok"] * 3
    assert "file not found" in status["bad_missing"]["error"] and "'mask' is empty" in status["bad_mask"]["error"]
    assert status["p0"]["tre_after_mean"] < status["p0"]["tre_before_mean"]
    assert sorted(p.name for p in (out / "p0").iterdir()) == ["0Warp.nii.gz", "JacDet.nii.gz", "Warped.nii.gz",
                                                             "model.pt", "report.json"]
    assert not (out / "bad_mask").exists() and not list(out.glob(".*tmp*"))
    assert "summary.csv" in capsys.readouterr().out
    mtime = (out / "p0" / "model.pt").stat().st_mtime_ns
    summary2 = register_cohort(cohort_dir / "manifest.csv", out, progress=False, **FAST_KW)
    assert (out / "p0" / "model.pt").stat().st_mtime_ns == mtime  # skipped, not redone
    assert summary2["completed"] == 3 and summary2["failed"] == 2


def test_kill_9_mid_run_then_resume(cohort_dir, tmp_path):
    out = tmp_path / "out"
    lines = (cohort_dir / "manifest.csv").read_text().splitlines()[:4]  # the three good pairs
    (cohort_dir / "good.csv").write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "idir_fast", "cohort", str(cohort_dir / "good.csv"), "--out", str(out),
           "--epochs", "150", "--batch-size", "300", "--hidden", "32,32", "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "p0" / "report.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get into the next pair
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "p0" / "report.json").exists()
    completed_before = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for d in completed_before:  # every pair folder in place is whole
        assert (out / d / "report.json").exists() and (out / d / "model.pt").exists()
    mtime = (out / "p0" / "model.pt").stat().st_mtime_ns
    summary = register_cohort(cohort_dir / "good.csv", out, progress=False, epochs=150, batch_size=300,
                              hidden=(32, 32), device="cpu")
    assert summary["completed"] == 3 and summary["failed"] == 0
    assert (out / "p0" / "model.pt").stat().st_mtime_ns == mtime
    assert not list(out.glob(".*tmp*"))


def test_ray_executor_matches_local(cohort_dir, tmp_path):
    pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    lines = (cohort_dir / "manifest.csv").read_text().splitlines()
    (cohort_dir / "small.csv").write_text("\n".join(lines[:3] + lines[4:5]) + "\n")  # 2 good, 1 bad
    kw = dict(FAST_KW, threads=1, progress=False)
    local = register_cohort(cohort_dir / "small.csv", tmp_path / "local", **kw)
    remote = register_cohort(cohort_dir / "small.csv", tmp_path / "ray", executor="ray", **kw)
    assert local["completed"] == remote["completed"] == 2 and local["failed"] == remote["failed"] == 1
    for a, b in zip(local["pairs"], remote["pairs"]):
        assert a["pair_id"] == b["pair_id"] and a["status"] == b["status"]
        if a["status"] == "ok":
            assert b["tre_after_mean"] == pytest.approx(a["tre_after_mean"], rel=1e-4)
            assert b["folded_voxels"] == a["folded_voxels"]
