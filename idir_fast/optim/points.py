"""Points per step: batches of fixed-mask points drawn on the device, capture-safe.

Each pair keeps a random permutation of its mask points on the device and walks through it in windows of the
batch size, so the points of one step are distinct and every point is used once per pass over the mask (as an
epoch of SGD). The window position is a device tensor advanced inside the step, so drawing needs no host data and
can live inside a CUDA graph; only at the end of a pass does the host ask the device for a new permutation
(an asynchronous device op, not a host read). Same seed → same batches.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch


class PointSampler:
    """Draws ``(x (P, B, 3), f (P, B))``: ``B`` points and fixed values per pair of ``P``.

    Args:
        points: per pair, ``(M_p, 3)`` normalised coordinates of the mask voxels (on the training device).
        values: per pair, ``(M_p,)`` fixed intensities there.
        batch: points per step, ``B ≤ min(M_p)``.
        seed: seeds one generator per pair (so a pair draws the same batches alone or with others).
    """

    def __init__(self, points: Sequence[torch.Tensor], values: Sequence[torch.Tensor], batch: int, seed: int):
        self.points, self.values = list(points), list(values)
        self.batch = int(batch)
        if any(p.shape[0] < self.batch for p in self.points):
            raise ValueError("PointSampler: batch larger than a pair's mask")
        device = self.points[0].device
        self.full = [p.shape[0] == self.batch for p in self.points]
        self.windows = [p.shape[0] // self.batch for p in self.points]  # windows per pass over the mask
        self.generators, self.perms = [], []
        for p, full in zip(self.points, self.full):
            g = torch.Generator(device=device)
            g.manual_seed(int(seed))
            self.generators.append(g)
            self.perms.append(None if full else torch.empty(p.shape[0], dtype=torch.long, device=device))
        self.offsets = torch.zeros(len(self.points), dtype=torch.long, device=device)
        self.arange = torch.arange(self.batch, dtype=torch.long, device=device)
        self._epoch = 0

    def before_step(self) -> None:
        """Host side, once per step before :meth:`draw`: start a new pass where the previous one ended."""
        for i, (perm, windows) in enumerate(zip(self.perms, self.windows)):
            if perm is not None and self._epoch % windows == 0:
                perm.copy_(torch.randperm(perm.shape[0], generator=self.generators[i], device=perm.device))
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
