"""Library versions, device and machine: recorded with every run, benchmark row and doctor report; and the
process's CPU allocator policy (:func:`keep_freed_memory`), which changes CPU step times and is recorded too."""
from __future__ import annotations

import ctypes
import datetime as _dt
import os
import platform
import subprocess
from typing import Optional

import numpy as np
import torch

from .errors import InputError


def environment(device: Optional[torch.device] = None) -> dict:
    """Library versions and the device a run used."""
    import SimpleITK as sitk

    from .version import __version__

    env = {"idir_fast": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "SimpleITK": sitk.Version_VersionString(), "platform": platform.platform(),
           "torch_threads": torch.get_num_threads(), "malloc": malloc_policy()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 — triton is optional on non-Linux platforms
        env["triton"] = None
    try:  # writes the .nii.gz outputs (idir_fast.io.images); ITK compresses them without it
        import isal

        env["isal"] = isal.__version__
    except ImportError:
        env["isal"] = None
    if device is not None and torch.device(device).type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def git_commit() -> str:
    """The short commit of the source tree this package runs from ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=os.path.dirname(os.path.abspath(__file__)))
        commit = out.stdout.strip()
        return (commit + ("+dirty" if dirty.stdout.strip() else "")) if commit else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def machine_info(device="cpu") -> dict:
    """:func:`environment` plus the commit, CPU model, core count and a UTC timestamp."""
    env = environment(torch.device(device))
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    env.update({"commit": git_commit(), "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
                "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return env


ENV_MALLOC = "IDIR_FAST_MALLOC"
"""``keep`` or ``system``: overrides what :func:`keep_freed_memory` is asked."""

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_malloc_policy = "system"


def malloc_policy() -> str:
    """``"keep-freed"`` after :func:`keep_freed_memory` took effect in this process, else ``"system"``."""
    return _malloc_policy


def keep_freed_memory(keep: bool = True) -> bool:
    """Make glibc's malloc keep freed memory in this process rather than hand it back to the OS — an opt-in for
    a program of the caller's own; nothing in idir_fast applies it (a library call must not change the process's
    allocator: its training steps and field writing reuse buffers made once instead).

    What it does: no ``mmap`` for allocations (``M_MMAP_MAX`` 0) and trimming only beyond 2 GiB free
    (``M_TRIM_THRESHOLD``), so a program that allocates and frees the same large blocks in a loop stops paying
    page faults for them. The cost: the process keeps its peak heap. Process-wide and not undone by
    ``keep=False`` (glibc offers no way back to its dynamic threshold); ``keep=False`` only skips the change. A
    no-op (returns ``False``) where the C library is not glibc. Recorded in every report (``versions.malloc``).

    Args:
        keep: ask for the policy (the environment variable ``IDIR_FAST_MALLOC`` = keep/system overrides it).

    Returns:
        bool: whether the policy is in effect in this process.
    """
    global _malloc_policy
    from .config import env_value

    forced = (env_value(ENV_MALLOC) or "").strip().lower()
    if forced and forced not in ("keep", "system"):
        raise InputError(f"environment variable {ENV_MALLOC}={forced!r} must be 'keep' or 'system'")
    if forced:
        keep = forced == "keep"
    if _malloc_policy == "keep-freed":
        return True
    if not keep or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
    except (OSError, AttributeError):  # no mallopt in this process's C library
        return False
    if ok:
        _malloc_policy = "keep-freed"
    return ok
