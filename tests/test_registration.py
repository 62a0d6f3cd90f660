"""End-to-end registration on CPU: accuracy, folding, reproducibility, save/load, torch vs reference."""
import numpy as np
import pytest
import torch

import idir_fast
from idir_fast.core.metrics import folding

FAST = dict(schedule="paper", epochs=100, batch_size=1500, hidden=(64, 64, 64), progress=False)


def _register(pair, **kw):
    args = dict(FAST, fixed_landmarks=pair.fixed_landmarks, moving_landmarks=pair.moving_landmarks)
    args.update(kw)
    return idir_fast.register(pair.fixed, pair.moving, pair.mask, **args)


@pytest.mark.parametrize("regularizer", ["bending", "jacobian"])
def test_short_registration_lowers_tre_by_60_percent_without_folding(small_pair, regularizer):
    reg = _register(small_pair, regularizer=regularizer)
    before, after = reg.metrics["tre_initial"]["mean"], reg.metrics["tre"]["mean"]
    assert before > 8.0
    assert after < 0.4 * before, f"TRE {before:.2f} → {after:.2f} mm"
    assert folding(reg.jacobian_determinant(), small_pair.mask)["count"] == 0
    assert reg.history["loss"][-1] < reg.history["loss"][0]


def test_default_schedule_lowers_tre_by_60_percent_without_folding(small_pair):
    reg = idir_fast.register(small_pair.fixed, small_pair.moving, small_pair.mask, progress=False,
                             fixed_landmarks=small_pair.fixed_landmarks, moving_landmarks=small_pair.moving_landmarks)
    assert reg.settings.schedule == "auto" and len(reg.run["stages"]) == 2
    assert reg.metrics["tre"]["mean"] < 0.4 * reg.metrics["tre_initial"]["mean"]
    assert folding(reg.jacobian_determinant(), small_pair.mask)["count"] == 0


def test_same_seed_same_result_on_cpu(tiny_pair):
    a = _register(tiny_pair, epochs=15, batch_size=300, hidden=(32, 32))
    b = _register(tiny_pair, epochs=15, batch_size=300, hidden=(32, 32))
    c = _register(tiny_pair, epochs=15, batch_size=300, hidden=(32, 32), seed=1)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    for p, q in zip(a.siren.parameters(), b.siren.parameters()):
        assert torch.equal(p, q)
    assert not np.array_equal(a.history["loss"], c.history["loss"])


def test_torch_and_reference_backends_reach_the_same_tre(small_pair):
    kw = dict(epochs=60, batch_size=1000, hidden=(48, 48, 48), regularizer="bending", dtype=torch.float64)
    ref = _register(small_pair, backend="reference", **kw)
    fast = _register(small_pair, backend="torch", **kw)
    assert fast.metrics["tre"]["mean"] == pytest.approx(ref.metrics["tre"]["mean"], rel=0.01)
    np.testing.assert_allclose(fast.history["loss"], ref.history["loss"], rtol=1e-6, atol=1e-9)
    assert ref.run["backward_passes_per_epoch"] == 13 and fast.run["backward_passes_per_epoch"] == 1


def test_save_then_load_gives_identical_transform(tiny_pair, tmp_path):
    reg = _register(tiny_pair, epochs=5, batch_size=200, hidden=(16, 16))
    out = reg.save(str(tmp_path / "case_"))
    assert {"field", "warped", "jacobian", "model", "report"} <= set(out)
    loaded = idir_fast.load(out["model"])
    pts = tiny_pair.fixed_landmarks
    np.testing.assert_array_equal(loaded.transform_points(pts), reg.transform_points(pts))
    assert loaded.settings.epochs == 5
    np.testing.assert_array_equal(loaded.history["loss"], reg.history["loss"])
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_compat_mode_records_released_code_settings(tiny_pair):
    reg = _register(tiny_pair, epochs=3, batch_size=200, hidden=(16, 16), compat="idir-2022")
    s = reg.settings
    assert (s.lr, s.init, s.normalisation, s.alpha) == (1e-5, "idir-2022", "per-axis", 10.0)
    assert "torch" in reg.run["versions"] and reg.run["versions"]["idir_fast"] == idir_fast.__version__


def test_numpy_inputs_with_geometry(tiny_pair):
    import SimpleITK as sitk

    f = sitk.GetArrayFromImage(tiny_pair.fixed)
    m = sitk.GetArrayFromImage(tiny_pair.moving)
    mask = sitk.GetArrayFromImage(tiny_pair.mask)
    reg = idir_fast.register(f, m, mask, spacing=tiny_pair.fixed.GetSpacing(), epochs=3, batch_size=100,
                             hidden=(16,), progress=False)
    assert reg.fixed_geometry.spacing == tiny_pair.fixed.GetSpacing()


def test_fast_loop_matches_eager_loop(small_pair):
    """The loop without per-step host reads (CUDA-graph replay on a GPU) follows the eager loop exactly."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = dict(regularizer="bending", alpha=1e-3, epochs=12, batch_size=500, hidden=(32, 32), seed=3, device=device)
    eager = _register(small_pair, loop="eager", **kw)
    fast = _register(small_pair, loop="fast", **kw)
    np.testing.assert_allclose(fast.history["loss"], eager.history["loss"], rtol=1e-5, atol=1e-7)
    assert fast.settings.loop == "fast" and eager.settings.loop == "eager"


def test_divergence_guard_stops_an_exploding_run(tiny_pair):
    from idir_fast.errors import DivergenceError

    with pytest.raises(DivergenceError, match="non-finite at epoch"):
        idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, regularizer="hyperelastic",
                           lr=50.0, epochs=200, batch_size=200, hidden=(32, 32), progress=False)
