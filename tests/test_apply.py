"""``idir_fast.apply`` / ``idir-fast apply``: a saved run applied to images, label maps and points, against
SimpleITK's own resampling through the written ``0Warp`` and against ``transform_points``."""
import numpy as np
import pytest
import SimpleITK as sitk

import idir_fast
from idir_fast import InputError
from idir_fast.apps.cli import main

KW = dict(epochs=40, batch_size=300, hidden=(16, 16), device="cpu", progress=False, seed=2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_pair):
    out = tmp_path_factory.mktemp("run")
    reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, **KW)
    outputs = reg.save(str(out) + "/")
    labels = sitk.Cast(sitk.BinaryThreshold(tiny_pair.moving, -200.0, 1e9, 3, 0), sitk.sitkUInt8)
    labels = labels + sitk.Cast(sitk.BinaryThreshold(tiny_pair.moving, 150.0, 1e9, 14, 0), sitk.sitkUInt8)
    labels.CopyInformation(tiny_pair.moving)
    sitk.WriteImage(labels, str(out / "labels.nii.gz"))
    return reg, outputs, labels, out


def _through_0warp(image, outputs, reference, interpolator, pixel):
    field = sitk.Cast(sitk.ReadImage(str(outputs["field"])), sitk.sitkVectorFloat64)
    return sitk.Resample(image, reference, sitk.DisplacementFieldTransform(field), interpolator, 0.0, pixel)


def test_labels_equal_simpleitk_nearest_neighbour_through_0warp_and_keep_their_values(saved, tiny_pair):
    reg, outputs, labels, _ = saved
    got = idir_fast.apply(outputs["model"], labels, interpolation="nearest")
    want = _through_0warp(labels, outputs, tiny_pair.fixed, sitk.sitkNearestNeighbor, labels.GetPixelID())
    assert got.GetPixelID() == sitk.sitkUInt8 and got.GetSize() == tiny_pair.fixed.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want))
    original = set(np.unique(sitk.GetArrayFromImage(labels)))
    for interpolation in ("nearest", "label"):
        values = set(np.unique(sitk.GetArrayFromImage(idir_fast.apply(outputs["model"], labels,
                                                                      interpolation=interpolation))))
        assert values <= original and len(values) > 1, (interpolation, values, original)


def test_images_through_the_model_and_through_0warp_agree_and_match_warped(saved, tiny_pair):
    reg, outputs, _, _ = saved
    by_model = idir_fast.apply(outputs["model"], tiny_pair.moving)
    by_field = idir_fast.apply(outputs["field"], tiny_pair.moving)
    want = _through_0warp(tiny_pair.moving, outputs, tiny_pair.fixed, sitk.sitkLinear, sitk.sitkFloat32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(by_model), sitk.GetArrayFromImage(want))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(by_field), sitk.GetArrayFromImage(want))
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs["warped"])))
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(sitk.GetArrayFromImage(by_model)[inner], warped[inner], atol=1e-3 * np.ptp(warped))
    bspline = idir_fast.apply(outputs["model"], tiny_pair.moving, interpolation="bspline")
    assert bspline.GetPixelID() == sitk.sitkFloat32 and bspline.GetSize() == tiny_pair.fixed.GetSize()


def test_points_equal_transform_points_and_the_inverse_maps_them_back(saved, tiny_pair):
    reg, outputs, _, _ = saved
    pts = tiny_pair.fixed_landmarks
    moved = idir_fast.apply(outputs["model"], points=pts)
    np.testing.assert_array_equal(moved, reg.transform_points(pts))
    # through the field: as SimpleITK maps points with it (trilinear between its 8 mm voxels, so not the network's
    # exact values in between)
    field = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(outputs["field"])), sitk.sitkVectorFloat64))
    by_field = idir_fast.apply(outputs["field"], points=pts)
    np.testing.assert_allclose(by_field, [field.TransformPoint(tuple(p)) for p in pts], atol=1e-4)
    np.testing.assert_allclose(by_field, moved, atol=0.5)
    np.testing.assert_allclose(idir_fast.apply(outputs["model"], points=moved, inverse=True), pts, atol=0.01)
    np.testing.assert_allclose(idir_fast.apply(outputs["field"], points=by_field, inverse=True), pts, atol=1e-3)
    index = np.asarray([tiny_pair.fixed.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in pts])
    np.testing.assert_allclose(idir_fast.apply(outputs["model"], points=index, points_frame="index0"), moved,
                               atol=1e-6)


