"""What every benchmark shares: where the data are, timing, thread settings for every tool, versions, records.

Data: the shared folder (``--data``; default ``../shared/data`` beside the checkout) holds the chest CT, the brain
T1 with its labels and the DIR-LAB landmarks. Records: ``benchmarks/results/<name>_<UTC stamp>.json``.
"""
from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
"""The shared data folder of a development checkout; every benchmark takes ``--data`` to point elsewhere."""


def data_file(data: Optional[str], *parts: str) -> Path:
    """A file of the data folder (``data`` or :data:`DEFAULT_DATA`); ``FileNotFoundError`` naming ``--data``."""
    path = Path(data or DEFAULT_DATA).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (pass --data with the folder that holds {'/'.join(parts)})")
    return path


THREAD_VARIABLES = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")


def thread_environment(threads: int) -> dict:
    """The environment variables that set every tool's thread count (ITK/ANTs/elastix, OpenMP, BLAS)."""
    return {name: str(int(threads)) for name in THREAD_VARIABLES}


def configure_threads(threads: int) -> None:
    """Use ``threads`` threads in this process: the variables (for libraries not loaded yet), torch, SimpleITK."""
    import SimpleITK as sitk
    import torch

    os.environ.update(thread_environment(threads))
    torch.set_num_threads(int(threads))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))


class Stopwatch:
    """Wall and process CPU seconds of a ``with`` block (CPU time counts every thread of this process, so
    ``cpu / wall`` well below the thread count hints at contention from other work on the machine)."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        return False


def package_version(dist: str) -> Optional[str]:
    """Installed version of distribution ``dist``, or ``None``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 — a broken install counts as missing
        return False


def machine_info() -> dict:
    """The package's machine record (versions, commit, CPU, cores, timestamp) plus the peers' versions."""
    from idir_fast.environment import machine_info as package_machine_info

    info = dict(package_machine_info("cpu"))
    info.update({name: package_version(name) for name in ("antspyx", "itk-elastix", "fireants", "nilearn")})
    return info


def stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def jsonable(obj):
    """``json.dumps(default=...)`` for NumPy values, tuples and sets."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)


def write_record(name: str, record: dict, out: Optional[str] = None) -> Path:
    """Write ``record`` as ``<out>/<name>_<stamp>.json`` (default folder :data:`RESULTS`); returns the path."""
    folder = Path(out or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{stamp()}.json"
    path.write_text(json.dumps(record, indent=2, default=jsonable) + "\n")
    return path
