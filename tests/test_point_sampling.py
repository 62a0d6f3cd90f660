"""Gradient sampling: the weights against numpy's gradient, the sampler's draws against the weights (frequencies,
seeds, zero weights, bad weights), capture safety, and the settings that choose it per stage."""
import numpy as np
import pytest
import torch

from idir_fast.apps.bench import make_step
from idir_fast.errors import InputError
from idir_fast.optim.points import UNIFORM_SHARE, PointSampler, gradient_weights
from idir_fast.optim.safety import check_step
from idir_fast.settings import RunSettings


def _volume(shape_zyx=(7, 9, 11), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape_zyx, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("spacing_xyz", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)])
def test_gradient_weights_follow_numpys_gradient_in_mm_faces_included(spacing_xyz):
    vol = _volume()
    # every voxel, faces and corners included: numpy's one-sided differences there are the op's
    inside = torch.arange(vol.numel())
    w = gradient_weights(vol, inside, spacing_xyz)
    gz, gy, gx = np.gradient(vol.numpy(), spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    g = np.sqrt(gx ** 2 + gy ** 2 + gz ** 2).ravel()
    expected = (1 - UNIFORM_SHARE) * g / g.mean() + UNIFORM_SHARE
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert w.dtype == torch.float64 and abs(float(w.mean()) - 1.0) < 1e-12


def test_gradient_weights_in_chunks_equal_one_chunk(monkeypatch):
    import idir_fast.optim.points as points

    vol = _volume()
    inside = torch.randperm(vol.numel(), generator=torch.Generator().manual_seed(1))[:300]
    whole = gradient_weights(vol, inside, (0.7, 1.3, 2.5))
    monkeypatch.setattr(points, "_CHUNK", 7)
    assert torch.equal(gradient_weights(vol, inside, (0.7, 1.3, 2.5)), whole)


def test_gradient_weights_of_a_mask_subset_and_of_flat_and_ramp_images():
    vol = _volume()
    inside = torch.tensor([0, 5, 17, 200, 693 - 1])
    full = gradient_weights(vol, torch.arange(vol.numel()), (1.0, 1.0, 1.0))
    sub = gradient_weights(vol, inside, (1.0, 1.0, 1.0))
    g_full = (full - UNIFORM_SHARE)[inside]  # ∝ |∇F| at those voxels: only the normalisation differs
    g_sub = sub - UNIFORM_SHARE
    np.testing.assert_allclose((g_sub / g_sub.sum()).numpy(), (g_full / g_full.sum()).numpy(), rtol=1e-12)
    flat = gradient_weights(torch.full((4, 5, 6), 3.0), torch.arange(120), (1.0, 1.0, 1.0))
    assert torch.equal(flat, torch.ones(120, dtype=torch.float64))  # a constant image: uniform
    z = torch.arange(6, dtype=torch.float64).view(6, 1, 1).expand(6, 5, 4).contiguous()
    ramp = gradient_weights(z, torch.arange(z.numel()), (1.0, 1.0, 2.0))
    np.testing.assert_allclose(ramp.numpy(), 1.0, rtol=1e-12)  # the same |∇F| everywhere: uniform


def _points(m):
    return torch.arange(3 * m, dtype=torch.float32).view(m, 3), torch.arange(m, dtype=torch.float32)


def test_weighted_draws_follow_the_weights_and_never_take_a_zero_weight_point():
    pts, vals = _points(8)
    w = torch.tensor([0.0, 1, 1, 2, 0, 4, 0, 0], dtype=torch.float64)
    sampler = PointSampler([pts], [vals], 4, seed=5, weights=[w])
    counts = np.zeros(8)
    for _ in range(5000):
        sampler.before_step()
        x, f = sampler.draw()
        assert torch.equal(x[0], pts[f[0].long()])  # a point and its own value
        counts += np.bincount(f[0].long().numpy(), minlength=8)
    freq = counts / counts.sum()
    np.testing.assert_allclose(freq, (w / w.sum()).numpy(), atol=0.01)
    assert counts[[0, 4, 6, 7]].sum() == 0


def _batches(sampler, steps):
    out = []
    for _ in range(steps):
        sampler.before_step()
        out.append(sampler.draw()[1].clone())
    return torch.stack(out)


def test_weighted_draws_repeat_with_the_seed_and_mix_with_uniform_pairs():
    pts, vals = _points(40)
    w = torch.linspace(0.1, 3.0, 40, dtype=torch.float64)
    a = _batches(PointSampler([pts, pts], [vals, vals], 10, seed=2, weights=[None, w]), 12)
    b = _batches(PointSampler([pts, pts], [vals, vals], 10, seed=2, weights=[None, w]), 12)
    c = _batches(PointSampler([pts, pts], [vals, vals], 10, seed=3, weights=[None, w]), 12)
    assert torch.equal(a, b) and not torch.equal(a[:, 1], c[:, 1])
    # the uniform pair still walks a permutation: every point once per pass of 4 steps
    for k in range(3):
        assert sorted(a[4 * k:4 * k + 4, 0].reshape(-1).tolist()) == list(range(40))
    # and draws what it drew with no weights given at all
    plain = _batches(PointSampler([pts], [vals], 10, seed=2), 12)
    assert torch.equal(plain[:, 0], a[:, 0])


def test_a_full_batch_with_weights_is_drawn_not_taken_whole():
    pts, vals = _points(6)
    w = torch.tensor([1.0, 0, 0, 0, 0, 1], dtype=torch.float64)
    drawn = _batches(PointSampler([pts], [vals], 6, seed=0, weights=[w]), 3)
    assert set(drawn.unique().tolist()) <= {0.0, 5.0}


@pytest.mark.parametrize("weights", [torch.tensor([1.0, -1, 1, 1]), torch.tensor([1.0, float("nan"), 1, 1]),
                                     torch.zeros(4), torch.ones(3)])
def test_bad_weights_are_refused(weights):
    pts, vals = _points(4)
    with pytest.raises(ValueError, match="weights"):
        PointSampler([pts], [vals], 2, seed=0, weights=[weights])


def test_gradient_sampled_steps_are_capture_safe():
    step, pair = make_step("torch", "bending", 400, (16, 16), "cpu", similarity="ncc+lncc")
    weights = 0.1 + torch.rand(pair.num_points, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = PointSampler([pair.points], [pair.fixed_values], 150, seed=0, weights=[weights])
    assert not check_step(step, sampler)


def test_a_weighted_pass_reads_nothing_on_the_host_and_reuses_its_buffers():
    from idir_fast.optim.safety import HostSyncDetector

    pts, vals = _points(40)
    w = torch.linspace(0.1, 3.0, 40, dtype=torch.float64)
    sampler = PointSampler([pts], [vals], 10, seed=0, weights=[w])
    buffers = (sampler.perms[0].data_ptr(), sampler.draws[0].data_ptr())
    detector = HostSyncDetector()
    with detector:
        for _ in range(9):  # three passes of 4 steps begin in here
            sampler.before_step()
            sampler.draw()
    assert detector.violations == []
    assert (sampler.perms[0].data_ptr(), sampler.draws[0].data_ptr()) == buffers


def test_sampling_is_uniform_unless_asked_for_and_then_in_every_stage():
    for schedule in ("auto", "fast", "fine", "paper"):
        s = RunSettings(device="cpu", schedule=schedule).resolved()
        assert s.sampling == "uniform" and {st.sampling for st in s.stages()} == {"uniform"}
        s = RunSettings(device="cpu", schedule=schedule, sampling="gradient").resolved()
        assert {st.sampling for st in s.stages()} == {"gradient"}
    assert {st.sampling for st in RunSettings(device="cpu", compat="idir-2022").resolved().stages()} == {"uniform"}
    assert RunSettings(sampling="gradient").to_dict()["sampling"] == "gradient"
    with pytest.raises(InputError, match="'sampling' must be one of"):
        RunSettings(sampling="edges")


def test_a_registration_records_the_sampling_of_every_stage(tiny_pair):
    import idir_fast

    kw = dict(epochs=20, hidden=(16, 16), batch_size=200, progress=False)
    reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, sampling="gradient", **kw)
    assert [s["sampling"] for s in reg.run["stages"]] == ["gradient", "gradient"]
    assert reg.settings.sampling == "gradient"
    again = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, sampling="gradient", **kw)
    np.testing.assert_array_equal(reg.history["loss"], again.history["loss"])  # same seed, same run
    uniform = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, **kw)
    assert [s["sampling"] for s in uniform.run["stages"]] == ["uniform", "uniform"]
    assert not np.array_equal(reg.history["loss"], uniform.history["loss"])


