"""Fast unit tests of the pieces a refactor breaks quietly, run first (conftest orders them): the weighted NCC
against its closed form, ``write_image`` never showing a partial file under its final name (watched inside the
writer and killed there), and the index → world map against SimpleITK with a direction matrix that is not
symmetric."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from idir_fast.core import objectives
from idir_fast.core.geometry import ImageGeometry, apply_affine
from idir_fast.io import images
from idir_fast.io.files import TMP_NAME

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ weighted NCC
def _weighted_ncc_by_hand(f, m, w, ddof):
    """Every moment weighted, both images centred by their *weighted* means, N = Σw."""
    n = w.sum()
    fc, mc = f - (w * f).sum() / n, m - (w * m).sum() / n
    cov = (w * fc * mc).sum() / n
    sd_f, sd_m = np.sqrt((w * fc * fc).sum() / (n - ddof)), np.sqrt((w * mc * mc).sum() / (n - ddof))
    return cov / (sd_f * sd_m + objectives.NCC_EPS)


@pytest.mark.parametrize("compat,ddof", [(None, 0), ("idir-2022", 1)])
def test_weighted_ncc_matches_its_closed_form_with_non_uniform_weights(compat, ddof):
    rng = np.random.default_rng(0)
    f = rng.normal(3.0, 2.0, 200)
    m = 0.7 * f + rng.normal(5.0, 1.0, 200)  # means far from zero: the centring matters
    w = rng.uniform(0.0, 1.0, 200) ** 3  # strongly non-uniform
    w[:20] = 0.0
    got = objectives.ncc(torch.from_numpy(f), torch.from_numpy(m), compat, torch.from_numpy(w)).item()
    assert got == pytest.approx(_weighted_ncc_by_hand(f, m, w, ddof), rel=1e-12)
    # and it is not the value an unweighted centring gives
    fc, mc = f - f.mean(), m - m.mean()
    n = w.sum()
    wrong = ((w * fc * mc).sum() / n) / (np.sqrt((w * fc * fc).sum() / (n - ddof) * (w * mc * mc).sum() / (n - ddof)))
    assert abs(got - wrong) > 1e-3


def test_weights_of_zero_leave_points_out_and_weights_of_one_are_the_plain_ncc():
    rng = np.random.default_rng(1)
    f, m = rng.normal(size=50), rng.normal(size=50)
    w = np.r_[np.ones(30), np.zeros(20)]
    t = torch.from_numpy
    assert objectives.ncc(t(f), t(m), None, t(w)).item() == pytest.approx(objectives.ncc(t(f[:30]), t(m[:30])).item(),
                                                                          rel=1e-12)
    assert objectives.ncc(t(f), t(m), None, t(np.ones(50))).item() == pytest.approx(objectives.ncc(t(f), t(m)).item(),
                                                                                    rel=1e-12)


# ------------------------------------------------------------------------------------------------ write_image
def test_write_image_shows_nothing_new_under_the_final_name_while_it_writes(tmp_path, monkeypatch):
    """Held inside the writer itself: the final name still holds the previous image and the bytes being
    written go to a temporary name beside it."""
    target = tmp_path / "image.nii.gz"
    old = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    sitk.WriteImage(old, str(target))
    previous = target.read_bytes()
    inside, release, seen = threading.Event(), threading.Event(), {}
    real = sitk.WriteImage

    def held(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        seen["name"] = os.path.basename(str(name))
        inside.set()
        release.wait(30)

    monkeypatch.setattr(images.sitk, "WriteImage", held)
    new = sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))
    thread = threading.Thread(target=images.write_image, args=(new, target))
    thread.start()
    try:
        assert inside.wait(30)
        assert target.read_bytes() == previous
        assert TMP_NAME.match(seen["name"]), seen
    finally:
        release.set()
        thread.join(30)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).max() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.nii.gz"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_write_image_killed_while_writing_keeps_the_previous_file(tmp_path):
    target = tmp_path / "image.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(target))
    previous = target.read_bytes()
    err = tmp_path / "stderr.txt"
    env = dict(os.environ, IDIR_FAST_TEST_PAUSE="atomic-write:120")
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "tests.write_image_child", str(target), "7"], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        deadline = time.monotonic() + 120
        while "IDIR_FAST_TEST_PAUSE reached atomic-write" not in err.read_text(errors="replace"):
            assert proc.poll() is None, "the writer finished without pausing inside its write:\n" + err.read_text()
            assert time.monotonic() < deadline, "the writer did not reach its pause"
            time.sleep(0.02)
        assert target.read_bytes() == previous  # the new image is complete, but only under its temporary name
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert target.read_bytes() == previous
    leftovers = [p.name for p in tmp_path.iterdir() if TMP_NAME.match(p.name)]
    assert len(leftovers) == 1 and str(proc.pid) in leftovers[0]  # the next write to the folder removes it


# ------------------------------------------------------------------------------------------------ geometry
def _oblique_image():
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    angle = 0.7
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    d = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k  # a rotation: D ≠ Dᵀ
    assert not np.allclose(d, d.T)
    img = sitk.Image(7, 9, 5, sitk.sitkFloat32)
    img.SetSpacing((0.8, 1.3, 2.6))
    img.SetOrigin((-12.5, 40.0, 7.25))
    img.SetDirection(tuple(d.ravel()))
    return img


def test_index_to_world_matches_simpleitk_with_a_non_symmetric_direction():
    img = _oblique_image()
    g = ImageGeometry.from_sitk(img)
    rng = np.random.default_rng(2)
    idx = np.vstack([[0, 0, 0], [6, 8, 4], [1, 0, 0], [0, 1, 0], [0, 0, 1], rng.uniform(-1, 8, (20, 3))])
    want = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(map(float, i))) for i in idx])
    np.testing.assert_allclose(apply_affine(g.index_to_world(), idx), want, atol=1e-10)
    np.testing.assert_allclose(apply_affine(g.world_to_index(), want), idx, atol=1e-9)
    for normalisation in ("isotropic", "per-axis"):
        via = g.world_to_normalised(normalisation) @ g.index_to_world()
        np.testing.assert_allclose(apply_affine(via, idx), apply_affine(g.index_to_normalised(normalisation), idx),
                                   atol=1e-10)
