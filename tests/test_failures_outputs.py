"""Issue #13, items 4 and 10: a saved result is one consistent output set; output paths do what they say.

Item 4: every file of a save carries one run id (image metadata, model.pt, report), the report is written last and
lists every file with its size and SHA-256, files of an earlier run of the prefix that the new run does not write
are removed (or kept and reported when not provably ours), temporary files of a killed run are removed, and a
crash in the middle of a save never leaves a report describing a mixed set.
Item 10: an empty ``--out``, an existing folder or a trailing separator, ``/dev/null``, and the umask.
"""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import SimpleITK as sitk
import torch

import idir_fast
from idir_fast.apps.cli import main
from idir_fast.io.images import image_run_id
from idir_fast.io.outputs import StaleOutputWarning, verify_output_set

KW = dict(epochs=2, batch_size=50, hidden=(8,), progress=False, device="cpu")


@pytest.fixture(scope="module")
def reg(tiny_pair):
    return idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask,
                              fixed_landmarks=tiny_pair.fixed_landmarks, moving_landmarks=tiny_pair.moving_landmarks,
                              **KW)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _report(prefix):
    return json.loads(open(str(prefix) + "report.json").read())


def test_every_file_carries_the_run_id_and_the_report_lists_them_all(reg, tmp_path):
    prefix = str(tmp_path / "case_")
    out = reg.save(prefix, itk_transform=True, figures=True)
    report = _report(prefix)
    run_id = report["run_id"]
    present = sorted(p.name for p in tmp_path.iterdir())
    assert sorted(report["files"]) + ["case_report.json"] == present
    for name, info in report["files"].items():
        assert info["bytes"] == (tmp_path / name).stat().st_size and info["sha256"] == _sha(tmp_path / name)
    for name in ("case_0Warp.nii.gz", "case_Warped.nii.gz", "case_JacDet.nii.gz"):
        assert image_run_id(tmp_path / name) == run_id
        assert sitk.ReadImage(str(tmp_path / name)).GetMetaData("descrip") == f"idir_fast run_id={run_id}"
    assert torch.load(tmp_path / "case_model.pt", weights_only=True)["run_id"] == run_id
    assert set(out) >= {"field", "warped", "jacobian", "model", "report", "transform", "figure_tre", "figure_loss"}
    assert verify_output_set(prefix) == []
    (tmp_path / "case_JacDet.nii.gz").write_bytes((tmp_path / "case_Warped.nii.gz").read_bytes())
    assert any("JacDet" in p for p in verify_output_set(prefix))


def test_a_rerun_that_writes_fewer_outputs_removes_the_earlier_runs_extra_files(reg, tmp_path):
    prefix = str(tmp_path / "case_")
    reg.save(prefix, field_format=".mha", itk_transform=True, figures=True)
    first = _report(prefix)["run_id"]
    reg.save(prefix)  # .nii.gz, no transform, no figures
    report = _report(prefix)
    assert report["run_id"] != first
    present = sorted(p.name for p in tmp_path.iterdir())
    assert present == ["case_0Warp.nii.gz", "case_JacDet.nii.gz", "case_Warped.nii.gz", "case_model.pt",
                       "case_report.json"]
    assert {"case_0Warp.mha", "case_Transform.h5", "case_fig_loss.png"} <= set(report["stale_files_removed"])
    assert verify_output_set(prefix) == []


def test_figures_made_later_by_idir_fast_report_carry_the_run_id_and_go_with_their_set(reg, tmp_path):
    from idir_fast.io.figures import figures_for_prefix
    from idir_fast.io.outputs import png_run_id

    prefix = str(tmp_path / "case_")
    reg.save(prefix)
    figures_for_prefix(prefix)  # what `idir-fast report` does
    assert png_run_id(tmp_path / "case_fig_jacdet.png") == _report(prefix)["run_id"]
    reg.save(prefix)
    assert "case_fig_jacdet.png" in _report(prefix)["stale_files_removed"]
    assert not list(tmp_path.glob("*.png"))


def test_files_of_the_prefix_not_provably_ours_are_kept_and_reported(reg, tmp_path, tiny_pair):
    prefix = str(tmp_path / "case_")
    sitk.WriteImage(tiny_pair.fixed, str(tmp_path / "case_0Warp.mha"))  # e.g. another tool's output, no run id
    with pytest.warns(StaleOutputWarning, match="case_0Warp.mha"):
        reg.save(prefix)
    assert (tmp_path / "case_0Warp.mha").exists()
    assert _report(prefix)["stale_files_kept"] == ["case_0Warp.mha"]


def test_a_failure_during_a_save_keeps_the_previous_set_whole(reg, tmp_path, monkeypatch):
    prefix = str(tmp_path / "case_")
    reg.save(prefix)
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    monkeypatch.setattr(type(reg), "jacobian_determinant", lambda self: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):  # after 0Warp and Warped were written
        reg.save(prefix)
    assert {p.name: _sha(p) for p in tmp_path.iterdir()} == before
    assert verify_output_set(prefix) == []


def test_a_crash_while_moving_the_set_into_place_leaves_no_report_and_tells_the_files_apart(reg, tmp_path,
                                                                                            monkeypatch):
    prefix = str(tmp_path / "case_")
    reg.save(prefix)
    old_id = _report(prefix)["run_id"]
    real, calls = os.replace, []

    def crash_after_first(src, dst):
        if len(calls) == 1:
            raise KeyboardInterrupt  # the process dies between two renames
        calls.append(dst)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        reg.save(prefix)
    monkeypatch.undo()
    assert not (tmp_path / "case_report.json").exists()  # no report claims the mixed set is whole
    assert verify_output_set(prefix)  # … and the check says it is not
    new_id = image_run_id(tmp_path / "case_0Warp.nii.gz")
    assert new_id not in (None, old_id) and image_run_id(tmp_path / "case_Warped.nii.gz") == old_id
    reg.save(prefix)  # the next save makes it whole again
    assert verify_output_set(prefix) == []


