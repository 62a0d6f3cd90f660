"""The local NCC: its definition against a loop over neighbourhoods, its neighbourhoods against an exact affine map,
the fast step against the autograd reference (values and gradients of every parameter, float64), capture safety,
and the settings that choose it per stage."""
import numpy as np
import pytest
import torch

from idir_fast import backends
from idir_fast.apps.bench import make_step, synthetic_pair
from idir_fast.core import objectives
from idir_fast.core.derivatives import Derivatives
from idir_fast.core.geometry import ImageGeometry
from idir_fast.core.siren import Siren
from idir_fast.errors import InputError
from idir_fast.optim.local_similarity import LocalNCC
from idir_fast.optim.points import PointSampler
from idir_fast.optim.prepare import PreparedPair
from idir_fast.optim.safety import check_step
from idir_fast.optim.step import PairStep
from idir_fast.settings import RunSettings


def _loop_lncc(f, m, w=None, eps_rel=objectives.LNCC_EPS_REL):
    """The definition written out per neighbourhood (float64, plain Python loop)."""
    f, m = f.double().numpy(), m.double().numpy()
    var_f = np.array([np.mean((r - r.mean()) ** 2) for r in f])
    var_m = np.array([np.mean((r - r.mean()) ** 2) for r in m])
    eps = eps_rel ** 2 * var_f.mean() * var_m.mean() + objectives.NCC_EPS
    cc = np.array([np.mean((a - a.mean()) * (b - b.mean())) / np.sqrt(vf * vm + eps)
                   for a, b, vf, vm in zip(f, m, var_f, var_m)])
    w = np.ones(len(cc)) if w is None else w.double().numpy()
    return float((w * cc).sum() / w.sum())


def test_local_ncc_matches_the_definition_per_neighbourhood():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(23, 27, generator=g, dtype=torch.float64)
    m = 0.7 * f + 0.5 * torch.randn(23, 27, generator=g, dtype=torch.float64)
    w = torch.rand(23, generator=g, dtype=torch.float64)
    assert objectives.local_ncc(f, m).item() == pytest.approx(_loop_lncc(f, m), rel=1e-12)
    assert objectives.local_ncc(f, m, w).item() == pytest.approx(_loop_lncc(f, m, w), rel=1e-12)
    # float32 within its precision
    assert objectives.local_ncc(f.float(), m.float()).item() == pytest.approx(_loop_lncc(f, m), rel=1e-5)


def test_local_ncc_ignores_an_affine_intensity_map_per_neighbourhood_and_flat_ones_score_zero():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(10, 27, generator=g, dtype=torch.float64)
    scale = torch.rand(10, 1, generator=g, dtype=torch.float64) * 5 + 0.1
    shift = torch.randn(10, 1, generator=g, dtype=torch.float64) * 100
    # 1 up to ε (relative 1e-6 of the mean variances: a neighbourhood at 1/50 of the mean contrast loses ~1e-4)
    assert objectives.local_ncc(f, scale * f + shift).item() == pytest.approx(1.0, abs=2e-4)
    assert objectives.local_ncc(f, -f).item() == pytest.approx(-1.0, abs=1e-5)
    flat = f.clone()
    flat[:5] = 3.0  # flat fixed neighbourhoods: no NaN, no contribution
    value = objectives.local_ncc(flat, f)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(0.5, abs=1e-5)


def test_stencil_is_a_3x3x3_neighbourhood_centre_first():
    off = objectives.stencil_offsets(2.0)
    assert off.shape == (27, 3)
    assert torch.equal(off[0], torch.zeros(3, dtype=off.dtype))
    assert len({tuple(r) for r in off.tolist()}) == 27
    assert set(off.unique().tolist()) == {-2.0, 0.0, 2.0}


