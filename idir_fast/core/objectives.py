"""Every term of the IDIR objective, defined once and shared by all backends.

The regularisers are per-point functions of the Jacobian ``J = ∂Φ/∂x`` (``(N, 3, 3)``, ``J[n, c, i] = ∂Φ_c/∂x_i``)
and of the Hessian of ``Φ`` in *pair form* ``H6`` (``(N, 3, 6)``, :data:`~idir_fast.core.derivatives.PAIRS`
order). Derivatives are taken w.r.t. the network's normalised coordinates. :data:`REGULARIZERS` is the one table
of regularisers: name, derivative order, default weights, penalty.

Two variants exist where the paper and the released code differ (``compat``):

* ``None`` – the paper's equations: NCC with population (1/N) statistics; bending energy eq. (3) averaged over
  the points, cross terms weighted 2.
* ``"idir-2022"`` – the released code: NCC with unbiased (N−1) standard deviations, so a perfect match scores
  (N−1)/N; bending with the yz cross term weighted 1, averaged over points *and* components and divided by the
  batch size once more.

Everything here is capture-safe (no tensors built from Python data, no host reads): it runs inside a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from .compat import COMPAT, COMPAT_MODES, check_compat  # noqa: F401  (re-exported)
from .derivatives import PAIRS, full_hessian_to_pairs  # noqa: F401  (re-exported for the tests and backends)

NCC_EPS = 1e-10


# ----------------------------------------------------------------------------------------------- similarity
def ncc(fixed: torch.Tensor, moving: torch.Tensor, compat: Optional[str] = None,
        weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Global normalised cross-correlation of two sample vectors ``(N,)``.

    ``NCC = cov(f, m) / (σ_f σ_m + ε)`` with ``cov`` the mean of centred products; σ uses 1/N (paper) or
    1/(N−1) (``compat="idir-2022"``). The similarity loss is ``−NCC``.

    With ``weights`` ``(N,)`` in [0, 1] (a moving mask sampled at Φ(x)) every mean, variance and covariance is
    weighted and N becomes Σw: points with weight 0 do not count. All weights 1 gives the unweighted value.
    """
    if weights is None:
        f = fixed - fixed.mean()
        m = moving - moving.mean()
        n = f.numel()
        cov = (f * m).mean()
        ddof = COMPAT[compat].ncc_ddof if n > 1 else 0
        var_f = (f * f).sum() / (n - ddof)
        var_m = (m * m).sum() / (n - ddof)
        return cov / (torch.sqrt(var_f) * torch.sqrt(var_m) + NCC_EPS)
    n = weights.sum().clamp_min(1e-12)
    f = fixed - (weights * fixed).sum() / n
    m = moving - (weights * moving).sum() / n
    cov = (weights * f * m).sum() / n
    ddof = float(COMPAT[compat].ncc_ddof)
    denom = (n - ddof).clamp_min(1e-12)
    var_f = (weights * f * f).sum() / denom
    var_m = (weights * m * m).sum() / denom
    return cov / (torch.sqrt(var_f) * torch.sqrt(var_m) + NCC_EPS)


LNCC_EPS_REL = 1e-3
"""ε of :func:`local_ncc` relative to the batch's mean neighbourhood variances: keeps flat neighbourhoods (air,
background) from dividing by ~0 without changing the value where there is texture."""

SIMILARITIES = ("ncc", "lncc", "ncc+lncc")
"""``ncc``: the global NCC of the paper; ``lncc``: the local NCC of each point's neighbourhood (:func:`local_ncc`);
``ncc+lncc``: their mean."""


