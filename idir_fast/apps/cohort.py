"""Cohort registration: a manifest of pairs, one output folder per pair, resumable, failure-isolated, and
optionally spread over GPUs and machines with Ray.

Each pair is registered and written into a temporary folder beside its final one, which is then renamed into
place: a pair folder either holds every output or does not exist. Rerunning skips pairs whose folder exists; a
run killed at any moment leaves at most a temporary folder, which the next run removes. A pair that fails (an
unreadable file, an empty mask, …) is recorded with its error in the summary and the others go on.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..errors import InputError
from ..io.files import ensure_folder, write_json, write_text
from ..settings import RunSettings, with_setting_parameters

REQUIRED = ("pair_id", "fixed", "moving")
OPTIONAL = ("mask", "fixed_landmarks", "moving_landmarks")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SUMMARY_FIELDS = ("pair_id", "status", "error", "tre_before_mean", "tre_after_mean", "tre_after_p95",
                  "folded_voxels", "sdlogj", "seconds", "ms_per_epoch", "backend", "device")


@dataclass
class Pair:
    pair_id: str
    fixed: str
    moving: str
    mask: Optional[str] = None
    fixed_landmarks: Optional[str] = None
    moving_landmarks: Optional[str] = None
    extra: Dict[str, str] = field(default_factory=dict)


def read_manifest(path: Union[str, os.PathLike]) -> List[Pair]:
    """Read and check a manifest CSV (header ``pair_id,fixed,moving[,mask,fixed_landmarks,moving_landmarks]``).

    Relative paths are taken relative to the manifest's folder. Missing columns, empty or duplicate pair ids and
    ids that cannot be folder names are errors raised before any work; files that do not exist are reported
    per pair when it runs.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"'manifest': file not found: {str(p)!r}")
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise InputError(f"'manifest': {p.name} lacks required column(s) {missing}; it has {columns}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise InputError(f"'manifest': {p.name} lists no pairs")
    pairs, seen = [], {}
    base = p.parent
    for line, row in enumerate(rows, start=2):
        pid = row["pair_id"]
        if not pid:
            raise InputError(f"'manifest': {p.name} line {line}: empty pair_id")
        if not _SAFE_ID.match(pid):
            raise InputError(f"'manifest': {p.name} line {line}: pair_id {pid!r} must be letters, digits, '.', '_' "
                             "or '-' (it names the output folder)")
        if pid in seen:
            raise InputError(f"'manifest': {p.name} line {line}: duplicate pair_id {pid!r} (first on line "
                             f"{seen[pid]})")
        seen[pid] = line
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
                          {k: v for k, v in row.items() if k not in REQUIRED + OPTIONAL}))
    return pairs


def run_pair(pair: Pair, out_dir: str, settings: RunSettings, options: Optional[dict] = None) -> dict:
    """Register one pair into ``out_dir/pair_id`` atomically; returns its summary row (never raises).

    Args:
        settings: the run settings (validated once for the whole cohort).
        options: ``threads`` (torch threads in this process), ``figures``.
    """
    import torch

    from ..api import register

    t0 = time.perf_counter()
    final = Path(out_dir) / pair.pair_id
    tmp = None
    row = {"pair_id": pair.pair_id}
    try:
        options = options or {}
        if options.get("threads"):
            torch.set_num_threads(int(options["threads"]))
        lm = {}
        if pair.fixed_landmarks:
            lm = dict(fixed_landmarks=pair.fixed_landmarks, moving_landmarks=pair.moving_landmarks)
        reg = register(pair.fixed, pair.moving, pair.mask, **lm, settings=settings, progress=False)
        tmp = tempfile.mkdtemp(prefix=f".{pair.pair_id}.tmp-", dir=out_dir)
        reg.save(os.path.join(tmp, ""), figures=bool(options.get("figures")))
        os.replace(tmp, final)  # the pair appears whole or not at all
        tmp = None
        row.update(_row_from_report(final))
        row["status"] = "ok"
    except Exception as err:  # noqa: BLE001 — isolate the failure; the cohort goes on
        row.update(status="failed", error=f"{type(err).__name__}: {err}",
                   traceback=traceback.format_exc(limit=3))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if row["status"] == "failed":
        row["seconds"] = time.perf_counter() - t0
    return row