def test_a_reference_grid_and_the_inverse_onto_the_moving_grid(saved, tiny_pair):
    reg, outputs, labels, _ = saved
    ref = sitk.Resample(tiny_pair.fixed, [s // 2 for s in tiny_pair.fixed.GetSize()], sitk.Transform(),
                        sitk.sitkLinear, tiny_pair.fixed.GetOrigin(), [2 * s for s in tiny_pair.fixed.GetSpacing()],
                        tiny_pair.fixed.GetDirection())
    got = idir_fast.apply(outputs["model"], labels, reference=ref, interpolation="nearest")
    assert got.GetSize() == ref.GetSize() and got.GetSpacing() == ref.GetSpacing()
    back = idir_fast.apply(outputs["model"], tiny_pair.fixed, inverse=True)  # fixed-side image → moving grid
    assert back.GetSize() == tiny_pair.moving.GetSize()
    with pytest.raises(InputError, match="'reference'"):
        idir_fast.apply(outputs["field"], tiny_pair.fixed, inverse=True)  # a field does not know the moving grid


def test_the_command_writes_images_and_points_into_new_folders(saved, tmp_path, capsys):
    reg, outputs, labels, out = saved
    target = tmp_path / "new" / "folder" / "labels_in_fixed.nii.gz"
    assert main(["apply", str(out) + "/", str(out / "labels.nii.gz"), "--out", str(target),
                 "--interpolation", "nearest"]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))),
                                  sitk.GetArrayFromImage(idir_fast.apply(outputs["model"], labels,
                                                                         interpolation="nearest")))
    from idir_fast.io.landmarks import read_points, write_points

    write_points(reg.transform_points(np.zeros((1, 3)) + np.asarray(labels.GetOrigin())), tmp_path / "p.txt")
    assert main(["apply", str(outputs["model"]), str(tmp_path / "p.txt"), "--out", str(tmp_path / "pts" / "q.txt"),
                 "--inverse"]) == 0
    np.testing.assert_allclose(read_points(tmp_path / "pts" / "q.txt"), [labels.GetOrigin()], atol=0.01)
    assert "points moving → fixed" in capsys.readouterr().out
    # a CSV in gives a CSV out: comma-separated under a header, as spreadsheets and pandas read it
    write_points(np.asarray([labels.GetOrigin()]), tmp_path / "p.csv")
    assert main(["apply", str(outputs["model"]), str(tmp_path / "p.csv"), "--out", str(tmp_path / "q.csv")]) == 0
    lines = (tmp_path / "q.csv").read_text().splitlines()
    assert lines[0] == "x,y,z" and len(lines) == 2 and lines[1].count(",") == 2
    np.testing.assert_allclose(read_points(tmp_path / "q.csv"), reg.transform_points(np.asarray([labels.GetOrigin()])),
                               atol=1e-4)


@pytest.mark.parametrize("args,message", [
    (["nowhere.pt", "x.nii.gz"], "'input': file not found"),
    (["MODEL", "LABELS", "--out", "OUT.txt"], "'--out'"),
    (["MODEL", "LABELS", "--out", "OUT.xyz"], "'--out'"),  # an unknown image format, before any resampling
    (["MISSING", "LABELS"], "'transform'"),
    (["MODEL", "LABELS", "--out", "DIR"], "is a folder; give the output file's name"),
])
def test_the_command_names_what_is_wrong_before_any_work(saved, tmp_path, capsys, args, message):
    reg, outputs, labels, out = saved
    subst = {"MODEL": str(outputs["model"]), "LABELS": str(out / "labels.nii.gz"), "OUT.txt": str(tmp_path / "o.txt"),
             "OUT.xyz": str(tmp_path / "o.xyz"),
             "MISSING": str(tmp_path / "missing_model.pt"), "DIR": str(tmp_path)}
    argv = ["apply", *[subst.get(a, a) for a in args]]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o.nii.gz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.nii.gz").exists()


