"""Issue #16: kill tests that really kill during the save, and an atomic write watched from outside.

A real ``python -m idir_fast register|cohort`` process is started with ``IDIR_FAST_TEST_PAUSE=<point>:<seconds>``
(:func:`idir_fast.io.files.pause_for_tests`), which makes it announce the named point on stderr and sleep there,
inside its save. The test waits for that line, checks the folder while the writer is alive, kills it with
``SIGKILL`` at that very point, checks again, and then runs the next save or the resumed cohort:

* ``output-set-file`` (some files written under temporary names) and ``output-set-commit`` (all written, none
  renamed): the previous output set is byte-for-byte untouched and still verifies;
* ``output-set-renames`` (some files renamed, the report not yet): no report exists, and every file under a final
  name is whole — identical to its previous version or to the new one its pending report lists;
* in all cases the temporary files carry the killed pid, and the next save removes them and completes;
* cohort (``cohort-pair-saved``: the pair whole in its temporary folder; ``output-set-renames`` inside the pair's
  save): no folder of an unfinished pair under its final name, completed pairs untouched; on resume the killed
  pair is redone and the completed ones are not.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import SimpleITK as sitk

import idir_fast
from idir_fast.apps.cohort import register_cohort
from idir_fast.io.files import TMP_NAME, atomic_path, remove_dead_temporaries
from idir_fast.io.outputs import verify_output_set

FLAGS = ["--epochs", "2", "--batch-size", "50", "--hidden", "8", "--no-progress", "--device", "cpu"]
KW = dict(epochs=2, batch_size=50, hidden=(8,), device="cpu", progress=False)
PAUSE_S = 300  # the writer sleeps this long at the point; the test kills it long before
REACH_S = 240  # how long a writer may take to reach the point (imports, the self-check, a busy machine)


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def spawn(tmp_path):
    """``spawn(args, point)``: start ``python *args`` paused at ``point`` and return it once it is there."""
    procs = []

    def start(args, point, any_pid=False):
        """With ``any_pid``, a process it starts may be the one to pause (a cohort's worker)."""
        (tmp_path / "logs").mkdir(exist_ok=True)
        err = tmp_path / "logs" / f"stderr-{len(procs)}.txt"
        env = dict(os.environ, IDIR_FAST_TEST_PAUSE=f"{point}:{PAUSE_S}")
        with open(err, "w") as fh:
            proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=fh, env=env)
        procs.append(proc)
        marker = f"IDIR_FAST_TEST_PAUSE reached {point} (pid {'' if any_pid else proc.pid}"
        deadline = time.monotonic() + REACH_S
        while marker not in err.read_text(errors="replace"):
            if proc.poll() is not None:
                pytest.fail(f"the writer ended (status {proc.returncode}) before reaching {point!r}:\n"
                            + err.read_text(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                pytest.fail(f"the writer did not reach {point!r} within {REACH_S} s")
            time.sleep(0.02)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def kill_9(proc):
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL  # killed at the pause, not finished


def final_files(folder):
    """SHA-256 of every file under a final (not hidden) name in ``folder``."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".")}


def temporaries(folder, pid):
    """Hidden temporary names in ``folder``; each must be a temporary name of the writer ``pid``."""
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    for n in names:
        m = TMP_NAME.match(n)
        assert m and int(m["pid"]) == pid, f"{n!r} is not a temporary file of the writer (pid {pid})"
    return names


@pytest.fixture
def inputs(tiny_pair, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for name in ("fixed", "moving", "mask"):
        sitk.WriteImage(getattr(tiny_pair, name), str(d / f"{name}.nii.gz"))
    rows = ["pair_id,fixed,moving,mask"] + [f"p{i},fixed.nii.gz,moving.nii.gz,mask.nii.gz" for i in range(3)]
    (d / "one.csv").write_text("\n".join(rows[:2]) + "\n")
    (d / "three.csv").write_text("\n".join(rows) + "\n")
    return d


# ------------------------------------------------------------------------------------------------ register
@pytest.mark.parametrize("point", ["output-set-file", "output-set-commit", "output-set-renames"])
def test_register_killed_inside_its_save_leaves_no_half_written_output(point, inputs, tmp_path, spawn):
    out = tmp_path / "out"
    out.mkdir()
    prefix = str(out / "case_")
    reg = idir_fast.register(*(str(inputs / f"{n}.nii.gz") for n in ("fixed", "moving", "mask")), seed=0, **KW)
    reg.save(prefix)  # the previous output set
    before = final_files(out)
    assert verify_output_set(prefix) == [] and "case_report.json" in before
    proc = spawn(["-m", "idir_fast", "register", *(str(inputs / f"{n}.nii.gz") for n in ("fixed", "moving")),
                  "--mask", str(inputs / "mask.nii.gz"), "--out", prefix, "--seed", "1", *FLAGS], point)
    for state in ("paused", "killed"):  # while the writer sleeps inside its save, and after kill -9 there
        if state == "killed":
            kill_9(proc)
        leftovers = temporaries(out, proc.pid)
        assert leftovers, state
        now = final_files(out)
        if point != "output-set-renames":
            assert now == before, state  # nothing under a final name changed …
            assert verify_output_set(prefix) == [], state  # … and the previous set still verifies
        else:
            assert "case_report.json" not in now, state  # no report may describe the mixed set
            assert verify_output_set(prefix), state
            pending = [n for n in leftovers if n.startswith(".case_report.")]  # the new set's report, not yet moved
            assert len(pending) == 1, leftovers
            new = {n: i["sha256"] for n, i in json.loads((out / pending[0]).read_text())["files"].items()}
            for name, sha in now.items():  # every file under a final name is one whole version or the other
                assert sha in (before.get(name), new.get(name)), (state, name)
            renamed = {n for n in now if now[n] == new.get(n)}
            assert renamed and renamed != set(new), (state, renamed)  # really in the middle of the renames
    saved = reg.save(prefix)  # the next save removes the killed writer's files and completes
    assert verify_output_set(prefix) == []
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    report = json.loads((out / "case_report.json").read_text())
    assert sorted(report["temporary_files_removed"]) == leftovers
    assert sorted(final_files(out)) == sorted(os.path.basename(str(p)) for p in saved.values())


# ------------------------------------------------------------------------------------------------ cohort
@pytest.mark.parametrize("point", ["cohort-pair-saved", "output-set-renames"])
def test_cohort_killed_while_saving_a_pair_then_resumed(point, inputs, tmp_path, spawn):
    out = tmp_path / "runs"
    register_cohort(inputs / "one.csv", out, **KW)  # p0 completed by an earlier run
    p0 = final_files(out / "p0")
    p0_mtime = (out / "p0" / "model.pt").stat().st_mtime_ns
    summary_before = (out / "summary.json").read_bytes()
    proc = spawn(["-m", "idir_fast", "cohort", str(inputs / "three.csv"), "--out", str(out), "--workers", "1",
                  *FLAGS], point)
    for state in ("paused", "killed"):  # p0 skipped, the kill lands inside p1's save
        if state == "killed":
            kill_9(proc)
        names = sorted(p.name for p in out.iterdir())
        assert "p1" not in names and "p2" not in names, (state, names)  # whole or absent: absent
        tmp = [n for n in names if n.startswith(".p1.tmp-")]
        assert len(tmp) == 1 and tmp[0].startswith(f".p1.tmp-{proc.pid}-"), (state, names)
        assert not [n for n in names if n.startswith(".") and n not in (tmp[0], ".idir_fast-cohort.lock")], names
        if point == "cohort-pair-saved":  # the pair is whole in its temporary folder, only the rename is missing
            assert verify_output_set(os.path.join(out, tmp[0], "")) == [], state
        assert final_files(out / "p0") == p0 and verify_output_set(os.path.join(out, "p0", "")) == [], state
        assert (out / "summary.json").read_bytes() == summary_before, state
    summary = register_cohort(inputs / "three.csv", out, **KW)  # the resume
    assert summary["completed"] == 3 and summary["failed"] == 0
    assert (out / "p0" / "model.pt").stat().st_mtime_ns == p0_mtime and final_files(out / "p0") == p0  # not redone
    for pid in ("p1", "p2"):  # the killed pair redone, the one never started done
        assert verify_output_set(os.path.join(out, pid, "")) == []
    assert sorted(p.name for p in out.iterdir()) == [".idir_fast-cohort.lock", "p0", "p1", "p2", "summary.csv",
                                                     "summary.json"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cohort_with_worker_processes_killed_while_saving_then_resumed(inputs, tmp_path, spawn):
    """Two workers side by side, both paused with their pair whole in its temporary folder; the run (the parent)
    is killed: its workers die with it (they never rename a pair in after the run that holds the lock is gone),
    no unfinished pair appears under its final name, and the resume redoes both."""
    out = tmp_path / "runs"
    register_cohort(inputs / "one.csv", out, **KW)
    p0 = final_files(out / "p0")
    proc = spawn(["-m", "idir_fast", "cohort", str(inputs / "three.csv"), "--out", str(out), "--workers", "2",
                  *FLAGS], "cohort-pair-saved", any_pid=True)
    deadline = time.monotonic() + REACH_S
    while len([n for n in os.listdir(out) if ".tmp-" in n]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the second worker reaching its pause
    tmp = sorted(n for n in os.listdir(out) if ".tmp-" in n)
    assert [n.split(".tmp-")[0] for n in tmp] == [".p1", ".p2"], tmp
    workers = {int(n.split(".tmp-")[1].split("-")[0]) for n in tmp}
    assert proc.pid not in workers and all(_alive(w) for w in workers)
    kill_9(proc)
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "a worker outlived the cohort run that started it"
    names = sorted(p.name for p in out.iterdir())
    assert "p1" not in names and "p2" not in names, names
    assert final_files(out / "p0") == p0
    summary = register_cohort(inputs / "three.csv", out, **KW)
    assert summary["completed"] == 3 and summary["failed"] == 0
    assert sorted(p.name for p in out.iterdir()) == [".idir_fast-cohort.lock", "p0", "p1", "p2", "summary.csv",
                                                     "summary.json"]


def test_a_pair_folder_without_its_report_is_redone_not_skipped(inputs, tmp_path):
    """Resume is judged by the report (written last), not by the folder existing."""
    out = tmp_path / "runs"
    register_cohort(inputs / "one.csv", out, **KW)
    (out / "p0" / "report.json").unlink()  # what a save stopped during its renames leaves: files, no report
    summary = register_cohort(inputs / "one.csv", out, **KW)
    assert summary["completed"] == 1 and verify_output_set(os.path.join(out, "p0", "")) == []


# ------------------------------------------------------------------------------------------------ atomic_path
@pytest.mark.parametrize("previous", [None, b"the previous content\n"], ids=["new-file", "replaced-file"])
def test_atomic_path_shows_nothing_under_the_final_name_until_the_write_completes(tmp_path, previous):
    target = tmp_path / "summary.json"
    if previous is not None:
        target.write_bytes(previous)
    inside, release, errors = threading.Event(), threading.Event(), []

    def writer():
        try:
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(b"the first half")
                    fh.flush()
                    inside.set()
                    release.wait(30)
                    fh.write(b" and the second\n")
        except BaseException as err:  # noqa: BLE001 — reported below
            errors.append(err)
            inside.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert inside.wait(30) and not errors, errors
        # held half-way through the write: the final name is absent or still holds the previous content
        if previous is None:
            assert not target.exists()
        else:
            assert target.read_bytes() == previous
        assert len([p for p in tmp_path.iterdir() if TMP_NAME.match(p.name)]) == 1
    finally:
        release.set()
        thread.join(30)
    assert not errors, errors
    assert target.read_bytes() == b"the first half and the second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_writer_killed_inside_an_atomic_write_leaves_the_previous_file(tmp_path, spawn):
    target = tmp_path / "summary.csv"
    target.write_text("previous\n")
    code = "import sys; from idir_fast.io.files import write_text; write_text('new\\n' * 1000, sys.argv[1])"
    proc = spawn(["-c", code, str(target)], "atomic-write")
    assert target.read_text() == "previous\n"  # seen from this process while the other one is inside the write
    leftovers = temporaries(tmp_path, proc.pid)
    assert len(leftovers) == 1 and (tmp_path / leftovers[0]).read_text() == "new\n" * 1000
    kill_9(proc)
    assert target.read_text() == "previous\n"
    assert remove_dead_temporaries(tmp_path) == leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "summary.csv"]
