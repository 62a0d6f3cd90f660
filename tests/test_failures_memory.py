"""Issue #13, item 9: peak memory is estimated before reading an image, before optimising and before evaluating
the outputs; a run that cannot fit fails with an ``InputError`` naming the argument to change — not a raw
``MemoryError`` or the OOM killer. The machine's free memory is replaced by a small number here."""
import numpy as np
import pytest
import SimpleITK as sitk

import idir_fast
import idir_fast.api
from idir_fast import InputError
from idir_fast.apps.cli import main
from idir_fast import memory
from idir_fast.io.images import as_image

KW = dict(epochs=2, batch_size=50, hidden=(8,), progress=False, device="cpu")
MiB = 1 << 20


@pytest.fixture
def no_optimisation(monkeypatch):
    def reached(*args, **kwargs):
        raise AssertionError("the optimisation started although the run cannot fit in memory")

    monkeypatch.setattr(idir_fast.api, "optimise", reached)


def _memory(monkeypatch, nbytes):
    monkeypatch.setattr(memory, "available_host_memory", lambda: int(nbytes))


def test_a_network_too_wide_for_memory_names_batch_size_and_hidden(tiny_pair, monkeypatch, no_optimisation):
    _memory(monkeypatch, 256 * MiB)
    with pytest.raises(InputError, match=r"'batch_size'/'hidden': the optimisation needs about .* GiB .* 256\.0 MiB"):
        idir_fast.register(tiny_pair.fixed, tiny_pair.moving, **dict(KW, hidden=(4096, 4096), batch_size=10_000))


def test_a_grid_too_large_for_memory_names_the_image(monkeypatch, no_optimisation):
    """As a 600³ image on a small machine: the mask points and the output fields of the grid do not fit."""
    rng = np.random.default_rng(0)
    big = rng.normal(size=(100, 100, 100)).astype(np.float32)
    _memory(monkeypatch, 100 * MiB)
    with pytest.raises(InputError, match=r"'fixed': registering on its 100×100×100 grid needs about .* give a 'mask'"):
        idir_fast.register(big, big[::-1].copy(), spacing=(1.0, 1.0, 1.0), **KW)


def test_reading_an_image_too_large_for_memory(tiny_pair, tmp_path, monkeypatch):
    path = tmp_path / "big.nii.gz"
    sitk.WriteImage(tiny_pair.fixed, str(path))
    _memory(monkeypatch, 10_000)
    with pytest.raises(InputError, match=r"'fixed': .*big\.nii\.gz' \(20 × 18 × 16 voxels\) needs about .* to read"):
        as_image(str(path), "fixed")


def test_saving_checks_memory_before_evaluating_the_fields(tiny_pair, tmp_path, monkeypatch):
    reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, **KW)
    _memory(monkeypatch, 1 * MiB)
    monkeypatch.setattr(type(reg), "displacement_field",
                        lambda self: (_ for _ in ()).throw(AssertionError("evaluated before the memory check")))
    with pytest.raises(InputError, match="'fixed': writing the outputs on its grid needs about"):
        reg.save(str(tmp_path / "x_"))
    assert list(tmp_path.iterdir()) == []


def test_the_command_reports_it_with_exit_status_2(tiny_pair, tmp_path, monkeypatch, capsys, no_optimisation):
    paths = []
    for name in ("fixed", "moving"):
        paths.append(str(tmp_path / f"{name}.nii.gz"))
        sitk.WriteImage(getattr(tiny_pair, name), paths[-1])
    _memory(monkeypatch, 256 * MiB)
    rc = main(["register", *paths, "--out", str(tmp_path / "r_"), "--hidden", "4096,4096", "--batch-size", "10000",
               "--epochs", "2", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "'--batch-size'/'--hidden'" in err and "Traceback" not in err


def test_the_estimate_can_be_switched_off(tiny_pair, monkeypatch):
    _memory(monkeypatch, 2 * MiB)
    monkeypatch.setenv("IDIR_FAST_NO_MEMORY_CHECK", "1")
    reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, **KW)
    assert reg.fixed_geometry.size == tiny_pair.fixed.GetSize()
