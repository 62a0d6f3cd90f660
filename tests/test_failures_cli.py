"""Issue #13, item 7: every one of these ends with a message naming the argument and exit status 2 — never a
traceback — and before any optimisation (``optimise`` is replaced by a function that fails the test if reached)."""
import numpy as np
import pytest
import SimpleITK as sitk

import idir_fast.api
from idir_fast.apps.cli import main
from idir_fast.io import dirlab
from helpers import write_pair_files

FAST = ["--epochs", "2", "--batch-size", "50", "--hidden", "8", "--no-progress"]


@pytest.fixture
def no_optimisation(monkeypatch):
    def reached(*args, **kwargs):
        raise AssertionError("the optimisation started: the problem was not found up front")

    monkeypatch.setattr(idir_fast.api, "optimise", reached)


@pytest.fixture
def files(tiny_pair, tmp_path):
    return write_pair_files(tiny_pair, tmp_path)


def _run(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_backend_triton_on_a_cpu(files, tmp_path, monkeypatch, capsys, no_optimisation):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the tests run Triton in its interpreter otherwise
    rc, err = _run(["register", files["fixed"], files["moving"], "--out", str(tmp_path / "r_"), "--device", "cpu",
                    "--backend", "triton", *FAST], capsys)
    assert rc == 2 and "'--backend' is 'triton', which does not run on cpu" in err


@pytest.mark.parametrize("args,pattern", [
    (["--omega", "0"], "'--omega' must be a finite positive number"),
    (["--omega", "-1"], "'--omega' must be a finite positive number"),
    (["--omega", "nan"], "'--omega' must be a finite positive number"),
])
def test_bad_setting_values(files, tmp_path, capsys, no_optimisation, args, pattern):
    rc, err = _run(["register", files["fixed"], files["moving"], "--out", str(tmp_path / "r_"), *FAST, *args],
                   capsys)
    assert rc == 2 and pattern in err


def test_seed_that_is_not_an_integer(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["register", files["fixed"], files["moving"], "--out", str(tmp_path / "r_"), "--seed", "1e23", *FAST])
    assert exit_.value.code == 2 and "--seed" in capsys.readouterr().err


@pytest.mark.parametrize("out,pattern", [
    ("/proc/x_", "'--out': '/proc' is a system folder"),
    ("LONG", "'--out': the file name part .* is too long"),
    ("LONGISH", "'--out': the file name part .* is too long"),  # fits alone, not with the output names added
    ("MODELDIR", "'--out': the output .*case_model.pt' is an existing folder"),
])
def test_output_places_that_cannot_work_are_refused_before_optimising(files, tmp_path, capsys, no_optimisation,
                                                                      out, pattern):
    if out == "LONG":
        out = str(tmp_path / ("a" * 300))
    elif out == "LONGISH":
        out = str(tmp_path / ("a" * 240))
    elif out == "MODELDIR":
        (tmp_path / "case_model.pt").mkdir()
        out = str(tmp_path / "case_")
    rc, err = _run(["register", files["fixed"], files["moving"], "--out", out, *FAST], capsys)
    assert rc == 2
    assert __import__("re").search(pattern, err), err


@pytest.mark.parametrize("content,pattern", [
    ("1 2 3\nnan 2 3\n", "line 2: non-finite value"),
    ("", "holds no landmarks"),
])
def test_bad_landmark_files_are_found_before_optimising(files, tmp_path, capsys, no_optimisation, content,
                                                        pattern):
    bad = tmp_path / "bad.txt"
    bad.write_text(content)
    rc, err = _run(["register", files["fixed"], files["moving"], "--out", str(tmp_path / "r_"), "--fixed-landmarks",
                    str(bad), "--moving-landmarks", files["ml"], *FAST], capsys)
    assert rc == 2 and "'--fixed-landmarks'" in err and pattern in err


def test_landmark_arrays_without_rows_are_refused(tiny_pair, no_optimisation):
    with pytest.raises(idir_fast.InputError, match="'fixed_landmarks' holds no points"):
        idir_fast.register(tiny_pair.fixed, tiny_pair.moving, fixed_landmarks=np.zeros((0, 3)),
                           moving_landmarks=np.zeros((0, 3)), epochs=2, progress=False)


def test_report_on_bad_json(tmp_path, capsys):
    (tmp_path / "case_report.json").write_text("{not json")
    rc, err = _run(["report", str(tmp_path)], capsys)
    assert rc == 2 and "bad JSON" in err


def test_dirlab_mask_dir_without_the_mask(tiny_pair, tmp_path, monkeypatch, capsys, no_optimisation):
    size = tiny_pair.fixed.GetSize()
    monkeypatch.setitem(dirlab.CASES, 1, (size, (8.0, 8.0), 0.0))
    folder = tmp_path / "Case1Pack"
    folder.mkdir()
    for phase, img in (("T00", tiny_pair.fixed), ("T50", tiny_pair.moving)):
        raw = np.clip(np.round(sitk.GetArrayFromImage(img) + dirlab.HU_OFFSET), 0, 4000).astype("<i2")
        (folder / f"case1_{phase}_s.img").write_bytes(raw.tobytes())
        (folder / f"Case1_300_{phase}_xyz.txt").write_text("1 1 1\n2 2 2\n")
    masks = tmp_path / "masks"
    masks.mkdir()
    rc, err = _run(["dirlab", "--data", str(tmp_path), "--case", "1", "--mask-dir", str(masks), *FAST], capsys)
    assert rc == 2 and "'--mask-dir'" in err and "case1_mask.nii.gz" in err


def test_bench_with_an_unknown_backend_is_a_usage_error_before_any_timing(tmp_path, capsys, monkeypatch):
    import idir_fast.apps.bench

    monkeypatch.setattr(idir_fast.apps.bench, "run", lambda *a, **k: pytest.fail("the benchmark started"))
    rc, err = _run(["bench", "--quick", "--backends", "torch,foo", "--results-dir", str(tmp_path)], capsys)
    assert rc == 2 and "'--backends': unknown backend 'foo'" in err
