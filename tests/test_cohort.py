"""Cohort runner: manifest checks, failure isolation, resume after kill -9, and the Ray executor."""
import json
import os
import signal
import subprocess
import sys
import time

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
    # issue #13, item 7: these raised tracebacks (or broke the output folder for good)
    ("pair_id,fixed,moving\na,f,m,extra,more\n", "line 2: 5 fields, the header has 3"),
    ("pair_id,fixed,moving\ncaf\xe9,f\xe9,m\n".encode("latin-1"), "is not UTF-8 text"),
    ("pair_id,fixed,moving\n" + "p" * 300 + ",f,m\n", "is 300 characters; at most 100"),
    ("pair_id,fixed,moving\nsummary.csv,f,m\n", "'summary.csv' is the name of a file the cohort writes"),
    ("pair_id,fixed,moving\nSummary.JSON,f,m\n", "is the name of a file the cohort writes"),
    ("pair_id,fixed,moving\nCase1,f,m\ncase1,f,m\n", "duplicate pair_id 'case1'"),
], ids=["missing-column", "duplicate", "unsafe-id", "no-pairs", "one-landmark-file", "extra-fields", "latin-1",
        "long-id", "id-summary.csv", "id-summary.json", "ids-differing-in-case"])
def test_manifest_errors_before_any_work(tmp_path, content, pattern):
    p = tmp_path / "m.csv"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=pattern):
        read_manifest(p)
    rc = main(["cohort", str(p), "--out", str(tmp_path / "out"), *FAST])
    assert rc == 2 and not (tmp_path / "out").exists()


def test_output_folder_that_is_a_file(cohort_dir, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        register_cohort(cohort_dir / "manifest.csv", f, progress=False, **FAST_KW)


def test_failures_are_isolated_and_resume_skips_completed(cohort_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["cohort", str(cohort_dir / "manifest.csv"), "--out", str(out), *FAST])
    assert rc == 1  # some pairs failed (exit status 1; the count is in the summary)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 2 and summary["exit_status"] == 1
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
    assert summary["resumed"] == 0 and summary2["resumed"] == 3  # the kept pairs say so; the failed were retried
    assert [r["resumed"] for r in summary2["pairs"] if r["status"] == "ok"] == [True] * 3
    assert main(["cohort", str(cohort_dir / "manifest.csv"), "--out", str(out), *FAST]) == 1
    assert "3 completed (3 of them by an earlier run, kept)" in capsys.readouterr().out
    assert (out / "summary.csv").read_text().splitlines()[0].startswith("pair_id,status,resumed,")


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


# ------------------------------------------------------------------------------- issue #13: lock, settings, umask
def _one_pair_manifest(cohort_dir, name="one.csv"):
    lines = (cohort_dir / "manifest.csv").read_text().splitlines()[:2]
    (cohort_dir / name).write_text("\n".join(lines) + "\n")
    return cohort_dir / name


def test_a_second_run_on_the_same_folder_stops_and_leaves_the_first_runs_work_alone(cohort_dir, tmp_path, capsys):
    """Item 2: the second run used to delete the first's temporary pair folder and redo its pairs."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(  # another run holding the folder (as `idir-fast cohort` does for its whole run)
        [sys.executable, "-c", "import sys, time; from idir_fast.apps.cohort import CohortLock; "
         f"CohortLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        in_progress = out / ".p0.tmp-999-abcdefgh"  # the live run's pair being written
        in_progress.mkdir()
        manifest = _one_pair_manifest(cohort_dir)
        with pytest.raises(InputError, match=f"another idir-fast cohort run is using .*pid {holder.pid} .*--wait"):
            register_cohort(manifest, out, progress=False, **FAST_KW)
        assert main(["cohort", str(manifest), "--out", str(out), *FAST]) == 2
        assert "another idir-fast cohort run" in capsys.readouterr().err
        assert in_progress.is_dir() and not (out / "p0").exists() and not (out / "summary.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    summary = register_cohort(manifest, out, progress=False, **FAST_KW)  # the holder is gone: its leftovers go
    assert summary["completed"] == 1 and not in_progress.exists()


def test_wait_queues_behind_the_run_that_holds_the_folder(cohort_dir, tmp_path):
    import threading

    from idir_fast.apps.cohort import CohortLock

    out = tmp_path / "out"
    out.mkdir()
    lock = CohortLock(out).acquire()
    threading.Timer(1.5, lock.release).start()
    t0 = time.perf_counter()
    summary = register_cohort(_one_pair_manifest(cohort_dir), out, progress=False, wait=True, **FAST_KW)
    assert time.perf_counter() - t0 >= 1.4 and summary["completed"] == 1


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(backend="triton"), "'backend' is 'triton', which does not run on cpu"),
    (dict(epochs=0), "'epochs' must be a positive integer"),
])
def test_a_settings_error_fails_once_up_front(cohort_dir, tmp_path, monkeypatch, kwargs, pattern):
    """Item 8: it used to fail every pair one by one (BackendError per pair)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=pattern):
        register_cohort(cohort_dir / "manifest.csv", out, progress=False, **{**FAST_KW, **kwargs})
    assert not out.exists() or not list(out.iterdir())


