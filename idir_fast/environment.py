"""Library versions, device and machine: recorded with every run, benchmark row and doctor report."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from typing import Optional

import numpy as np
import torch


def environment(device: Optional[torch.device] = None) -> dict:
    """Library versions and the device a run used."""
    import SimpleITK as sitk

    from .version import __version__

    env = {"idir_fast": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "SimpleITK": sitk.Version_VersionString(), "platform": platform.platform(),
           "torch_threads": torch.get_num_threads()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 — triton is optional on non-Linux platforms
        env["triton"] = None
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
