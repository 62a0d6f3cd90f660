"""Issue #13, item 6: ``model.pt`` is checked — structure, shapes against the stored configuration, bounds, values
and a checksum — and anything wrong is an ``InputError`` saying what, before anything is allocated from it."""
import io
import os

import numpy as np
import pytest
import torch

import idir_fast
from idir_fast import InputError
from idir_fast.io.model_file import state_checksum

KW = dict(epochs=2, batch_size=50, hidden=(8, 8), progress=False, device="cpu")


@pytest.fixture(scope="module")
def saved(tiny_pair, tmp_path_factory):
    reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, **KW)
    path = tmp_path_factory.mktemp("model") / "case_model.pt"
    reg.save_model(path)
    return reg, path


def _state(path):
    return torch.load(path, weights_only=True)


def _write(state, path, fix_checksum=True):
    """Write a modified state, with a recomputed checksum so only the modification is wrong."""
    state = dict(state)
    if fix_checksum:
        state["checksum"] = state_checksum(state)
    torch.save(state, path)


def test_a_good_model_loads_and_maps_points_as_before(saved, tiny_pair):
    reg, path = saved
    loaded = idir_fast.load(path)
    np.testing.assert_allclose(loaded.transform_points(tiny_pair.fixed_landmarks),
                               reg.transform_points(tiny_pair.fixed_landmarks), atol=1e-9)


def test_random_bytes_written_into_the_file_are_detected(saved, tmp_path):
    _, path = saved
    data = bytearray(path.read_bytes())
    # overwrite 200 bytes inside the first layer's weights (the tensor data, not the zip directory)
    state = _state(path)
    raw = state["parameters"][0].numpy().tobytes()
    at = bytes(data).find(raw[:64])
    assert at > 0
    data[at:at + 200] = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    bad = tmp_path / "model.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged|checksum|NaN"):
        idir_fast.load(bad)


def test_too_few_parameter_tensors(saved, tmp_path):
    state = _state(saved[1])
    state["parameters"] = state["parameters"][:-2]
    _write(state, tmp_path / "model.pt")
    with pytest.raises(InputError, match=r"widths \[8, 8\] needs 6 parameter tensors, the file holds 4"):
        idir_fast.load(tmp_path / "model.pt")


def test_a_parameter_of_the_wrong_shape(saved, tmp_path):
    state = _state(saved[1])
    state["parameters"][2] = torch.zeros(8, 5)
    _write(state, tmp_path / "model.pt")
    with pytest.raises(InputError, match=r"parameter 2 has shape \(8, 5\).*need \(8, 8\)"):
        idir_fast.load(tmp_path / "model.pt")


def test_a_crafted_width_is_refused_before_any_allocation(saved, tmp_path):
    state = _state(saved[1])
    state["siren"] = dict(state["siren"], hidden=[10_000_000, 10_000_000])
    _write(state, tmp_path / "model.pt")
    with pytest.raises(InputError, match="widths .* between 1 and 4096"):
        idir_fast.load(tmp_path / "model.pt")
    state["siren"] = dict(state["siren"], hidden=[4096, 4096])  # within bounds, but not what the file holds
    _write(state, tmp_path / "model.pt")
    with pytest.raises(InputError, match="parameter 0 has shape"):
        idir_fast.load(tmp_path / "model.pt")


@pytest.mark.parametrize("key", ["fixed_geometry", "world_to_normalised", "siren", "parameters"])
def test_missing_keys(saved, tmp_path, key):
    state = _state(saved[1])
    del state[key]
    _write(state, tmp_path / "model.pt")
    with pytest.raises(InputError, match=f"lacks '{key}'"):
        idir_fast.load(tmp_path / "model.pt")


@pytest.mark.parametrize("change,pattern", [
    (lambda s: s["parameters"][0].fill_(float("nan")), "parameter 0 holds NaN"),
    (lambda s: s.update(world_to_normalised=np.zeros((4, 4)).tolist()), "world_to_normalised"),
    (lambda s: s["fixed_geometry"].update(spacing=[1.0, -1.0, 1.0]), "spacing must be positive"),
    (lambda s: s["fixed_geometry"].update(size=[100000, 100000, 100000]), "size"),
    (lambda s: s["siren"].update(omega=float("inf")), "ω"),
])
def test_bad_values(saved, tmp_path, change, pattern):
    state = _state(saved[1])
    change(state)
    _write(state, tmp_path / "model.pt")
    with pytest.raises(InputError, match=pattern):
        idir_fast.load(tmp_path / "model.pt")


def test_a_change_that_keeps_the_structure_is_caught_by_the_checksum(saved, tmp_path):
    state = _state(saved[1])
    state["parameters"][-1] = state["parameters"][-1] + 1.0  # a plausible, finite, well-shaped edit
    _write(state, tmp_path / "model.pt", fix_checksum=False)
    with pytest.raises(InputError, match="does not match its checksum"):
        idir_fast.load(tmp_path / "model.pt")


def test_a_folder_named_model_pt_and_other_files(tmp_path):
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(InputError, match="is a folder, not a model file"):
        idir_fast.load(tmp_path / "model.pt")
    buf = io.BytesIO()
    torch.save({"hello": 1}, buf)
    (tmp_path / "other.pt").write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="not an idir_fast model file"):
        idir_fast.load(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a zip")
    with pytest.raises(InputError, match="not an idir_fast model file"):
        idir_fast.load(tmp_path / "text.pt")
    assert os.path.isdir(tmp_path / "model.pt")