def stencil_offsets(spacing: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """The ``(27, 3)`` voxel offsets of a 3×3×3 neighbourhood with ``spacing`` voxels between samples, in
    ``(i, j, k)`` order, the centre first (a window of ``2·spacing + 1`` voxels per axis)."""
    steps = (0.0, -float(spacing), float(spacing))
    grid = torch.tensor([(a, b, c) for c in steps for b in steps for a in steps], dtype=dtype, device=device)
    return grid


def local_ncc(fixed: torch.Tensor, moving: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean local NCC of ``N`` neighbourhoods of ``K`` samples, ``fixed`` and ``moving`` ``(N, K)``.

    Per neighbourhood ``n``: ``cc_n = cov_n(f, m) / sqrt(var_n(f) · var_n(m) + ε)`` with 1/K statistics over its
    samples; the result is ``Σ w_n cc_n / Σ w_n`` (``w = 1`` without ``weights`` ``(N,)``). ε =
    ``LNCC_EPS_REL² · mean_n var_n(f) · mean_n var_n(m)`` (held constant in the gradient), so a flat
    neighbourhood scores ~0 instead of dividing by zero. The similarity loss is ``−LNCC``: unlike the global NCC
    it is invariant to a different affine intensity map in every neighbourhood (bias fields, contrast that
    varies across the image), and its gradient comes from local structure rather than from the image's large
    intensity differences.
    """
    f = fixed - fixed.mean(dim=1, keepdim=True)
    m = moving - moving.mean(dim=1, keepdim=True)
    return local_ncc_from_moments((f * m).mean(dim=1), (f * f).mean(dim=1), (m * m).mean(dim=1), weights)


def local_ncc_from_moments(cov: torch.Tensor, var_f: torch.Tensor, var_m: torch.Tensor,
                           weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`local_ncc` from each neighbourhood's moments ``(N,)``: covariance, fixed and moving variance (1/K
    statistics) — what a fused op returns (:func:`idir_fast.ops.local_ncc.local_moments`)."""
    eps = (LNCC_EPS_REL ** 2) * (var_f.mean() * var_m.mean()).detach() + NCC_EPS
    cc = cov / torch.sqrt(var_f * var_m + eps)
    if weights is None:
        return cc.mean()
    return (weights * cc).sum() / weights.sum().clamp_min(1e-12)


def _ncc_moments(n: int, sums: torch.Tensor, compat: Optional[str]):
    """Centred moments from the five sums ``[Σf, Σm, Σf², Σm², Σfm]`` (float64 for accuracy)."""
    s = sums.double()
    f_mean, m_mean = s[0] / n, s[1] / n
    ddof = COMPAT[compat].ncc_ddof if n > 1 else 0
    cov = s[4] / n - f_mean * m_mean
    var_f = torch.clamp(s[2] - n * f_mean * f_mean, min=0.0) / (n - ddof)
    var_m = torch.clamp(s[3] - n * m_mean * m_mean, min=0.0) / (n - ddof)
    return f_mean, m_mean, cov, torch.sqrt(var_f), torch.sqrt(var_m), ddof


def ncc_from_sums(n: int, sums: torch.Tensor, compat: Optional[str] = None) -> torch.Tensor:
    """:func:`ncc` from the five sums ``[Σf, Σm, Σf², Σm², Σfm]`` a fused sampling kernel reduces (float64)."""
    _, _, cov, sd_f, sd_m, _ = _ncc_moments(n, sums, compat)
    return cov / (sd_f * sd_m + NCC_EPS)


def ncc_backward_coefficients(n: int, sums: torch.Tensor, compat: Optional[str] = None):
    """Scalars ``(a, b, f̄, m̄)`` with ``∂NCC/∂m_k = a (f_k − f̄) + b (m_k − m̄)`` for :func:`ncc`'s definition.

    With ``D = σ_f σ_m + ε``: ``a = 1 / (N D)`` and ``b = −cov σ_f / ((N − ddof) σ_m D²)``.
    """
    f_mean, m_mean, cov, sd_f, sd_m, ddof = _ncc_moments(n, sums, compat)
    d = sd_f * sd_m + NCC_EPS
    a = 1.0 / (n * d)
    b = -cov * sd_f / ((n - ddof) * torch.clamp(sd_m, min=1e-300) * d * d)
    return a, b, f_mean, m_mean


# ------------------------------------------------------------------------------------------ per-point algebra
def cofactor(J: torch.Tensor) -> torch.Tensor:
    """Cofactor matrix ``cof(J) = det(J) J^{-T}`` of ``(N, 3, 3)`` matrices, without an inverse."""
    r0, r1, r2 = J[:, 0], J[:, 1], J[:, 2]
    return torch.stack([torch.linalg.cross(r1, r2), torch.linalg.cross(r2, r0), torch.linalg.cross(r0, r1)], dim=1)


def determinant(J: torch.Tensor) -> torch.Tensor:
    """det of ``(N, 3, 3)`` matrices by the cofactor expansion along the first row (autograd- and float64-safe)."""
    return (J[:, 0] * torch.linalg.cross(J[:, 1], J[:, 2])).sum(-1)


def jacobian_penalty(J: torch.Tensor) -> torch.Tensor:
    """Mean over points of ``|1 − det J|`` (paper §2.2)."""
    return (1.0 - determinant(J)).abs().mean()


def hyperelastic_penalty(J: torch.Tensor, alpha_length: float = 1.0, alpha_area: float = 1.0,
                         alpha_volume: float = 1.0) -> torch.Tensor:
    """Hyperelastic energy (Burger et al. 2013), mean over points.

    ``½ α_l ‖J − I‖²_F + α_a Σ_i max(Σ_j cof(J)_ji² − 1, 0)² + α_v (det J − 1)⁴ / (det J)²``.
    """
    eye = torch.eye(3, dtype=J.dtype, device=J.device)
    length = 0.5 * ((J - eye) ** 2).sum(dim=(1, 2))
    cof = cofactor(J)
    area = torch.clamp((cof ** 2).sum(dim=1) - 1.0, min=0.0).pow(2).sum(dim=1)
    det = determinant(J)
    volume = (det - 1.0) ** 4 / det ** 2
    return (alpha_length * length + alpha_area * area + alpha_volume * volume).mean()


FOLD_GUARD_DET = 0.3
"""The volume ratio below which the fold guard acts (:func:`fold_guard_penalty`)."""


def fold_guard_penalty(J: torch.Tensor, floor: float = FOLD_GUARD_DET) -> torch.Tensor:
    """Mean over points of ``max(0, floor − det J)²``: zero wherever Φ keeps at least ``floor`` of the volume,
    growing as a point approaches folding (``det J ≤ 0``). A weak bending energy lets the local NCC pull a few
    small regions into folds; this term pushes back only there, so the rest of the map is untouched."""
    return torch.relu(floor - determinant(J)).pow(2).mean()


def bending_penalty(H6: torch.Tensor, compat: Optional[str] = None) -> torch.Tensor:
    """Bending energy of Φ from its Hessian in pair form ``(N, 3, 6)``.

    Paper eq. (3): mean over points of ``Σ_c [H_c00² + H_c11² + H_c22² + 2(H_c01² + H_c02² + H_c12²)]``.
    ``compat="idir-2022"``: yz weight 1, mean over points and components, divided by N again.
    The pair weights are Python scalars, not a tensor: nothing is copied from the host inside a step.
    """
    sq = H6 * H6
    diagonal = sq[..., 0:3].sum(-1)
    if COMPAT[compat].bending == "idir-2022":
        per_component = diagonal + 2.0 * sq[..., 3:5].sum(-1) + sq[..., 5]  # (N, 3)
        return per_component.mean() / H6.shape[0]
    return (diagonal + 2.0 * sq[..., 3:6].sum(-1)).sum(-1).mean()


def _jacobian(J, H6, compat):
    return jacobian_penalty(J)


def _hyperelastic(J, H6, compat):
    return hyperelastic_penalty(J)


def _bending(J, H6, compat):
    return bending_penalty(H6, compat)


@dataclass(frozen=True)
class Regularizer:
    """One regulariser: what it needs from the network and how it is computed.

    Attributes:
        name: the setting's value (``None`` for no regulariser).
        order: derivatives of Φ it needs: 0 (Φ only), 1 (+J) or 2 (+H).
        penalty: ``(J, H6, compat) → scalar`` mean over points; ``None`` for no regulariser.
    """

    name: Optional[str]
    order: int
    penalty: Optional[Callable[[Optional[torch.Tensor], Optional[torch.Tensor], Optional[str]], torch.Tensor]]

    def default_alpha(self, compat: Optional[str] = None) -> float:
        """The default weight α of this regulariser under ``compat`` (:data:`idir_fast.core.compat.COMPAT`)."""
        return COMPAT[compat].alpha[self.name]

    @property
    def label(self) -> str:
        return self.name or "none"


REGULARIZERS: Dict[Optional[str], Regularizer] = {r.name: r for r in (
    Regularizer(None, 0, None),
    Regularizer("jacobian", 1, _jacobian),
    Regularizer("hyperelastic", 1, _hyperelastic),
    Regularizer("bending", 2, _bending),
)}


def get_regularizer(name) -> Regularizer:
    """The table entry for ``name`` (``None``/``"none"`` for no regulariser); ``ValueError`` when unknown."""
    if isinstance(name, str) and name.lower() == "none":
        name = None
    if name not in REGULARIZERS:
        raise ValueError(f"'regularizer' must be one of {tuple(REGULARIZERS)}, got {name!r}")
    return REGULARIZERS[name]


def check_regularizer(name) -> Optional[str]:
    return get_regularizer(name).name


def derivative_order(regularizer: Optional[str]) -> int:
    """0, 1 or 2: how many orders of spatial derivatives of Φ the regulariser needs."""
    return get_regularizer(regularizer).order


def default_alpha(regularizer: Optional[str], compat: Optional[str] = None) -> float:
    return get_regularizer(regularizer).default_alpha(compat)


def regularization(regularizer: Optional[str], J: Optional[torch.Tensor], H6: Optional[torch.Tensor],
                   compat: Optional[str] = None) -> torch.Tensor:
    """Value of the named regulariser from ``(J, H6)``; 0 for ``None``."""
    spec = get_regularizer(regularizer)
    if spec.penalty is None:
        ref = J if J is not None else H6
        return torch.zeros((), device=None if ref is None else ref.device)
    return spec.penalty(J, H6, compat)
