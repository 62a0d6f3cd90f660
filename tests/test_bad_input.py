"""Bad input gets a clear error naming the argument; nothing is left half-written."""
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import idir_fast
from idir_fast import InputError
from idir_fast.io import atomic_path, write_image
from idir_fast.settings import parse_hidden

KW = dict(epochs=2, batch_size=50, hidden=(8,), progress=False)


@pytest.fixture
def images(tiny_pair):
    return tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask


def test_non_3d_image(images):
    f, m, _ = images
    with pytest.raises(InputError, match="'fixed' must be a 3-D image"):
        idir_fast.register(sitk.Image(10, 10, sitk.sitkFloat32), m, **KW)
    with pytest.raises(InputError, match="'moving' must be a 3-D array"):
        idir_fast.register(f, np.zeros((5, 5)), **KW)


def test_mask_of_other_size_or_geometry(images):
    f, m, mask = images
    with pytest.raises(InputError, match="'mask' must have the fixed image's size"):
        idir_fast.register(f, m, sitk.Image(5, 5, 5, sitk.sitkUInt8), **KW)
    shifted = sitk.Image(mask)
    shifted.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="'mask' must have the fixed image's geometry"):
        idir_fast.register(f, m, shifted, **KW)


def test_empty_mask(images):
    f, m, mask = images
    with pytest.raises(InputError, match="'mask' is empty"):
        idir_fast.register(f, m, mask * 0, **KW)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_intensities(images, bad):
    f, m, mask = images
    arr = sitk.GetArrayFromImage(m)
    arr[3, 4, 5] = bad
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(m)
    with pytest.raises(InputError, match="'moving' contains 1 NaN/Inf"):
        idir_fast.register(f, img, mask, **KW)


def test_constant_image(images):
    f, m, mask = images
    const = sitk.Image(f.GetSize(), sitk.sitkFloat32)
    const.CopyInformation(f)
    with pytest.raises(InputError, match="'fixed' is constant"):
        idir_fast.register(const, m, mask, **KW)
    with pytest.raises(InputError, match="'moving' is constant"):
        idir_fast.register(f, const, mask, **KW)


def test_missing_and_unreadable_files(images, tmp_path):
    f, m, _ = images
    with pytest.raises(InputError, match="'fixed': file not found"):
        idir_fast.register(str(tmp_path / "nope.nii.gz"), m, **KW)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match="'moving': cannot read"):
        idir_fast.register(f, str(junk), **KW)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(regularizer="tv"), "'regularizer' must be one of"),
    (dict(backend="cudnn"), "'backend' must be one of"),
    (dict(epochs=0), "'epochs' must be a positive integer"),
    (dict(epochs=-3), "'epochs' must be a positive integer"),
    (dict(batch_size=0), "'batch_size' must be a positive integer"),
    (dict(compat="idir-2019"), "'compat' must be one of"),
    (dict(lr=-1.0), "'lr' must be a positive number"),
    (dict(alpha=float("nan")), "'alpha' must be a finite number"),
    (dict(dtype=torch.float16), "'dtype' must be"),
])
def test_bad_settings(images, kwargs, pattern):
    f, m, mask = images
    with pytest.raises(InputError, match=pattern):
        idir_fast.register(f, m, mask, **{**KW, **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="[device] this machine has CUDA")
def test_cuda_requested_without_cuda(images):
    f, m, mask = images
    with pytest.raises(InputError, match="'device' is 'cuda' but CUDA is not available"):
        idir_fast.register(f, m, mask, device="cuda", **KW)


def test_non_overlapping_images(images):
    f, m, mask = images
    far = sitk.Image(m)
    far.SetOrigin((5000.0, 0.0, 0.0))
    with pytest.raises(InputError, match="do not overlap in world space"):
        idir_fast.register(f, far, mask, **KW)


def test_output_prefix_in_missing_or_read_only_folder(images, tmp_path, monkeypatch):
    f, m, mask = images
    reg = idir_fast.register(f, m, mask, **KW)
    # a missing folder is made, as the CLI's --out makes it (README's reg.save("out/case1_") on a fresh checkout)
    written = reg.save(str(tmp_path / "missing" / "deeper" / "x_"))
    assert written["field"] == tmp_path / "missing" / "deeper" / "x_0Warp.nii.gz" and written["field"].exists()
    with pytest.raises(InputError, match="'prefix'.*system folder"):
        reg.save("/proc/idir_fast_test/x_")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(InputError, match="'prefix'.*not a folder"):
        reg.save(str(tmp_path / "a_file" / "x_"))
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits: make the check see what a user would
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real(p, mode))
        with pytest.raises(InputError, match="not writable"):
            reg.save(str(ro / "x_"))
    finally:
        os.chmod(ro, 0o755)