def _oblique_pair(dtype=torch.float64):
    """A pair on an anisotropic, rotated grid with points at interior voxel centres (as prepare_pair makes them)."""
    g = torch.Generator().manual_seed(2)
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    fg = ImageGeometry((21, 17, 15), (1.5, 1.0, 2.0), (-10.0, 4.0, 7.0), direction)
    mg = ImageGeometry((19, 18, 16), (1.2, 1.1, 1.9), (-12.0, 3.0, 5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    w2n = fg.world_to_normalised("isotropic")
    n2mi = mg.world_to_index() @ np.linalg.inv(w2n)
    fixed = torch.randn(fg.shape_zyx, generator=g, dtype=dtype)
    moving = torch.randn(mg.shape_zyx, generator=g, dtype=dtype)
    ijk = torch.stack([torch.randint(3, n - 3, (40,), generator=g) for n in fg.size], dim=1)
    points = torch.as_tensor(fg.index_to_normalised("isotropic"), dtype=dtype)
    x = ijk.to(dtype) @ points[:3, :3].T + points[:3, 3]
    pair = PreparedPair(fg, mg, w2n, n2mi, moving, x, torch.zeros(40, dtype=dtype), fixed=fixed)
    return pair, ijk


def test_neighbourhoods_are_the_fixed_voxels_and_their_exact_images_under_an_affine_map():
    from idir_fast.core.sampling import trilinear

    pair, ijk = _oblique_pair()
    local = LocalNCC(pair, 2.0, backends.get("torch").sample)
    x = pair.points
    A = torch.tensor([[1.02, 0.03, -0.01], [-0.02, 0.97, 0.04], [0.01, 0.02, 1.05]], dtype=x.dtype)
    b = torch.tensor([0.01, -0.02, 0.015], dtype=x.dtype)
    d = Derivatives(phi=x @ A.T + b, J=A.expand(x.shape[0], 3, 3), H6=None)
    fixed, moving = local.neighbourhoods(d, x)
    off = objectives.stencil_offsets(2.0).long()
    vox = ijk[:, None, :] + off[None]  # (N, 27, 3) voxel indices (i, j, k)
    expected_fixed = pair.fixed[vox[..., 2], vox[..., 1], vox[..., 0]]
    assert torch.allclose(fixed, expected_fixed, atol=1e-10)
    # Φ(x + δ) for an affine Φ, in moving voxels: what the first-order expansion must give exactly
    i2n = torch.as_tensor(pair.fixed_geometry.index_to_normalised("isotropic"), dtype=x.dtype)
    x_nb = vox.to(x.dtype) @ i2n[:3, :3].T + i2n[:3, 3]
    lin, off_m = pair.moving_index_affine()
    exact = trilinear(pair.moving, ((x_nb @ A.T + b) @ lin + off_m).reshape(-1, 3)).reshape(moving.shape)
    assert torch.allclose(moving, exact, atol=1e-10)


def test_fixed_neighbourhoods_read_as_voxels_equal_trilinear_samples_at_the_borders_too():
    """A whole-voxel spacing reads the fixed samples as voxels; it must give what trilinear sampling (clamped at
    the grid's faces) gives, for points on the faces and corners as well; a fractional spacing samples."""
    pair, _ = _oblique_pair()
    fg = pair.fixed_geometry
    corners = torch.tensor([[0, 0, 0], [fg.size[0] - 1, fg.size[1] - 1, fg.size[2] - 1], [0, fg.size[1] - 1, 1],
                            [fg.size[0] - 1, 0, fg.size[2] - 2], [1, 2, 0]], dtype=torch.float64)
    i2n = torch.as_tensor(fg.index_to_normalised("isotropic"), dtype=torch.float64)
    x = corners @ i2n[:3, :3].T + i2n[:3, 3]
    d = Derivatives(phi=x, J=torch.eye(3, dtype=x.dtype).expand(x.shape[0], 3, 3), H6=None)
    sample = backends.get("torch").sample
    read = LocalNCC(pair, 2.0, sample)
    assert read.voxel_offsets is not None
    sampled = LocalNCC(pair, 2.0, sample)
    sampled.voxel_offsets = None  # the sampling path, as a fractional spacing takes
    assert torch.allclose(read.neighbourhoods(d, x)[0], sampled.neighbourhoods(d, x)[0], atol=1e-12, rtol=0)
    assert LocalNCC(pair, 1.5, sample).voxel_offsets is None


@pytest.mark.parametrize("similarity", ["lncc", "ncc+lncc"])
@pytest.mark.parametrize("regularizer", [None, "bending"], ids=["none", "bending"])
def test_fast_step_matches_the_reference_values_and_gradients_float64(similarity, regularizer):
    pair = synthetic_pair(300, "cpu", dtype=torch.float64, seed=4, size=20)
    losses, grads = {}, {}
    for name in ("reference", "torch"):
        settings = RunSettings(regularizer=regularizer, hidden=(16, 16), batch_size=300, backend=name, device="cpu",
                               dtype="float64", similarity=similarity, lncc_spacing=1.5, self_check=False).resolved()
        torch.manual_seed(0)
        siren = Siren((16, 16), omega=8.0, dtype=torch.float64, init="siren")
        step = PairStep(siren, pair, backends.select(name, "cpu"), settings)
        loss, sim, reg = step.losses(pair.points, pair.fixed_values)
        loss.backward()
        losses[name] = (loss.item(), sim.item(), reg.item())
        grads[name] = [p.grad.clone() for p in step.params]
    assert losses["torch"] == pytest.approx(losses["reference"], rel=1e-10, abs=1e-12)
    for a, b in zip(grads["torch"], grads["reference"]):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-11)
    assert any(g.abs().max() > 0 for g in grads["torch"])


def test_fast_step_matches_the_reference_float32():
    pair = synthetic_pair(300, "cpu", seed=5, size=20)
    out = {}
    for name in ("reference", "torch"):
        settings = RunSettings(regularizer="bending", hidden=(16, 16), batch_size=300, backend=name, device="cpu",
                               similarity="ncc+lncc", self_check=False).resolved()
        torch.manual_seed(0)
        siren = Siren((16, 16), omega=8.0, init="siren")
        step = PairStep(siren, pair, backends.select(name, "cpu"), settings)
        loss = step.losses(pair.points, pair.fixed_values)[0]
        loss.backward()
        out[name] = (loss.item(), torch.cat([p.grad.reshape(-1) for p in step.params]))
    assert out["torch"][0] == pytest.approx(out["reference"][0], rel=1e-5)
    scale = out["reference"][1].abs().max()
    assert (out["torch"][1] - out["reference"][1]).abs().max() <= 1e-4 * scale


@pytest.mark.parametrize("similarity", ["lncc", "ncc+lncc"])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_local_similarity_steps_are_capture_safe(backend, similarity):
    step, pair = make_step(backend, "bending", 400, (16, 16), "cpu", similarity=similarity)
    sampler = PointSampler([pair.points], [pair.fixed_values], 150, seed=0)
    assert not check_step(step, sampler)


def test_similarity_comes_from_the_schedule_per_stage_unless_set():
    auto = RunSettings(device="cpu").resolved()
    assert auto.similarity == "auto" and auto.lncc_spacing == 2.0
    assert [s.similarity for s in auto.stages()] == ["ncc", "ncc+lncc"]
    fine = RunSettings(device="cpu", schedule="fine").resolved()
    assert [s.similarity for s in fine.stages()] == ["ncc", "lncc"] and fine.lncc_spacing == 3.0
    assert fine.hidden == (80, 80, 80) and fine.epochs == 1200
    only = RunSettings(device="cpu", similarity="ncc").resolved()
    assert [s.similarity for s in only.stages()] == ["ncc", "ncc"]
    assert RunSettings(device="cpu", regularizer="none", similarity="ncc").resolved().order == 0
    assert RunSettings(device="cpu", regularizer="none", similarity="lncc").resolved().order == 1
    assert RunSettings(device="cpu", regularizer="none").resolved().order == 1  # the auto schedule's sharp stage
    assert RunSettings(device="cpu", lncc_spacing=4).resolved().lncc_spacing == 4.0
    paper = RunSettings(device="cpu", schedule="paper").resolved()
    assert [s.similarity for s in paper.stages()] == ["ncc"]
    assert paper.to_dict()["similarity"] == "auto"


@pytest.mark.parametrize("options,pattern", [
    (dict(similarity="mi"), "'similarity' must be one of"),
    (dict(lncc_spacing=0), "'lncc_spacing'"),
    (dict(lncc_spacing=float("nan")), "'lncc_spacing'"),
    (dict(schedule="slow"), "'schedule' must be one of"),
])
def test_bad_similarity_settings_get_a_clear_error(options, pattern):
    with pytest.raises(InputError, match=pattern):
        RunSettings(**options)


def test_a_registration_records_the_similarity_of_every_stage(tiny_pair):
    import idir_fast

    reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask, epochs=20, hidden=(16, 16), batch_size=200, progress=False)
    assert [s["similarity"] for s in reg.run["stages"]] == ["ncc", "ncc+lncc"]
    assert reg.settings.similarity == "auto"


