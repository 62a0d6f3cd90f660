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
from .files import (commit_file, plain, fsync_folder, json_bytes, output_error, output_names, pause_for_tests,
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


def output_memory(reg, itk_transform: bool = False, write_inverse: bool = False) -> dict:
    """Estimated peak memory of writing ``reg``'s outputs (:func:`idir_fast.memory.output_bytes`)."""
    import numpy as np

    from .. import memory
    from ..core.geometry import ImageGeometry

    moving = reg.moving_geometry or (ImageGeometry.from_sitk(reg.moving) if isinstance(reg.moving, sitk.Image)
                                     else None)
    return memory.output_bytes(int(np.prod(reg.fixed_geometry.size)),
                               None if moving is None else int(np.prod(moving.size)), reg.siren.hidden,
                               next(reg.siren.parameters()).element_size(), reg.device,
                               itk_transform=itk_transform, inverse=write_inverse or reg.backward is not None)


def write_outputs(reg, prefix: Union[str, os.PathLike], *, field_format: str = ".nii.gz", write_warped: bool = True,
                  write_jacobian: bool = True, itk_transform: bool = False, figures: bool = False,
                  write_inverse: bool = False, report_extra: Optional[dict] = None) -> Dict[str, Path]:
    """Write a registration's outputs with ANTs-style names, as one consistent set (:class:`OutputSet`).

    Writes ``{prefix}0Warp{ext}`` (the whole map fixed → moving as one displacement field, affine part
    included), ``{prefix}Warped{ext}`` (when the moving image is known), ``{prefix}JacDet{ext}``,
    ``{prefix}model.pt`` and ``{prefix}report.json``; with an affine stage or a starting transform also
    ``{prefix}Affine.mat`` (that linear part alone, an ITK transform file); with ``itk_transform``
    ``{prefix}Transform.h5`` (the ITK composite: affine ∘ displacement field of the network); with
    ``write_inverse`` (always in symmetric mode) ``{prefix}0InverseWarp{ext}`` on the moving grid; in symmetric
    mode ``{prefix}Consistency{ext}`` (the cycle error, mm); with ``figures`` the PNG figures of
    :mod:`idir_fast.io.figures`. A prefix ending in a separator, or naming an existing folder, writes inside
    that folder (``out/0Warp.nii.gz``); a missing folder is created (never a system folder).

    Every file is written under a temporary name and checked first; only when all are complete are they
    renamed into place, the report last (the module docstring). The report's metrics are ``reg``'s plus what
    the files add (:meth:`~idir_fast.registration.Registration.evaluate`: folding and SDlogJ of the det J map
    written, the inverse consistency with the inverse field); ``reg`` itself is not changed. A failure to write
    raises :class:`~idir_fast.errors.OutputError` and leaves the previous outputs as they were.

    Args:
        field_format: one of :data:`idir_fast.io.files.IMAGE_FORMATS`.
        report_extra: more top-level entries for the report (e.g. the cohort's settings hash).

    Returns:
        output kind → path.
    """
    from .. import memory
    from ..errors import InputError
    from ..threads import thread_scope
    from .files import IMAGE_FORMATS, prepare_prefix

    if field_format not in IMAGE_FORMATS:
        raise InputError(f"'field_format' must be one of {IMAGE_FORMATS}, got {field_format!r}")
    symmetric = reg.backward is not None
    memory.check_outputs(output_memory(reg, itk_transform, write_inverse), reg.device,
                         enabled=reg.settings.memory_check)
    prefix = prepare_prefix(prefix, "prefix")  # "out/" or an existing folder writes out/0Warp.nii.gz, …; a missing
    # folder is created first, as the CLI's --out
    with thread_scope(output_threads(reg)):
        return _write(reg, prefix, symmetric, field_format, write_warped, write_jacobian, itk_transform, figures,
                      write_inverse, report_extra)


def output_threads(reg) -> int:
    """The threads writing a run's outputs uses: the count its optimisation ended with (the run's policy at the
    load it last saw), else what its ``threads`` setting allows now."""
    from ..threads import max_threads

    used = reg.run.get("threads_used") or {}
    changes = used.get("changes") or ()
    return int(changes[-1][1]) if changes else max_threads(reg.settings.threads)


def _write(reg, prefix, symmetric, field_format, write_warped, write_jacobian, itk_transform, figures, write_inverse,
           report_extra) -> Dict[str, Path]:
    import numpy as np

    from .figures import run_figures
    from .model_file import model_bytes, state_of
    from .transforms import matrix_to_transform, write_itk_transform_to

    with_warped = write_warped and reg.moving is not None
    images = reg.transform.output_images(reg.warped_input() if with_warped else None,  # one pass for all three
                                         jacobian=write_jacobian)
    evaluated = reg.evaluate(jacobian=write_jacobian, inverse=write_inverse or symmetric, det=images.get("jacobian"))
    with OutputSet(prefix) as outs:
        outs.image("field", "0Warp" + field_format, images["field"])
        if not np.allclose(reg.world_affine, np.eye(4)):
            affine = matrix_to_transform(reg.world_affine)
            outs.written("affine", "Affine.mat",
                         lambda tmp: write_itk_transform_to(tmp, affine, outs.final("Affine.mat")))
        if itk_transform:
            composite = reg.itk_transform()
            outs.written("transform", "Transform.h5",
                         lambda tmp: write_itk_transform_to(tmp, composite, outs.final("Transform.h5")))
            del composite
        if write_inverse or symmetric:
            outs.image("inverse_field", "0InverseWarp" + field_format, reg.inverse_displacement_field())
        if symmetric:
            outs.image("consistency", "Consistency" + field_format, reg.consistency_image())
        if with_warped:
            outs.image("warped", "Warped" + field_format, images["warped"])
        jac = images.get("jacobian")
        if jac is not None:
            outs.image("jacobian", "JacDet" + field_format, jac)
        outs.data("model", "model.pt", model_bytes(state_of(evaluated), outs.run_id))
        if figures:
            for kind, (name, data) in run_figures(plain(evaluated.metrics), jac, reg.mask, evaluated.history,
                                                  outs.run_id).items():
                outs.data(f"figure_{kind}", name, data)
        report = evaluated.report()
        report.update(report_extra or {})
        return outs.commit(report)


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
