"""A run's outputs as one consistent set: every file of a save carries the same run id, and the report, written
last, lists every file with its size and SHA-256.

:class:`OutputSet` writes every file of a run under a hidden temporary name beside its final one and checks it
(:mod:`.files`, :mod:`.images`), so a failure (a full disk, an error) while producing any of them leaves the
previous outputs of that prefix untouched. Only when all are written and checked does it commit them: it removes
the previous ``{prefix}report.json``, renames every file into place, then renames the new report into place. So:

* a prefix whose ``report.json`` exists holds a complete set; the report's ``run_id`` is also in every image's
  metadata (NIfTI ``descrip``; MetaImage/NRRD key ``idir_fast_run_id``) and in ``model.pt``, and
  :func:`verify_output_set` checks every listed file against its size and checksum;
* a prefix without a report after a crash holds an incomplete set (the files say which run each came from);
* files of the same prefix left by an earlier run that the new run does not write (``Transform.h5``, figures,
  another ``--format``) are removed when they are provably from idir_fast (listed in the previous report, or
  carrying a run id: images in their metadata, PNG figures in their ``Description``), and otherwise kept and
  listed under ``stale_files_kept`` in the report, with a warning;
* hidden temporary files of a run that was killed (their writer's pid is gone) are removed by the next save to
  that prefix.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import uuid
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import SimpleITK as sitk

from ..errors import OutputError
from .files import (commit_file, fsync_folder, json_bytes, output_error, output_names, pause_for_tests,
                    remove_dead_temporaries, temporary_path, write_bytes_to)
from .images import image_run_id, run_id_metadata, write_image_to


def png_run_id(path: Union[str, os.PathLike]) -> Optional[str]:
    """The run id in a PNG figure's ``Description`` text chunk (``None`` when absent)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IDAT" or kind == b"IEND":
                    return None
                body = fh.read(length)
                fh.read(4)  # CRC
                if kind == b"tEXt":
                    key, _, text = body.partition(b"\0")
                    if key == b"Description" and text.startswith(b"idir_fast run_id="):
                        return text.split(b"=", 1)[1].decode("latin-1").strip() or None
    except OSError:
        return None


def file_run_id(path: Union[str, os.PathLike]) -> Optional[str]:
    """The run id an output file carries (images, PNG figures), or ``None``."""
    return png_run_id(path) if str(path).lower().endswith(".png") else image_run_id(path)


class StaleOutputWarning(UserWarning):
    """Files of an earlier run under the same prefix were kept beside a new output set (not provably ours)."""


def new_run_id() -> str:
    return uuid.uuid4().hex