def _moments_inputs(dtype, n=37, seed=3):
    """A random volume, points whose neighbourhoods reach past every face (clamped samples), random J."""
    g = torch.Generator().manual_seed(seed)
    vol = torch.rand(9, 11, 13, generator=g, dtype=torch.float64).to(dtype)
    phi = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8).to(dtype).requires_grad_(True)
    jac = (torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    jac = jac.to(dtype).requires_grad_(True)
    offsets = (objectives.stencil_offsets(2.0) * 0.07).to(dtype)  # (K, 3) in the network frame
    fixed = torch.rand(n, offsets.shape[0], generator=g, dtype=torch.float64).to(dtype)
    centred = fixed - fixed.mean(dim=1, keepdim=True)
    lin = torch.tensor([[6.0, 0.3, 0.1], [-0.2, 5.0, 0.4], [0.1, -0.3, 4.0]], dtype=torch.float64).to(dtype)
    off = torch.tensor([6.0, 5.0, 4.0], dtype=torch.float64).to(dtype)
    return vol, phi, jac, centred, offsets, lin, off


_GPU = ["cuda"] if torch.cuda.is_available() else []


@pytest.mark.parametrize("device", ["cpu"] + _GPU)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)], ids=["float64", "float32"])
def test_fused_local_moments_match_the_reference_values_and_gradients(dtype, tol, device):
    from idir_fast.ops.local_ncc import fused_available, local_moments, local_moments_reference

    vol, phi, jac, centred, offsets, lin, off = (t.detach().to(device) for t in _moments_inputs(dtype))
    phi.requires_grad_(True)
    jac.requires_grad_(True)
    if not fused_available(vol, phi):
        pytest.skip(f"the compiled op is not built for {device}")
    index = ((phi.detach().unsqueeze(1) + torch.einsum("nci,ki->nkc", jac.detach(), offsets)) @ lin + off)
    outside = ((index < 0) | (index > torch.tensor([12.0, 10.0, 8.0], dtype=dtype, device=device))).any(-1)
    assert outside.any() and (~outside).any()  # both kinds of samples are exercised
    w_cov = torch.randn(phi.shape[0], dtype=dtype).to(device)
    w_var = torch.randn(phi.shape[0], dtype=dtype).to(device)
    results = []
    for fn in (local_moments, local_moments_reference):
        cov, var = fn(vol, phi, jac, centred, offsets, lin, off)
        g_phi, g_jac = torch.autograd.grad((w_cov * cov).sum() + (w_var * var).sum(), (phi, jac))
        results.append((cov, var, g_phi, g_jac))
    for name, fast, ref in zip(("cov", "var", "grad phi", "grad J"), *results):
        fast, ref = fast.detach(), ref.detach()
        scale = max(1.0, float(ref.abs().max()))
        assert torch.allclose(fast, ref, atol=tol * scale, rtol=tol), (name, float((fast - ref).abs().max()))
    # only one moment used: the other's gradient is absent (None) and counts as zero
    cov, _ = local_moments(vol, phi, jac, centred, offsets, lin, off)
    g_phi = torch.autograd.grad(cov.sum(), phi)[0]
    ref = torch.autograd.grad(local_moments_reference(vol, phi, jac, centred, offsets, lin, off)[0].sum(), phi)[0]
    assert torch.allclose(g_phi, ref, atol=tol, rtol=tol)


