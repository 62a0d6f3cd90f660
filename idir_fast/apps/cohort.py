"""Cohort registration: a manifest of pairs, one output folder per pair, resumable, failure-isolated, and
optionally spread over GPUs and machines with Ray.

* **One run per output folder.** A run holds an exclusive advisory lock (``fcntl.flock`` on
  ``DIR/.idir_fast-cohort.lock``) for its whole duration; a second run on the same folder stops with a message
  naming the holder (exit status 2), or waits for it with ``wait=True`` (``--wait``). Temporary pair folders are
  removed only under the lock, so only those of runs that are no longer alive.
* **Checked once, up front.** The manifest, the settings (and, with the local executor, the device and backend on
  this machine) and the output folder are checked before any pair runs; a problem there is one error, not one
  failure per pair.
* **Whole pair folders.** Each pair is registered and written into a temporary folder beside its final one, then
  renamed into place (an earlier folder of that pair is moved aside first and removed after): a pair folder holds
  a complete, consistent output set or does not exist.
* **Resume with the same settings.** Every pair's report records the hash of the run settings. A rerun skips
  pairs whose folder is complete and whose settings hash matches; pairs made with other settings make the run
  stop with the differences (exit status 2) unless ``force=True`` (``--force``), which redoes them. Incomplete
  pair folders (files missing or of the wrong size) are redone. The summary marks each pair an earlier run made
  (``resumed``) and counts them.
* **Failures isolated.** A pair that fails (an unreadable file, an empty mask, divergence …) is recorded with its
  error in ``summary.csv``/``summary.json`` and the others go on; the summary counts them, and the command exits
  with status 1 when any failed.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..errors import InputError
from ..io.files import ensure_folder, honour_umask, name_max, remove_dead_temporaries, write_json, write_text
from ..io.outputs import verify_output_set
from ..settings import RunSettings, with_setting_parameters

REQUIRED = ("pair_id", "fixed", "moving")
OPTIONAL = ("mask", "fixed_landmarks", "moving_landmarks", "moving_mask", "initial_transform")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_PAIR_ID = 100
"""Longest pair id: it names a folder, and its temporary folder adds ~20 characters."""
LOCK_NAME = ".idir_fast-cohort.lock"
SUMMARY_NAMES = ("summary.csv", "summary.json")
RESERVED_IDS = {n.lower() for n in SUMMARY_NAMES}
SUMMARY_FIELDS = ("pair_id", "status", "resumed", "error", "doubtful", "tre_before_mean", "tre_after_mean",
                  "tre_after_p95", "folded_voxels", "sdlogj", "consistency_p95_mm", "seconds", "ms_per_epoch",
                  "schedule", "backend", "device", "settings_hash")
EXIT_OK, EXIT_PAIRS_FAILED = 0, 1


@dataclass
class Pair:
    pair_id: str
    fixed: str
    moving: str
    mask: Optional[str] = None
    fixed_landmarks: Optional[str] = None
    moving_landmarks: Optional[str] = None
    extra: Dict[str, str] = field(default_factory=dict)
    moving_mask: Optional[str] = None
    initial_transform: Optional[str] = None


# ------------------------------------------------------------------------------------------------ manifest
def check_pair_id(pid: str, where: str) -> None:
    if not pid:
        raise InputError(f"'manifest': {where}: empty pair_id")
    if len(pid) > MAX_PAIR_ID:
        raise InputError(f"'manifest': {where}: pair_id {pid[:20]!r}… is {len(pid)} characters; at most "
                         f"{MAX_PAIR_ID} (it names the output folder)")
    if not _SAFE_ID.match(pid):
        raise InputError(f"'manifest': {where}: pair_id {pid!r} must be letters, digits, '.', '_' or '-', starting "
                         "with a letter or digit (it names the output folder)")
    if pid.lower() in RESERVED_IDS:
        raise InputError(f"'manifest': {where}: pair_id {pid!r} is the name of a file the cohort writes in the "
                         f"output folder ({', '.join(SUMMARY_NAMES)}); choose another")


def read_manifest(path: Union[str, os.PathLike]) -> List[Pair]:
    """Read and check a manifest CSV (header ``pair_id,fixed,moving[,mask,fixed_landmarks,moving_landmarks,
    moving_mask,initial_transform]``).

    The file must be UTF-8 text. Relative paths are taken relative to the manifest's folder. Missing columns, a
    row with more fields than the header, empty, duplicate, reserved or over-long pair ids and ids that cannot be
    folder names are errors raised before any work; files that do not exist are reported per pair when it runs.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"'manifest': file not found: {str(p)!r}")
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, restkey="\0extra")
            columns = [(c or "").strip() for c in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise InputError(f"'manifest': {p.name} lacks required column(s) {missing}; it has {columns}")
            rows = []
            for row in reader:
                extra = row.get("\0extra")
                if extra is not None:
                    raise InputError(f"'manifest': {p.name} line {reader.line_num}: {len(columns) + len(extra)} "
                                     f"fields, the header has {len(columns)} (a comma inside a path? quote it)")
                rows.append((reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in row.items()}))
    except UnicodeDecodeError as err:
        raise InputError(f"'manifest': {p.name} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                         f"{err.start}); save it as UTF-8") from None
    except csv.Error as err:
        raise InputError(f"'manifest': {p.name} is not a valid CSV file ({err})") from None
    if not rows:
        raise InputError(f"'manifest': {p.name} lists no pairs")
    pairs, seen = [], {}
    base = p.parent
    for line, row in rows:
        pid = row["pair_id"]
        check_pair_id(pid, f"{p.name} line {line}")
        if pid.lower() in seen:
            raise InputError(f"'manifest': {p.name} line {line}: duplicate pair_id {pid!r} (first on line "
                             f"{seen[pid.lower()]}; ids that differ only in case would share a folder on some "
                             "file systems)")
        seen[pid.lower()] = line
        for col in ("fixed", "moving"):
            if not row[col]:
                raise InputError(f"'manifest': {p.name} line {line}: empty {col!r} for pair {pid!r}")

        def resolve(value):
            return str((base / value).resolve()) if value else None

        lm = (row.get("fixed_landmarks"), row.get("moving_landmarks"))
        if bool(lm[0]) != bool(lm[1]):
            raise InputError(f"'manifest': {p.name} line {line}: pair {pid!r} needs both landmark files or none")
        pairs.append(Pair(pid, resolve(row["fixed"]), resolve(row["moving"]), resolve(row.get("mask")),
                          resolve(lm[0]), resolve(lm[1]),
                          {k: v for k, v in row.items() if k not in REQUIRED + OPTIONAL},
                          moving_mask=resolve(row.get("moving_mask")),
                          initial_transform=resolve(row.get("initial_transform"))))
    return pairs


