"""The benchmarks are code: each peer adapter maps points by the convention it claims (a registration of a known
shift), and the peers and throughput benchmarks run end to end in their quick modes (nothing timed is asserted:
speed is shown by the benchmarks' records, not by tests)."""
import json

import pytest

from benchmarks.peers import adapters
from benchmarks.peers.conventions import GEOMETRIES, QUICK_PROFILES, check_tool

TOOLS = sorted(adapters())


@pytest.mark.parametrize("tool", TOOLS)
def test_each_adapter_maps_a_known_shift(tool):
    adapter = adapters()[tool]
    why = adapter.unavailable()
    if why:
        pytest.skip(f"{tool}: {why}")
    rows = check_tool(tool, adapter, threads=2, profile=QUICK_PROFILES[tool], geometries=GEOMETRIES[1:])
    assert all(r["passed"] for r in rows), rows
    if tool == "ants-syn":  # the check tells the wrong recipes apart
        wrong = rows[0]["wrong_recipes"]
        assert wrong["wrong_recipe_invtransforms"]["mean_mm"] > 3 * rows[0]["residual"]["mean_mm"]
        assert wrong["wrong_frame_RAS"]["mean_mm"] > 3 * rows[0]["residual"]["mean_mm"]


def test_peers_quick_run_writes_one_record_and_plot(tmp_path):
    from benchmarks.peers.__main__ import main

    assert main(["--quick", "--tools", "idir", "--out", str(tmp_path)]) == 0
    record = json.loads(next(tmp_path.glob("peers_quick_*.json")).read_text())
    assert record["convention_check"]["passed"]
    assert [r["case"] for r in record["rows"]] == ["blobs"] and "tre" in record["rows"][0]
    assert record["rows"][0]["tre"]["mean"] < record["rows"][0]["tre_initial"]["mean"]
    assert next(tmp_path.glob("peers_quick_*.png")).stat().st_size > 0


def test_throughput_setting_modes_run_the_default_plan_with_one_flag_added(tmp_path):
    from benchmarks.throughput import COHORT_SETTINGS, mode_commands

    plain = mode_commands("cohort", tmp_path / "m.csv", tmp_path, False, None)[0]["argv"]
    for mode, flags in COHORT_SETTINGS.items():
        (cmd,) = mode_commands(mode, tmp_path / "m.csv", tmp_path, False, None)
        assert cmd["argv"] == plain + list(flags) and "--workers" not in cmd["argv"], mode


def test_throughput_quick_run_measures_each_mode_and_condition(tmp_path):
    from benchmarks.throughput import main

    assert main(["--quick", "--modes", "register-1,cohort-1x1", "--conditions", "idle,busy",
                 "--out", str(tmp_path)]) == 0
    record = json.loads(next(tmp_path.glob("throughput_quick_*.json")).read_text())
    got = {(r["condition"], r["mode"]) for r in record["rows"]}
    assert got == {(c, m) for c in ("idle", "busy") for m in ("register-1", "cohort-1x1")}
    for r in record["rows"]:
        assert r["failed"] == 0 and r["pairs_per_hour"] > 0 and r["peak_rss_mib"] > 0 and r["tre_mean_mm"] > 0


def test_idir_profiles_by_name_or_ad_hoc_settings():
    from benchmarks.peers.idir import PROFILES, profile_settings

    assert profile_settings("detect") == PROFILES["detect"]
    assert profile_settings("epochs=800:hidden=96x96x96:lr=0.001:affine=detect") == dict(
        epochs=800, hidden=(96, 96, 96), lr=0.001, affine="detect")
    with pytest.raises(ValueError, match="unknown idir profile 'nonsense'"):
        profile_settings("nonsense")


def test_brain_axes_read_from_where_the_structures_lie():
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.cases import brain_axes

    # a toy aseg in LIA voxel order: i → left, j → inferior, k → anterior; array index order is (k, j, i)
    arr = np.zeros((20, 20, 20), np.uint8)
    arr[8:12, 4:10, 12:16] = 3    # left cortex at high i
    arr[8:12, 4:10, 4:8] = 42     # right cortex at low i
    arr[10:13, 14:17, 9:11] = 16  # brainstem low in the head: high j
    arr[3:6, 13:16, 8:12] = 47    # cerebellum behind the brainstem: low k
    assert brain_axes(sitk.GetImageFromArray(arr)) == "LIA"
    assert brain_axes(sitk.GetImageFromArray(np.ascontiguousarray(arr[::-1, ::-1, ::-1]))) == "RSP"


