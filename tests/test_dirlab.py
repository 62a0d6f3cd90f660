"""DIR-LAB: the identity reproduces the published initial TRE; raw volumes and landmark files are read robustly."""
import numpy as np
import pytest
import SimpleITK as sitk

from idir_fast import InputError
from idir_fast.io import dirlab
from idir_fast.apps.cli import main
from idir_fast.io.landmarks import read_points

PUBLISHED_INITIAL = {1: 3.89, 2: 4.34, 3: 6.94, 4: 9.83, 5: 7.48}


@pytest.mark.parametrize("case", sorted(PUBLISHED_INITIAL))
def test_identity_reproduces_published_initial_tre(shared_data, case):
    t = dirlab.identity_tre(shared_data / "dirlab", case)
    assert t["n"] == 300
    assert abs(t["mean"] - PUBLISHED_INITIAL[case]) < 0.01 - 1e-9 or round(t["mean"], 2) == PUBLISHED_INITIAL[case]


def test_landmark_reader_tolerates_crlf_spaces_tabs(tmp_path):
    p = tmp_path / "lm.txt"
    p.write_bytes(b"211\t139\t66\r\n  27\t131\t72\t\r\n62 123 23\r\n\r\n")
    np.testing.assert_array_equal(read_points(p), [[211, 139, 66], [27, 131, 72], [62, 123, 23]])


@pytest.mark.parametrize("content,pattern", [(b"1 2 3\n4 5\n", "line 2: expected 3 columns"),
                                             (b"1 2 3\n4 five 6\n", "line 2: expected 3 numbers"),
                                             (b"1 2 3 4\n", "line 1: expected 3 columns"),
                                             (b"\n\n", "holds no landmarks")])
def test_bad_landmark_files(tmp_path, content, pattern):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(InputError, match=pattern):
        read_points(p, "landmarks")


def test_case_number_out_of_range():
    for bad in (0, 11, "3", 2.0):
        with pytest.raises(InputError, match="'case' must be a DIR-LAB case number"):
            dirlab.check_case(bad)


def _write_case1_volume(folder, nbytes=None):
    (nx, ny, nz), _, _ = dirlab.CASES[1]
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 1500, size=(nz, ny, nx)).astype("<i2")
    path = folder / "case1_T00_s.img"
    data = arr.tobytes()
    path.write_bytes(data if nbytes is None else data[:nbytes])
    return path, arr


def test_raw_volume_geometry_and_byte_size_check(tmp_path):
    path, arr = _write_case1_volume(tmp_path)
    img = dirlab.read_volume(path, 1)
    assert img.GetSize() == (256, 256, 94) and img.GetSpacing() == pytest.approx((0.97, 0.97, 2.5))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(img)[5, 7, 9], arr[5, 7, 9] - dirlab.HU_OFFSET)
    with pytest.raises(InputError, match="needs 256×256×112 int16"):
        dirlab.read_volume(path, 2)
    short, _ = _write_case1_volume(tmp_path, nbytes=1000)
    with pytest.raises(InputError, match="has 1000 bytes"):
        dirlab.read_volume(short, 1)


def test_file_name_variants_are_found(tmp_path):
    for case, name in ((1, "case1_T00_s.img"), (3, "case3_T00-ssm.img"), (8, "case8_T00.img")):
        folder = tmp_path / ("Case8Deploy" if case == 8 else f"Case{case}Pack") / "Images"
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"")
        for ph in ("T00", "T50"):
            (folder / f"Case{case}_300_{ph}_xyz.txt").write_text("1 1 1\n2 2 2\n")
        c = dirlab.find_case(tmp_path, case)
        assert c.fixed_path.name == name and c.moving_path is None
        np.testing.assert_allclose(c.fixed_landmarks[1], np.asarray(dirlab.spacing(case)))


def test_dirlab_cli_identity(shared_data, capsys):
    assert main(["dirlab", "--data", str(shared_data / "dirlab"), "--case", "1", "4", "--identity"]) == 0
    out = capsys.readouterr().out
    assert "3.89" in out and "9.83" in out
    assert main(["dirlab", "--data", str(shared_data / "dirlab"), "--case", "12", "--identity"]) == 2


def test_dirlab_cli_registers_a_case_end_to_end(tmp_path, monkeypatch, capsys):
    """The full `idir-fast dirlab` path on a small synthetic case written in the DIR-LAB raw format."""
    from idir_fast.data import phantom_pair

    size, sp = (40, 36, 32), (5.0, 5.0, 5.0)
    monkeypatch.setitem(dirlab.CASES, 1, (size, (sp[0], sp[2]), 0.0))
    pair = phantom_pair(size=size, spacing=sp, num_landmarks=20, seed=5)
    folder = tmp_path / "Case1Pack"
    folder.mkdir()
    for phase, img in (("T00", pair.fixed), ("T50", pair.moving)):
        raw = np.clip(np.round(sitk.GetArrayFromImage(img) + dirlab.HU_OFFSET), 0, 4000).astype("<i2")
        (folder / f"case1_{phase}_s.img").write_bytes(raw.tobytes())
    for phase, pts in (("T00", pair.fixed_landmarks), ("T50", pair.moving_landmarks)):
        idx1 = pts / np.asarray(sp) + 1.0  # world (origin 0) → 1-based index
        (folder / f"Case1_300_{phase}_xyz.txt").write_text("".join(f"{x:.3f}\t{y:.3f}\t{z:.3f}\r\n" for x, y, z in idx1))
    out = tmp_path / "out"
    rc = main(["dirlab", "--data", str(tmp_path), "--case", "1", "--out", str(out), "--epochs", "120",
               "--batch-size", "1500", "--hidden", "64,64,64", "--no-progress", "--device", "cpu"])
    assert rc == 0
    report = __import__("json").loads((out / "case1_report.json").read_text())
    before, after = report["metrics"]["tre_initial"]["mean"], report["metrics"]["tre"]["mean"]
    assert after < 0.5 * before, (before, after)
    assert (out / "case1_fig_tre.png").exists()
    assert "TRE after" in capsys.readouterr().out
