"""The thread policy (``RunSettings.threads``, :mod:`idir_fast.threads`): validated and recorded; the cores it
counts (affinity mask, cgroup quota, workers beside it); a step never runs on more threads than it allows; the
governor's decisions; results that do not depend on the thread count; and ``register()`` leaving the caller's
process as it found it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import idir_fast
from idir_fast import InputError, RunSettings, threads
from idir_fast.apps.bench import make_step
from idir_fast.apps.cli import main

KW = dict(epochs=30, batch_size=300, hidden=(16, 16), progress=False, device="cpu")
LINUX = sys.platform.startswith("linux")


# ------------------------------------------------------------------------------------------------ the setting
@pytest.mark.parametrize("value,expected", [("auto", "auto"), (None, "auto"), (2, 2), ("3", 3), (" AUTO ", "auto")])
def test_threads_setting_accepts_auto_and_positive_integers(value, expected):
    assert threads.check_threads(value) == expected
    assert RunSettings(threads=value).threads == expected


@pytest.mark.parametrize("value", [0, -1, "many", True, 1.5, "2.0"])
def test_a_bad_threads_setting_is_named_before_any_work(value, tiny_pair):
    with pytest.raises(InputError, match="'threads' must be 'auto' or a positive integer"):
        RunSettings(threads=value)
    with pytest.raises(InputError, match="'threads'"):
        idir_fast.register(tiny_pair.fixed, tiny_pair.moving, threads=value, **KW)


def test_the_command_refuses_a_bad_thread_count(tmp_path, capsys):
    rc = main(["register", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "--out", str(tmp_path / "x_"),
               "--threads", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "'--threads' must be 'auto' or a positive integer" in err and "Traceback" not in err


def test_the_environment_gives_the_default_and_an_argument_wins(monkeypatch):
    monkeypatch.setenv("IDIR_FAST_THREADS", "1")
    assert RunSettings().threads == 1
    assert RunSettings(threads="auto").threads == "auto"
    monkeypatch.setenv("IDIR_FAST_THREADS", "lots")
    with pytest.raises(InputError, match="'threads'"):
        RunSettings()


def test_the_report_records_the_setting_and_the_threads_used(tiny_pair):
    reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, threads=1, **KW)
    used = reg.run["threads_used"]
    assert reg.settings.threads == 1
    assert used["setting"] == 1 and used["max"] == 1 and used["adaptive"] is False and used["mean"] == 1.0
    assert [list(c) for c in used["changes"]] == [[0, 1]]
    assert used["steps"] == sum(stage["epochs_run"] for stage in reg.run["stages"]) > 0
    auto = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, **KW).run["threads_used"]
    assert auto["setting"] == "auto" and auto["adaptive"] is True
    assert 1 <= auto["mean"] <= auto["max"] == max(1, threads.usable_cores())


# ------------------------------------------------------------------------------------------------ the cores
def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity masks on this OS")
def test_auto_counts_the_affinity_mask_and_the_workers_beside_it():
    got = _child("import json, os\nfrom idir_fast import threads\n"
                 "first = min(os.sched_getaffinity(0))\n"
                 "all_cores = threads.usable_cores()\n"
                 "os.sched_setaffinity(0, {first})\n"
                 "one = (threads.usable_cores(), threads.max_threads('auto'), threads.max_threads(3))\n"
                 "os.sched_setaffinity(0, set(range(os.cpu_count())))\n"
                 "threads.set_workers(2)\n"
                 "print(json.dumps({'all': all_cores, 'one': one, 'shared': threads.max_threads('auto')}))")
    assert got["one"] == [1, 1, 3]  # an explicit count is the caller's
    assert got["shared"] == max(1, got["all"] // 2)


def test_a_cgroup_quota_caps_the_cores(tmp_path, monkeypatch):
    for text, quota in (("150000 100000", 1.5), ("max 100000", None), ("50000 100000", 0.5)):
        (tmp_path / "cpu.max").write_text(text + "\n")
        monkeypatch.setattr(threads, "_cgroup_paths", lambda: [tmp_path])
        assert threads.cgroup_cpu_quota() == quota
        expected = len(threads.affinity_cpus()) if quota is None else max(1, min(len(threads.affinity_cpus()),
                                                                                   int(quota)))
        assert threads.usable_cores() == expected
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_quota() == 2.0


def test_workers_must_be_a_positive_integer():
    with pytest.raises(InputError, match="'workers'"):
        threads.set_workers(0)


# ------------------------------------------------------------------------------------------------ the pool
STEP_THREADS = r"""
import json, os, sys, torch
from idir_fast import threads
from idir_fast.apps.bench import make_step

