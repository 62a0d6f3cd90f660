"""What a NIfTI file (``.nii``, ``.nii.gz``) declares and what it holds, checked before ITK reads it.

ITK's NIfTI reader fills a file that ends early with zeros, and reads NaN/Inf voxels as 0, without an error.
This module reads the header itself (NIfTI-1 and NIfTI-2, either byte order), counts the voxel bytes the file
really holds (decompressing a ``.nii.gz`` as a stream, so memory stays bounded) and, for floating-point data,
counts the non-finite values on the way. Used on every NIfTI input (:func:`idir_fast.io.images.read_image`) and on
every NIfTI output before it is renamed into place (:func:`idir_fast.io.images.write_image`).
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

# NIfTI datatype code → (NumPy type code, components per voxel); float kinds are checked for NaN/Inf
DATATYPES = {
    2: ("u1", 1), 4: ("i2", 1), 8: ("i4", 1), 16: ("f4", 1), 32: ("f4", 2), 64: ("f8", 1), 128: ("u1", 3),
    256: ("i1", 1), 512: ("u2", 1), 768: ("u4", 1), 1024: ("i8", 1), 1280: ("u8", 1), 1536: (None, 1),
    1792: ("f8", 2), 2048: (None, 2), 2304: ("u1", 4),
}
CHUNK = 1 << 22  # bytes decompressed / scanned at a time


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI header that say how much voxel data follows, and of what kind."""

    version: int          # 1 or 2
    byte_order: str       # "<" or ">"
    dim: tuple            # dim[1..dim[0]]
    datatype: int
    bitpix: int
    vox_offset: int
    single_file: bool     # magic "n+1"/"n+2" (the voxels follow the header in the same file)

    @property
    def voxel_bytes(self) -> int:
        """Bytes of voxel data the header declares."""
        n = 1
        for d in self.dim:
            n *= max(int(d), 0)
        return n * self.bitpix // 8

    @property
    def numpy_dtype(self) -> Optional[np.dtype]:
        code = DATATYPES.get(self.datatype, (None, 1))[0]
        return np.dtype(self.byte_order + code) if code else None

    @property
    def is_float(self) -> bool:
        dt = self.numpy_dtype
        return dt is not None and dt.kind == "f"


class NiftiProblem(ValueError):
    """What is wrong with a NIfTI file (the caller turns it into an InputError or an OutputError)."""


def is_nifti(path: Union[str, os.PathLike]) -> bool:
    s = str(path).lower()
    return s.endswith(".nii") or s.endswith(".nii.gz")


def _open(path: Path):
    return gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


