"""The regulariser at a share of each step's points (``RunSettings.regularizer_share``): the split step equals the
one-pass objective with the regulariser on the batch's head, in values and gradients, on every backend; batched and
symmetric steps split alike; capture safety; the setting's defaults, validation and record."""
import numpy as np
import pytest
import torch

import idir_fast
from idir_fast import RunSettings, backends
from idir_fast.apps.bench import make_step, synthetic_pair
from idir_fast.core.siren import Siren
from idir_fast.data import phantom_pair
from idir_fast.errors import InputError
from idir_fast.optim.points import PointSampler
from idir_fast.optim.safety import check_step
from idir_fast.optim.step import BatchedStep, PairStep, regularizer_points, similarity_order
from idir_fast.schedule import profile_for


def test_regularizer_points_is_the_rounded_share_of_the_batch_at_least_one():
    assert regularizer_points(2000, 1.0) == 2000
    assert regularizer_points(2000, 0.25) == 500
    assert regularizer_points(1000, 0.25) == 250
    assert regularizer_points(7, 0.3) == 2
    assert regularizer_points(10, 1e-6) == 1
    assert similarity_order("ncc") == 0 and similarity_order("lncc") == 1 and similarity_order("ncc+lncc") == 1


def _step(backend: str, regularizer: str, similarity: str, share: float, dtype=torch.float64, fold_guard=0.0):
    settings = RunSettings(regularizer=regularizer, hidden=(16, 16), batch_size=300, backend=backend, device="cpu",
                           dtype="float64" if dtype == torch.float64 else "float32", similarity=similarity,
                           lncc_spacing=1.5, regularizer_share=share, fold_guard=fold_guard,
                           self_check=False).resolved()
    torch.manual_seed(0)
    siren = Siren((16, 16), omega=8.0, dtype=dtype, init="siren")
    if fold_guard:
        with torch.no_grad():
            siren.parameter_list()[-2].mul_(40.0)  # a network that folds somewhere: the guard acts
    return PairStep(siren, synthetic_pair(300, "cpu", dtype=dtype, seed=4, size=20),
                    backends.select(backend, "cpu"), settings)


def _expected(regularizer, similarity, k, dtype=torch.float64, fold_guard=0.0):
    """The one-pass reference: the similarity over every point, the regulariser (and guard) over the first k."""
    full = _step("reference", regularizer, similarity, 1.0, dtype, fold_guard)
    pair = synthetic_pair(300, "cpu", dtype=dtype, seed=4, size=20)
    x, f = pair.points, pair.fixed_values
    sim = full.losses(x, f)[1]
    loss_head, sim_head, reg = full.losses(x[:k], f[:k])
    loss = sim + (loss_head - sim_head)  # α·R (+ the guard) at the head
    grads = torch.autograd.grad(loss, full.params)
    return loss.detach(), sim.detach(), reg.detach(), grads, x, f


@pytest.mark.parametrize("similarity", ["ncc", "ncc+lncc", "lncc"])
@pytest.mark.parametrize("regularizer", ["bending", "jacobian", "hyperelastic"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_the_split_step_equals_the_one_pass_objective_float64(backend, regularizer, similarity):
    share = 0.3
    k = regularizer_points(300, share)
    loss_e, sim_e, reg_e, grads_e, x, f = _expected(regularizer, similarity, k)
    step = _step(backend, regularizer, similarity, share)
    assert step.rest_order == min(step.order, similarity_order(similarity))
    loss, sim, reg = step.losses(x, f)
    grads = torch.autograd.grad(loss, step.params)
    loss, sim, reg = loss.detach(), sim.detach(), reg.detach()
    assert float(sim) == pytest.approx(float(sim_e), rel=1e-10, abs=1e-13)
    assert float(reg) == pytest.approx(float(reg_e), rel=1e-10, abs=1e-13)
    assert float(loss) == pytest.approx(float(loss_e), rel=1e-10, abs=1e-13)
    for g, e in zip(grads, grads_e):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-11)
    assert any(float(g.abs().max()) > 0 for g in grads)


def test_the_fold_guard_sees_the_head_too():
    k = regularizer_points(300, 0.3)
    loss_e, _, _, grads_e, x, f = _expected("bending", "ncc", k, fold_guard=5.0)
    step = _step("torch", "bending", "ncc", 0.3, fold_guard=5.0)
    loss = step.losses(x, f)[0]
    assert float(loss.detach()) == pytest.approx(float(loss_e), rel=1e-10)
    for g, e in zip(torch.autograd.grad(loss, step.params), grads_e):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-11)


def test_the_split_step_matches_the_reference_float32():
    k = regularizer_points(300, 0.25)
    loss_e, _, _, grads_e, x, f = _expected("bending", "ncc+lncc", k, dtype=torch.float32)
    step = _step("torch", "bending", "ncc+lncc", 0.25, dtype=torch.float32)
    loss = step.losses(x, f)[0]
    assert float(loss.detach()) == pytest.approx(float(loss_e), rel=1e-5)
    got = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, step.params)])
    want = torch.cat([g.reshape(-1) for g in grads_e])
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_a_share_of_one_is_the_plain_step_bit_for_bit():
    pair = synthetic_pair(300, "cpu", dtype=torch.float64, seed=4, size=20)
    a = _step("torch", "bending", "ncc+lncc", 1.0).losses(pair.points, pair.fixed_values)
    settings = RunSettings(regularizer="bending", hidden=(16, 16), batch_size=300, backend="torch", device="cpu",
                           dtype="float64", similarity="ncc+lncc", lncc_spacing=1.5, self_check=False).resolved()
    torch.manual_seed(0)
    siren = Siren((16, 16), omega=8.0, dtype=torch.float64, init="siren")
    b = PairStep(siren, pair, backends.select("torch", "cpu"), settings).losses(pair.points, pair.fixed_values)
    assert settings.regularizer_share == 1.0
    assert all(torch.equal(u.detach(), v.detach()) for u, v in zip(a, b))