def test_temporary_files_of_a_killed_run_are_removed_by_the_next_save(reg, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leftovers = [f".case_0Warp.{dead}-abc123xy.tmp.nii.gz", f".case_model.{dead}-zz9_x1yq.tmp.pt"]
    alive = f".case_Warped.{os.getpid()}-qqqqqqqq.tmp.nii.gz"  # a run still writing: left alone
    for name in leftovers + [alive, f".other_0Warp.{dead}-abc123xy.tmp.nii.gz"]:
        (tmp_path / name).write_bytes(b"partial")
    reg.save(str(tmp_path / "case_"))
    names = {p.name for p in tmp_path.iterdir()}
    assert not set(leftovers) & names and alive in names and f".other_0Warp.{dead}-abc123xy.tmp.nii.gz" in names
    assert sorted(_report(tmp_path / "case_")["temporary_files_removed"]) == sorted(leftovers)


# --------------------------------------------------------------------------------------------- item 10: paths
@pytest.fixture
def pair_files(tiny_pair, tmp_path):
    paths = {}
    for name in ("fixed", "moving"):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(getattr(tiny_pair, name), paths[name])
    return paths


FAST = ["--epochs", "2", "--batch-size", "50", "--hidden", "8", "--no-progress"]


def test_empty_out_is_refused_and_writes_no_hidden_files(pair_files, tmp_path, monkeypatch, capsys):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["register", pair_files["fixed"], pair_files["moving"], "--out", "", *FAST]) == 2
    assert "'--out' is empty" in capsys.readouterr().err
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("form", ["existing", "trailing"])
def test_an_existing_folder_or_a_trailing_separator_means_inside(pair_files, tmp_path, form):
    out = tmp_path / "results"
    if form == "existing":
        out.mkdir()
        arg = str(out)
    else:
        out.mkdir()
        arg = str(out) + os.sep
    assert main(["register", pair_files["fixed"], pair_files["moving"], "--out", arg, *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0Warp.nii.gz", "JacDet.nii.gz", "Warped.nii.gz", "model.pt",
                                                     "report.json"]
    assert not list(tmp_path.glob("results*.*"))


def test_out_dev_null_is_refused(pair_files, capsys):
    assert main(["register", pair_files["fixed"], pair_files["moving"], "--out", "/dev/null", *FAST]) == 2
    assert "'--out': '/dev/null' exists and is not a folder" in capsys.readouterr().err
    assert not os.path.exists("/dev/null0Warp.nii.gz")


def test_help_says_what_a_folder_out_means(capsys):
    with pytest.raises(SystemExit):
        main(["register", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "means inside it" in text and "exit status: 0 done; 2 usage or input error" in text
    assert "3 the optimisation diverged" in text and "4 an output could not be written" in text
    assert "; 1 " not in text.split("exit status:")[1]


@pytest.mark.parametrize("command,one", [("cohort", "1 some pairs failed or diverged"),
                                         ("doctor", "1 a check failed"), ("apply", None), ("bench", None)])
def test_each_command_lists_its_own_exit_statuses(capsys, command, one):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    statuses = " ".join(capsys.readouterr().out.split()).split("exit status:")[1]
    assert ("; 1 " in statuses) == (one is not None) and (one is None or one in statuses)
    assert ("3 the optimisation diverged" in statuses) is False
    assert ("another cohort run holding the folder" in statuses) == (command == "cohort")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664)])
def test_outputs_honour_the_umask(reg, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        reg.save(str(tmp_path / "case_"), figures=True)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert set(modes.values()) == {mode}, modes


def test_a_compressed_nifti_written_through_isal_is_itks_file_and_the_fallback_is_itk_itself(reg, tmp_path,
                                                                                             monkeypatch):
    """``.nii.gz`` outputs are ITK's plain NIfTI compressed by ISA-L: after decompression the same bytes as ITK's
    own ``.nii.gz``, the same image read back, the same bytes for the same image (no name or time in the gzip
    header), no temporary file left; without python-isal ITK compresses them itself."""
    import gzip

    from idir_fast.io import images

    field = reg.displacement_field()
    assert images._isal_gzip() is not None  # a dependency: this is the path every install takes
    import isal

    from idir_fast.environment import environment

    assert environment()["isal"] == isal.__version__ and reg.run["versions"]["isal"] == isal.__version__
    first, second = tmp_path / "a" / "f.nii.gz", tmp_path / "b" / "f.nii.gz"
    for path in (first, second):
        path.parent.mkdir()
        images.write_image(field, path)
    itk = tmp_path / "itk.nii.gz"
    sitk.WriteImage(field, str(itk), True)
    assert gzip.open(first).read() == gzip.open(itk).read()
    assert first.read_bytes() == second.read_bytes()
    back = sitk.ReadImage(str(first))
    assert sitk.GetArrayViewFromImage(back).tobytes() == sitk.GetArrayViewFromImage(field).tobytes()
    assert back.GetDirection() == field.GetDirection() and back.GetOrigin() == field.GetOrigin()
    assert sorted(p.name for p in first.parent.iterdir()) == ["f.nii.gz"]
    monkeypatch.setattr(images, "_isal_gzip", lambda: None)
    fallback = tmp_path / "c" / "f.nii.gz"
    fallback.parent.mkdir()
    images.write_image(field, fallback)
    assert gzip.open(fallback).read() == gzip.open(itk).read()
    assert sorted(p.name for p in fallback.parent.iterdir()) == ["f.nii.gz"]