def test_fused_local_moments_name_the_bad_argument():
    from idir_fast.ops.sample_ncc import extension

    ext = extension()
    if ext is None or not hasattr(ext, "local_moments_forward"):
        pytest.skip("the compiled op is not built")
    vol, phi, jac, centred, offsets, lin, off = (t.detach() for t in _moments_inputs(torch.float64))
    with pytest.raises(RuntimeError, match="'jac' must have shape"):
        ext.local_moments_forward(vol, phi, jac[:-1].contiguous(), centred, offsets, lin, off)
    with pytest.raises(RuntimeError, match="'offsets' must have shape"):
        ext.local_moments_forward(vol, phi, jac, centred, offsets[:-1].contiguous(), lin, off)
    with pytest.raises(RuntimeError, match="dtype"):
        ext.local_moments_forward(vol, phi.float(), jac, centred, offsets, lin, off)


def test_fused_local_moments_refuse_bad_output_buffers():
    from idir_fast.ops.sample_ncc import extension

    ext = extension()
    if ext is None or not hasattr(ext, "local_moments_forward"):
        pytest.skip("the compiled op is not built")
    vol, phi, jac, centred, offsets, lin, off = (t.detach() for t in _moments_inputs(torch.float64))
    n, k = centred.shape
    with pytest.raises(RuntimeError, match="'values_out' must have shape"):
        ext.local_moments_forward(vol, phi, jac, centred, offsets, lin, off, values_out=torch.empty(n, k + 1,
                                                                                                    dtype=vol.dtype))
    with pytest.raises(RuntimeError, match="'gradients_out' must be contiguous, of dtype"):
        ext.local_moments_forward(vol, phi, jac, centred, offsets, lin, off,
                                  gradients_out=torch.empty(n, k, 3, dtype=torch.float32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_moments_through_a_workspace_are_bit_for_bit_and_reuse_its_buffers(dtype):
    """Written into a :class:`MomentsWorkspace` the moments and both gradients are the same bits as through
    freshly allocated outputs, for point counts that shrink and grow; a size seen before reuses the buffers; a
    second forward before the first's backward makes that backward an error, not a wrong gradient."""
    from idir_fast.ops.local_ncc import MomentsWorkspace, fused_available, local_moments

    ws = MomentsWorkspace()
    for n in (37, 20, 37, 41):
        vol, phi, jac, centred, offsets, lin, off = _moments_inputs(dtype, n=n, seed=n)
        if not fused_available(vol, phi):
            pytest.skip("the compiled op is not built")
        got = []
        for workspace in (ws, None):
            cov, var = local_moments(vol, phi, jac, centred, offsets, lin, off, workspace)
            got.append([cov.detach(), var.detach(),
                        *torch.autograd.grad((cov * 1.3 - var * 0.7).sum(), (phi, jac))])
        for a, b in zip(*got):
            assert torch.equal(a, b)
    held = ws._values.data_ptr(), ws._grads.data_ptr()
    vol, phi, jac, centred, offsets, lin, off = _moments_inputs(dtype, n=30, seed=1)
    first = local_moments(vol, phi, jac, centred, offsets, lin, off, ws)[0]
    assert (ws._values.data_ptr(), ws._grads.data_ptr()) == held
    local_moments(vol, phi, jac, centred, offsets, lin, off, ws)
    with pytest.raises(RuntimeError, match="overwrote this one's samples"):
        torch.autograd.grad(first.sum(), phi)


def test_the_fast_backends_score_the_local_ncc_through_the_fused_moments():
    assert backends.get("torch").local_moments is not None and backends.get("triton").local_moments is not None
    assert backends.get("reference").local_moments is None  # the reference samples and scores with PyTorch ops