def test_followup_case_keeps_the_lungs_mass_and_its_labels_follow_the_known_map():
    """The follow-up case: parenchyma's ``HU + 1000`` integrates to the same mass in both images (the density
    change of the motion), the images' intensities differ where the lungs changed volume, and each image's own
    lung/vessel labels agree under the exact map."""
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.cases import LUNG_STRUCTURES, VESSEL_HU, followup_case, warp_labels
    from idir_fast.data import deformed_pair, lung_phantom

    image, mask, _ = lung_phantom(seed=1, noise_hu=0.0)
    case = followup_case(image, 15.0, 0, "phantom-followup", "the lung phantom", mask=mask)
    fixed, moving = (sitk.GetArrayFromImage(i).astype(np.float64) for i in (case.fixed, case.moving))
    f_lab, m_lab = (sitk.GetArrayFromImage(i) for i in (case.fixed_labels, case.moving_labels))
    mass = [float(((a + 1000.0) * (lab == 1)).sum()) for a, lab in ((fixed, f_lab), (moving, m_lab))]
    volume = [(lab == 1).sum() for lab in (f_lab, m_lab)]
    # voxels of equal volume: the sum is the mass. The parenchyma's volume changes by ~10 %, its mass by less than
    # half of that (what remains: partial volumes at the lungs' border, 3 mm voxels)
    assert abs(volume[1] / volume[0] - 1.0) > 0.05
    assert abs(mass[1] / mass[0] - 1.0) < 0.5 * abs(volume[1] / volume[0] - 1.0), (mass, volume)
    assert np.all(moving[m_lab == 1] <= VESSEL_HU + 50.0)  # parenchyma (10 HU noise) stays below the vessels
    # the moving image's own labels, pulled back by the exact map (L_m(Φ(x)) on the fixed grid), match the fixed
    # image's: what a perfect registration scores
    phi = deformed_pair(image, mask, amplitude_mm=15.0, noise_hu=0.0, seed=0).mapping
    back = sitk.GetArrayFromImage(warp_labels(case.moving_labels, phi))
    assert case.structures == LUNG_STRUCTURES
    def dice(x, y, labels):
        a, b = np.isin(x, labels), np.isin(y, labels)
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    for name, labels in LUNG_STRUCTURES.items():
        exact, before = dice(back, f_lab, labels), dice(m_lab, f_lab, labels)
        # thin vessels at 3 mm: the warp's interpolation moves their thresholded border, so even the exact map
        # stops short of 1 — yet far above the unregistered pair
        assert exact > (0.95 if name == "lungs" else 0.7) and exact > before + 0.05, (name, exact, before)


