"""The optimisation: points from the fixed mask, Φ from the SIREN, NCC + α·regulariser, Adam.

The loop keeps everything on the device: indices are drawn by the device's generator, the loss history is
written into a device tensor, and the host reads it only every ``sync_every`` epochs (progress bar and the
divergence guard) and at the end.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk
import torch

from . import objectives
from .geometry import ImageGeometry, apply_affine, boxes_overlap, compose
from .io import InputError

HISTORY_TERMS = ("loss", "similarity", "regularization")


class DivergenceError(RuntimeError):
    """The loss became non-finite during optimisation."""


@dataclass
class PreparedPair:
    """Tensors an optimisation needs, on one device.

    Attributes:
        fixed_geometry, moving_geometry: grids of the two images.
        world_to_normalised: 4×4 float64, the network frame (fixed image's box).
        normalised_to_moving_index: 4×4 float64, Φ's frame → moving voxel indices.
        moving: ``(nz, ny, nx)`` moving intensities.
        points: ``(M, 3)`` normalised coordinates of the fixed voxels inside the mask.
        fixed_values: ``(M,)`` fixed intensities there.
    """

    fixed_geometry: ImageGeometry
    moving_geometry: ImageGeometry
    world_to_normalised: np.ndarray
    normalised_to_moving_index: np.ndarray
    moving: torch.Tensor
    points: torch.Tensor
    fixed_values: torch.Tensor

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])


def prepare_pair(fixed: sitk.Image, moving: sitk.Image, mask: Optional[sitk.Image], *,
                 normalisation: str = "isotropic", device=torch.device("cpu"),
                 dtype=torch.float32) -> PreparedPair:
    """Validate a pair (overlap, non-constant intensities) and move what the loop needs to ``device``."""
    fg, mg = ImageGeometry.from_sitk(fixed), ImageGeometry.from_sitk(moving)
    if not boxes_overlap(fg, mg):
        lo_f, hi_f = fg.world_extent_box()
        lo_m, hi_m = mg.world_extent_box()
        raise InputError("'fixed' and 'moving' do not overlap in world space (LPS mm): fixed spans "
                         f"{np.round(lo_f, 1).tolist()}..{np.round(hi_f, 1).tolist()}, moving spans "
                         f"{np.round(lo_m, 1).tolist()}..{np.round(hi_m, 1).tolist()}")
    fixed_arr = sitk.GetArrayViewFromImage(fixed)
    if mask is not None:
        inside = np.flatnonzero(sitk.GetArrayViewFromImage(mask).ravel() > 0)
    else:
        inside = np.arange(fixed_arr.size)
    fixed_values = np.asarray(fixed_arr).ravel()[inside]
    if fixed_values.size < 2 or float(np.std(fixed_values)) == 0.0:
        raise InputError("'fixed' is constant inside the mask: NCC is undefined for a constant image")
    moving_arr = sitk.GetArrayFromImage(moving)
    if float(np.std(moving_arr)) == 0.0:
        raise InputError("'moving' is constant: NCC is undefined for a constant image")

    w2n = fg.world_to_normalised(normalisation)
    n2mi = compose(mg.world_to_index(), np.linalg.inv(w2n))
    index_all = fg.voxel_grid_index(dtype=torch.float64)[torch.from_numpy(inside)]
    points = apply_affine(fg.index_to_normalised(normalisation), index_all)
    return PreparedPair(
        fixed_geometry=fg, moving_geometry=mg, world_to_normalised=w2n, normalised_to_moving_index=n2mi,
        moving=torch.as_tensor(moving_arr, dtype=dtype, device=device),
        points=points.to(device=device, dtype=dtype),
        fixed_values=torch.as_tensor(fixed_values, dtype=dtype, device=device),
    )


@dataclass
class OptimResult:
    history: np.ndarray  # (epochs, 3): loss, similarity, regularization
    seconds: float
    epochs_run: int


class StepFunction:
    """One optimisation step on a batch of points: forward, NCC + α·R, backward, Adam update.

    Shared by the registration loop and the benchmarks so both time the same work.
    """

    def __init__(self, siren, pair: PreparedPair, backend, *, regularizer: Optional[str], alpha: float,
                 compat: Optional[str], lr: float, capturable: bool = False):
        self.siren, self.pair, self.backend = siren, pair, backend
        self.regularizer, self.alpha, self.compat = regularizer, float(alpha), compat
        self.order = objectives.derivative_order(regularizer)
        device = pair.points.device
        # capturable: Adam keeps its step count on the device so the update can live inside a CUDA graph
        self.optimizer = torch.optim.Adam(siren.parameters(), lr=lr, capturable=capturable)
        n2mi = torch.as_tensor(pair.normalised_to_moving_index, dtype=pair.points.dtype, device=device)
        self.lin, self.off = n2mi[:3, :3].T.contiguous(), n2mi[:3, 3].contiguous()
        self.zero = torch.zeros((), dtype=pair.points.dtype, device=device)

    def losses(self, x: torch.Tensor, f: torch.Tensor):
        """``(loss, similarity, regularization)`` at points ``x`` with fixed values ``f`` (differentiable)."""
        d = self.backend.derivatives(self.siren, x, self.order)
        similarity = -self.backend.similarity(self.pair.moving, d.phi @ self.lin + self.off, f, self.compat)
        if self.regularizer is None:
            return similarity, similarity, self.zero
        reg = objectives.regularization(self.regularizer, d.J, d.H6, self.compat)
        return similarity + self.alpha * reg, similarity, reg

    def __call__(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        loss, similarity, reg = self.losses(x, f)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack([loss.detach(), similarity.detach(), reg.detach()])


def optimise(siren, pair: PreparedPair, backend, *, regularizer: Optional[str], alpha: float,
             compat: Optional[str], epochs: int, batch_size: int, lr: float, seed: int,
             progress: bool = False, sync_every: int = 50, log=None, loop: str = "fast") -> OptimResult:
    """Run ``epochs`` Adam steps of ``−NCC + α·R`` on random mask points; returns the loss history.

    Args:
        loop: ``"fast"`` — no host synchronisation inside the loop (history on the device, read every
            ``sync_every`` epochs); on CUDA the step is captured once as a CUDA graph and replayed, falling back
            to eager launches with one warning when capture fails. ``"eager"`` — the plain loop that reads the
            loss every step (the reference the fast loop is tested against).
    """
    if loop not in ("fast", "eager"):
        raise ValueError(f"'loop' must be 'fast' or 'eager', got {loop!r}")
    device = pair.points.device
    use_graph = loop == "fast" and device.type == "cuda"
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    step = StepFunction(siren, pair, backend, regularizer=regularizer, alpha=alpha, compat=compat, lr=lr,
                        capturable=use_graph)
    history = torch.zeros(epochs, len(HISTORY_TERMS), dtype=pair.points.dtype, device=device)
    batch = min(int(batch_size), pair.num_points)
    full_batch = batch == pair.num_points
    if loop == "eager":
        sync_every = 1

    def draw():
        if full_batch:
            return pair.points, pair.fixed_values
        idx = torch.randperm(pair.num_points, generator=gen, device=device)[:batch]
        return pair.points[idx], pair.fixed_values[idx]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc=f"IDIR {regularizer or 'no-reg'} [{backend.name}]", unit="epoch",
                   dynamic_ncols=True, leave=True)
    t0 = time.perf_counter()
    graph = None
    try:
        for epoch in range(epochs):
            x, f = draw()
            if use_graph and graph is None and epoch >= _GRAPH_WARMUP:
                graph = _capture(step, x, f)
                if graph is None:
                    use_graph = False
            if graph is not None:
                graph.static_x.copy_(x)
                graph.static_f.copy_(f)
                graph.replay()
                history[epoch].copy_(graph.static_out)
            elif use_graph:  # warm-up epochs run on a side stream, as capture requires
                history[epoch] = _on_side_stream(step, x, f)
            else:
                history[epoch] = step(x, f)
            if (epoch + 1) % sync_every == 0 or epoch + 1 == epochs:
                _check_and_report(history, epoch, bar, sync_every, log)
    finally:
        if bar is not None:
            bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return OptimResult(history=history.cpu().numpy(), seconds=time.perf_counter() - t0, epochs_run=epochs)


_GRAPH_WARMUP = 3
_graph_warned = False


class _Graph:
    pass


def _on_side_stream(step, x, f):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = step(x, f)
    torch.cuda.current_stream().wait_stream(s)
    return out


def _capture(step, x, f):
    """Capture one optimisation step as a CUDA graph; ``None`` (and one warning) when capture is impossible."""
    global _graph_warned
    g = _Graph()
    try:
        g.static_x, g.static_f = x.clone(), f.clone()
        g.graph = torch.cuda.CUDAGraph()
        step.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(g.graph):
            g.static_out = step(g.static_x, g.static_f)
        g.replay = g.graph.replay
        return g
    except Exception as err:  # noqa: BLE001 — any capture failure: keep going eagerly
        if not _graph_warned:
            _graph_warned = True
            warnings.warn(f"idir_fast: CUDA graph capture failed ({type(err).__name__}: {err}); running the "
                          "loop with eager launches", RuntimeWarning, stacklevel=3)
        torch.cuda.synchronize()
        return None


def _check_and_report(history, epoch, bar, sync_every, log):
    recent = history[max(0, epoch + 1 - sync_every): epoch + 1].cpu()  # the loop's only host sync
    if not torch.isfinite(recent).all():
        bad = int(torch.nonzero(~torch.isfinite(recent).all(dim=1))[0, 0]) + max(0, epoch + 1 - sync_every)
        raise DivergenceError(f"the loss became non-finite at epoch {bad}; lower 'lr' or 'alpha' "
                              f"(last finite values: {history[max(0, bad - 1)].tolist()})")
    last = recent[-1].tolist()
    if bar is not None:
        bar.set_postfix(loss=f"{last[0]:.4f}", ncc=f"{-last[1]:.4f}", reg=f"{last[2]:.3g}", refresh=False)
        bar.update(epoch + 1 - bar.n)
    if log is not None:
        log(epoch, last)


def default_sync_every(epochs: int) -> int:
    return max(1, min(50, int(math.ceil(epochs / 20))))