def test_the_runs_own_affine_is_refused_with_its_0warp_but_a_foreign_field_takes_one(tmp_path, tiny_pair, capsys):
    # idir_fast's 0Warp holds the whole map, affine included: its Affine.mat applied after it would move every
    # point twice through the linear part (ANTs' 1Warp, by contrast, needs its 0GenericAffine.mat)
    shift = np.eye(4)
    shift[:3, 3] = (1.5, -1.0, 0.5)
    reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, initial_transform=shift, **KW)
    outputs = reg.save(str(tmp_path / "run" / "p_"))
    assert outputs["affine"].name == "p_Affine.mat"
    pts = tiny_pair.fixed_landmarks
    with pytest.raises(InputError, match="'affine'.*already holds the whole map"):
        idir_fast.apply(outputs["field"], points=pts, affine=outputs["affine"])
    copy = tmp_path / "elsewhere.mat"  # the same matrix under another name: known from the run's report
    copy.write_bytes(outputs["affine"].read_bytes())
    renamed = tmp_path / "run" / "renamed_field.nii.gz"  # the field renamed: its run id still finds the report
    renamed.write_bytes(outputs["field"].read_bytes())
    link = tmp_path / "linked_0Warp.nii.gz"  # a link elsewhere: the report is found beside the file it names
    link.symlink_to(outputs["field"])
    for field in (outputs["field"], renamed, link):
        for affine in (copy, shift):  # a file, or the matrix itself
            with pytest.raises(InputError, match="'affine'.*already holds the whole map"):
                idir_fast.apply(field, points=pts, affine=affine)
    from idir_fast.apps.cli import main
    from idir_fast.io.images import image_run_id
    from idir_fast.io.landmarks import write_points

    write_points(pts, tmp_path / "p.txt")
    assert main(["apply", str(outputs["field"]), str(tmp_path / "p.txt"), "--affine", str(outputs["affine"]),
                 "--out", str(tmp_path / "q.txt")]) == 2
    assert "already holds the whole map" in capsys.readouterr().err and not (tmp_path / "q.txt").exists()
    # the same field without idir_fast's run id (as another tool writes one) composes with the affine as asked
    foreign = tmp_path / "foreign_0Warp.nii.gz"
    plain = sitk.GetImageFromArray(sitk.GetArrayFromImage(sitk.ReadImage(str(outputs["field"]))), isVector=True)
    plain.CopyInformation(sitk.ReadImage(str(outputs["field"])))  # the geometry, not the metadata
    sitk.WriteImage(plain, str(foreign))
    assert image_run_id(outputs["field"]) is not None and image_run_id(foreign) is None
    got = idir_fast.apply(foreign, points=pts, affine=copy)
    want = idir_fast.apply(foreign, points=pts) + shift[:3, 3]
    np.testing.assert_allclose(got, want, atol=1e-9)
    np.testing.assert_allclose(idir_fast.apply(foreign, points=pts, affine=shift), want, atol=1e-9)  # a matrix
    np.testing.assert_allclose(idir_fast.apply(outputs["field"], points=pts), reg.transform_points(pts), atol=0.5)


def test_points_far_outside_their_grid_warn_once_and_points_inside_do_not(saved, tiny_pair):
    import warnings

    from idir_fast.apply import PointsOutsideWarning

    reg, outputs, _, _ = saved
    inside = tiny_pair.fixed_landmarks
    with warnings.catch_warnings():
        warnings.simplefilter("error", PointsOutsideWarning)
        idir_fast.apply(outputs["model"], points=inside)
        idir_fast.apply(outputs["model"], points=reg.transform_points(inside), inverse=True)
    origin = np.asarray(tiny_pair.fixed.GetOrigin())
    far = origin + np.asarray(tiny_pair.fixed.GetSize()) * np.asarray(tiny_pair.fixed.GetSpacing()) * 3.0
    with pytest.warns(PointsOutsideWarning, match=r"1 of 2 point\(s\) lie outside the transform's input grid") as got:
        moved = idir_fast.apply(outputs["model"], points=np.stack([inside[0], far]))
    assert len(got) == 1 and np.all(np.isfinite(moved))  # a warning, not an error: the result is still given