def test_posed_case_moves_the_moving_side_rigidly_and_keeps_the_exact_map():
    """``posed_case``: the moving image and labels in another pose P, the truth ``P ∘ Φ`` at the landmarks and
    everywhere (``mapping``), so the exact map's Dice stays what the unposed case's is while the unregistered
    pair's drops; intensities agree under P at interior points."""
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.cases import followup_case, posed_case
    from idir_fast.data import lung_phantom

    image, mask, _ = lung_phantom(seed=1, noise_hu=0.0)
    case = followup_case(image, 15.0, 0, "phantom-followup", "the lung phantom", mask=mask)
    posed = posed_case(case, rotation_deg=(0.0, 0.0, 4.0), translation_mm=(3.0, -2.0, 0.0))
    assert posed.name == "phantom-followup-pose" and posed.fixed is case.fixed
    # P itself: a 4° turn about z through the moving image's centre, then the shift
    c = np.asarray(case.moving.TransformContinuousIndexToPhysicalPoint(
        [(s - 1) / 2.0 for s in case.moving.GetSize()]))
    t = np.deg2rad(4.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    expected = (case.moving_landmarks - c) @ rot.T + c + np.array([3.0, -2.0, 0.0])
    np.testing.assert_allclose(posed.moving_landmarks, expected, atol=1e-6)
    # and everywhere: P ∘ Φ of any point, against P built by hand on Φ's own value
    probe = case.fixed_landmarks[:5] + 1.5
    np.testing.assert_allclose(posed.mapping(probe), (case.mapping(probe) - c) @ rot.T + c + [3.0, -2.0, 0.0],
                               atol=1e-6)
    # the posed image at P(y) is the unposed image at y (linear interpolation: compare at voxel centres inside)
    arr = sitk.GetArrayViewFromImage(case.moving)
    moved = sitk.GetArrayViewFromImage(posed.moving)
    idx = np.argwhere(np.ones(arr.shape, bool))[::97][:, ::-1]  # (i, j, k)
    world = np.array([case.moving.TransformIndexToPhysicalPoint(tuple(int(v) for v in p)) for p in idx])
    target = np.array([posed.moving.TransformPhysicalPointToContinuousIndex(tuple(p))
                       for p in (world - c) @ rot.T + c + np.array([3.0, -2.0, 0.0])])
    near = np.all((target > 1) & (target < np.asarray(posed.moving.GetSize()) - 2), axis=1)
    on_grid = near & np.all(np.abs(target - np.rint(target)) < 0.05, axis=1)
    assert on_grid.sum() > 20
    got = [moved[tuple(np.rint(p[::-1]).astype(int))] for p in target[on_grid]]
    np.testing.assert_allclose(got, arr[tuple(idx[on_grid][:, ::-1].T)], atol=60.0)
    exact, exact_posed = case.summary()["dice_exact"], posed.summary()["dice_exact"]
    assert exact["lungs"] > 0.95 and abs(exact_posed["lungs"] - exact["lungs"]) < 0.02, (exact, exact_posed)

    def dice(x, y):
        a, b = sitk.GetArrayViewFromImage(x) > 0, sitk.GetArrayViewFromImage(y) > 0
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert dice(posed.moving_labels, posed.fixed_labels) < dice(case.moving_labels, case.fixed_labels) - 0.02


def test_ct_cases_on_a_resampled_ct_cover_the_same_extent_and_keep_their_names(tmp_path):
    """``read_ct(spacing_mm=…)``: the same extent on a finer grid (outer faces where they were), the same values
    at the same world points; ``build_case("…@<s>mm")`` makes the case from it, named as asked."""
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.cases import build_case, read_ct
    from idir_fast.data import lung_phantom

    image, _, _ = lung_phantom(seed=1, noise_hu=0.0)  # 80×72×64 voxels of 3 mm
    (tmp_path / "ct").mkdir()
    sitk.WriteImage(image, str(tmp_path / "ct" / "chest_ct_1p5mm.nii.gz"))
    part = tmp_path / "part"
    (part / "ct").mkdir(parents=True)
    sitk.WriteImage(image[30:50, 30:48, 24:40], str(part / "ct" / "chest_ct_1p5mm.nii.gz"))
    coarse_image = sitk.ReadImage(str(part / "ct" / "chest_ct_1p5mm.nii.gz"))
    fine, made = read_ct(str(part), 1.0)
    assert fine.GetSpacing() == (1.0, 1.0, 1.0) and fine.GetSize() == (60, 54, 48) and "1 mm" in made

    def faces(img):
        lo = np.asarray(img.TransformContinuousIndexToPhysicalPoint([-0.5] * 3))
        return lo, lo + np.asarray(img.GetSize()) * np.asarray(img.GetSpacing())

    for a, b in zip(faces(coarse_image), faces(fine)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # every coarse voxel centre is a fine one (fine index 3·i + 1): the same value there
    coarse = sitk.GetArrayViewFromImage(coarse_image)
    dense = sitk.GetArrayViewFromImage(fine)
    np.testing.assert_allclose(dense[1::3, 1::3, 1::3], coarse, atol=1e-3)
    case = build_case("ct-followup-12mm-pose@6mm", str(tmp_path))
    assert case.name == "ct-followup-12mm-pose@6mm" and case.fixed.GetSpacing() == (6.0, 6.0, 6.0)
    assert "turned by" in case.description
    assert build_case("ct-12mm@6.0mm", str(tmp_path)).name == "ct-12mm@6mm"
    with pytest.raises(ValueError, match="above 0 mm"):
        build_case("ct-12mm@0mm", str(tmp_path))


def test_grid_pass_quick_run_times_each_chunk_against_the_package_choice(tmp_path):
    from benchmarks.grid_pass import main

    assert main(["--quick", "--chunks", "65536", "--processes", "1", "--out", str(tmp_path)]) == 0
    record = json.loads(next(tmp_path.glob("grid_pass_quick_*.json")).read_text())
    assert {r["chunk"] for r in record["rows"]} == {"package", "65536"}
    for r in record["rows"]:
        assert r["median_s"] > 0 and r["package_chunk"] == 4096
    assert next(r for r in record["rows"] if r["chunk"] == "package")["ratio_to_package"] == 1.0