def sha256_file(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _split_prefix(prefix: str) -> Tuple[Path, str]:
    folder, stem = os.path.split(prefix)
    return Path(folder or "."), stem


class OutputSet:
    """The files of one save (see the module docstring). Use as a context manager; :meth:`commit` at the end.

    Args:
        prefix: the output prefix, as :func:`idir_fast.io.files.check_writable_prefix` returns it.
        run_id: the id written into every file (default: a new random one).
    """

    def __init__(self, prefix: str, run_id: Optional[str] = None):
        self.prefix = os.fspath(prefix)
        self.folder, self.stem = _split_prefix(self.prefix)
        self.run_id = run_id or new_run_id()
        self.pending: Dict[str, Tuple[str, str]] = {}  # kind → (file name after the prefix, temporary path)
        self.cleaned = remove_dead_temporaries(self.folder, self.stem)

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.discard()

    def discard(self) -> None:
        """Remove every temporary file not yet committed."""
        for _, tmp in self.pending.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.pending.clear()

    def final(self, name: str) -> str:
        return self.prefix + name

    def _reserve(self, kind: str, name: str) -> str:
        if kind in self.pending:
            raise ValueError(f"output kind {kind!r} added twice")
        if self.pending:
            pause_for_tests("output-set-file")  # some files of the set written (temporary names), others not yet
        tmp = temporary_path(self.final(name))
        self.pending[kind] = (name, tmp)
        return tmp

    # ------------------------------------------------------------------------------------------ adding files
    def image(self, kind: str, name: str, image: sitk.Image, compress: bool = True) -> None:
        """An image output, with the run id in its metadata."""
        for key, value in run_id_metadata(self.run_id).items():
            image.SetMetaData(key, value)
        write_image_to(self._reserve(kind, name), image, self.final(name), compress)

    def data(self, kind: str, name: str, data: bytes) -> None:
        write_bytes_to(self._reserve(kind, name), data, self.final(name))

    def written(self, kind: str, name: str, write: Callable[[str], None]) -> None:
        """A file made by ``write(temporary path)``, which must raise when it could not write it completely."""
        write(self._reserve(kind, name))

    # ------------------------------------------------------------------------------------------ committing
    def _previous_listing(self) -> List[str]:
        """Names (in the folder) of the files the prefix's current report lists."""
        report = Path(self.final("report.json"))
        try:
            previous = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return []
        if not isinstance(previous, dict):
            return []
        names = []
        files = previous.get("files")
        if isinstance(files, dict):
            names += [str(k) for k in files]
        outputs = previous.get("outputs")
        if isinstance(outputs, dict):
            names += [os.path.basename(str(v)) for v in outputs.values()]
        return names

    def _stale(self, keep: set) -> Tuple[List[str], List[str]]:
        """``(ours, unknown)``: existing output files of this prefix that the new set does not contain."""
        listed = set(self._previous_listing())
        candidates = set(listed) | {self.stem + n for n in output_names()}
        ours, unknown = [], []
        for fname in sorted(candidates - keep):
            if os.path.dirname(fname) or fname in ("", ".", ".."):
                continue
            path = self.folder / fname
            if not path.is_file() or path.is_symlink():
                continue
            if fname in listed or file_run_id(path) is not None:
                ours.append(fname)
            else:
                unknown.append(fname)
        return ours, unknown

    def commit(self, report: dict) -> Dict[str, Path]:
        """Write ``report`` (with ``run_id``, ``files``: name → bytes and SHA-256, and the stale files) and move
        the whole set into place; returns output kind → final path (``report`` included)."""
        files = {}
        for kind, (name, tmp) in self.pending.items():
            files[self.stem + name] = {"kind": kind, "bytes": os.path.getsize(tmp), "sha256": sha256_file(tmp)}
        keep = set(files) | {self.stem + "report.json"}
        ours, unknown = self._stale(keep)
        report = dict(report, run_id=self.run_id, files=files,
                      outputs={kind: self.final(name) for kind, (name, _) in self.pending.items()})
        report["outputs"]["report"] = self.final("report.json")
        if ours:
            report["stale_files_removed"] = ours
        if unknown:
            report["stale_files_kept"] = unknown
        if self.cleaned:
            report["temporary_files_removed"] = self.cleaned
        report_tmp = self._reserve("report", "report.json")
        write_bytes_to(report_tmp, json_bytes(report), self.final("report.json"))
        pause_for_tests("output-set-commit")  # every file written under its temporary name, nothing renamed yet
        # commit: no report may describe a mixed set, so the old one goes first and the new one comes last
        old_report = self.final("report.json")
        try:
            if os.path.lexists(old_report):
                os.unlink(old_report)
                fsync_folder(self.folder)
        except OSError as err:
            raise output_error(old_report, err, "replace") from None
        out = {}
        for kind, (name, tmp) in list(self.pending.items()):
            if kind == "report":
                continue
            out[kind] = commit_file(tmp, self.final(name))
            del self.pending[kind]
            pause_for_tests("output-set-renames")  # some files renamed into place, the report not yet
        out["report"] = commit_file(report_tmp, self.final("report.json"))
        del self.pending["report"]
        for fname in ours:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.folder / fname)
        if ours:
            fsync_folder(self.folder)
        if unknown:
            warnings.warn(f"{self.prefix!r}: kept {len(unknown)} file(s) of the same prefix that this run did not "
                          f"write and that do not carry an idir_fast run id: {', '.join(unknown)} (listed in the "
                          "report under 'stale_files_kept')", StaleOutputWarning, stacklevel=3)
        return out


def verify_output_set(prefix: Union[str, os.PathLike], checksums: bool = True) -> List[str]:
    """Problems of the output set at ``prefix`` (empty when it is whole): its report is missing or unreadable, a
    listed file is missing, has another size or (``checksums``) another SHA-256, or an image carries another run
    id."""
    prefix = os.fspath(prefix)
    folder, _ = _split_prefix(prefix)
    report_path = Path(prefix + "report.json")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{str(report_path)!r} is missing (an incomplete or never-finished save)"]
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return [f"{str(report_path)!r} cannot be read ({err})"]
    files = report.get("files") if isinstance(report, dict) else None
    if not isinstance(files, dict):
        return [f"{str(report_path)!r} does not list its files (written by an older idir_fast?)"]
    problems = []
    run_id = report.get("run_id")
    for fname, info in files.items():
        path = folder / fname
        if not path.is_file():
            problems.append(f"{str(path)!r} is missing")
            continue
        if path.stat().st_size != info.get("bytes"):
            problems.append(f"{str(path)!r} has {path.stat().st_size} bytes, the report says {info.get('bytes')}")
            continue
        if checksums and sha256_file(path) != info.get("sha256"):
            problems.append(f"{str(path)!r} does not match its SHA-256 in the report")
            continue
        if info.get("kind") not in ("model", "report") and fname.endswith((".nii", ".nii.gz", ".mha", ".nrrd")):
            rid = image_run_id(path)
            if rid != run_id:
                problems.append(f"{str(path)!r} carries run id {rid!r}, the report {run_id!r}")
    return problems


__all__ = ["OutputSet", "OutputError", "new_run_id", "sha256_file", "verify_output_set", "StaleOutputWarning"]
