"""How many CPU threads a run uses: one policy (``RunSettings.threads``), applied for the run and undone after it.

A registration on the CPU is a long chain of short parallel regions (matrix products, the stream algebra, the
sampling op), all run by PyTorch's one thread pool (OpenMP). At every region's end the pool's threads wait for
each other; when another runnable process shares the cores, one of them is descheduled for a scheduler slice
and the others spin until it is back — so ``T`` threads on ``T`` cores with one more busy process run several
times *slower* than one thread (``benchmarks/throughput.py``). A cohort node is never idle, so the thread count
has to follow what the process really has:

* :func:`usable_cores`: the CPUs of this process's affinity mask, capped by its cgroup CPU quota;
* :func:`set_workers`: how many registration workers of this package run side by side (the cohort runner's
  workers declare it), which share those cores;
* :class:`ThreadGovernor`: while a run trains, how much its threads wait for a CPU (the kernel's per-thread
  run-queue delay, ``/proc/self/task/*/schedstat``) and how busy the other processes keep the cores
  (``/proc/stat``): a thread fewer when the threads queue, one more when a core has been left idle.

``threads="auto"`` (the default) = ``max(1, usable cores // workers)``, at most ``OMP_NUM_THREADS`` when that
is set, adapted by the governor; an integer is used as given, for the whole run. Results do not depend on the thread count (every parallel reduction of the
package is split by a fixed grain, not by thread; same seed → same result with 1 or 2 threads, tested), so the
governor changes only the time. What was used is recorded in every report (:meth:`ThreadGovernor.record`).

OpenMP's wait policy (spin, then sleep) is fixed once the runtime is loaded, so a library cannot change it; the
governor removes the case where spinning costs (more runnable threads than cores) instead.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from .errors import InputError

ThreadSetting = Union[str, int]

_workers = 1

CHECK_INTERVAL_S = 0.25
"""Seconds between the governor's looks at the load (each look reads a few small ``/proc`` files)."""
QUEUE_FRACTION = 0.15
"""A thread fewer when the run's threads together waited for a CPU more than this share of the time, per thread:
with one busy process beside two threads on two cores they wait ~0.35 per thread and run ~3× slower than one
thread; a process at nice 10 makes them wait ~0.05, where two threads are still the faster choice."""
IDLE_CORE = 0.75
"""A thread more when, besides this run's threads, at least this much of a core stayed idle."""


# ------------------------------------------------------------------------------------------------ the machine
def _cgroup_paths() -> List[Path]:
    """This process's cgroup folders, innermost first (v2 unified hierarchy, or v1's ``cpu`` controller)."""
    out: List[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # v2
            base = Path("/sys/fs/cgroup")
        elif "cpu" in controllers.split(","):
            base = Path("/sys/fs/cgroup") / controllers
            if not base.is_dir():
                base = Path("/sys/fs/cgroup/cpu")
        else:
            continue
        p = base / rel.lstrip("/")
        while True:
            out.append(p)
            if p == base or p.parent == p:
                break
            p = p.parent
    return out


def cgroup_cpu_quota() -> Optional[float]:
    """The CPU quota of this process's cgroups in cores (the smallest along the hierarchy), ``None`` without one:
    v2 ``cpu.max`` ("max 100000" or "150000 100000"), v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    quotas = []
    for folder in _cgroup_paths():
        try:
            text = (folder / "cpu.max").read_text().split()
            if len(text) == 2 and text[0] != "max" and int(text[1]) > 0:
                quotas.append(int(text[0]) / int(text[1]))
            continue
        except (OSError, ValueError):
            pass
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
            if quota > 0 and period > 0:
                quotas.append(quota / period)
        except (OSError, ValueError):
            pass
    return min(quotas) if quotas else None


def affinity_cpus() -> List[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where the OS has no such mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """Cores this process may use: its affinity mask, capped by its cgroup CPU quota (rounded down, at least 1:
    threads beyond a quota are throttled)."""
    cores = len(affinity_cpus())
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, int(math.floor(quota + 1e-9))))
    return max(1, cores)


def set_workers(n: int) -> None:
    """Declare that this process is one of ``n`` registration workers running side by side on this machine's
    usable cores (the cohort runner calls it in each worker it starts); ``threads="auto"`` then divides the cores
    among them."""
    global _workers
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"'workers' must be a positive integer, got {n!r}")
    _workers = n


def workers() -> int:
    """The number of workers this process shares the cores with (itself included; 1 unless :func:`set_workers`)."""
    return _workers


def check_threads(value) -> ThreadSetting:
    """Validate a ``threads`` setting: ``"auto"`` or a positive integer (``"2"`` from a command line is 2)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"'threads' must be 'auto' or a positive integer, got {value!r}")
    return int(value)


