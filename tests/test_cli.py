"""The idir-fast command end to end on a tiny pair."""
import json
import subprocess
import time
import sys

import numpy as np
import SimpleITK as sitk

from idir_fast.apps.cli import main
from helpers import write_pair_files




def test_register_end_to_end(tiny_pair, tmp_path, capsys):
    p = write_pair_files(tiny_pair, tmp_path)
    out = tmp_path / "res"
    out.mkdir()
    rc = main(["register", p["fixed"], p["moving"], "--mask", p["mask"], "--out", str(out / "case_"),
               "--epochs", "20", "--batch-size", "300", "--hidden", "32,32", "--no-progress",
               "--fixed-landmarks", p["fl"], "--moving-landmarks", p["ml"], "--regularizer", "jacobian"])
    assert rc == 0
    names = sorted(x.name for x in out.iterdir())
    assert names == ["case_0Warp.nii.gz", "case_JacDet.nii.gz", "case_Warped.nii.gz", "case_model.pt",
                     "case_report.json"]
    report = json.loads((out / "case_report.json").read_text())
    assert report["settings"]["regularizer"] == "jacobian" and report["settings"]["epochs"] == 20
    assert {"torch", "SimpleITK", "numpy", "idir_fast"} <= set(report["settings"]["versions"])
    assert report["timings"]["optimise_s"] > 0 and "loss" in report["final_losses"]
    assert report["metrics"]["tre"]["mean"] < report["metrics"]["tre_initial"]["mean"]
    text = capsys.readouterr().out
    assert "TRE (mm)" in text and "folding" in text
    field = sitk.ReadImage(str(out / "case_0Warp.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetSize() == tiny_pair.fixed.GetSize()


def test_register_reports_bad_input_and_writes_nothing(tiny_pair, tmp_path, capsys):
    p = write_pair_files(tiny_pair, tmp_path)
    rc = main(["register", p["fixed"], str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "x_"),
               "--no-progress"])
    assert rc == 2
    assert "'moving': file not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("x_*"))
    rc = main(["register", p["fixed"], p["moving"], "--out", "/proc/idir_fast_x/x_", "--no-progress"])
    assert rc == 2 and "system folder" in capsys.readouterr().err  # missing folders are created, never these


def test_register_creates_missing_output_folders_and_reports_the_wall_time(tiny_pair, tmp_path, capsys):
    p = write_pair_files(tiny_pair, tmp_path)
    t0 = time.perf_counter()
    rc = main(["register", p["fixed"], p["moving"], "--mask", p["mask"], "--out", str(tmp_path / "new" / "folder" /
               "case_"), "--steps", "30", "--no-progress"])
    waited = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "new" / "folder" / "case_0Warp.nii.gz").is_file()
    for line in ("reading and checking the inputs", "preparing:", "writing the outputs", "total ", "prepare ",
                 "optimise ", "write ", "NCC", "normalised cross-correlation", "regulariser"):
        assert line in out, line
    total = float(out.split("total ")[1].split(" s")[0])
    assert total >= waited * 0.9  # the total counts from the process start, which is earlier than this call


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "idir_fast", "register", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for opt in ("--mask", "--out", "--regularizer", "--epochs", "--device", "--backend", "--seed", "--alpha",
                "--batch-size", "--lr", "--hidden", "--compat"):
        assert opt in out
    top = subprocess.run([sys.executable, "-m", "idir_fast", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "register" in top and "demo" in top


def test_demo_runs_quickly_with_few_epochs(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "40", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "before" in text and "after" in text and "folding" in text
    assert (tmp_path / "demo" / "demo_0Warp.nii.gz").exists()
    report = json_load(tmp_path / "demo" / "demo_report.json")
    assert report["metrics"]["tre"]["mean"] < 0.7 * report["metrics"]["tre_initial"]["mean"]
    assert np.isfinite(report["final_losses"]["loss"])


def json_load(path):
    return json.loads(path.read_text())


def test_register_mha_outputs_and_itk_transform(tiny_pair, tmp_path):
    p = write_pair_files(tiny_pair, tmp_path)
    rc = main(["register", p["fixed"], p["moving"], "--mask", p["mask"], "--out", str(tmp_path / "r_"),
               "--epochs", "3", "--batch-size", "100", "--hidden", "16", "--no-progress", "--format", ".mha",
               "--itk-transform", "--regularizer", "none"])
    assert rc == 0
    for name in ("r_0Warp.mha", "r_Warped.mha", "r_JacDet.mha", "r_Transform.h5"):
        assert (tmp_path / name).exists(), name
    tx = sitk.ReadTransform(str(tmp_path / "r_Transform.h5"))
    field = sitk.ReadImage(str(tmp_path / "r_0Warp.mha"))
    pt = field.TransformIndexToPhysicalPoint((3, 4, 5))
    expected = np.add(pt, field[3, 4, 5])
    np.testing.assert_allclose(tx.TransformPoint(pt), expected, atol=1e-4)
