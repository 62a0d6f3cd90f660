"""The optimiser (:mod:`idir_fast.optim.adam`): bit for bit ``torch.optim.Adam(fused=True)``, and a registration
that never imports ``torch._dynamo`` (the import ``torch.optim`` triggers)."""
import subprocess
import sys

import pytest
import torch

from idir_fast.optim.adam import FusedAdam, make_adam


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 3), (7,), (5, 7), (5,), (1, 5)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _loss(params, x):
    h = x
    for w, b in zip(params[0::2], params[1::2]):
        h = torch.sin(h @ w.T + b)
    return (h @ params[-1].T).square().mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_adam_is_torch_fused_adam_bit_for_bit(dtype):
    ours, theirs = _params(dtype), _params(dtype)
    opt_ours = FusedAdam(ours, lr=1e-2)
    opt_theirs = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    for k in range(25):
        for opt in (opt_ours, opt_theirs):  # a schedule: the loop changes the rate between steps
            opt.param_groups[0]["lr"] = 1e-2 * (0.5 + 0.5 * (k % 5) / 4)
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad(set_to_none=True)
            _loss(params, x[k % 4::4]).backward()
            opt.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    for i, p in enumerate(theirs):
        state = opt_theirs.state[p]
        assert torch.equal(opt_ours.exp_avg[i], state["exp_avg"])
        assert torch.equal(opt_ours.exp_avg_sq[i], state["exp_avg_sq"])
        assert torch.equal(opt_ours.state_steps[i], state["step"])


def test_parameters_without_a_gradient_are_left_alone():
    ours, theirs = _params(torch.float64), _params(torch.float64)
    opt_ours, opt_theirs = FusedAdam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2, fused=True)
    frozen = ours[2].detach().clone()
    for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
        for _ in range(3):
            opt.zero_grad()
            (params[0].sum() + params[4].square().sum()).backward()
            opt.step()
    assert torch.equal(ours[2], frozen) and float(opt_ours.state_steps[2]) == 0.0
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_zero_grad_and_step_leave_grad_mode_as_it_was():
    params = _params(torch.float32)
    opt = FusedAdam(params, lr=1e-3)
    _loss(params, torch.randn(8, 3)).backward()
    opt.step()
    assert torch.is_grad_enabled()
    opt.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_make_adam_chooses_the_fused_class_on_cpu_and_refuses_no_parameters():
    assert isinstance(make_adam(_params(torch.float32), 1e-3, torch.device("cpu")), FusedAdam)
    with pytest.raises(ValueError, match="'params' is empty"):
        FusedAdam([], lr=1e-3)


def test_a_registration_does_not_import_the_compiler():
    code = ("import sys, idir_fast\n"
            "from idir_fast.data.synthetic import phantom_pair\n"
            "p = phantom_pair(size=(20, 18, 16), spacing=(8.0, 8.0, 8.0), num_landmarks=10, seed=2)\n"
            "reg = idir_fast.register(p.fixed, p.moving, epochs=20, batch_size=200, hidden=(16, 16),"
            " progress=False)\n"
            "reg.transform.output_images(p.moving)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