def _row_from_report(folder: Path) -> dict:
    rep = json.loads((folder / "report.json").read_text())
    m, t, s = rep.get("metrics", {}), rep.get("timings", {}), rep.get("settings", {})
    return {"tre_before_mean": m.get("tre_initial", {}).get("mean"), "tre_after_mean": m.get("tre", {}).get("mean"),
            "tre_after_p95": m.get("tre", {}).get("p95"), "folded_voxels": m.get("folding", {}).get("count"),
            "sdlogj": m.get("sdlogj"), "seconds": t.get("total_s"), "ms_per_epoch": t.get("ms_per_epoch"),
            "backend": s.get("backend"), "device": s.get("device")}


def _write_summary(out: Path, rows: List[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["pair_id"])
    lines = [",".join(SUMMARY_FIELDS)]
    for r in rows:
        vals = []
        for k in SUMMARY_FIELDS:
            v = r.get(k)
            v = "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
            vals.append('"' + v.replace('"', "'") + '"' if ("," in v or "\n" in v) else v)
        lines.append(",".join(vals))
    write_text("\n".join(lines) + "\n", out / "summary.csv")
    write_json({"pairs": rows, "completed": sum(r["status"] == "ok" for r in rows),
                "failed": sum(r["status"] == "failed" for r in rows)}, out / "summary.json")


def _prepare_out_dir(out_dir) -> Path:
    out = ensure_folder(out_dir, "out_dir")
    for stale in out.glob(".*.tmp-*"):  # left by a run that was killed mid-pair
        shutil.rmtree(stale, ignore_errors=True)
    return out


@with_setting_parameters
def register_cohort(manifest, out_dir, *, executor: str = "local", address: Optional[str] = None,
                    progress: bool = True, figures: bool = False, threads: Optional[int] = None,
                    settings: Optional[RunSettings] = None, **options) -> dict:
    """Register every pair of ``manifest`` into ``out_dir/<pair_id>/``; resumable and failure-isolated.

    Args:
        manifest: CSV path (see :func:`read_manifest`) or a list of :class:`Pair`.
        executor: ``"local"`` (one pair after another in this process) or ``"ray"`` (one Ray task per pair, one GPU
            each when the cluster has GPUs, on a local Ray instance or the cluster at ``address``).
        progress: a progress bar over pairs.
        figures: write the PNG figures of every pair.
        threads: torch threads per pair (default: torch's).
        settings, **options: the run settings, as for :func:`idir_fast.register` (checked once, up front).

    Returns:
        the summary dict (also written to ``summary.json``/``summary.csv``): per-pair rows, counts.
    """
    settings = RunSettings.build(settings, "register_cohort", **options)
    pairs = manifest if isinstance(manifest, list) else read_manifest(manifest)
    if executor not in ("local", "ray"):
        raise InputError(f"'executor' must be 'local' or 'ray', got {executor!r}")
    if executor == "local":
        settings.resolved()  # a device this machine lacks fails once here, not once per pair
    out = _prepare_out_dir(out_dir)
    run_options = {"threads": threads, "figures": figures}
    done = {p.pair_id for p in pairs if (out / p.pair_id / "report.json").is_file()}
    rows = {pid: {"pair_id": pid, "status": "ok", **_row_from_report(out / pid)} for pid in done}
    todo = [p for p in pairs if p.pair_id not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), initial=len(done), desc="cohort", unit="pair", dynamic_ncols=True)

    def record(row):
        rows[row["pair_id"]] = row
        _write_summary(out, list(rows.values()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(failed=sum(r["status"] == "failed" for r in rows.values()), refresh=False)

    try:
        if executor == "local":
            for p in todo:
                record(run_pair(p, str(out), settings, run_options))
        else:
            for row in _run_on_ray(todo, str(out), settings, run_options, address):
                record(row)
    finally:
        if bar is not None:
            bar.close()
    _write_summary(out, list(rows.values()))
    return json.loads((out / "summary.json").read_text())


def _run_on_ray(pairs: List[Pair], out_dir: str, settings: RunSettings, options: dict, address: Optional[str]):
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
        task = ray.remote(num_gpus=1 if gpus else 0, max_retries=0)(run_pair)
        pending = [task.remote(p, out_dir, settings, options) for p in pairs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()
