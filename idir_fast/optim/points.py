"""Points per step: batches of fixed-mask points drawn on the device, capture-safe.

Each pair keeps a random permutation of its mask points on the device and walks through it in windows of the
batch size, so the points of one step are distinct and every point is used once per pass over the mask (as an
epoch of SGD). The window position is a device tensor advanced inside the step, so drawing needs no host data and
can live inside a CUDA graph; only at the end of a pass does the host ask the device for a new permutation
(an asynchronous device op, not a host read). Same seed → same batches.

Gradient sampling (``weights``): a pass is instead a draw, with replacement, of as many points as the mask holds,
each with probability in proportion to its weight (:func:`gradient_weights`). The loss is not reweighted, so the
similarity and the regulariser become those of the points where the fixed image has structure: the flat lung
parenchyma or white matter, where intensity is mostly noise, gives way to vessels, fissures and tissue borders.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch


#: under gradient sampling, the share of the weight spread evenly over the mask: flat regions keep a few points
UNIFORM_SHARE = 0.1
_CHUNK = 1 << 20


def gradient_weights(fixed: torch.Tensor, inside: torch.Tensor, spacing_xyz: Sequence[float],
                     uniform_share: float = UNIFORM_SHARE) -> torch.Tensor:
    """Per mask voxel, the weight of gradient sampling: ``(1 − s)·|∇F| / mean |∇F| + s``.

    Args:
        fixed: ``(nz, ny, nx)`` fixed intensities.
        inside: ``(M,)`` flat (C-order) indices of the mask voxels in ``fixed``.
        spacing_xyz: the voxel size (mm) along x, y, z: ``|∇F|`` is per mm, so anisotropic voxels count alike.
        uniform_share: ``s``, the share of the total weight spread evenly (a constant image gets all of it).

    Returns:
        ``(M,)`` float64 weights on ``fixed``'s device, mean 1. ``∇F`` by central differences (one-sided at the
        volume's faces) at the mask voxels only.
    """
    nz, ny, nx = fixed.shape
    flat = fixed.reshape(-1)
    inside = inside.to(device=fixed.device, dtype=torch.long)
    g = torch.empty(inside.shape[0], dtype=torch.float64, device=fixed.device)
    for start in range(0, inside.shape[0], _CHUNK):  # temporaries of a chunk only: a whole-body mask is 10^8 voxels
        idx = inside[start:start + _CHUNK]
        grad2 = torch.zeros(idx.shape[0], dtype=torch.float64, device=fixed.device)
        for c, n, stride, h in zip((idx % nx, (idx // nx) % ny, idx // (nx * ny)), (nx, ny, nz), (1, nx, nx * ny),
                                   spacing_xyz):
            if n < 2:
                continue
            lo, hi = torch.clamp(c - 1, min=0), torch.clamp(c + 1, max=n - 1)
            diff = flat[idx + (hi - c) * stride].double() - flat[idx + (lo - c) * stride].double()
            grad2 += (diff / ((hi - lo).double() * float(h))) ** 2
        g[start:start + _CHUNK] = grad2.sqrt()
    mean = float(g.mean()) if g.numel() else 0.0
    if not mean > 0.0:
        return torch.ones_like(g)
    return (1.0 - uniform_share) * g / mean + uniform_share


class PointSampler:
    """Draws ``(x (P, B, 3), f (P, B))``: ``B`` points and fixed values per pair of ``P``.

    Args:
        points: per pair, ``(M_p, 3)`` normalised coordinates of the mask voxels (on the training device).
        values: per pair, ``(M_p,)`` fixed intensities there.
        batch: points per step, ``B ≤ min(M_p)``.
        seed: seeds one generator per pair (so a pair draws the same batches alone or with others).
        weights: per pair, ``(M_p,)`` non-negative sampling weights (:func:`gradient_weights`), or ``None`` for a
            uniform pass over the mask; a list may mix both.
    """

    def __init__(self, points: Sequence[torch.Tensor], values: Sequence[torch.Tensor], batch: int, seed: int,
                 weights: Optional[Sequence[Optional[torch.Tensor]]] = None):
        self.points, self.values = list(points), list(values)
        self.batch = int(batch)
        if any(p.shape[0] < self.batch for p in self.points):
            raise ValueError("PointSampler: batch larger than a pair's mask")
        device = self.points[0].device
        weights = list(weights) if weights is not None else [None] * len(self.points)
        if len(weights) != len(self.points):
            raise ValueError("PointSampler: one weight vector (or None) per pair")
        # a cumulative distribution per weighted pair: inverse-CDF draws work for masks of any size (multinomial
        # stops at 2^24 categories, a whole-body CT's mask can exceed that)
        self.cdfs: List[Optional[torch.Tensor]] = []
        for p, w in zip(self.points, weights):
            if w is None:
                self.cdfs.append(None)
                continue
            if w.shape != (p.shape[0],) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) \
                    or not float(w.sum()) > 0:
                raise ValueError("PointSampler: weights must be (M,), finite, ≥ 0 and not all 0")
            cdf = torch.cumsum(w.to(device=device, dtype=torch.float64), 0)
            self.cdfs.append(cdf.div_(float(cdf[-1])))  # construction only: the steps never read the host
        self.full = [p.shape[0] == self.batch and cdf is None for p, cdf in zip(self.points, self.cdfs)]
        self.windows = [p.shape[0] // self.batch for p in self.points]  # windows per pass over the mask
        self.generators, self.perms = [], []
        for p, full in zip(self.points, self.full):
            g = torch.Generator(device=device)
            g.manual_seed(int(seed))
            self.generators.append(g)
            self.perms.append(None if full else torch.empty(p.shape[0], dtype=torch.long, device=device))
        # a pass's uniform draws, made once: a pass then allocates nothing
        self.draws = [None if cdf is None else torch.empty(cdf.shape[0], dtype=torch.float64, device=device)
                      for cdf in self.cdfs]
        self.offsets = torch.zeros(len(self.points), dtype=torch.long, device=device)
        self.arange = torch.arange(self.batch, dtype=torch.long, device=device)
        self._epoch = 0

    def before_step(self) -> None:
        """Host side, once per step before :meth:`draw`: start a new pass where the previous one ended."""
        for i, (perm, windows) in enumerate(zip(self.perms, self.windows)):
            if perm is not None and self._epoch % windows == 0:
                g, cdf = self.generators[i], self.cdfs[i]
                if cdf is None:
                    perm.copy_(torch.randperm(perm.shape[0], generator=g, device=perm.device))
                else:  # inverse CDF: the first point whose cumulative weight exceeds u (zero weights never)
                    u = self.draws[i]
                    u.uniform_(generator=g)
                    torch.searchsorted(cdf, u, right=True, out=perm)
                    perm.clamp_(max=perm.shape[0] - 1)
                self.offsets[i].zero_()
        self._epoch += 1

    def draw(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """This step's batches; only device ops (capture-safe)."""
        xs: List[torch.Tensor] = []
        fs: List[torch.Tensor] = []
        for i, perm in enumerate(self.perms):
            if perm is None:
                xs.append(self.points[i])
                fs.append(self.values[i])
            else:
                idx = perm[self.offsets[i] + self.arange]
                xs.append(self.points[i][idx])
                fs.append(self.values[i][idx])
        self.offsets.add_(self.batch)
        return torch.stack(xs), torch.stack(fs)
