"""The fold guard: ``max(0, floor − det J)²`` added to the loss with the settings' weight, where it applies, and the
same term whatever backend computes J (values and gradients against the autograd reference)."""
import pytest
import torch

from idir_fast import RunSettings, backends
from idir_fast.api import switched_settings
from idir_fast.apps.bench import synthetic_pair
from idir_fast.backends import reference
from idir_fast.core.objectives import FOLD_GUARD_DET, fold_guard_penalty
from idir_fast.core.siren import Siren
from idir_fast.errors import InputError
from idir_fast.optim.step import PairStep
from idir_fast.schedule import profile_for


def test_the_guard_is_zero_above_its_floor_and_quadratic_below():
    scales = torch.tensor([2.0, 1.0, 0.5, FOLD_GUARD_DET, 0.2, 0.0, -0.1], dtype=torch.float64)
    J = torch.diag_embed(torch.stack([scales, torch.ones_like(scales), torch.ones_like(scales)], dim=-1))
    expected = torch.clamp(FOLD_GUARD_DET - scales, min=0.0).pow(2).mean()
    assert float(fold_guard_penalty(J)) == pytest.approx(float(expected), rel=1e-12)
    assert float(fold_guard_penalty(J[:4])) == 0.0  # nothing at or above the floor
    rotation = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0]
    rotation = rotation * torch.sign(torch.linalg.det(rotation))
    assert float(fold_guard_penalty(rotation[None])) == 0.0  # a rotation keeps the volume
    J = torch.randn(40, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(fold_guard_penalty, (J,))


def _folding_step(fold_guard: float, backend: str):
    """A bending step whose network folds part of the space (large last-layer weights), float64."""
    settings = RunSettings(regularizer="bending", hidden=(16, 16), batch_size=300, backend=backend, device="cpu",
                           dtype="float64", fold_guard=fold_guard, similarity="ncc").resolved()
    pair = synthetic_pair(300, "cpu", dtype=torch.float64, seed=3)
    torch.manual_seed(0)
    siren = Siren((16, 16)).double()
    with torch.no_grad():
        siren.parameter_list()[-2].mul_(40.0)
    return PairStep(siren, pair, backends.select(backend, torch.device("cpu")), settings), pair, siren


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_the_step_adds_the_weighted_guard_to_its_loss_and_gradients(backend):
    plain, pair, siren = _folding_step(0.0, backend)
    guarded, _, guarded_siren = _folding_step(5.0, backend)  # the same initial weights, its own tensors
    x, f = pair.points, pair.fixed_values
    params = siren.parameter_list()
    d = reference.derivatives(params, siren.omega, x, 2)
    guard = fold_guard_penalty(d.J)
    assert float(guard.detach()) > 1e-3  # the network folds: the guard acts at these points
    expected_grads = [torch.zeros_like(p) if g is None else g  # J does not depend on the output bias
                      for p, g in zip(params, torch.autograd.grad(5.0 * guard, params, allow_unused=True))]
    loss0, sim0, reg0 = plain.losses(x, f)
    grads0 = torch.autograd.grad(loss0, params)
    loss, sim, reg = guarded.losses(x, f)
    grads = torch.autograd.grad(loss, guarded_siren.parameter_list())
    assert torch.equal(sim.detach(), sim0.detach()) and torch.equal(reg.detach(), reg0.detach())
    assert float((loss - loss0).detach()) == pytest.approx(5.0 * float(guard.detach()), rel=1e-9)
    for g, g0, e in zip(grads, grads0, expected_grads):
        torch.testing.assert_close(g - g0, e, rtol=1e-7, atol=1e-9)


def test_the_guard_weight_comes_from_the_schedule_and_the_caller_keeps_theirs():
    cpu = dict(device="cpu")  # the CPU's schedules (on a GPU, fine is the paper's)
    fine = RunSettings(schedule="fine", **cpu).resolved()
    assert fine.fold_guard == profile_for("fine", "cpu").fold_guard > 0
    assert fine.alpha == profile_for("fine", "cpu").regularizers["bending"]["alpha"]
    assert RunSettings(**cpu).resolved().fold_guard == 0.0  # auto and fast: no guard
    assert RunSettings(schedule="fine", compat="idir-2022", **cpu).resolved().fold_guard == 0.0
    assert RunSettings(schedule="fine", regularizer=None, **cpu).resolved().fold_guard == 0.0  # no det J
    assert RunSettings(schedule="fine", fold_guard=2.5, **cpu).resolved().fold_guard == 2.5
    probe = profile_for("auto", "cpu").probe
    assert switched_settings(RunSettings(fold_guard=2.5, **cpu), probe).fold_guard == 2.5
    assert switched_settings(RunSettings(alpha=3e-4, **cpu), probe).alpha == 3e-4
    assert switched_settings(RunSettings(**cpu), probe).fold_guard == fine.fold_guard
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="'fold_guard'"):
            RunSettings(fold_guard=bad)
    with pytest.raises(InputError, match="'fold_guard' needs a regulariser"):
        RunSettings(fold_guard=1.0, regularizer=None)


def test_a_batched_step_guards_each_pair_as_its_own_step_does():
    from idir_fast.optim.step import BatchedStep

    step, pair, _ = _folding_step(5.0, "torch")
    x, f = pair.points, pair.fixed_values
    alone = float(step(x[None], f[None])[0, 0])  # the loss before its Adam update
    plain, _, _ = _folding_step(0.0, "torch")
    assert alone > float(plain(x[None], f[None])[0, 0])  # the guard acts on this network
    sirens = [_folding_step(5.0, "torch")[2] for _ in range(2)]  # the same initial weights, twice
    batched = BatchedStep(sirens, [pair, pair], backends.select("torch", torch.device("cpu")), step.settings)
    rows = batched(torch.stack([x, x]), torch.stack([f, f]))
    for i in range(2):
        assert float(rows[i, 0]) == pytest.approx(alone, rel=1e-9)
