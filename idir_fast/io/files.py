"""Files written so that nothing is lost and nothing is left half-written: a temporary name beside the target,
checked (size, and what the format allows) and flushed to disk (``fsync``) before it is renamed over the target;
every failure to write (a full disk, a quota, an I/O error — including the ones a library only prints) is an
:class:`~idir_fast.errors.OutputError` naming the file, and the previous file of that name is kept. Also: output
prefix and folder checks before any work, the output formats and names, the umask, the memory available.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..memory import human_bytes
from ..errors import InputError, OutputError

IMAGE_FORMATS = (".nii.gz", ".nii", ".mha", ".nrrd")
"""Image formats of the outputs (fields, warped images, det J): every one keeps vector images and geometry."""

IMAGE_OUTPUTS = ("0Warp", "Warped", "JacDet", "0InverseWarp", "Consistency")
"""Names of the image outputs of a run (``{prefix}{name}{format}``)."""
OTHER_OUTPUTS = ("model.pt", "report.json", "Transform.h5", "Affine.mat", "fig_tre.png", "fig_jacdet.png",
                 "fig_loss.png")
"""Names of the other outputs of a run (``{prefix}{name}``)."""
LONGEST_OUTPUT_NAME = max(len(n) for n in OTHER_OUTPUTS + tuple(i + f for i in IMAGE_OUTPUTS for f in IMAGE_FORMATS))
TMP_OVERHEAD = 32
"""Characters a temporary name adds to a file name: ``.{name}.{pid}-{random}.tmp``."""
SPECIAL_FOLDERS = ("/dev", "/proc", "/sys")

# Extensions SimpleITK writes by file name; compound ones first.
_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".h5", ".hdf5", ".tfm", ".pt", ".json",
               ".csv", ".png", ".txt", ".mat")
TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9.]+)?$")
"""Temporary files of :func:`atomic_path`: ``.{name}.{pid}-{random}.tmp{ext}`` (the pid of the writer)."""


def output_names(formats=IMAGE_FORMATS) -> tuple:
    """Every file name a run may write after its prefix."""
    return tuple(i + f for i in IMAGE_OUTPUTS for f in formats) + OTHER_OUTPUTS


# ------------------------------------------------------------------------------------------- permissions
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc where possible; else set and restored under a lock)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def honour_umask(path: Union[str, os.PathLike], folder: bool = False) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would (``mkstemp``/``mkdtemp`` make them 0600/0700,
    which hides the outputs from the other users of a shared folder)."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


# ------------------------------------------------------------------------------------------- durability
def fsync_file(path: Union[str, os.PathLike]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Union[str, os.PathLike]) -> None:
    """Make a rename in ``folder`` durable (ignored where the file system cannot sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def free_bytes(path: Union[str, os.PathLike]) -> Optional[int]:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def output_error(path: Union[str, os.PathLike], err: BaseException, what: str = "write") -> OutputError:
    """An :class:`OutputError` naming ``path``, the reason and the free space of its file system."""
    if isinstance(err, OutputError):
        return err
    if isinstance(err, OSError) and err.strerror:
        reason = err.strerror
    else:
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "Reason" in ln or "space" in ln.lower()),
                      lines[-1] if lines else type(err).__name__)
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    free = free_bytes(folder)
    tail = "" if free is None else f"; {human_bytes(free)} free on that file system"
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "space" in reason.lower() or (free is not None and free < (1 << 20)):
        tail += " (disk full?)"
    out = OutputError(f"cannot {what} {str(path)!r}: {reason}{tail}")
    out.errno = code
    return out


@contextlib.contextmanager
def writing(path: Union[str, os.PathLike]):
    """Turn a writer's failure (``OSError``, or the ``RuntimeError`` of ITK, HDF5, torch) into an
    :class:`OutputError` naming ``path``."""
    try:
        yield
    except OutputError:
        raise
    except (OSError, RuntimeError) as err:
        raise output_error(path, err) from None


# ------------------------------------------------------------------------------------------- test hook
def pause_for_tests(point: str) -> None:
    """Kill tests' hook: with ``IDIR_FAST_TEST_PAUSE=<point>:<seconds>`` a save announces ``<point>`` on stderr and
    sleeps there (points: atomic-write, output-set-file, output-set-commit, output-set-renames, cohort-pair-saved);
    unset, it does nothing."""
    from ..config import env_value

    spec = env_value("IDIR_FAST_TEST_PAUSE")
    if spec and spec.rpartition(":")[0] == point:
        print(f"IDIR_FAST_TEST_PAUSE reached {point} (pid {os.getpid()})", file=sys.stderr, flush=True)
        time.sleep(float(spec.rpartition(":")[2]))