def test_failed_write_leaves_nothing_half_written(tmp_path, images):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    write_image(images[0], target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_landmarks_must_come_in_pairs(images):
    f, m, mask = images
    with pytest.raises(InputError, match="must be given together"):
        idir_fast.register(f, m, mask, fixed_landmarks=np.zeros((3, 3)), **KW)
    with pytest.raises(InputError, match="same number of points"):
        idir_fast.register(f, m, mask, fixed_landmarks=np.zeros((3, 3)), moving_landmarks=np.zeros((4, 3)), **KW)


BAD_SETTINGS = [
    dict(regularizer="tv"), dict(backend="cudnn"), dict(epochs=0), dict(batch_size=-1), dict(compat="idir-2019"),
    dict(lr=-1.0), dict(lr=float("nan")), dict(alpha=float("nan")), dict(alpha=-1.0), dict(dtype=torch.float16),
    dict(omega=0.0), dict(omega=float("inf")), dict(hidden=()), dict(hidden=(64, 0)), dict(seed=-1),
    dict(normalisation="cube"), dict(init="xavier"), dict(precision="fp8"), dict(device="tpu"),
]


@pytest.mark.parametrize("kwargs", BAD_SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_register_and_register_many_reject_the_same_settings_with_the_same_message(images, kwargs):
    f, m, mask = images
    with pytest.raises(InputError) as one:
        idir_fast.register(f, m, mask, **{**KW, **kwargs})
    with pytest.raises(InputError) as many:
        idir_fast.register_many([(f, m, mask)], **{**KW, **kwargs})
    with pytest.raises(InputError) as settings:
        idir_fast.RunSettings(**{k: v for k, v in {**KW, **kwargs}.items() if k != "progress"})
    name = next(iter(kwargs))
    assert str(one.value) == str(many.value) == str(settings.value)
    assert f"'{name}'" in str(one.value)


def test_unknown_option_is_a_type_error_like_python_gives():
    with pytest.raises(TypeError, match="register\\(\\) got an unexpected keyword argument 'epoch'"):
        idir_fast.register(None, None, epoch=3)
    with pytest.raises(TypeError, match="register_many\\(\\) got an unexpected keyword argument 'epoch'"):
        idir_fast.register_many([], epoch=3)


@pytest.mark.parametrize("text", ["4,x", "4,,4", "x", "", "4.5,8"])
def test_hidden_widths_are_parsed_whole_or_rejected(text):
    # a stray separator or word is a typo: it must not silently drop a layer
    with pytest.raises(ValueError, match="'hidden' must be comma-separated widths"):
        parse_hidden(text)
    assert parse_hidden("64,32") == (64, 32) and parse_hidden("96x96x96") == (96, 96, 96)


def test_a_prefix_refused_after_its_folder_was_made_leaves_no_folder_behind(tmp_path, monkeypatch):
    from idir_fast.io.files import prepare_prefix

    with pytest.raises(InputError, match="too long"):
        prepare_prefix(str(tmp_path / "new" / "deeper" / ("x" * 250)))
    assert list(tmp_path.iterdir()) == []  # "new/deeper" was made for the check, then removed again
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    assert prepare_prefix("~/runs/case1_") == str(tmp_path / "home" / "runs" / "case1_")
    assert (tmp_path / "home" / "runs").is_dir() and not Path("~").exists()
