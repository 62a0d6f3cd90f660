"""The optimisation loop — one implementation for ``register`` and ``register_many``.

Per epoch: the sampler starts a new pass over the mask where needed (host side, device ops only), the step draws
its points and updates the network(s), and its losses go into a device tensor. The host reads that history only
every ``sync_every`` epochs (progress bar, divergence guard) and at the end. On CUDA (``loop="fast"``) the draw +
step is captured once as a CUDA graph after a few warm-up epochs and replayed; if capture fails the loop goes on
with eager launches and one warning. Everything runs under ``torch.cuda.device(device)``, so streams, graphs and
kernel launches use the tensors' GPU (``cuda:1`` works like ``cuda:0``).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import DivergenceError
from .points import PointSampler
from .step import HISTORY_TERMS

GRAPH_WARMUP = 3
_graph_warned = False


@dataclass
class LoopResult:
    """What the loop returns.

    Attributes:
        history: ``(epochs_run, P, 3)`` per-epoch ``loss``, ``similarity`` (−NCC), ``regularization`` per pair.
        seconds: wall time of the loop.
        epochs_run: epochs done.
        graph: whether the step ran as a replayed CUDA graph.
    """

    history: np.ndarray
    seconds: float
    epochs_run: int
    graph: bool


def default_sync_every(epochs: int) -> int:
    """Host reads of the loss history: about 20 per run, at most every 50 epochs."""
    return max(1, min(50, int(math.ceil(epochs / 20))))


def _device_scope(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def run(step, sampler: PointSampler, epochs: int, *, device: torch.device, loop: str = "fast",
        sync_every: Optional[int] = None, progress: Optional[str] = None,
        log: Optional[Callable[[int, list], None]] = None, sync_debug: bool = False,
        lr_at: Optional[Callable[[int], float]] = None, stop_rule=None, governor=None) -> LoopResult:
    """Run ``epochs`` steps of ``step`` on batches from ``sampler``.

    Args:
        step: a :class:`~idir_fast.optim.step.PairStep` or :class:`~idir_fast.optim.step.BatchedStep`.
        sampler: the pairs' point sampler.
        device: the training device.
        loop: ``"fast"`` (history on the device, read every ``sync_every`` epochs; CUDA graph on a GPU) or
            ``"eager"`` (reads the loss every epoch: the plain loop the fast one is tested against).
        sync_every: epochs between host reads (default: :func:`default_sync_every`).
        progress: a label to show a tqdm progress bar with; ``None`` for no bar.
        log: called as ``log(epoch, [loss, similarity, regularization] of pair 0)`` at every host read.
        sync_debug: on CUDA, run the replayed epochs under ``torch.cuda.set_sync_debug_mode("error")`` (any host
            synchronisation outside the periodic history read raises) — the GPU acceptance check.
        lr_at: the learning rate of each epoch (set on the device before the step; a CUDA graph reads it there).
        stop_rule: an object with ``converged(losses) → bool`` (:class:`~idir_fast.schedule.ConvergenceRule`)
            asked at every host read with the losses so far (summed over pairs); the loop then stops early.
        governor: a :class:`~idir_fast.threads.ThreadGovernor` told of every step (CPU runs: it may change the
            thread count between steps; results do not depend on it).

    Raises:
        DivergenceError: the loss became non-finite (names the epoch).
    """
    if loop not in ("fast", "eager"):
        raise ValueError(f"'loop' must be 'fast' or 'eager', got {loop!r}")
    device = torch.device(device)
    sync_every = 1 if loop == "eager" else (sync_every or default_sync_every(epochs))
    n_pairs = len(sampler.points)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc=progress, unit="step", dynamic_ncols=True, leave=True)
    with _device_scope(device):
        use_graph = loop == "fast" and device.type == "cuda"
        history = torch.zeros(epochs, n_pairs, len(HISTORY_TERMS), dtype=sampler.points[0].dtype, device=device)
        side = torch.cuda.Stream(device=device) if use_graph else None
        graph = static_out = None
        seen: list = []  # host copies of the history, for the stop rule
        epochs_run = epochs
        t0 = time.perf_counter()
        try:
            for epoch in range(epochs):
                with _sync_debug(sync_debug and graph is not None):
                    sampler.before_step()
                    if lr_at is not None:
                        set_lr(step.optimizer, lr_at(epoch))
                if use_graph and graph is None and epoch >= GRAPH_WARMUP:
                    graph, static_out = _capture(step, sampler, side)
                    use_graph = graph is not None
                if graph is not None:
                    with _sync_debug(sync_debug):
                        graph.replay()
                        history[epoch].copy_(static_out)
                elif use_graph:  # warm-up epochs run on a side stream, as capture requires
                    side.wait_stream(torch.cuda.current_stream(device))
                    with torch.cuda.stream(side):
                        history[epoch] = step(*sampler.draw())
                    torch.cuda.current_stream(device).wait_stream(side)
                else:
                    history[epoch] = step(*sampler.draw())
                if governor is not None:
                    governor.tick()
                if (epoch + 1) % sync_every == 0 or epoch + 1 == epochs:
                    seen.append(_check_and_report(history, epoch, bar, sync_every, log))
                    if stop_rule is not None and stop_rule.converged(np.concatenate(seen)[:, :, 0].sum(1)):
                        epochs_run = epoch + 1
                        break
        finally:
            if bar is not None:
                bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    return LoopResult(history=history[:epochs_run].cpu().numpy(), seconds=seconds, epochs_run=epochs_run,
                      graph=graph is not None)


def set_lr(optimizer, lr: float) -> None:
    """Set every group's learning rate: in place on the device when it is a tensor (capturable Adam, where a CUDA
    graph reads it), else the Python number."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


@contextlib.contextmanager
def _sync_debug(on: bool):
    if not on:
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _capture(step, sampler: PointSampler, side):
    """Capture draw + step as a CUDA graph; ``(None, None)`` and one warning when capture is impossible."""
    global _graph_warned
    try:
        graph = torch.cuda.CUDAGraph()
        step.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated from the graph's pool
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=side):
            out = step(*sampler.draw())
        return graph, out
    except Exception as err:  # noqa: BLE001 — any capture failure: keep going eagerly
        if not _graph_warned:
            _graph_warned = True
            warnings.warn(f"idir_fast: CUDA graph capture failed ({type(err).__name__}: {err}); running the "
                          "loop with eager launches", RuntimeWarning, stacklevel=3)
        torch.cuda.synchronize()
        return None, None


def _check_and_report(history, epoch, bar, sync_every, log):
    first = max(0, epoch + 1 - sync_every)
    recent = history[first: epoch + 1].cpu()  # the loop's only host read
    finite = torch.isfinite(recent).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = first + int(torch.nonzero(~finite)[0, 0])
        pairs = torch.nonzero(~torch.isfinite(recent[bad - first]).all(dim=-1)).flatten().tolist()
        where = f" (pair(s) {pairs} of this batch)" if recent.shape[1] > 1 else ""
        raise DivergenceError(f"the loss became non-finite at epoch {bad}{where}; lower 'lr' or 'alpha' "
                              f"(last finite values: {history[max(0, bad - 1), 0].tolist()})")
    last = recent[-1, 0].tolist()
    if bar is not None:
        bar.set_postfix(loss=f"{last[0]:.4f}", ncc=f"{-last[1]:.4f}", reg=f"{last[2]:.3g}", refresh=False)
        bar.update(epoch + 1 - bar.n)
    if log is not None:
        log(epoch, last)
    return recent.numpy()
