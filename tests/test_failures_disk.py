"""Issue #13, item 1: a full disk must not destroy earlier results, and must end with a clear error (exit 4).

SimpleITK's NIfTI writer does not raise on a full disk (it prints ``NWAD: wrote only 0 of … bytes``); the file is
checked before it replaces anything. Tested on a real tiny file system (tmpfs, where mounting is allowed) and by
injecting a short write into the same code path (always).
"""
import contextlib
import errno
import hashlib
import os
import subprocess

import pytest
import SimpleITK as sitk

import idir_fast
from idir_fast.apps.cli import main
from idir_fast.errors import OutputError
from idir_fast.io import files as io_files
from idir_fast.io.outputs import verify_output_set
from helpers import write_pair_files

KW = dict(epochs=2, batch_size=50, hidden=(8,), progress=False, device="cpu")


@pytest.fixture(scope="module")
def reg(tiny_pair):
    return idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, **KW)


@pytest.fixture
def pair_files(tiny_pair, tmp_path):
    return write_pair_files(tiny_pair, tmp_path, landmarks=False)


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@contextlib.contextmanager
def tiny_filesystem(path, size="400k"):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        # "[device]": a property of the machine (no privilege to mount), like the device-only skips of the CI budget
        why = proc.stderr.strip() or "mount failed"
        pytest.skip(f"[device] this machine does not allow mounting a small tmpfs ({why}); the fault-injection "
                    "tests below cover the same code path")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def _fill(folder, leave_bytes):
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler.bin", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))


def test_full_disk_keeps_the_previous_outputs_and_fails_clearly(reg, pair_files, tmp_path, capsys):
    with tiny_filesystem(tmp_path / "small") as disk:
        reg.save(str(disk / "case_"))
        before = _digests(disk)
        assert verify_output_set(str(disk / "case_")) == []
        _fill(disk, leave_bytes=30_000)  # room for a few headers, not for a field
        with pytest.raises(OutputError, match=r"cannot write .*case_0Warp\.nii\.gz.*disk full"):
            reg.save(str(disk / "case_"))
        after = {k: v for k, v in _digests(disk).items() if k != "filler.bin"}
        assert after == before  # every earlier output survives, byte for byte
        assert verify_output_set(str(disk / "case_")) == []
        assert not [p for p in os.listdir(disk) if ".tmp" in p]  # nothing half-written left behind
        # the command: exit status 4 and a message naming the file, the old outputs kept
        rc = main(["register", pair_files["fixed"], pair_files["moving"], "--mask", pair_files["mask"], "--out",
                   str(disk / "case_"), "--epochs", "2", "--batch-size", "50", "--hidden", "8", "--no-progress"])
        assert rc == 4
        err = capsys.readouterr().err
        assert "output error" in err and "case_0Warp.nii.gz" in err and "disk full" in err
        assert {k: v for k, v in _digests(disk).items() if k != "filler.bin"} == before


def _short_writer(real):
    """A SimpleITK.WriteImage that, like the NIfTI writer on a full disk, leaves a short file and does not raise."""
    def write(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        size = os.path.getsize(path)
        with open(path, "r+b") as fh:
            fh.truncate(size // 3)
    return write


@pytest.mark.parametrize("fmt", [".nii.gz", ".nii", ".mha"])
def test_injected_short_write_is_detected_and_the_previous_outputs_survive(reg, tmp_path, monkeypatch, fmt):
    reg.save(str(tmp_path / "case_"), field_format=fmt)
    before = _digests(tmp_path)
    monkeypatch.setattr(sitk, "WriteImage", _short_writer(sitk.WriteImage))
    with pytest.raises(OutputError, match=f"cannot (write|read back) .*case_0Warp{fmt.replace('.', '[.]')}"):
        reg.save(str(tmp_path / "case_"), field_format=fmt)
    assert _digests(tmp_path) == before
    monkeypatch.undo()
    assert verify_output_set(str(tmp_path / "case_")) == []


def test_injected_no_space_error_of_any_writer_is_an_output_error(reg, tmp_path, monkeypatch, pair_files, capsys):
    """torch.save, JSON and PNG go through one byte writer; an ENOSPC there is an OutputError and exit 4."""
    reg.save(str(tmp_path / "case_"))
    before = _digests(tmp_path)
    real = io_files.write_bytes_to

    def no_space(tmp, data, final=None):
        if str(final or tmp).endswith("model.pt"):
            with io_files.writing(final):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tmp, data, final)

    monkeypatch.setattr(io_files, "write_bytes_to", no_space)
    import idir_fast.io.outputs as outputs
    monkeypatch.setattr(outputs, "write_bytes_to", no_space)
    with pytest.raises(OutputError, match=r"case_model\.pt.*No space left on device.*disk full"):
        reg.save(str(tmp_path / "case_"))
    assert _digests(tmp_path) == before
    out = tmp_path / "cli"
    out.mkdir()
    rc = main(["register", pair_files["fixed"], pair_files["moving"], "--out", str(out / "x_"), "--epochs", "2",
               "--batch-size", "50", "--hidden", "8", "--no-progress"])
    assert rc == 4 and "No space left on device" in capsys.readouterr().err
    assert list(out.iterdir()) == []
