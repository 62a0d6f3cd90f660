"""Files written so that nothing is left half-written: a temporary name beside the target, renamed on success;
output-folder checks before any work; the output formats, named once."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import InputError

IMAGE_FORMATS = (".nii.gz", ".nii", ".mha", ".nrrd")
"""Image formats of the outputs (fields, warped images, det J): every one keeps vector images and geometry."""

# Extensions SimpleITK writes by file name; compound ones first.
_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".h5", ".hdf5", ".tfm", ".pt", ".json",
               ".csv", ".png", ".txt")


def ensure_folder(path: Union[str, os.PathLike], name: str, create: bool = True) -> Path:
    """An output folder: created when missing (``create``); an error naming ``name`` when it exists and is not a
    folder, or cannot be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"'{name}': {str(p)!r} exists and is not a folder")
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"'{name}': cannot create folder {str(p)!r} ({err.strerror or err})") from None
    if p.exists() and not os.access(p, os.W_OK | os.X_OK):
        raise InputError(f"'{name}': folder {str(p)!r} is not writable")
    return p


def split_extension(path: Union[str, os.PathLike]) -> tuple:
    """``'a/b.nii.gz'`` → ``('a/b', '.nii.gz')``."""
    s = str(path)
    for ext in _EXTENSIONS:
        if s.lower().endswith(ext):
            return s[: -len(ext)], s[-len(ext):]
    root, ext = os.path.splitext(s)
    return root, ext


def check_writable_prefix(prefix: Union[str, os.PathLike], name: str = "prefix") -> Path:
    """Fail early (before any work) if outputs cannot be written next to ``prefix``."""
    text = os.fspath(prefix)
    prefix = Path(prefix)
    folder = prefix if text.endswith(os.sep) else (prefix.parent if str(prefix.parent) else Path("."))
    if not folder.exists():
        raise InputError(f"'{name}': output folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise InputError(f"'{name}': {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"'{name}': output folder {str(folder)!r} is not writable")
    return prefix


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike]):
    """Yield a temporary path beside ``path`` (same extension); rename it onto ``path`` only on success."""
    path = Path(path)
    root, ext = split_extension(path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{root}.", suffix=f".tmp{ext}", dir=str(path.parent))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(obj, path: Union[str, os.PathLike]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, default=_json_default)
            fh.write("\n")
    return Path(path)


def write_text(text: str, path: Union[str, os.PathLike]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
    return Path(path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
