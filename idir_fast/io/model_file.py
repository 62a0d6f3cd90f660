"""The model file ``{prefix}model.pt`` — its whole format, here: SIREN weights, the network frames, the grids, the
affine part, and the run's settings, history, timings and metrics (:func:`model_state` writes it,
:func:`read_model` reads it back, :func:`siren_from` is the one way a network is rebuilt from it).

Written with ``torch.save`` into memory, then to a temporary file whose length is checked, then renamed; read
with ``weights_only=True`` (no code runs on load). Every file carries a SHA-256 checksum of its content (the
weights, frames, settings, history) and the run id of the output set it belongs to. Reading checks, before
anything is allocated from it: the structure (keys and types), the network configuration against bounds, every
parameter's shape against that configuration, finiteness, the frames and grids, and the checksum; anything wrong
is an :class:`~idir_fast.errors.InputError` saying what.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from ..core.siren import INITS, Siren
from ..errors import InputError
from .files import plain, write_bytes

MODEL_FORMAT = "idir_fast-model"
MODEL_VERSION = 2
"""2: with ``checksum`` and ``run_id``; version-1 files (no checksum) are still read, with a warning."""
MAX_WIDTH = 4096
MAX_LAYERS = 64
MAX_GRID_VOXELS = 1 << 34
REQUIRED = ("siren", "parameters", "world_to_normalised", "fixed_geometry")


def _network(siren, world_to_normalised) -> dict:
    return {"siren": siren.config(), "parameters": [p.detach().cpu().clone() for p in siren.parameter_list()],
            "world_to_normalised": [list(map(float, row)) for row in np.asarray(world_to_normalised)]}


def model_state(siren, world_to_normalised, fixed_geometry, settings: dict, history: dict, timings: dict,
                metrics: dict, *, world_affine=None, moving_geometry=None, backward=None) -> dict:
    """The dict stored in a model file.

    Args:
        siren, world_to_normalised: the forward network and its frame (4×4).
        fixed_geometry, moving_geometry: the grids (an :class:`~idir_fast.core.geometry.ImageGeometry`; the moving
            one may be ``None``).
        settings, history, timings, metrics: the run's record (JSON-friendly; history as arrays).
        world_affine: the 4×4 affine part applied after the network (``None``: identity).
        backward: ``(siren, world_to_normalised)`` of a symmetric registration's backward network, or ``None``.
    """
    state = {"format": MODEL_FORMAT, "version": MODEL_VERSION, **_network(siren, world_to_normalised),
             "fixed_geometry": fixed_geometry.to_dict(),
             "settings": json.loads(json.dumps(settings, default=str)),
             "history": {k: torch.tensor(np.array(v)) for k, v in history.items()},
             "timings": dict(timings), "metrics": json.loads(json.dumps(metrics, default=str)),
             "world_affine": np.eye(4).tolist() if world_affine is None else np.asarray(world_affine).tolist()}
    if moving_geometry is not None:
        state["moving_geometry"] = moving_geometry.to_dict()
    if backward is not None:
        state["backward"] = _network(*backward)
    return state


def state_of(reg) -> dict:
    """The model state of a :class:`~idir_fast.registration.Registration` (its transform and record)."""
    t, record = reg.transform, reg.record
    backward = None if t.backward is None else (t.backward.siren, t.backward.world_to_normalised)
    return model_state(t.forward.siren, t.forward.world_to_normalised, t.fixed_geometry, record.settings_dict(),
                       {k: np.asarray(v) for k, v in record.history.items()}, plain(record.timings),
                       plain(record.metrics), world_affine=t.world_affine, moving_geometry=t.moving_geometry,
                       backward=backward)


def write_model(reg, path: Union[str, os.PathLike], run_id: Optional[str] = None) -> Path:
    """Write a registration's model file alone, atomically, with its checksum and a run id."""
    import uuid

    return write_model_state(state_of(reg), path, run_id=run_id or uuid.uuid4().hex)


@dataclass
class SavedModel:
    """A model file's content, checked: networks rebuilt, frames as arrays, grids as geometries."""

    forward: Tuple[object, np.ndarray]
    fixed_geometry: object
    world_affine: np.ndarray
    moving_geometry: Optional[object]
    backward: Optional[Tuple[object, np.ndarray]]
    settings: dict
    history: dict
    timings: dict
    metrics: dict


def siren_from(config: dict, parameters) -> Siren:
    """The network a model file describes (configuration + parameter tensors), evaluation only."""
    siren = Siren(hidden=config["hidden"], omega=config["omega"], init=config["init"], dtype=parameters[0].dtype)
    with torch.no_grad():
        for dst, src in zip(siren.parameter_list(), parameters):
            dst.copy_(src)
    return siren