def read_header(path: Union[str, os.PathLike]) -> NiftiHeader:
    """Parse the header of a ``.nii``/``.nii.gz`` file; :class:`NiftiProblem` when it is not a NIfTI header."""
    p = Path(path)
    try:
        with _open(p) as fh:
            raw = fh.read(540)
    except (OSError, EOFError, zlib.error) as err:
        raise NiftiProblem(f"cannot read the NIfTI header ({err})") from None
    if len(raw) < 348:
        raise NiftiProblem(f"the file is shorter ({len(raw)} bytes) than a NIfTI header (348 bytes)")
    for order in ("<", ">"):
        size = struct.unpack(order + "i", raw[:4])[0]
        if size == 348:
            dim = struct.unpack(order + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(order + "2h", raw[70:74])
            vox_offset = struct.unpack(order + "f", raw[108:112])[0]
            magic = raw[344:348]
            version, single = 1, magic[:3] == b"n+1"
            break
        if size == 540:
            if len(raw) < 540:
                raise NiftiProblem(f"the file is shorter ({len(raw)} bytes) than a NIfTI-2 header (540 bytes)")
            datatype, bitpix = struct.unpack(order + "2h", raw[12:16])
            dim = struct.unpack(order + "8q", raw[16:80])
            vox_offset = struct.unpack(order + "q", raw[168:176])[0]
            magic = raw[4:12]
            version, single = 2, magic[:3] == b"n+2"
            break
    else:
        raise NiftiProblem("the header does not start with sizeof_hdr 348 (NIfTI-1) or 540 (NIfTI-2)")
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise NiftiProblem(f"dim[0] = {ndim} is not between 1 and 7")
    if bitpix <= 0 or bitpix % 8:
        raise NiftiProblem(f"bitpix = {bitpix} is not a positive multiple of 8")
    if not (vox_offset == vox_offset) or vox_offset < 0:  # NaN or negative
        raise NiftiProblem(f"vox_offset = {vox_offset} is not a valid byte offset")
    return NiftiHeader(version, order, tuple(int(d) for d in dim[1:ndim + 1]), int(datatype), int(bitpix),
                       int(vox_offset), bool(single))


@dataclass(frozen=True)
class NiftiContent:
    header: NiftiHeader
    voxel_bytes_held: int      # bytes after vox_offset that the file really holds (≤ declared when truncated)
    stream_error: Optional[str]  # a compressed stream that ends early or is corrupt
    non_finite: int            # NaN/Inf values among the declared voxels (float data; 0 otherwise)


def _chunks(path: Path, gz: bool, problems: list):
    """The file's (decompressed) bytes, chunk by chunk. A compressed stream that is cut short or corrupt adds a
    line to ``problems`` after the bytes that could be decompressed (so the count of bytes held is exact)."""
    with open(path, "rb") as fh:
        if not gz:
            yield from iter(lambda: fh.read(CHUNK), b"")
            return
        d, started, members = zlib.decompressobj(wbits=31), False, 0
        for raw in iter(lambda: fh.read(CHUNK), b""):
            while raw:
                if not started and members and not raw.startswith(b"\x1f\x8b"):
                    return  # bytes after the last member that are not another member: ignored, as zlib does
                try:
                    out = d.decompress(raw)
                except zlib.error as err:
                    problems.append(f"corrupt compressed data ({err})")
                    return
                started = True
                if out:
                    yield out
                if d.eof:  # a member ended; another may follow (concatenated members)
                    raw, members = d.unused_data, members + 1
                    d, started = zlib.decompressobj(wbits=31), False
                else:
                    raw = b""
        if started or not members:
            problems.append("the compressed stream ends before its end marker")


def scan(path: Union[str, os.PathLike], count_non_finite: bool = True) -> NiftiContent:
    """Read the file once: how many voxel bytes it holds and, for float data, how many are NaN/Inf."""
    p = Path(path)
    hdr = read_header(p)
    if not hdr.single_file:
        return NiftiContent(hdr, hdr.voxel_bytes, None, 0)
    dtype = hdr.numpy_dtype if (count_non_finite and hdr.is_float) else None
    gz = str(p).lower().endswith(".gz")
    if not gz and dtype is None:  # plain file, nothing to count: its size says it all
        return NiftiContent(hdr, max(0, os.path.getsize(p) - hdr.vox_offset), None, 0)
    declared, held, pending, bad, position, problems = hdr.voxel_bytes, 0, b"", 0, 0, []
    for chunk in _chunks(p, gz, problems):
        start = position
        position += len(chunk)
        if position <= hdr.vox_offset:
            continue
        data = chunk[max(0, hdr.vox_offset - start):]
        take = data[: max(0, declared - held)]
        held += len(data)
        if dtype is not None and take:
            buf = pending + take
            usable = len(buf) - len(buf) % dtype.itemsize
            values = np.frombuffer(buf[:usable], dtype=dtype)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            pending = buf[usable:]
    return NiftiContent(hdr, held, problems[0] if problems else None, bad)


def check(path: Union[str, os.PathLike], count_non_finite: bool = True) -> NiftiContent:
    """:func:`scan`, raising :class:`NiftiProblem` when the file holds less voxel data than its header declares
    (or its compressed stream is cut short or corrupt)."""
    content = scan(path, count_non_finite)
    hdr = content.header
    if content.stream_error is not None:
        raise NiftiProblem(f"its compressed data is damaged: {content.stream_error}; {content.voxel_bytes_held} of "
                           f"the {hdr.voxel_bytes} voxel bytes its header declares could be read")
    if content.voxel_bytes_held < hdr.voxel_bytes:
        raise NiftiProblem(f"the file is truncated: its header declares {hdr.voxel_bytes} bytes of voxel data "
                           f"({' × '.join(map(str, hdr.dim))} voxels of {hdr.bitpix} bits) but it holds "
                           f"{content.voxel_bytes_held}")
    return content


__all__ = ["NiftiHeader", "NiftiContent", "NiftiProblem", "is_nifti", "read_header", "scan", "check"]