@pytest.mark.parametrize("similarity", ["ncc", "ncc+lncc"])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_split_steps_are_capture_safe(backend, similarity):
    step, pair = make_step(backend, "bending", 400, (16, 16), "cpu", similarity=similarity, regularizer_share=0.25)
    assert step.share == 0.25
    sampler = PointSampler([pair.points], [pair.fixed_values], 200, seed=0)
    assert not check_step(step, sampler)


def test_the_batched_step_splits_as_the_pair_step():
    settings = RunSettings(regularizer="bending", hidden=(16, 16), batch_size=300, backend="torch", device="cpu",
                           dtype="float64", similarity="ncc+lncc", lncc_spacing=1.5, regularizer_share=0.3,
                           self_check=False).resolved()
    pairs = [synthetic_pair(300, "cpu", dtype=torch.float64, seed=s, size=20) for s in (4, 5)]
    sirens = []
    for s in (0, 1):
        torch.manual_seed(s)
        sirens.append(Siren((16, 16), omega=8.0, dtype=torch.float64, init="siren"))
    batched = BatchedStep(sirens, pairs, backends.select("torch", "cpu"), settings)
    for stage_similarity in ("ncc", "ncc+lncc"):  # a blurred stage (the rest needs Φ only), then a sharp one
        batched.set_pairs(pairs, stage_similarity)
        x = torch.stack([p.points for p in pairs])
        derivs, values = batched._pair_derivatives(x)
        full = batched._streams(batched.params, x)
        torch.testing.assert_close(values, full[:, :1], rtol=1e-12, atol=1e-14)
        k = regularizer_points(300, 0.3)
        for i, (d, at) in enumerate(derivs):
            assert at.phi.shape[0] == k and at.H6.shape[0] == k and d.phi.shape[0] == 300
            assert (d.J is None) == (stage_similarity == "ncc")
            torch.testing.assert_close(at.H6, full[i, 4:10, :k].permute(1, 2, 0), rtol=1e-12, atol=1e-14)


KW = dict(epochs=12, batch_size=400, hidden=(32, 32), regularizer="bending", progress=False, seed=4,
          regularizer_share=0.3)


def test_register_many_with_a_share_gives_what_each_pair_gives_alone():
    pairs = [phantom_pair(size=(20, 18, 16), spacing=(8.0, 8.0, 8.0), num_landmarks=10, seed=s, amplitude_mm=a)
             for s, a in ((2, 12.0), (3, 15.0))]
    many = idir_fast.register_many([(p.fixed, p.moving, p.mask) for p in pairs], pairs_per_batch=2, **KW)
    for p, r in zip(pairs, many):
        alone = idir_fast.register(p.fixed, p.moving, p.mask, **KW)
        np.testing.assert_allclose(r.history["loss"], alone.history["loss"], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(r.transform_points(p.fixed_landmarks), alone.transform_points(p.fixed_landmarks),
                                   atol=1e-3)


def test_a_symmetric_run_with_a_share_trains_and_records_it():
    p = phantom_pair(size=(20, 18, 16), spacing=(8.0, 8.0, 8.0), num_landmarks=10, seed=2)
    reg = idir_fast.register(p.fixed, p.moving, p.mask, symmetric=True, **KW)
    assert np.isfinite(reg.history["loss"]).all()
    assert reg.settings.regularizer_share == 0.3
    assert [s["regularizer_points"] for s in reg.run["stages"]] == [regularizer_points(s["points"], 0.3)
                                                                      for s in reg.run["stages"]]


def test_defaults_per_schedule_regulariser_and_compat():
    auto = profile_for("auto", "cpu").regularizers
    resolved = RunSettings(device="cpu").resolved()
    assert resolved.regularizer_share == auto.get("bending", {}).get("regularizer_share", 1.0)
    for other in ("jacobian", "hyperelastic", "none"):
        assert RunSettings(device="cpu", regularizer=other).resolved().regularizer_share == 1.0
    assert RunSettings(device="cpu", compat="idir-2022").resolved().regularizer_share == 1.0
    assert RunSettings(device="cpu", schedule="paper").resolved().regularizer_share == 1.0
    assert RunSettings(device="cpu", regularizer_share=0.5).resolved().regularizer_share == 0.5
    assert RunSettings(device="cpu", batch_size=900).resolved().batch_size == 900


@pytest.mark.parametrize("bad", [0, 0.0, -0.2, 1.5, float("nan"), float("inf"), "half", True])
def test_bad_shares_are_refused_naming_the_setting(bad):
    with pytest.raises(InputError, match="'regularizer_share' must be a number in \\(0, 1\\]"):
        RunSettings(regularizer_share=bad)


def test_the_cli_takes_the_share():
    from idir_fast.apps.cli import build_parser

    args = build_parser().parse_args(["register", "f.nii.gz", "m.nii.gz", "--regularizer-share", "0.5",
                                      "--out", "o/"])
    assert args.regularizer_share == 0.5