def times():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as fh:
                out[tid] = int(fh.read().split()[0])
        except OSError:
            pass
    return out

n = int(sys.argv[1])
step, pair = make_step("torch", "bending", 6000, (64, 64, 64), "cpu")
x, f = pair.points[None], pair.fixed_values[None]
torch.set_num_threads(2)
step(x, f)  # the pool has two threads from here on
with threads.thread_scope(n):
    step(x, f)  # warm-up at this count: the pool's other threads go idle
    before = times()
    for _ in range(6):
        step(x, f)
    after = times()
print(json.dumps(sum(1 for tid, t in after.items() if t - before.get(tid, 0) > 2_000_000)))
"""


@pytest.mark.skipif(not LINUX, reason="per-thread CPU time from /proc")
@pytest.mark.parametrize("n", [1, 2])
def test_a_step_runs_on_no_more_threads_than_the_policy_allows(n):
    """Every parallel part of a CPU step (matrix products, the fused stream kernels, the sampling + NCC op) runs
    in PyTorch's one pool, so the policy's count bounds the OS threads that work (the kernel's per-thread CPU
    time, ``/proc/self/task/*/schedstat``, in a fresh process: no other test's threads)."""
    out = subprocess.run([sys.executable, "-c", STEP_THREADS, str(n)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    busy = json.loads(out.stdout.strip().splitlines()[-1])
    assert 1 <= busy <= n, f"{busy} threads worked in a step under a policy of {n}"


def test_the_thread_count_does_not_change_the_result(tiny_pair):
    """Every reduction is split by a fixed grain, not by thread: 1 and 2 threads give the same numbers."""
    a = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, threads=1, **KW)
    b = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, threads=2, **KW)
    for key in a.history:
        np.testing.assert_array_equal(a.history[key], b.history[key])
    for pa, pb in zip(a.siren.parameter_list(), b.siren.parameter_list()):
        assert torch.equal(pa, pb)


# ------------------------------------------------------------------------------------------------ the governor
class _Clock:
    def __init__(self):
        self.t = 0.0


def _governor(monkeypatch, maximum=2, cpus=2):
    """A governor fed with made-up load samples: ``feed(waited, others)`` advances the clock one interval with the
    run's threads queued ``waited`` cores' worth and other processes busy ``others`` cores."""
    clock = _Clock()
    state = {"delay": 0.0, "busy": 0.0, "ours": 0.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock.t)
    g = threads.ThreadGovernor(maximum, adaptive=True)
    g.cpus = list(range(cpus))
    monkeypatch.setattr(g, "_sample", lambda: (clock.t, state["delay"], state["busy"], state["ours"]))
    g.start()

    def feed(waited, others, ours=None):
        dt = threads.CHECK_INTERVAL_S
        clock.t += dt
        state["delay"] += waited * dt
        ours = g.current if ours is None else ours
        state["ours"] += ours * dt
        state["busy"] += (others + ours) * dt
        g.tick()
        return g.current

    return g, feed


def test_the_governor_drops_a_thread_when_its_threads_queue_and_takes_it_back_when_a_core_idles(monkeypatch):
    before = torch.get_num_threads()
    try:
        g, feed = _governor(monkeypatch)
        assert g.current == 2
        assert feed(waited=0.01, others=0.0) == 2  # idle machine: stays
        assert feed(waited=0.10, others=0.1) == 2  # a nice-10 job beside it: two threads still pay
        assert feed(waited=0.70, others=0.7) == 1  # one busy process: the threads queue
        assert torch.get_num_threads() == 1
        assert feed(waited=0.00, others=1.0) == 1  # the other core stays busy: no thread more
        assert feed(waited=0.00, others=0.05) == 2  # it left: back to two
        assert g.record()["changes"] == [[0, 2], [3, 1], [5, 2]]
        assert feed(waited=3.0, others=2.0) == 1 and feed(waited=3.0, others=2.0) == 1  # never below one
    finally:
        torch.set_num_threads(before)


def test_the_governor_never_exceeds_its_maximum_and_a_fixed_count_never_moves(monkeypatch):
    before = torch.get_num_threads()
    try:
        g, feed = _governor(monkeypatch, maximum=1, cpus=4)
        assert feed(waited=0.0, others=0.0) == 1
        fixed = threads.ThreadGovernor(2, adaptive=False, setting=2)
        fixed.start()
        for _ in range(5):
            fixed.tick()
        assert fixed.current == 2 and fixed.record()["changes"] == [[0, 2]] and fixed.record()["mean"] == 2.0
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ the caller
def test_register_leaves_the_callers_process_as_it_found_it(tiny_pair):
    """Thread counts (PyTorch's and SimpleITK's), the default dtype, flush-denormal, grad mode and the malloc
    policy are what the caller had, after a run and after a failing one."""
    from idir_fast.environment import malloc_policy

    def state():
        tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 denormal: 0 when flushed
        return {"threads": torch.get_num_threads(), "itk": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
                "dtype": torch.get_default_dtype(), "grad": torch.is_grad_enabled(),
                "denormal_kept": bool((tiny * 1.0).item() != 0.0), "malloc": malloc_policy()}

    before_threads, before_itk = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    before_dtype = torch.get_default_dtype()
    try:
        torch.set_num_threads(1)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(3)
        torch.set_default_dtype(torch.float64)
        flush = torch.set_flush_denormal(True)
        for grad in (False, True):
            torch.set_grad_enabled(grad)
            expected = state()
            idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, threads=2, **KW)
            assert state() == expected
            constant = sitk.Image(tiny_pair.moving.GetSize(), sitk.sitkFloat32)
            constant.CopyInformation(tiny_pair.moving)
            with pytest.raises(InputError, match="constant"):  # fails inside the run, after its threads were set
                idir_fast.register(tiny_pair.fixed, constant, tiny_pair.mask, threads=2, **KW)
            assert state() == expected
            idir_fast.register_many([(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask)], threads=2, **KW)
            assert state() == expected
        assert flush in (True, False)
    finally:
        torch.set_grad_enabled(True)
        torch.set_flush_denormal(False)
        torch.set_default_dtype(before_dtype)
        torch.set_num_threads(before_threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before_itk)


def test_the_governor_starts_with_fewer_threads_when_the_cores_were_busy_while_the_run_prepared(monkeypatch):
    before = torch.get_num_threads()
    try:
        for others, expected in ((1.0, 1), (0.05, 2), (0.4, 2)):
            samples = iter([(0.0, 0.0, 0.0, 0.0), (2.0, 0.0, 2.0 * (others + 1.0), 2.0)])  # (t, delay, busy, ours)
            monkeypatch.setattr(threads.ThreadGovernor, "_sample", lambda self: next(samples))
            g = threads.ThreadGovernor(2, adaptive=True)
            g.cpus = [0, 1]
            g.start()
            assert g.current == expected == torch.get_num_threads(), (others, g.current)
            assert g.record()["changes"] == [[0, expected]]
    finally:
        torch.set_num_threads(before)
