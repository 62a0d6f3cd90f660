"""The model file ``{prefix}model.pt``: SIREN weights, the network frame, the fixed grid, settings and history.

Written with ``torch.save`` through a temporary file; read with ``weights_only=True`` (no code runs on load).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import torch

from ..errors import InputError
from .files import atomic_path

MODEL_FORMAT = "idir_fast-model"
MODEL_VERSION = 1


def write_model_state(state: dict, path: Union[str, os.PathLike]) -> Path:
    """Write a model state dict (see :func:`model_state`) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def model_state(siren, world_to_normalised, fixed_geometry, settings: dict, history: dict, timings: dict,
                metrics: dict) -> dict:
    """The dict stored in a model file."""
    return {
        "format": MODEL_FORMAT, "version": MODEL_VERSION,
        "siren": siren.config(),
        "parameters": [p.detach().cpu().clone() for p in siren.parameter_list()],
        "world_to_normalised": [list(map(float, row)) for row in world_to_normalised],
        "fixed_geometry": fixed_geometry.to_dict(),
        "settings": json.loads(json.dumps(settings, default=str)),
        "history": {k: torch.as_tensor(v) for k, v in history.items()},
        "timings": dict(timings), "metrics": json.loads(json.dumps(metrics, default=str)),
    }


def find_model_file(path: Union[str, os.PathLike]) -> Path:
    """``path`` itself, or ``{path}model.pt`` when ``path`` is a run prefix."""
    p = Path(path)
    if not p.exists() and Path(str(path) + "model.pt").exists():
        p = Path(str(path) + "model.pt")
    if not p.exists():
        raise InputError(f"'path': model file not found: {str(p)!r}")
    return p


def read_model_state(path: Union[str, os.PathLike]) -> dict:
    """Read a model file written by :func:`write_model_state` (or a run prefix); ``InputError`` if it is not one."""
    p = find_model_file(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"'path': {str(p)!r} is not an idir_fast model file ({err})") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise InputError(f"'path': {str(p)!r} is not an idir_fast model file")
    return state