def test_a_rerun_with_other_settings_refuses_unless_forced(cohort_dir, tmp_path, capsys):
    """Item 8: a rerun with other settings used to keep the old pairs silently."""
    out = tmp_path / "out"
    manifest = _one_pair_manifest(cohort_dir)
    first = register_cohort(manifest, out, progress=False, **FAST_KW)
    report = json.loads((out / "p0" / "report.json").read_text())
    assert report["cohort"]["settings_hash"] == first["settings_hash"] == first["pairs"][0]["settings_hash"]
    mtime = (out / "p0" / "model.pt").stat().st_mtime_ns
    assert register_cohort(manifest, out, progress=False, **FAST_KW)["completed"] == 1  # same settings: resumed
    assert (out / "p0" / "model.pt").stat().st_mtime_ns == mtime
    changed = dict(FAST_KW, epochs=16)
    with pytest.raises(InputError, match=r"1 completed pair\(s\) .* \(p0\) were made with other settings "
                                         r"\(epochs: 15 → 16\).*--force"):
        register_cohort(manifest, out, progress=False, **changed)
    assert main(["cohort", str(manifest), "--out", str(out), *FAST[:1], "16", *FAST[2:]]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "p0" / "model.pt").stat().st_mtime_ns == mtime
    redone = register_cohort(manifest, out, progress=False, force=True, **changed)
    assert redone["completed"] == 1 and redone["settings_hash"] != first["settings_hash"]
    report = json.loads((out / "p0" / "report.json").read_text())
    assert report["settings"]["epochs"] == 16 and report["cohort"]["settings_hash"] == redone["settings_hash"]
    assert sorted(p.name for p in out.iterdir()) == [".idir_fast-cohort.lock", "p0", "summary.csv", "summary.json"]


def test_an_incomplete_pair_folder_is_redone(cohort_dir, tmp_path):
    out = tmp_path / "out"
    manifest = _one_pair_manifest(cohort_dir)
    register_cohort(manifest, out, progress=False, **FAST_KW)
    (out / "p0" / "Warped.nii.gz").unlink()
    summary = register_cohort(manifest, out, progress=False, **FAST_KW)
    assert summary["completed"] == 1 and (out / "p0" / "Warped.nii.gz").is_file()


def test_cohort_folders_and_files_honour_the_umask(cohort_dir, tmp_path):
    """Item 10: pair folders were 0700 and files 0600 whatever the umask."""
    old = os.umask(0o022)
    try:
        register_cohort(_one_pair_manifest(cohort_dir), tmp_path / "out", progress=False, **FAST_KW)
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "p0").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "out" / "p0").iterdir()} == {0o644}
    assert (tmp_path / "out" / "summary.csv").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------- issue #21: workers × threads
def test_workers_side_by_side_give_the_results_of_one_worker(cohort_dir, tmp_path):
    """Two worker processes and one in-process worker give the same pairs, bit for bit (same seed, same settings;
    the thread count does not change results), and failures stay isolated in either layout."""
    kw = dict(FAST_KW, progress=False)
    one = register_cohort(cohort_dir / "manifest.csv", tmp_path / "one", workers=1, **kw)
    two = register_cohort(cohort_dir / "manifest.csv", tmp_path / "two", workers=2, **kw)
    assert one["plan"]["workers"] == 1 and two["plan"]["workers"] == 2
    assert (one["completed"], one["failed"]) == (two["completed"], two["failed"]) == (3, 2)
    for a, b in zip(one["pairs"], two["pairs"]):
        assert (a["pair_id"], a["status"]) == (b["pair_id"], b["status"])
        if a["status"] == "ok":
            assert a["tre_after_mean"] == b["tre_after_mean"] and a["folded_voxels"] == b["folded_voxels"]
        else:
            assert a["error"].split(":")[0] == b["error"].split(":")[0]


