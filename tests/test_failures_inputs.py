"""Issue #13, items 3, 5 and 11: corrupt inputs, non-orthogonal grids and silent API defaults.

Item 3: a truncated or corrupt NIfTI is refused (ITK fills it with zeros), NaN/Inf in NIfTI are found before ITK
turns them into 0. Item 5: non-orthogonal (sheared) direction cosines are refused naming the image. Item 11: a
NumPy image without ``spacing=`` warns, ``spacing=`` with files is an error, complex arrays, values beyond
float32, intensities too small for float32, a singular direction and ``demo --epochs 0`` all get clear errors.
"""
import gzip
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

import idir_fast
from idir_fast import InputError
from idir_fast.api import read_pair
from idir_fast.apps.cli import main
from idir_fast.io.images import DefaultGeometryWarning, as_image


@pytest.fixture
def files(tiny_pair, tmp_path):
    out = {}
    for name in ("fixed", "moving"):
        for ext in (".nii.gz", ".nii"):
            path = tmp_path / f"{name}{ext}"
            sitk.WriteImage(getattr(tiny_pair, name), str(path), ext == ".nii.gz")
            out[name + ext] = path
    return out


# ------------------------------------------------------------------------------------------ item 3: corrupt NIfTI
@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_a_truncated_nifti_is_refused(files, tmp_path, ext):
    good = files["moving" + ext]
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert sitk.ReadImage(str(cut)).GetSize() == (20, 18, 16)  # ITK reads it (the rest as zeros)
    with pytest.raises(InputError, match="'moving': .*cut.* is not a complete NIfTI image"):
        as_image(str(cut), "moving")


def test_a_nifti_gz_whose_uncompressed_data_is_short(files, tmp_path):
    """A valid gzip stream that holds fewer voxel bytes than the header declares."""
    raw = gzip.decompress(files["fixed.nii.gz"].read_bytes())
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(raw[: len(raw) - 5000]))
    with pytest.raises(InputError, match=r"truncated: its header declares 23040 bytes .* but it holds 18040"):
        as_image(str(short), "fixed")


