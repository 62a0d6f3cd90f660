"""What ANTs/elastix users take for granted: an affine start and starting transforms, the inverse map, a
symmetric (cycle-consistent) mode with a consistency map, and a moving mask."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

import idir_fast
from idir_fast.core.geometry import apply_affine
from idir_fast.data import phantom_pair
from idir_fast.io.transforms import matrix_to_transform, transform_matrix, write_transform

FAST = dict(epochs=40, batch_size=1200, hidden=(32, 32), progress=False)


def _known_affine(image, degrees=9.0, shift=(26.0, -9.0, 7.0), scale=1.05):
    """Rotation about z through the image centre, scaling, then a shift (|shift| ≈ 29 mm)."""
    c = np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    t = np.deg2rad(degrees)
    R = scale * np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    A = np.eye(4)
    A[:3, :3], A[:3, 3] = R, c - R @ c + np.asarray(shift)
    return A


@pytest.fixture(scope="module")
def affine_case():
    """A phantom whose moving image is the fixed one under a known affine map A (moving = F∘A⁻¹)."""
    p = phantom_pair(size=(48, 44, 40), spacing=(5.0, 5.0, 5.0), num_landmarks=40, seed=1, amplitude_mm=0.0)
    A = _known_affine(p.fixed)
    moving = sitk.Resample(p.fixed, p.fixed, matrix_to_transform(np.linalg.inv(A)), sitk.sitkLinear, -1000.0)
    return p, A, moving, apply_affine(A, p.fixed_landmarks)


def test_affine_stage_recovers_a_known_affine(shared_data):
    """The real chest CT, moved by a known affine map (8.5°, 26 mm, +4.5 %) on top of a 10 mm breathing motion:
    with the affine stage and the default schedule the TRE ends below 1 mm; the SIREN alone cannot do it."""
    from idir_fast.data import deformed_pair

    p = deformed_pair(sitk.ReadImage(str(shared_data / "ct" / "chest_ct_1p5mm.nii.gz")), amplitude_mm=10.0,
                      num_landmarks=60, seed=0)
    A = _known_affine(p.fixed, degrees=8.5, shift=(20.0, -14.0, 9.0), scale=1.045)
    moving = sitk.Resample(p.moving, p.moving, matrix_to_transform(np.linalg.inv(A)), sitk.sitkLinear, -1000.0)
    kw = dict(fixed_landmarks=p.fixed_landmarks, moving_landmarks=apply_affine(A, p.moving_landmarks),
              progress=False)
    reg = idir_fast.register(p.fixed, moving, p.mask, affine="auto", **kw)
    assert reg.metrics["tre_initial"]["mean"] > 20.0
    assert reg.metrics["tre"]["mean"] < 1.0, reg.metrics["tre"]
    assert "affine_stage" in reg.run and reg.timings["affine_s"] > 0
    without = idir_fast.register(p.fixed, moving, p.mask, **dict(kw, epochs=100))
    assert without.metrics["tre"]["mean"] > 3 * reg.metrics["tre"]["mean"]  # the same budget without it


def test_the_affine_metric_draws_at_most_its_sample_cap_per_level():
    """A stochastic gradient of a bounded sample per iteration: a 1 mm brain's full-resolution level would otherwise
    draw 10 % of ~7 million voxels every iteration; a small image keeps the plain fraction."""
    from idir_fast.optim import affine

    big, small = sitk.Image(160, 192, 224, sitk.sitkFloat32), sitk.Image(40, 30, 20, sitk.sitkFloat32)
    for image in (big, small):
        fractions = affine.sampling_per_level(image)
        assert len(fractions) == len(affine.SHRINK) and all(0 < f <= affine.SAMPLING for f in fractions)
        for f, shrink in zip(fractions, affine.SHRINK):
            voxels = np.prod([max(1, s // shrink) for s in image.GetSize()])
            assert f * voxels <= affine.MAX_SAMPLES * (1 + 1e-9)
    assert affine.sampling_per_level(small) == [affine.SAMPLING] * len(affine.SHRINK)
    assert affine.sampling_per_level(big)[-1] * 160 * 192 * 224 == pytest.approx(affine.MAX_SAMPLES)


@pytest.mark.parametrize("form", [".tfm", ".txt", ".h5", ".mat", "sitk", "matrix"])
def test_every_starting_transform_form_is_read_and_applied_identically(affine_case, form, tmp_path):
    p, A, moving, _ = affine_case
    if form.startswith("."):
        start = write_transform(A, tmp_path / f"start{form}")
    elif form == "sitk":  # a rigid+scale ITK type, not an AffineTransform: any linear type works
        start = sitk.Similarity3DTransform()
        start.SetMatrix(tuple((A[:3, :3] / 1.05).ravel()))
        start.SetScale(1.05)
        start.SetTranslation(tuple(A[:3, 3]))
    else:
        start = A
    reg = idir_fast.register(p.fixed, moving, p.mask, initial_transform=start, **dict(FAST, epochs=2))
    np.testing.assert_allclose(reg.world_affine, A, atol=1e-9)
    # the points round trip through SimpleITK's own reading of the same file
    if form.startswith("."):
        tx = sitk.ReadTransform(str(start))
        pts = p.fixed_landmarks[:5]
        np.testing.assert_allclose([tx.TransformPoint(tuple(q)) for q in pts], apply_affine(A, pts), atol=1e-6)


def test_nonlinear_starting_transform_is_refused(affine_case, tmp_path):
    p, _, moving, _ = affine_case
    field = sitk.Image(p.fixed.GetSize(), sitk.sitkVectorFloat64)
    field.CopyInformation(p.fixed)
    arr = sitk.GetArrayFromImage(field)
    arr[..., 0] = np.linspace(0, 5, arr.shape[2])[None, None, :] ** 2
    f = sitk.GetImageFromArray(arr, isVector=True)
    f.CopyInformation(p.fixed)
    with pytest.raises(idir_fast.InputError, match="'initial_transform' must be a linear transform"):
        transform_matrix(sitk.DisplacementFieldTransform(f))
    with pytest.raises(idir_fast.InputError, match="'initial_transform': transform file not found"):
        idir_fast.register(p.fixed, moving, p.mask, initial_transform=tmp_path / "none.tfm", **FAST)


def test_written_field_and_composite_reproduce_warped_with_the_affine_stage(affine_case, tmp_path):
    p, A, moving, moving_landmarks = affine_case
    reg = idir_fast.register(p.fixed, moving, p.mask, affine="auto", **FAST)
    out = reg.save(str(tmp_path / "r_"), itk_transform=True)
    warped = sitk.GetArrayFromImage(reg.warped())
    field = sitk.ReadImage(str(out["field"]))
    for tx in (sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64)),
               sitk.ReadTransform(str(out["transform"]))):
        res = sitk.GetArrayFromImage(sitk.Resample(moving, p.fixed, tx, sitk.sitkLinear, 0.0))
        inner = (slice(3, -3),) * 3  # SimpleITK and warped() treat the last half voxel at the border alike
        scale = np.abs(warped).max()
        assert np.abs(res[inner] - warped[inner]).max() < 1e-3 * scale
    np.testing.assert_allclose(transform_matrix(out["affine"]), reg.world_affine, atol=1e-9)
    loaded = idir_fast.load(out["model"])
    np.testing.assert_allclose(loaded.transform_points(p.fixed_landmarks), reg.transform_points(p.fixed_landmarks),
                               atol=1e-9)


@pytest.fixture(scope="module")
def smooth_registration():
    p = phantom_pair(size=(40, 36, 32), spacing=(6.0, 6.0, 6.0), num_landmarks=30, seed=3)
    return p, idir_fast.register(p.fixed, p.moving, p.mask, **dict(FAST, epochs=60))


def test_inverse_map_is_consistent_and_its_field_loads_in_simpleitk(smooth_registration, tmp_path):
    p, reg = smooth_registration
    ic = reg.inverse_consistency()
    assert ic["mean_mm"] < 0.05 and ic["not_converged_fraction"] == 0.0, ic
    y = p.moving_landmarks
    x = reg.transform_points(y, inverse=True)
    np.testing.assert_allclose(reg.transform_points(x), y, atol=0.01)
    out = reg.save(str(tmp_path / "r_"), write_inverse=True)
    inv = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(out["inverse_field"])),
                                                    sitk.sitkVectorFloat64))
    inner = [q for q in y if inv.GetFixedParameters()]  # the inverse field lives on the moving grid
    mapped = np.array([inv.TransformPoint(tuple(q)) for q in inner])
    assert np.abs(mapped - x).max() < 0.5  # trilinear interpolation of the field between voxels
    report = json.loads(out["report"].read_text())
    assert report["metrics"]["inverse_consistency"]["mean_mm"] < 0.05


def test_symmetric_mode_flags_a_structure_present_in_one_image_only(tmp_path):
    p = phantom_pair(size=(48, 44, 40), spacing=(5.0, 5.0, 5.0), num_landmarks=40, seed=1)
    mask = sitk.GetArrayFromImage(p.mask) > 0
    centre = np.argwhere(mask)[len(np.argwhere(mask)) // 3][::-1]  # (i, j, k) inside a lung
    arr = sitk.GetArrayFromImage(p.moving)
    k, j, i = np.meshgrid(*[np.arange(s) for s in arr.shape], indexing="ij")
    inserted = sitk.GetImageFromArray((arr + 900 * np.exp(-((i - centre[0]) ** 2 + (j - centre[1]) ** 2
                                                                + (k - centre[2]) ** 2) / 4.5)).astype(np.float32))
    inserted.CopyInformation(p.moving)
    reg = idir_fast.register(p.fixed, inserted, p.mask, symmetric=True, **dict(FAST, epochs=150, hidden=(64, 64, 64),
                                                                                batch_size=1500))
    err = reg.consistency_errors()
    # where the inserted structure's voxels correspond to in the fixed image (the known map's inverse)
    y = np.array(p.moving.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre]))
    xi = np.array(p.fixed.TransformPhysicalPointToContinuousIndex(tuple(p.mapping.inverse(y[None])[0])))
    d2 = (i - xi[0]) ** 2 + (j - xi[1]) ** 2 + (k - xi[2]) ** 2
    near, far = (d2 < 9) & mask, (d2 > 36) & mask
    assert err[near].mean() > 2 * err[far].mean(), (err[near].mean(), err[far].mean())
    assert near[np.unravel_index(np.argmax(np.where(mask, err, -1)), err.shape)]  # the worst voxel is there
    c = reg.metrics["consistency"]
    assert set(c) >= {"mean_mm", "p95_mm", "max_mm", "flagged", "flag_mm"}
    out = reg.save(str(tmp_path / "s_"))
    assert {"field", "inverse_field", "consistency"} <= set(out)
    loaded = idir_fast.load(out["model"])
    np.testing.assert_allclose(loaded.consistency_errors(), err, atol=1e-5)


def test_moving_mask_keeps_an_unmasked_structure_from_pulling_the_registration():
    """The moving image holds the fixed image's blobs moved by 8 mm and a bright distractor where the main blob
    was: without a moving mask NCC prefers the distractor; masking it out recovers the motion."""
    n, sp = (40, 40, 40), 3.0
    k, j, i = np.meshgrid(*[np.arange(s) for s in n[::-1]], indexing="ij")
    P = np.stack([i, j, k], -1) * sp

    def blob(c, r=9.0):
        return np.exp(-((P - np.asarray(c)) ** 2).sum(-1) / (2 * r * r))

    def image(a, dtype=np.float32):
        im = sitk.GetImageFromArray(a.astype(dtype))
        im.SetSpacing((sp,) * 3)
        return im

    c, shift, others = np.array([60.0, 60.0, 60.0]), np.array([8.0, 0.0, 0.0]), ([0, 25, 0], [0, -25, 10])
    fixed = blob(c) + sum(0.3 * blob(c + o, 6) for o in others)
    moving = blob(c + shift) + sum(0.3 * blob(c + shift + o, 6) for o in others) + 2.0 * blob(c + [-20, 0, 0])
    moving_mask = image(P[..., 0] > c[0] - 8, np.uint8)  # leaves out the distractor
    fl = np.array([c] + [c + o for o in others])
    kw = dict(schedule="paper", epochs=150, batch_size=2000, hidden=(32, 32), omega=8.0, progress=False,
              fixed_landmarks=fl, moving_landmarks=fl + shift)
    pulled = idir_fast.register(image(fixed), image(moving), **kw)
    masked = idir_fast.register(image(fixed), image(moving), moving_mask=moving_mask, **kw)
    before = masked.metrics["tre_initial"]["mean"]
    assert pulled.metrics["tre"]["mean"] > before
    assert masked.metrics["tre"]["mean"] < 0.4 * before, masked.metrics["tre"]
    with pytest.raises(idir_fast.InputError, match="'moving_mask' must have the moving image's size"):
        idir_fast.register(image(fixed), image(moving), moving_mask=image(np.ones((5, 5, 5)), np.uint8), **kw)


def test_cli_and_cohort_take_the_new_inputs_and_flag_doubtful_pairs(affine_case, tmp_path):
    """--moving-mask, --initial-transform, --write-inverse, --symmetric on the command line; the manifest's optional
    moving_mask/initial_transform columns; the cohort summary's doubtful flag from the consistency map."""
    from idir_fast.apps.cli import main

    p, A, moving, _ = affine_case
    d = tmp_path / "in"
    d.mkdir()
    for name, img in (("f", p.fixed), ("m", moving), ("mask", p.mask)):
        sitk.WriteImage(img, str(d / f"{name}.nii.gz"))
    mm = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    mm.CopyInformation(moving)
    sitk.WriteImage(mm, str(d / "mm.nii.gz"))
    write_transform(A, d / "start.mat")
    fast = ["--epochs", "3", "--batch-size", "200", "--hidden", "16", "--no-progress"]
    rc = main(["register", str(d / "f.nii.gz"), str(d / "m.nii.gz"), "--mask", str(d / "mask.nii.gz"), "--out",
               str(tmp_path / "r_"), "--moving-mask", str(d / "mm.nii.gz"), "--initial-transform",
               str(d / "start.mat"), "--write-inverse", *fast])
    assert rc == 0
    rep = json.loads((tmp_path / "r_report.json").read_text())
    np.testing.assert_allclose(np.array(rep["settings"]["world_affine"]), A, atol=1e-9)
    assert (tmp_path / "r_0InverseWarp.nii.gz").exists() and (tmp_path / "r_Affine.mat").exists()
    assert "inverse_consistency" in rep["metrics"]
    (d / "manifest.csv").write_text("pair_id,fixed,moving,mask,moving_mask,initial_transform\n"
                                    "a,f.nii.gz,m.nii.gz,mask.nii.gz,mm.nii.gz,start.mat\n")
    out = tmp_path / "cohort"
    rc = main(["cohort", str(d / "manifest.csv"), "--out", str(out), "--symmetric", "--consistency-flag-mm",
               "0.000001", *fast])
    summary = json.loads((out / "summary.json").read_text())
    assert rc == 0 and summary["doubtful"] == ["a"] and summary["pairs"][0]["doubtful"] is True
    assert summary["pairs"][0]["consistency_p95_mm"] > 0
    assert (out / "a" / "Consistency.nii.gz").exists() and (out / "a" / "0InverseWarp.nii.gz").exists()


def test_detect_runs_the_affine_stage_only_when_the_poses_differ(affine_case, small_pair):
    """``affine="detect"``: the intensity moments of a pair moved by a known affine map (9°, 29 mm, +5 %) differ
    beyond the limits and the affine stage runs; a breathing-motion pair's do not and it is skipped (recorded)."""
    from idir_fast.optim.affine import pose_difference

    p, A, moving, moved_landmarks = affine_case
    posed = pose_difference(p.fixed, moving)
    assert posed["differs"] and posed["offset_mm"] > 10.0, posed
    breathing = pose_difference(small_pair.fixed, small_pair.moving)
    assert not breathing["differs"], breathing
    reg = idir_fast.register(p.fixed, moving, p.mask, affine="detect", **FAST)
    assert reg.run["affine_stage"]["pose"]["differs"] and "metric" in reg.run["affine_stage"]
    assert not np.allclose(reg.world_affine, np.eye(4))
    kept = idir_fast.register(small_pair.fixed, small_pair.moving, small_pair.mask, affine="detect", **FAST)
    assert not kept.run["affine_stage"]["pose"]["differs"] and "metric" not in kept.run["affine_stage"]
    assert np.allclose(kept.world_affine, np.eye(4))