def read_model(path: Union[str, os.PathLike]) -> SavedModel:
    """Read and check a model file (:func:`read_model_state`) and rebuild what it holds."""
    from ..core.geometry import ImageGeometry

    state = read_model_state(path)
    backward = None
    if "backward" in state:
        b = state["backward"]
        backward = (siren_from(b["siren"], b["parameters"]), np.asarray(b["world_to_normalised"], dtype=np.float64))
    affine = state.get("world_affine")
    return SavedModel(
        forward=(siren_from(state["siren"], state["parameters"]),
                 np.asarray(state["world_to_normalised"], dtype=np.float64)),
        fixed_geometry=ImageGeometry.from_dict(state["fixed_geometry"]),
        world_affine=np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64),
        moving_geometry=ImageGeometry.from_dict(state["moving_geometry"]) if "moving_geometry" in state else None,
        backward=backward, settings=state.get("settings", {}),
        history={k: v.numpy() for k, v in state.get("history", {}).items()},
        timings=state.get("timings", {}), metrics=state.get("metrics", {}))


# ------------------------------------------------------------------------------------------------ checksum
def _digest(obj, h) -> None:
    """Feed a canonical, type-tagged serialisation of ``obj`` into ``h`` (dict keys sorted)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(b"T" + str(t.dtype).encode() + repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"D" + struct.pack("<q", len(obj)))
        for k in sorted(obj, key=str):
            _digest(str(k), h)
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"L" + struct.pack("<q", len(obj)))
        for v in obj:
            _digest(v, h)
    elif isinstance(obj, bool) or obj is None:
        h.update(b"B" + repr(obj).encode())
    elif isinstance(obj, (int, np.integer)):
        h.update(b"I" + str(int(obj)).encode() + b";")
    elif isinstance(obj, (float, np.floating)):
        h.update(b"F" + struct.pack("<d", float(obj)))
    elif isinstance(obj, str):
        data = obj.encode()
        h.update(b"S" + struct.pack("<q", len(data)) + data)
    else:
        h.update(b"R" + repr(obj).encode())


def state_checksum(state: dict) -> str:
    """SHA-256 of everything in a model state except the checksum itself."""
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != "checksum"}, h)
    return h.hexdigest()


def model_bytes(state: dict, run_id: Optional[str] = None) -> bytes:
    """The bytes of a model file: ``state`` with its run id and checksum, as ``torch.save`` writes it."""
    state = dict(state, format=MODEL_FORMAT, version=MODEL_VERSION)
    if run_id is not None:
        state["run_id"] = run_id
    state["checksum"] = state_checksum(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def write_model_state(state: dict, path: Union[str, os.PathLike], run_id: Optional[str] = None) -> Path:
    """Write a model state dict (see :func:`model_state`) atomically, with its checksum."""
    return write_bytes(model_bytes(state, run_id), path)


# ------------------------------------------------------------------------------------------------ reading
def find_model_file(path: Union[str, os.PathLike]) -> Path:
    """``path`` itself, or ``{path}model.pt`` when ``path`` is a run prefix."""
    p = Path(path)
    if not p.exists() and Path(str(path) + "model.pt").exists():
        p = Path(str(path) + "model.pt")
    if p.is_dir() and (p / "model.pt").is_file():
        p = p / "model.pt"
    if not p.exists():
        raise InputError(f"'path': model file not found: {str(p)!r}")
    if p.is_dir():
        raise InputError(f"'path': {str(p)!r} is a folder, not a model file")
    return p


def read_model_state(path: Union[str, os.PathLike]) -> dict:
    """Read and check a model file written by :func:`write_model_state` (or a run prefix); ``InputError``
    saying what is wrong if it is not a whole, unchanged idir_fast model file."""
    p = find_model_file(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"'path': {str(p)!r} is not an idir_fast model file, or is damaged ({err})") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise InputError(f"'path': {str(p)!r} is not an idir_fast model file")
    validate_model_state(state, str(p))
    return state


def validate_model_state(state: dict, where: str = "model") -> None:
    """Check a loaded model state (see the module docstring); ``InputError`` naming the first problem."""
    def bad(what):
        return InputError(f"'path': {where!r} is not a valid model file: {what}")

    version = state.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad(f"its version is {version!r}")
    if version > MODEL_VERSION:
        raise bad(f"it was written by a newer idir_fast (model format version {version}; this one reads up to "
                  f"{MODEL_VERSION})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise bad(f"it lacks {', '.join(repr(k) for k in missing)}")
    if version >= 2:
        stored = state.get("checksum")
        if not isinstance(stored, str):
            raise bad("it has no checksum")
        if stored != state_checksum(state):
            raise bad("its content does not match its checksum: it was damaged or changed after it was written")
    else:
        warnings.warn(f"{where}: model file format version 1 has no checksum; its structure was checked, its "
                      "integrity cannot be", UserWarning, stacklevel=3)
    _check_network(state["siren"], state["parameters"], "", bad)
    _check_affine(state["world_to_normalised"], "world_to_normalised", bad, invertible=True)
    _check_geometry(state["fixed_geometry"], "fixed_geometry", bad)
    if state.get("world_affine") is not None:
        _check_affine(state["world_affine"], "world_affine", bad, invertible=True)
    if state.get("moving_geometry") is not None:
        _check_geometry(state["moving_geometry"], "moving_geometry", bad)
    if "backward" in state:
        b = state["backward"]
        if not isinstance(b, dict) or any(k not in b for k in ("siren", "parameters", "world_to_normalised")):
            raise bad("'backward' must hold 'siren', 'parameters' and 'world_to_normalised'")
        _check_network(b["siren"], b["parameters"], "backward ", bad)
        _check_affine(b["world_to_normalised"], "backward world_to_normalised", bad, invertible=True)
    for key in ("settings", "timings", "metrics", "history"):
        if key in state and not isinstance(state[key], dict):
            raise bad(f"{key!r} must be a dict, got {type(state[key]).__name__}")
    for k, v in state.get("history", {}).items():
        if not isinstance(v, torch.Tensor) or v.ndim != 1:
            raise bad(f"history {k!r} must be a 1-D tensor")


def _check_network(cfg, params, label: str, bad) -> None:
    if not isinstance(cfg, dict) or any(k not in cfg for k in ("hidden", "omega", "init")):
        raise bad(f"its {label}network configuration must hold 'hidden', 'omega' and 'init', got {cfg!r}")
    hidden = cfg["hidden"]
    if (not isinstance(hidden, (list, tuple)) or not 1 <= len(hidden) <= MAX_LAYERS
            or any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_WIDTH for w in hidden)):
        raise bad(f"its {label}network widths {hidden!r} must be 1 to {MAX_LAYERS} integers between 1 and "
                  f"{MAX_WIDTH}")
    omega = cfg["omega"]
    if isinstance(omega, bool) or not isinstance(omega, (int, float)) or not math.isfinite(omega) or omega <= 0:
        raise bad(f"its {label}network ω {omega!r} must be a finite positive number")
    if cfg["init"] not in INITS:
        raise bad(f"its {label}network init {cfg['init']!r} must be one of {INITS}")
    widths = [3] + list(hidden) + [3]
    expected = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        expected += [(fan_out, fan_in), (fan_out,)]
    if not isinstance(params, (list, tuple)) or len(params) != len(expected):
        n = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise bad(f"its {label}network of widths {list(hidden)} needs {len(expected)} parameter tensors, the file "
                  f"holds {n}")
    dtypes = set()
    for i, (p, shape) in enumerate(zip(params, expected)):
        if not isinstance(p, torch.Tensor):
            raise bad(f"{label}parameter {i} is a {type(p).__name__}, not a tensor")
        if tuple(p.shape) != shape:
            raise bad(f"{label}parameter {i} has shape {tuple(p.shape)}, the widths {list(hidden)} need {shape}")
        if p.dtype not in (torch.float32, torch.float64):
            raise bad(f"{label}parameter {i} has dtype {p.dtype}, not float32/float64")
        dtypes.add(p.dtype)
        if not bool(torch.isfinite(p).all()):
            raise bad(f"{label}parameter {i} holds NaN/Inf values")
    if len(dtypes) > 1:
        raise bad(f"its {label}parameters mix dtypes {sorted(map(str, dtypes))}")


def _check_affine(a, name: str, bad, invertible: bool = False) -> None:
    try:
        m = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise bad(f"{name!r} is not a 4×4 matrix") from None
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or not np.allclose(m[3], [0, 0, 0, 1]):
        raise bad(f"{name!r} must be a finite 4×4 homogeneous matrix")
    if invertible and not abs(np.linalg.det(m[:3, :3])) > 1e-12:
        raise bad(f"{name!r} is singular")


def _check_geometry(g, name: str, bad) -> None:
    if not isinstance(g, dict) or any(k not in g for k in ("size", "spacing", "origin", "direction")):
        raise bad(f"{name!r} must hold 'size', 'spacing', 'origin' and 'direction'")
    size = g["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size)
            or math.prod(size) > MAX_GRID_VOXELS):
        raise bad(f"{name!r} size {size!r} must be 3 positive integers (at most {MAX_GRID_VOXELS} voxels)")
    for key, n in (("spacing", 3), ("origin", 3), ("direction", 9)):
        try:
            v = np.asarray(g[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise bad(f"{name!r} {key} is not {n} numbers") from None
        if v.shape != (n,) or not np.all(np.isfinite(v)):
            raise bad(f"{name!r} {key} must be {n} finite numbers, got {g[key]!r}")
    if np.any(np.asarray(g["spacing"], dtype=np.float64) <= 0):
        raise bad(f"{name!r} spacing must be positive, got {g['spacing']!r}")
    if not abs(np.linalg.det(np.asarray(g["direction"], dtype=np.float64).reshape(3, 3))) > 1e-6:
        raise bad(f"{name!r} direction is singular")