def test_a_prepared_pair_weighs_its_mask_voxels_by_its_own_stage_image(tiny_pair):
    import SimpleITK as sitk

    from idir_fast.optim.prepare import prepare_pair

    pair = prepare_pair(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask)
    assert pair.sampling_weights("uniform") is None
    w = pair.sampling_weights("gradient")
    arr = sitk.GetArrayFromImage(tiny_pair.fixed).astype(np.float64)
    sx, sy, sz = tiny_pair.fixed.GetSpacing()
    gz, gy, gx = np.gradient(arr, sz, sy, sx)
    g = np.sqrt(gx ** 2 + gy ** 2 + gz ** 2).ravel()[sitk.GetArrayFromImage(tiny_pair.mask).ravel() > 0]
    np.testing.assert_allclose(w.numpy(), (1 - UNIFORM_SHARE) * g / g.mean() + UNIFORM_SHARE, rtol=1e-5)
    blurred = pair.with_smoothing(2.0).sampling_weights("gradient")
    assert blurred.shape == w.shape and not torch.allclose(blurred, w)
    with pytest.raises(ValueError, match="unknown sampling"):
        pair.sampling_weights("edges")


def test_batched_and_symmetric_runs_sample_by_the_gradient_too(tiny_pair, monkeypatch):
    import idir_fast
    import idir_fast.optim.run as run_module

    made = []

    class Spy(PointSampler):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("weights"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(run_module, "PointSampler", Spy)
    kw = dict(epochs=20, hidden=(16, 16), batch_size=200, progress=False)
    pair = (tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask)
    regs = idir_fast.register_many([pair, pair], sampling="gradient", **kw)
    assert [r.run["stages"][-1]["sampling"] for r in regs] == ["gradient", "gradient"]
    assert len(made) == 2 and all(len(w) == 2 and all(x is not None for x in w) for w in made)
    assert torch.equal(made[-1][0], made[-1][1])  # the same pair twice: the same weights
    np.testing.assert_array_equal(regs[0].history["loss"], regs[1].history["loss"])  # each pair its own draws
    made.clear()
    sym = idir_fast.register(*pair, symmetric=True, sampling="gradient", **kw)
    assert sym.run["stages"][-1]["sampling"] == "gradient" and np.isfinite(sym.history["loss"]).all()
    forward, backward = made[-1]  # the backward pair weighs by the moving image's own gradient
    assert forward is not None and backward is not None and not torch.equal(forward, backward)
    made.clear()
    idir_fast.register_many([pair, pair], **kw)
    assert made and all(x is None for w in made for x in w)  # uniform: no weights at all


def test_the_memory_estimate_counts_what_gradient_sampling_holds():
    from idir_fast import memory

    kw = dict(mask_points=10 ** 6, fixed_voxels=2 * 10 ** 6, moving_voxels=2 * 10 ** 6, batch=1500,
              hidden=(48, 48, 48), order=2, dtype_bytes=4, device="cpu")
    uniform, gradient = memory.run_bytes(**kw), memory.run_bytes(**kw, sampling="gradient")
    assert gradient["points"] - uniform["points"] == memory.GRADIENT_SAMPLING_BYTES * 10 ** 6
    assert {k: v for k, v in gradient.items() if k != "points"} == {k: v for k, v in uniform.items() if k != "points"}
    # and what it names is what a sampler of that mask holds: cdf, draws and indices, 8 bytes each per point
    pts = torch.zeros(1000, 3)
    sampler = PointSampler([pts], [torch.zeros(1000)], 10, seed=0, weights=[torch.ones(1000, dtype=torch.float64)])
    held = sum(t.numel() * t.element_size() for t in (sampler.cdfs[0], sampler.draws[0], sampler.perms[0]))
    assert held == 24 * 1000 <= memory.GRADIENT_SAMPLING_BYTES * 1000