def _plan(cohort_dir, **kw):
    from idir_fast import RunSettings
    from idir_fast.apps.cohort import plan_workers

    pairs = read_manifest(cohort_dir / "manifest.csv")
    return plan_workers(pairs, RunSettings(device="cpu", **kw.pop("settings", {})), **kw)


def test_the_plan_uses_every_usable_core_with_one_thread_each(cohort_dir, monkeypatch):
    from idir_fast import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    assert (_plan(cohort_dir).workers, _plan(cohort_dir).threads) == (4, 1)
    assert (_plan(cohort_dir, workers=2).workers, _plan(cohort_dir, workers=2).threads) == (2, 2)
    plan = _plan(cohort_dir, settings=dict(threads=2))
    assert (plan.workers, plan.threads) == (2, 2)
    monkeypatch.setattr(threads, "usable_cores", lambda: 64)
    assert _plan(cohort_dir).workers == 5  # never more workers than pairs
    with pytest.raises(InputError, match="'workers' must be a positive integer"):
        _plan(cohort_dir, workers=0)


def test_the_plan_leaves_out_workers_whose_memory_would_not_fit(cohort_dir, monkeypatch):
    from idir_fast import memory, threads
    from idir_fast.apps import cohort

    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(memory, "available_host_memory", lambda: int(3.5 * cohort.WORKER_OVERHEAD_BYTES))
    plan = _plan(cohort_dir)
    assert plan.workers == 2 and plan.threads == 4 and "memory" in plan.reason


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity masks on this OS")
def test_the_plan_respects_the_affinity_mask(cohort_dir):
    """Run in a child process pinned to one CPU: one worker, one thread."""
    code = ("import json, os\nfrom idir_fast import RunSettings\nfrom idir_fast.apps.cohort import plan_workers, "
            "read_manifest\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            f"pairs = read_manifest({str(cohort_dir / 'manifest.csv')!r})\n"
            "p = plan_workers(pairs, RunSettings(device='cpu'))\nprint(json.dumps([p.workers, p.threads]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, 1]


def test_the_command_takes_workers_and_threads(cohort_dir, tmp_path, capsys):
    rc = main(["cohort", str(cohort_dir / "manifest.csv"), "--out", str(tmp_path / "o"), "--workers", "2",
               "--threads", "1", *FAST])
    out = capsys.readouterr().out
    assert rc == 1 and "2 worker(s) × 1 thread(s)" in out  # two bad pairs in the manifest
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["plan"]["workers"] == 2 and summary["completed"] == 3
    report = json.loads((tmp_path / "o" / "p0" / "report.json").read_text())
    assert report["settings"]["threads"] == 1 and report["settings"]["threads_used"]["max"] == 1


def test_a_setting_added_later_keeps_the_folders_made_before_it_resumable():
    from idir_fast import RunSettings
    from idir_fast.apps.cohort import ADDED_SETTINGS, settings_fingerprint, settings_hash

    assert ADDED_SETTINGS == {"sampling": "uniform", "regularizer_share": None}
    for name in ADDED_SETTINGS:
        assert name not in settings_fingerprint(RunSettings())  # as before the setting existed
    assert settings_fingerprint(RunSettings(sampling="gradient"))["sampling"] == "gradient"
    assert settings_hash(RunSettings(sampling="gradient")) != settings_hash(RunSettings())
    assert settings_fingerprint(RunSettings(regularizer_share=0.5))["regularizer_share"] == 0.5
    assert settings_hash(RunSettings(regularizer_share=0.5)) != settings_hash(RunSettings())
    # the paper's schedule did not change with it: its folders resume
    paper = settings_fingerprint(RunSettings(schedule="paper"))
    assert "regularizer_share" not in paper and paper["schedule_profiles"]["cpu"]["regularizers"] == {}