# ------------------------------------------------------------------------------------------------ settings hash
#: settings added after cohort folders existed, with the value that gives the results made before them: left out of
#: the fingerprint at that value, so those folders still resume (``regularizer_share`` unset: the schedule's, whose
#: own change the schedule's fingerprint carries)
ADDED_SETTINGS = {"sampling": "uniform", "regularizer_share": None}


def settings_fingerprint(settings: RunSettings) -> dict:
    """The settings a pair's result depends on, as requested (derived values left as "derived"): every field
    except the device and the thread count (results do not depend on it), so a rerun on another machine or with
    another layout of workers × threads keeps the pairs."""
    from ..schedule import schedule_fingerprint

    d = settings.to_dict()
    d.pop("device", None)
    d.pop("threads", None)
    d.pop("memory_check", None)
    for name, before in ADDED_SETTINGS.items():
        if d.get(name) == before:
            d.pop(name)
    d["schedule_profiles"] = schedule_fingerprint(settings.schedule_name)
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def settings_hash(settings: RunSettings) -> str:
    return hashlib.sha256(json.dumps(settings_fingerprint(settings), sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ lock
class CohortLock:
    """An exclusive advisory lock on a cohort output folder, held for a run (``fcntl.flock``; released by the
    kernel when the process ends, however it ends)."""

    def __init__(self, folder: Union[str, os.PathLike]):
        self.path = Path(folder) / LOCK_NAME
        self.fd: Optional[int] = None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
        except (OSError, ValueError):
            return "another process"

    def acquire(self, wait: bool = False, name: str = "out_dir") -> "CohortLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise InputError(f"'{name}': cannot create the lock file {str(self.path)!r} ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                raise InputError(f"'{name}': another idir-fast cohort run is using {str(self.path.parent)!r} "
                                 f"({self.holder()}); wait for it to finish, pass --wait (wait=True) to queue "
                                 "behind it, or choose another output folder") from None
            print(f"idir-fast cohort: waiting for the run that holds {str(self.path.parent)!r} ({self.holder()})",
                  file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            os.close(fd)
            raise InputError(f"'{name}': cannot lock {str(self.path)!r} ({err.strerror}); the file system may not "
                             "support locks") from None
        self.fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# ------------------------------------------------------------------------------------------------ one pair
def run_pair(pair: Pair, out_dir: str, settings: RunSettings, options: Optional[dict] = None) -> dict:
    """Register one pair into ``out_dir/pair_id`` atomically; returns its summary row (never raises).

    Args:
        settings: the run settings (validated once for the whole cohort); its ``threads`` governs this pair.
        options: ``figures``, ``settings_hash``, ``settings_fingerprint``.
    """
    from ..api import register
    from ..io.files import pause_for_tests

    t0 = time.perf_counter()
    final = Path(out_dir) / pair.pair_id
    tmp = aside = None
    options = options or {}
    row = {"pair_id": pair.pair_id, "settings_hash": options.get("settings_hash")}
    try:
        lm = {}
        if pair.fixed_landmarks:
            lm = dict(fixed_landmarks=pair.fixed_landmarks, moving_landmarks=pair.moving_landmarks)
        reg = register(pair.fixed, pair.moving, pair.mask, **lm, moving_mask=pair.moving_mask,
                       initial_transform=pair.initial_transform, settings=settings, progress=False)
        tmp = tempfile.mkdtemp(prefix=f".{pair.pair_id}.tmp-{os.getpid()}-", dir=out_dir)
        honour_umask(tmp, folder=True)
        extra = {"cohort": {"pair_id": pair.pair_id, "settings_hash": options.get("settings_hash"),
                            "settings_requested": options.get("settings_fingerprint")}}
        reg.save(os.path.join(tmp, ""), figures=bool(options.get("figures")), report_extra=extra)
        pause_for_tests("cohort-pair-saved")  # the pair is whole in its temporary folder, not yet renamed
        if final.exists():  # redone (--force, or incomplete): move the old folder aside, then swap
            aside = tempfile.mkdtemp(prefix=f".{pair.pair_id}.old-{os.getpid()}-", dir=out_dir)
            os.replace(final, os.path.join(aside, "old"))
        os.replace(tmp, final)  # the pair appears whole or not at all
        tmp = None
        row.update(_row_from_report(final))
        row["status"] = "ok"
    except Exception as err:  # noqa: BLE001 — isolate the failure; the cohort goes on
        row.update(status="failed", error=f"{type(err).__name__}: {err}",
                   traceback=traceback.format_exc(limit=3))
    finally:
        for leftover in (tmp, aside):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    if row["status"] == "failed":
        row["seconds"] = time.perf_counter() - t0
    return row


def _read_report(folder: Path) -> dict:
    try:
        rep = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return rep if isinstance(rep, dict) else {}


def _row_from_report(folder: Path) -> dict:
    rep = _read_report(folder)
    m, t, s = rep.get("metrics", {}), rep.get("timings", {}), rep.get("settings", {})
    return {"tre_before_mean": m.get("tre_initial", {}).get("mean"), "tre_after_mean": m.get("tre", {}).get("mean"),
            "tre_after_p95": m.get("tre", {}).get("p95"), "folded_voxels": m.get("folding", {}).get("count"),
            "sdlogj": m.get("sdlogj"), "seconds": t.get("total_s"), "ms_per_epoch": t.get("ms_per_epoch"),
            "schedule": s.get("schedule"), "backend": s.get("backend"), "device": s.get("device"),
            "settings_hash": rep.get("cohort", {}).get("settings_hash"),
            "consistency_p95_mm": m.get("consistency", {}).get("p95_mm"),
            "doubtful": m.get("consistency", {}).get("flagged")}


def _summary(rows: List[dict], run_hash: str, plan: Optional[WorkerPlan] = None) -> dict:
    rows = sorted(rows, key=lambda r: r["pair_id"])
    failed = sum(r["status"] == "failed" for r in rows)
    out = {"pairs": rows, "completed": sum(r["status"] == "ok" for r in rows), "failed": failed,
           "resumed": sum(bool(r.get("resumed")) for r in rows),
           "doubtful": sorted(r["pair_id"] for r in rows if r.get("doubtful")),
           "exit_status": EXIT_PAIRS_FAILED if failed else EXIT_OK, "settings_hash": run_hash}
    if plan is not None:
        out["plan"] = plan.record()
    return out


def _write_summary(out: Path, rows: List[dict], run_hash: str, plan: Optional[WorkerPlan] = None) -> dict:
    summary = _summary(rows, run_hash, plan)
    lines = [",".join(SUMMARY_FIELDS)]
    for r in summary["pairs"]:
        vals = []
        for k in SUMMARY_FIELDS:
            v = r.get(k)
            v = "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
            vals.append('"' + v.replace('"', "'") + '"' if ("," in v or "\n" in v) else v)
        lines.append(",".join(vals))
    write_text("\n".join(lines) + "\n", out / "summary.csv")
    write_json(summary, out / "summary.json")
    return summary


def _prepare_out_dir(out: Path) -> List[str]:
    """Remove what runs that are no longer alive left (called with the lock held): temporary and set-aside pair
    folders."""
    removed = remove_dead_temporaries(out)  # of summary.csv/json
    for stale in list(out.glob(".*.tmp-*")) + list(out.glob(".*.old-*")):
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale.name)
    return removed


def _settings_differences(old: dict, new: dict) -> str:
    if not old:
        return "their settings hash is not recorded: made by an older idir_fast or outside a cohort run"
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs) if diffs else "settings recorded differently (an older idir_fast?)"


# ------------------------------------------------------------------------------------------------ the cohort
@dataclass(frozen=True)
class WorkerPlan:
    """How a cohort uses the machine: ``workers`` registrations side by side, each with at most ``threads`` CPU
    threads (with ``threads="auto"``, what each worker starts with), and why (``reason``)."""

    workers: int
    threads: Union[int, str]
    reason: str

    def record(self) -> dict:
        return {"workers": self.workers, "threads": self.threads, "reason": self.reason}


WORKER_OVERHEAD_BYTES = 600 << 20
"""Host memory of one worker process beyond its pair's estimate (the Python interpreter, PyTorch, SimpleITK)."""


def pair_memory(pair: Pair, settings: RunSettings) -> Optional[int]:
    """Estimated peak host bytes of registering and writing ``pair`` (from the image headers: nothing is read),
    plus a worker's own :data:`WORKER_OVERHEAD_BYTES`; the mask is taken as the whole grid (an upper bound).
    ``None`` when a header cannot be read (the pair then fails on its own, with its error, when it runs)."""
    import SimpleITK as sitk
    import torch

    from .. import memory

    sizes = []
    for path in (pair.fixed, pair.moving):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return None
        sizes.append(math.prod(reader.GetSize()))
    from ..api import schedule_probe, switched_settings

    resolved = settings.resolved()
    probe = schedule_probe(settings, resolved)  # a pair the probe switches runs the larger network
    runs = [resolved] + ([switched_settings(settings, probe)] if probe is not None else [])
    peaks = [memory.host_peak(memory.run_bytes(mask_points=sizes[0], fixed_voxels=sizes[0], moving_voxels=sizes[1],
                                               batch=r.batch_size, hidden=r.hidden, order=r.order,
                                               dtype_bytes=torch.tensor([], dtype=r.dtype).element_size(),
                                               device=r.torch_device, symmetric=r.symmetric,
                                               sampling=r.sampling), r.torch_device)
             for r in runs]
    return max(peaks) + WORKER_OVERHEAD_BYTES


def plan_workers(pairs: List[Pair], settings: RunSettings, workers: Optional[int] = None,
                 executor: str = "local") -> WorkerPlan:
    """Workers × threads for a cohort on this machine.

    Default on a CPU: one worker per usable core (affinity mask, cgroup quota; :func:`idir_fast.threads.usable_cores`),
    one thread each — independent pairs side by side keep every core busy without the pool's threads waiting for
    each other, the fastest layout measured (``benchmarks/throughput.py``) — fewer when the pairs' estimated memory
    (:func:`pair_memory`) would not fit, and never more than there are pairs. An explicit ``threads`` setting gives
    ``cores // threads`` workers; explicit ``workers`` give ``cores // workers`` threads each. On a GPU one worker
    (the device's own parallelism does the rest). Ray tasks ask for ``threads`` CPUs each (1 by default).
    """
    from .. import memory, threads as thread_policy

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"'workers' must be a positive integer, got {workers!r}")
    setting = thread_policy.check_threads(settings.threads)
    if executor == "ray":
        t = setting if setting != "auto" else 1
        return WorkerPlan(workers or len(pairs), t, f"Ray: one task per pair, {t} CPU(s) each")
    cores = thread_policy.usable_cores()
    if settings.resolved().torch_device.type == "cuda":
        return WorkerPlan(workers or 1, setting, "GPU: one worker")
    if workers is not None:
        t = setting if setting != "auto" else max(1, cores // workers)
        return WorkerPlan(workers, t, f"--workers {workers} on {cores} usable core(s)")
    w = cores if setting == "auto" else max(1, cores // int(setting))
    why = f"{cores} usable core(s)" + ("" if setting == "auto" else f", {setting} thread(s) each")
    w = min(w, len(pairs))
    if w > 1:
        need = max((pair_memory(p, settings) or 0) for p in pairs[: min(len(pairs), 8)])
        fit = max(1, int(0.8 * memory.available_host_memory() // need)) if need else w
        if fit < w:
            w, why = fit, why + f"; memory for {fit} at once ({memory.human_bytes(need)} per pair)"
    t = setting if setting != "auto" else max(1, cores // w)
    return WorkerPlan(w, t, why)


def _worker_init(workers: int, parent: int) -> None:
    """In each worker process: die with the run that started it (Linux: ``PR_SET_PDEATHSIG``), so no worker
    renames a pair into place after the run holding the folder's lock is gone; and declare how many workers share
    the cores (``threads="auto"`` divides them)."""
    from .. import threads as thread_policy

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the run died before the line above took effect
            os._exit(1)
    thread_policy.set_workers(workers)


def _run_in_workers(pairs: List[Pair], out_dir: str, settings: RunSettings, options: dict, workers: int):
    """Yield the rows of ``pairs`` registered by ``workers`` processes side by side (spawned: a fresh interpreter
    each, so no OpenMP state is inherited). A worker that dies (killed, out of memory) takes its pool down; the
    pairs that had not finished are then run one pool of one worker each, so the pair that kills its worker is
    recorded as failed and the others finish."""
    import concurrent.futures as cf
    import multiprocessing

    context = multiprocessing.get_context("spawn")

    def pool(n):
        return cf.ProcessPoolExecutor(max_workers=n, mp_context=context, initializer=_worker_init,
                                      initargs=(workers, os.getpid()))

    unfinished = []
    with pool(min(workers, len(pairs))) as executor:
        futures = {executor.submit(run_pair, p, out_dir, settings, options): p for p in pairs}
        for future in cf.as_completed(futures):
            try:
                yield future.result()
            except cf.process.BrokenProcessPool:
                unfinished.append(futures[future])
    for p in unfinished:  # one at a time: a second death is this pair's own
        with pool(1) as executor:
            try:
                yield executor.submit(run_pair, p, out_dir, settings, options).result()
            except cf.process.BrokenProcessPool as err:
                yield {"pair_id": p.pair_id, "status": "failed", "settings_hash": options.get("settings_hash"),
                       "error": f"its worker process died ({err}); killed by the OS, out of memory?"}


@with_setting_parameters
def register_cohort(manifest, out_dir, *, executor: str = "local", address: Optional[str] = None,
                    progress: bool = True, figures: bool = False, workers: Optional[int] = None,
                    wait: bool = False, force: bool = False, settings: Optional[RunSettings] = None,
                    **options) -> dict:
    """Register every pair of ``manifest`` into ``out_dir/<pair_id>/``; resumable and failure-isolated (see the
    module docstring for the lock, the settings hash and what a rerun does).

    Args:
        manifest: CSV path (see :func:`read_manifest`) or a list of :class:`Pair`.
        executor: ``"local"`` (worker processes on this machine, :func:`plan_workers`; one worker runs the pairs
            in this process) or ``"ray"`` (one Ray task per pair, asking for ``threads`` CPUs and one GPU each when
            the cluster has GPUs, on a local Ray instance or the cluster at ``address``).
        progress: a progress bar over pairs.
        figures: write the PNG figures of every pair.
        workers: registrations side by side (default: :func:`plan_workers`).
        wait: when another run holds ``out_dir``, wait for it instead of stopping with an error.
        force: redo completed pairs that were made with other settings (default: stop with an error).
        settings, **options: the run settings, as for :func:`idir_fast.register` (checked once, up front);
            ``threads`` is per worker.

    Returns:
        the summary dict (also written to ``summary.json``/``summary.csv``): per-pair rows, counts,
        ``exit_status`` (0 all done, 1 some pairs failed), the run's ``settings_hash`` and its ``plan``.
    """
    settings = RunSettings.build(settings, "register_cohort", **options)
    if executor not in ("local", "ray"):
        raise InputError(f"'executor' must be 'local' or 'ray', got {executor!r}")
    if executor == "local":
        settings.resolved()  # a device or backend this machine lacks fails once here, not once per pair
    pairs = manifest if isinstance(manifest, list) else read_manifest(manifest)
    if not pairs:
        raise InputError("'manifest' lists no pairs")
    for p in pairs:
        check_pair_id(p.pair_id, f"pair {p.pair_id[:20]!r}")
    out = ensure_folder(out_dir, "out_dir")
    if len(max((p.pair_id for p in pairs), key=len).encode()) + 32 > name_max(out):
        raise InputError(f"'out_dir': a pair id is too long for the file system of {str(out)!r}")
    run_hash, fingerprint = settings_hash(settings), settings_fingerprint(settings)
    with CohortLock(out).acquire(wait=wait):
        _prepare_out_dir(out)
        rows, todo, mismatched = {}, [], []
        for p in pairs:
            folder = out / p.pair_id
            if not (folder / "report.json").is_file():
                todo.append(p)  # never finished
                continue
            rep = _read_report(folder)
            old_hash = rep.get("cohort", {}).get("settings_hash") if isinstance(rep.get("cohort"), dict) else None
            if old_hash == run_hash and verify_output_set(os.path.join(folder, ""), checksums=False):
                todo.append(p)  # damaged since (a file missing or of another size): redo
                continue
            if old_hash != run_hash:  # other settings, or not recorded (an older idir_fast)
                mismatched.append((p, (rep.get("cohort") or {}).get("settings_requested") or {}))
                continue
            rows[p.pair_id] = {"pair_id": p.pair_id, "status": "ok", "resumed": True, **_row_from_report(folder)}
        if mismatched and not force:
            names = ", ".join(p.pair_id for p, _ in mismatched[:5]) + (" …" if len(mismatched) > 5 else "")
            raise InputError(f"'out_dir': {len(mismatched)} completed pair(s) in {str(out)!r} ({names}) were made "
                             f"with other settings ({_settings_differences(mismatched[0][1], fingerprint)}); rerun "
                             "with the same settings to resume, pass --force (force=True) to redo them with these, "
                             "or choose another output folder")
        todo += [p for p, _ in mismatched]
        order = {q.pair_id: i for i, q in enumerate(pairs)}
        todo.sort(key=lambda p: order[p.pair_id])
        plan = plan_workers(todo or pairs, settings, workers, executor)
        # local workers keep "auto" (each divides the cores by the workers and follows the load); Ray tasks get
        # the CPUs they asked for
        run_settings = settings.replace(threads=plan.threads) if executor == "ray" else settings
        run_options = {"figures": figures, "settings_hash": run_hash, "settings_fingerprint": fingerprint}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="cohort", unit="pair",
                       dynamic_ncols=True)
            bar.set_description(f"cohort ({plan.workers} worker(s) × {plan.threads} thread(s))")

        def record(row):
            rows[row["pair_id"]] = {**row, "resumed": False}
            _write_summary(out, list(rows.values()), run_hash, plan)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=sum(r["status"] == "failed" for r in rows.values()), refresh=False)

        try:
            if executor == "ray":
                results = _run_on_ray(todo, str(out), run_settings, run_options, address, plan)
            elif plan.workers > 1 and len(todo) > 1:
                results = _run_in_workers(todo, str(out), run_settings, run_options, plan.workers)
            else:
                results = (run_pair(p, str(out), run_settings, run_options) for p in todo)
            for row in results:
                record(row)
        finally:
            if bar is not None:
                bar.close()
        return _write_summary(out, list(rows.values()), run_hash, plan)


def _run_on_ray(pairs: List[Pair], out_dir: str, settings: RunSettings, options: dict, address: Optional[str],
                plan: WorkerPlan):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise InputError("executor 'ray' needs Ray: pip install 'idir-fast[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
        started = True
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        cpus = plan.threads if isinstance(plan.threads, int) else 1
        task = ray.remote(num_cpus=cpus, num_gpus=1 if gpus else 0, max_retries=0)(run_pair)
        pending = [task.remote(p, out_dir, settings, options) for p in pairs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()