def test_a_corrupt_nifti_gz_is_refused(files, tmp_path):
    data = bytearray(files["fixed.nii.gz"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="'fixed': .*not a complete NIfTI image: its compressed data is damaged"):
        as_image(str(bad), "fixed")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_nan_and_inf_are_found_in_every_format(tiny_pair, tmp_path, ext):
    arr = sitk.GetArrayFromImage(tiny_pair.moving)
    arr[3, 4, 5], arr[1, 2, 3] = np.nan, -np.inf
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(tiny_pair.moving)
    path = tmp_path / f"nan{ext}"
    sitk.WriteImage(img, str(path))
    with pytest.raises(InputError, match="'moving' contains 2 NaN/Inf intensities"):
        as_image(str(path), "moving")


def test_truncated_input_fails_the_command_before_any_work(files, tmp_path, capsys):
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(files["moving.nii.gz"].read_bytes()[:4000])
    rc = main(["register", str(files["fixed.nii.gz"]), str(cut), "--out", str(tmp_path / "r_"), "--no-progress"])
    assert rc == 2 and "not a complete NIfTI image" in capsys.readouterr().err
    assert not list(tmp_path.glob("r_*"))


# ------------------------------------------------------------------------------------------ item 5: sheared grids
SHEAR = (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_non_orthogonal_direction_cosines_are_refused_naming_the_image(tiny_pair, tmp_path):
    sheared = sitk.Image(tiny_pair.moving)
    sheared.SetDirection(SHEAR)
    with pytest.raises(InputError, match="'moving' has non-orthogonal direction cosines"):
        read_pair(tiny_pair.fixed, sheared)
    path = tmp_path / "sheared.mha"  # MetaImage keeps the shear (NIfTI would coerce it on write)
    sitk.WriteImage(sheared, str(path))
    with pytest.raises(InputError, match="'fixed' has non-orthogonal direction cosines"):
        read_pair(str(path), tiny_pair.moving)


def test_orthonormal_oblique_directions_are_accepted(tiny_pair):
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = sitk.Image(tiny_pair.moving)
    oblique.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    assert read_pair(tiny_pair.fixed, oblique).moving.GetDirection() == pytest.approx(oblique.GetDirection())


# ------------------------------------------------------------------------------------------ item 11: API defaults
def test_a_numpy_image_without_spacing_warns(tiny_pair):
    arr = sitk.GetArrayFromImage(tiny_pair.fixed)
    with pytest.warns(DefaultGeometryWarning) as caught:
        read_pair(arr, arr.copy())
    assert sorted(str(w.message).split(":")[0] for w in caught) == ["'fixed'", "'moving'"]
    assert "a NumPy array without spacing= gets 1 mm voxels" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DefaultGeometryWarning)
        read_pair(arr, arr.copy(), spacing=(8.0, 8.0, 8.0))


def test_spacing_with_files_or_simpleitk_images_is_an_error(tiny_pair, files):
    with pytest.raises(InputError, match="'spacing' applies to NumPy images only"):
        read_pair(tiny_pair.fixed, tiny_pair.moving, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="'origin' applies to NumPy images only"):
        read_pair(str(files["fixed.nii.gz"]), str(files["moving.nii.gz"]), origin=(0.0, 0.0, 0.0))


@pytest.mark.parametrize("make,pattern", [
    (lambda a: a.astype(np.complex64) + 1j, "'fixed' is a complex array"),
    (lambda a: a.astype(np.float64) * 1e300, "'fixed' has intensities beyond the float32 range"),
    (lambda a: a.astype(np.float64) * 1e-30, "'fixed' has an intensity range of only"),
], ids=["complex", "beyond-float32", "scaled-by-1e-30"])
def test_array_values_get_the_right_message(tiny_pair, make, pattern):
    arr = make(sitk.GetArrayFromImage(tiny_pair.fixed))
    with pytest.raises(InputError, match=pattern):
        read_pair(arr, sitk.GetArrayFromImage(tiny_pair.moving), spacing=(8.0, 8.0, 8.0))


def test_float64_simpleitk_image_beyond_float32(tiny_pair):
    big = sitk.Cast(tiny_pair.fixed, sitk.sitkFloat64) * 1e300
    with pytest.raises(InputError, match="'fixed' has intensities beyond the float32 range"):
        read_pair(big, tiny_pair.moving)


def test_a_complex_simpleitk_image(tiny_pair):
    z = sitk.RealAndImaginaryToComplex(tiny_pair.fixed, tiny_pair.fixed)
    with pytest.raises(InputError, match="'fixed' has complex voxels"):
        read_pair(z, tiny_pair.moving)


def test_a_singular_direction_is_an_input_error(tiny_pair):
    arr = sitk.GetArrayFromImage(tiny_pair.fixed)
    with pytest.raises(InputError, match="'direction' has a singular direction matrix"):
        read_pair(arr, arr.copy(), spacing=(8.0, 8.0, 8.0), direction=(1, 0, 0, 1, 0, 0, 0, 0, 1))


def test_demo_epochs_zero_is_refused_before_anything_is_made(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "0", "--no-progress"]) == 2
    assert "'--steps' must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_registering_numpy_images_with_spacing_still_works(tiny_pair):
    arr_f, arr_m = sitk.GetArrayFromImage(tiny_pair.fixed), sitk.GetArrayFromImage(tiny_pair.moving)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DefaultGeometryWarning)
        reg = idir_fast.register(arr_f, arr_m, spacing=(8.0, 8.0, 8.0), epochs=2, batch_size=50, hidden=(8,),
                                 progress=False, device="cpu")
    assert reg.fixed_geometry.spacing == (8.0, 8.0, 8.0)


def test_command_errors_name_the_flags_the_user_typed(tiny_pair, tmp_path, capsys):
    paths = []
    for name in ("fixed", "moving"):
        paths.append(str(tmp_path / f"{name}.nii.gz"))
        sitk.WriteImage(getattr(tiny_pair, name), paths[-1])
    for extra, said in ((["--steps", "0"], "'--steps' must be a positive integer"),
                        (["--moving-mask", str(tmp_path / "none.nii.gz")], "'--moving-mask': file not found"),
                        (["--initial-transform", str(tmp_path / "none.tfm")], "'--initial-transform': transform file"),
                        (["--mask", str(tmp_path / "none.nii.gz")], "'--mask': file not found")):
        assert main(["register", *paths, "--out", str(tmp_path / "r_"), "--no-progress", *extra]) == 2
        captured = capsys.readouterr()
        assert said in captured.err
        if "not found" in said:  # a missing file is found before any image is read
            assert "reading" not in captured.out
    assert not list(tmp_path.glob("r_*"))


def test_only_the_leading_names_become_flags():
    from idir_fast.apps.cli import build_parser, in_flag_terms

    parser = build_parser()
    assert in_flag_terms("'out': output folder 'out' does not exist", parser, "register") == \
        "'--out': output folder 'out' does not exist"
    assert in_flag_terms("'batch_size'/'hidden': about 3 GiB; 'mask' is fine", parser, "register") == \
        "'--batch-size'/'--hidden': about 3 GiB; 'mask' is fine"
    assert in_flag_terms("'fixed': file not found: 'epochs'", parser, "register") == "'fixed': file not found: 'epochs'"
    assert in_flag_terms("'fixed_landmarks' and 'moving_landmarks' must have the same number of points, got 'mask'",
                         parser, "register") == \
        "'--fixed-landmarks' and '--moving-landmarks' must have the same number of points, got 'mask'"
