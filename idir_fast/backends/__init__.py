"""Backend registry: ``reference`` (nested autograd), ``torch`` (analytic streams), ``triton`` (fused kernels).

Chosen by the ``backend`` argument or, when that is ``"auto"``, by the ``IDIR_FAST_BACKEND`` environment variable,
else by device: ``triton`` for CUDA tensors when Triton is importable and the kernels compile, ``torch``
otherwise. An automatically chosen backend that fails falls back to ``torch`` with one warning; an explicitly
requested one raises.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Dict

import torch

from .base import Backend, Derivatives
from .reference import ReferenceBackend
from .torch_streams import TorchBackend

BACKENDS = ("reference", "torch", "triton")
ENV_VAR = "IDIR_FAST_BACKEND"

_FACTORIES: Dict[str, Callable[[], Backend]] = {
    "reference": ReferenceBackend,
    "torch": TorchBackend,
}  # "triton" is built by _make_triton (it imports triton lazily)
_warned = set()


def _make_triton(automatic: bool = False) -> Backend:
    from .triton_backend import TritonBackend  # imports triton; may fail on unusual platforms

    return TritonBackend(fallback_on_error=automatic)


class BackendError(RuntimeError):
    """An explicitly requested backend cannot run here."""


def resolve_backend(name: str = "auto", device: torch.device = torch.device("cpu")) -> Backend:
    """Return the backend instance for ``name`` on ``device`` (see module docstring for ``"auto"``)."""
    device = torch.device(device)
    if name is None:
        name = "auto"
    if not isinstance(name, str) or name not in BACKENDS + ("auto",):
        raise ValueError(f"'backend' must be one of {BACKENDS + ('auto',)}, got {name!r}")
    explicit = name != "auto"
    if not explicit:
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"environment variable {ENV_VAR}={env!r} must be one of {BACKENDS}")
            name, explicit = env, True
        else:
            name = "triton" if device.type == "cuda" else "torch"
    try:
        backend = _make_triton(not explicit) if name == "triton" else _FACTORIES[name]()
        if not backend.supports(device):
            raise BackendError(f"backend {name!r} does not run on device {device}")
        return backend
    except Exception as err:  # noqa: BLE001 — any failure of an automatic choice falls back
        if explicit:
            if isinstance(err, BackendError):
                raise
            raise BackendError(f"backend {name!r} is not available: {err}") from err
        if name not in _warned:
            _warned.add(name)
            warnings.warn(f"idir_fast: backend {name!r} unavailable on {device} ({err}); using 'torch'",
                          RuntimeWarning, stacklevel=2)
        return TorchBackend()


__all__ = ["Backend", "Derivatives", "BACKENDS", "resolve_backend", "BackendError", "ReferenceBackend",
           "TorchBackend"]