# ------------------------------------------------------------------------------------------- atomic writes
def split_extension(path: Union[str, os.PathLike]) -> tuple:
    """``'a/b.nii.gz'`` → ``('a/b', '.nii.gz')``."""
    s = str(path)
    for ext in _EXTENSIONS:
        if s.lower().endswith(ext):
            return s[: -len(ext)], s[-len(ext):]
    root, ext = os.path.splitext(s)
    return root, ext


def temporary_path(path: Union[str, os.PathLike]) -> str:
    """A new empty hidden file beside ``path``, ``.{name}.{pid}-{random}.tmp{ext}``, with the umask's
    permissions."""
    path = Path(path)
    root, ext = split_extension(path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{root}.{os.getpid()}-", suffix=f".tmp{ext}", dir=str(path.parent))
    except OSError as err:
        raise output_error(path, err, "create a file beside") from None
    os.close(fd)
    honour_umask(tmp)
    return tmp


def commit_file(tmp: Union[str, os.PathLike], path: Union[str, os.PathLike],
                verify: Optional[Callable[[str], None]] = None) -> Path:
    """Check ``tmp`` (not empty; ``verify(tmp)`` raises when its content is incomplete), flush it to disk and
    rename it onto ``path``."""
    tmp = os.fspath(tmp)
    try:
        if os.path.getsize(tmp) == 0:
            raise OutputError(f"cannot write {str(path)!r}: the writer produced an empty file"
                              + _free_note(path))
        if verify is not None:
            verify(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as err:
        raise output_error(path, err) from None
    fsync_folder(Path(path).parent if str(Path(path).parent) else ".")
    return Path(path)


def _free_note(path) -> str:
    free = free_bytes(Path(path).parent if str(Path(path).parent) else ".")
    return "" if free is None else f" ({human_bytes(free)} free on that file system; disk full?)"


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike], verify: Optional[Callable[[str], None]] = None):
    """Yield a temporary path beside ``path`` (same extension); on success check it (:func:`commit_file`) and
    rename it onto ``path``; on any failure remove it and keep the previous ``path``."""
    tmp = temporary_path(path)
    try:
        yield tmp
        pause_for_tests("atomic-write")  # written under the temporary name, not yet renamed
        commit_file(tmp, path, verify)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_to(tmp: Union[str, os.PathLike], data: bytes, final: Union[str, os.PathLike, None] = None) -> None:
    """Write ``data`` into ``tmp`` and check that all of it is there (``final`` names the file in errors)."""
    name = final if final is not None else tmp
    with writing(name):
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    size = os.path.getsize(tmp)
    if size != len(data):
        raise OutputError(f"cannot write {str(name)!r}: only {size} of {len(data)} bytes were written"
                          + _free_note(name))


def write_bytes(data: bytes, path: Union[str, os.PathLike]) -> Path:
    with atomic_path(path) as tmp:
        write_bytes_to(tmp, data, path)
    return Path(path)


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, default=_json_default) + "\n").encode()


def write_json(obj, path: Union[str, os.PathLike]) -> Path:
    return write_bytes(json_bytes(obj), path)


def write_text(text: str, path: Union[str, os.PathLike]) -> Path:
    return write_bytes(text.encode(), path)


def plain(value):
    """A JSON-friendly copy of a value: mappings (read-only ones too) as dicts, tuples as lists, NumPy values as
    Python numbers and lists."""
    from collections.abc import Mapping

    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(folder: Union[str, os.PathLike], name_prefix: str = "") -> list:
    """Remove the temporary files of :func:`atomic_path` in ``folder`` whose name starts with ``name_prefix`` and
    whose writer (the pid in the name) is no longer running on this machine: left by a killed run."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = TMP_NAME.match(e.name)
        if not m or not m.group("name").startswith(name_prefix) or pid_alive(int(m.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(e.name)
    return removed


# ------------------------------------------------------------------------------------------- checks up front
def ensure_folder(path: Union[str, os.PathLike], name: str, create: bool = True) -> Path:
    """An output folder: created when missing (``create``); an error naming ``name`` when it exists and is not a
    folder, or cannot be written."""
    if not os.fspath(path).strip():
        raise InputError(f"'{name}' is empty: give an output folder")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"'{name}': {str(p)!r} exists and is not a folder")
    _refuse_special(p, name)
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"'{name}': cannot create folder {str(p)!r} ({err.strerror or err})") from None
    if p.exists():
        _probe_writable(p, name)
    return p


def _refuse_special(folder: Path, name: str) -> None:
    real = os.path.realpath(folder)
    for special in SPECIAL_FOLDERS:
        if real == special or real.startswith(special + os.sep):
            raise InputError(f"'{name}': {str(folder)!r} is a system folder ({special}), not a place for "
                             "outputs")


def _probe_writable(folder: Path, name: str) -> None:
    """Create and remove a file in ``folder``: the permission bits alone do not say (root, read-only mounts)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"'{name}': folder {str(folder)!r} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".idir_fast-probe-", dir=str(folder))
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"'{name}': folder {str(folder)!r} is not writable ({err.strerror or err})") from None


