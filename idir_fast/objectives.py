"""Every term of the IDIR objective, defined once and shared by all backends.

The regularisers are per-point functions of the Jacobian ``J = ∂Φ/∂x`` (``(N, 3, 3)``, ``J[n, c, i] = ∂Φ_c/∂x_i``)
and of the Hessian of ``Φ`` in *pair form* ``H6`` (``(N, 3, 6)``, ``H6[n, c, p] = ∂²Φ_c/∂x_a∂x_b`` for the pairs
``p`` listed in :data:`PAIRS`). Derivatives are taken w.r.t. the network's normalised coordinates.

Two variants exist where the paper and the released code differ (``compat``):

* ``None`` – the paper's equations: NCC with population (1/N) statistics; bending energy eq. (3) averaged over
  the points, cross terms weighted 2.
* ``"idir-2022"`` – the released code: NCC with unbiased (N−1) standard deviations, so a perfect match scores
  (N−1)/N; bending with the yz cross term weighted 1, averaged over points *and* components and divided by the
  batch size once more.
"""
from __future__ import annotations

from typing import Optional

import torch

PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
"""Order of the 6 unique second-derivative pairs in ``H6`` (and in the derivative streams)."""

REGULARIZERS = (None, "jacobian", "hyperelastic", "bending")
COMPAT_MODES = (None, "idir-2022")

# Derivative order each regulariser needs from the network: Φ only, +J, +H.
_ORDER = {None: 0, "jacobian": 1, "hyperelastic": 1, "bending": 2}

# Default weights α. Jacobian and hyperelastic: the released code's values (both are point means, so the
# definitions agree). Bending: the paper's eq. (3) is Σ/B where the released code computes Σ/(3·B²) with α = 10;
# at the paper's B = 10,000 that strength is α = 10 / (3·10⁴) in eq. (3)'s scale.
DEFAULT_ALPHA = {
    None: {"jacobian": 0.05, "hyperelastic": 0.25, "bending": 10.0 / 3.0e4},
    "idir-2022": {"jacobian": 0.05, "hyperelastic": 0.25, "bending": 10.0},
}

NCC_EPS = 1e-10


def check_regularizer(name) -> Optional[str]:
    if isinstance(name, str) and name.lower() == "none":
        name = None
    if name not in REGULARIZERS:
        raise ValueError(f"'regularizer' must be one of {REGULARIZERS}, got {name!r}")
    return name


def check_compat(compat) -> Optional[str]:
    if isinstance(compat, str) and compat.lower() == "none":
        compat = None
    if compat not in COMPAT_MODES:
        raise ValueError(f"'compat' must be one of {COMPAT_MODES}, got {compat!r}")
    return compat


def derivative_order(regularizer: Optional[str]) -> int:
    """0, 1 or 2: how many orders of spatial derivatives of Φ the regulariser needs."""
    return _ORDER[check_regularizer(regularizer)]


def default_alpha(regularizer: Optional[str], compat: Optional[str] = None) -> float:
    if regularizer is None:
        return 0.0
    return DEFAULT_ALPHA[compat][regularizer]


# ----------------------------------------------------------------------------------------------- similarity
def ncc(fixed: torch.Tensor, moving: torch.Tensor, compat: Optional[str] = None) -> torch.Tensor:
    """Global normalised cross-correlation of two sample vectors ``(N,)``.

    ``NCC = cov(f, m) / (σ_f σ_m + ε)`` with ``cov`` the mean of centred products; σ uses 1/N (paper) or
    1/(N−1) (``compat="idir-2022"``). The similarity loss is ``−NCC``.
    """
    f = fixed - fixed.mean()
    m = moving - moving.mean()
    n = f.numel()
    cov = (f * m).mean()
    ddof = 1 if compat == "idir-2022" and n > 1 else 0
    var_f = (f * f).sum() / (n - ddof)
    var_m = (m * m).sum() / (n - ddof)
    return cov / (torch.sqrt(var_f) * torch.sqrt(var_m) + NCC_EPS)


def _ncc_moments(n: int, sums: torch.Tensor, compat: Optional[str]):
    """Centred moments from the five sums ``[Σf, Σm, Σf², Σm², Σfm]`` (float64 for accuracy)."""
    s = sums.double()
    f_mean, m_mean = s[0] / n, s[1] / n
    ddof = 1 if compat == "idir-2022" and n > 1 else 0
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


def bending_pair_weights(compat: Optional[str] = None, dtype=torch.float32, device=None) -> torch.Tensor:
    w = [1.0, 1.0, 1.0, 2.0, 2.0, 1.0 if compat == "idir-2022" else 2.0]
    return torch.tensor(w, dtype=dtype, device=device)


def bending_penalty(H6: torch.Tensor, compat: Optional[str] = None) -> torch.Tensor:
    """Bending energy of Φ from its Hessian in pair form ``(N, 3, 6)``.

    Paper eq. (3): mean over points of ``Σ_c [H_c00² + H_c11² + H_c22² + 2(H_c01² + H_c02² + H_c12²)]``.
    ``compat="idir-2022"``: yz weight 1, mean over points and components, divided by N again.
    """
    w = bending_pair_weights(compat, H6.dtype, H6.device)
    per_component = (H6 * H6 * w).sum(-1)  # (N, 3)
    if compat == "idir-2022":
        return per_component.mean() / H6.shape[0]
    return per_component.sum(-1).mean()


def regularization(regularizer: Optional[str], J: Optional[torch.Tensor], H6: Optional[torch.Tensor],
                   compat: Optional[str] = None) -> torch.Tensor:
    """Value of the named regulariser from ``(J, H6)``; 0 for ``None``."""
    if regularizer is None:
        dev = J.device if J is not None else None
        return torch.zeros((), device=dev)
    if regularizer == "jacobian":
        return jacobian_penalty(J)
    if regularizer == "hyperelastic":
        return hyperelastic_penalty(J)
    if regularizer == "bending":
        return bending_penalty(H6, compat)
    raise ValueError(f"unknown regularizer {regularizer!r}")


def full_hessian_to_pairs(H: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3, 3)`` Hessian ``H[n, c, i, j]`` → pair form ``(N, 3, 6)`` (upper triangle, :data:`PAIRS` order)."""
    return torch.stack([H[:, :, a, b] for a, b in PAIRS], dim=-1)