def omp_num_threads() -> Optional[int]:
    """``OMP_NUM_THREADS`` when it is a positive integer: a limit the user set for every OpenMP program."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def max_threads(setting: ThreadSetting) -> int:
    """The thread count a run starts with: an integer setting as given; ``"auto"``: usable cores // workers, and
    no more than ``OMP_NUM_THREADS`` when that is set (a limit users and schedulers set for every program)."""
    setting = check_threads(setting)
    if setting != "auto":
        return int(setting)
    cap = omp_num_threads()
    return max(1, min(usable_cores() // workers(), cap or 1 << 30))


# ------------------------------------------------------------------------------------------------ applying it
def _itk_threads() -> Optional[int]:
    try:
        import SimpleITK as sitk

        return int(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    except Exception:  # noqa: BLE001 — SimpleITK missing or without the call: nothing to set
        return None


def _set_itk_threads(n: int) -> None:
    with contextlib.suppress(Exception):
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))


@contextlib.contextmanager
def thread_scope(n: int) -> Iterator[None]:
    """Run the block with ``n`` threads in PyTorch's pool (OpenMP and MKL alike) and as SimpleITK's default, and
    put back what the caller had afterwards, however the block ends."""
    import torch

    before_torch, before_itk = torch.get_num_threads(), _itk_threads()
    torch.set_num_threads(int(n))
    if before_itk is not None:
        _set_itk_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before_torch)
        if before_itk is not None:
            _set_itk_threads(before_itk)


# ------------------------------------------------------------------------------------------------ the governor
def _run_queue_delay_s() -> Optional[float]:
    """Seconds this process's threads have spent runnable but waiting for a CPU, summed (``None`` where the
    kernel does not tell: not Linux, or schedstats off)."""
    total, seen = 0, False
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[1])
                seen = True
        except (OSError, ValueError, IndexError):
            continue
    return total * 1e-9 if seen else None


def _busy_cpu_s(cpus: List[int]) -> Optional[float]:
    """CPU-seconds the given CPUs have been busy since boot (every process's work, ``/proc/stat``)."""
    wanted = set(cpus)
    busy = 0
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if not (line.startswith("cpu") and line[3:4].isdigit()):
                    continue
                fields = line.split()
                if int(fields[0][3:]) not in wanted:
                    continue
                ticks = [int(v) for v in fields[1:9]]
                busy += sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    except (OSError, ValueError):
        return None
    return busy / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """The thread count of one run on the CPU: starts at ``maximum`` and, when ``adaptive``, follows the load at
    most every :data:`CHECK_INTERVAL_S` while the run trains (:meth:`tick` once per step; it reads the clock and,
    when due, a few ``/proc`` files — no syscalls into PyTorch unless the count changes).

    Args:
        maximum: the most threads to use (:func:`max_threads`).
        adaptive: follow the load (``threads="auto"``); otherwise ``maximum`` throughout.
        setting: the setting it came from, for the record.
    """

    def __init__(self, maximum: int, adaptive: bool = True, setting: ThreadSetting = "auto"):
        self.maximum = max(1, int(maximum))
        self.adaptive = bool(adaptive)
        self.setting = setting
        self.current = self.maximum
        self.cpus = affinity_cpus()
        self.steps = 0
        self.changes: List[Tuple[int, int]] = [(0, self.current)]
        self.thread_steps = 0  # Σ threads over steps, for the mean
        self._last: Optional[tuple] = None
        self._entry: Optional[tuple] = self._sample() if self.adaptive else None  # the run's start

    def _sample(self) -> Optional[tuple]:
        delay = _run_queue_delay_s()
        busy = _busy_cpu_s(self.cpus)
        if delay is None or busy is None:
            return None
        return time.monotonic(), delay, busy, time.process_time()

    def start(self) -> None:
        """At the start of the optimisation: the starting count — fewer than the maximum when other processes
        kept the cores busy while the run was preparing (from the run's start to now) — applied, and the first
        load sample taken."""
        import torch

        if self.adaptive:
            self._last = self._sample()
            if self._entry is not None and self._last is not None and self.steps == 0:
                wall = self._last[0] - self._entry[0]
                if wall >= 0.1:
                    others = max(0.0, ((self._last[2] - self._entry[2]) - (self._last[3] - self._entry[3])) / wall)
                    free = len(self.cpus) - others
                    self.current = max(1, min(self.maximum, int(math.floor(free + 0.5))))
                    self.changes = [(0, self.current)]
        torch.set_num_threads(self.current)

    def tick(self) -> None:
        """Once per step: count it and, when due, look at the load and change the thread count by at most one."""
        self.steps += 1
        self.thread_steps += self.current
        if not self.adaptive or self._last is None or time.monotonic() - self._last[0] < CHECK_INTERVAL_S:
            return
        now = self._sample()
        if now is None:
            self.adaptive = False
            return
        wall = now[0] - self._last[0]
        waited = (now[1] - self._last[1]) / wall  # cores' worth of our threads queued for a CPU
        others = max(0.0, (now[2] - self._last[2]) / wall - (now[3] - self._last[3]) / wall)
        self._last = now
        target = self.current
        if self.current > 1 and waited > QUEUE_FRACTION * self.current:
            target = self.current - 1
        elif self.current < self.maximum and waited < 0.05 * self.current and \
                len(self.cpus) - self.current - others >= IDLE_CORE:
            target = self.current + 1
        if target != self.current:
            import torch

            self.current = target
            torch.set_num_threads(target)
            self.changes.append((self.steps, target))

    def record(self) -> dict:
        """What the report keeps: the setting, the most threads allowed and why, and the count over the steps
        (``changes``: ``[step, threads]`` from that step on). Steps count every optimisation of the run in order:
        with a schedule probe that switched, the first try's steps come first (``schedule_probe`` in the report).
        One governor serves a whole :func:`~idir_fast.register_many` call: there a batched step counts once for
        its pairs, and each pair's report holds the counts up to the moment its result was built."""
        return {"setting": self.setting, "max": self.maximum, "usable_cores": usable_cores(),
                "workers": workers(), "adaptive": self.adaptive, "steps": self.steps,
                "mean": round(self.thread_steps / self.steps, 3) if self.steps else float(self.current),
                "changes": [list(c) for c in self.changes]}


@contextlib.contextmanager
def run_threads(setting: ThreadSetting, device_type: str = "cpu") -> Iterator[ThreadGovernor]:
    """The thread policy of one run: a :class:`ThreadGovernor` (adaptive for ``"auto"`` on a CPU), its starting
    count applied for the block (:func:`thread_scope`) and the caller's counts restored afterwards."""
    setting = check_threads(setting)
    governor = ThreadGovernor(max_threads(setting), adaptive=setting == "auto" and device_type == "cpu",
                              setting=setting)
    with thread_scope(governor.maximum):
        yield governor


__all__ = ["usable_cores", "cgroup_cpu_quota", "affinity_cpus", "set_workers", "workers", "check_threads",
           "max_threads", "thread_scope", "ThreadGovernor", "run_threads"]