def name_max(folder: Union[str, os.PathLike]) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def prepare_prefix(prefix: Union[str, os.PathLike], name: str = "prefix") -> str:
    """:func:`check_writable_prefix` after creating the prefix's folder when it is missing (never a system folder):
    ``save("out/case1_")`` on a fresh checkout writes ``out/`` as the CLI's ``--out`` does."""
    text = os.path.expanduser(os.fspath(prefix))  # "~/runs/x_" as a shell would read it, not a folder named "~"
    folder = text if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)) else os.path.dirname(text)
    made = None  # the outermost folder made here: removed again when a check of the prefix then fails
    if folder and text.strip() and not os.path.isdir(folder) and not os.path.lexists(folder):
        made = Path(folder).absolute()
        while not made.parent.exists():
            made = made.parent
        ensure_folder(folder, name)
    try:
        return check_writable_prefix(text, name)
    except InputError:
        if made is not None:  # only the empty folders made here, innermost first
            for path in [Path(folder).absolute(), *Path(folder).absolute().parents]:
                try:
                    path.rmdir()
                except OSError:
                    break
                if path == made:
                    break
        raise


def check_writable_prefix(prefix: Union[str, os.PathLike], name: str = "prefix") -> str:
    """Fail early (before any work) if the outputs of a run cannot be written at ``prefix``; returns the prefix
    as the outputs use it.

    ``out/case1_`` writes ``out/case1_0Warp.nii.gz`` …; a prefix that ends with a separator or names an existing
    folder (``out/``, ``out``) writes ``out/0Warp.nii.gz`` … inside it. Refused: an empty prefix, a prefix that
    is an existing file or device (``/dev/null``), a missing or unwritable folder, a system folder, names too
    long for the file system, an output name that is taken by a folder.
    """
    text = os.fspath(prefix)
    if not text.strip():
        raise InputError(f"'{name}' is empty: give an output prefix such as out/case1_ (→ out/case1_0Warp.nii.gz "
                         "…) or a folder such as out/")
    p = Path(text)
    parent = p.parent if str(p.parent) else Path(".")
    limit = name_max(parent) if parent.is_dir() else 255
    if len(p.name.encode()) > limit:
        raise InputError(f"'{name}': the file name part {p.name[:12]!r}… is too long ({len(p.name.encode())} "
                         f"bytes; this file system allows {limit} per name)")
    if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)) or p.is_dir():
        folder, stem = p, ""
        text = os.path.join(text, "")
    else:
        if os.path.lexists(p):
            raise InputError(f"'{name}': {text!r} exists and is not a folder; the output prefix must be a new "
                             "name such as out/case1_ (→ out/case1_0Warp.nii.gz …) or a folder such as out/")
        folder, stem = (p.parent if str(p.parent) else Path(".")), p.name
    if not folder.exists():
        raise InputError(f"'{name}': output folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise InputError(f"'{name}': {str(folder)!r} is not a folder")
    _refuse_special(folder, name)
    limit = name_max(folder)
    longest = len(stem.encode()) + LONGEST_OUTPUT_NAME + TMP_OVERHEAD
    if longest > limit:
        raise InputError(f"'{name}': the file name part {stem!r} is too long ({len(stem.encode())} bytes): this "
                         f"file system allows {limit} bytes per name and the outputs add up to "
                         f"{LONGEST_OUTPUT_NAME + TMP_OVERHEAD} (e.g. {stem[:12]}…0InverseWarp.nii.gz and its "
                         "temporary name)")
    if len(os.path.abspath(text).encode()) + LONGEST_OUTPUT_NAME + TMP_OVERHEAD > 4000:
        raise InputError(f"'{name}': the output path is too long for the file system")
    _probe_writable(folder, name)
    for out_name in output_names():
        target = Path(text + out_name)
        if target.is_dir():
            raise InputError(f"'{name}': the output {str(target)!r} is an existing folder; remove it or choose "
                             "another prefix")
    return text



