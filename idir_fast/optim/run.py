"""From settings and prepared pairs to trained networks: builds the networks, the backend choice, the step and
the sampler, and runs :func:`idir_fast.optim.loop.run` — for one pair (any backend) or a batch of pairs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from .. import backends
from ..core.siren import Siren
from ..errors import InputError
from ..settings import RunSettings
from .loop import LoopResult, run
from .points import PointSampler
from .prepare import PreparedPair
from .step import BatchedStep, PairStep, SymmetricStep


@dataclass
class Trained:
    """Networks after the loop, with what the report needs.

    Attributes:
        sirens: one trained network per pair (on the training device).
        loop: the loop's result (history ``(epochs, P, 3)``).
        choice: the backend actually used (and why others were not).
        batch_size: points per step actually used.
    """

    sirens: List[Siren]
    loop: LoopResult
    choice: backends.BackendChoice
    batch_size: int

    def history(self, i: int) -> np.ndarray:
        return self.loop.history[:, i]


def new_siren(settings: RunSettings) -> Siren:
    """The initial network of a pair: seeded from ``settings.seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(settings.seed))
        try:
            siren = Siren(hidden=settings.hidden, omega=settings.omega, init=settings.init, dtype=settings.dtype)
        except ValueError as err:
            raise InputError(str(err)) from None
    return siren.to(settings.torch_device)


def _progress_label(settings: RunSettings, choice, n_pairs: int) -> str:
    what = settings.regularizer_spec.label if settings.regularizer else "no-reg"
    return f"IDIR {what} [{choice.name}]" + (f" ×{n_pairs} pairs" if n_pairs > 1 else "")


def optimise(pairs: Sequence[PreparedPair], settings: RunSettings, progress: bool = False,
             sync_debug: bool = False, fwd_to_bwd: Optional[np.ndarray] = None) -> Trained:
    """Train one network per pair, all in one loop (one pair: any backend; several: a batched step).

    Args:
        pairs: prepared pairs on ``settings.device``; with several pairs they must share the effective batch
            size ``min(batch_size, mask points)``.
        settings: resolved settings (:meth:`RunSettings.resolved`).
        progress: show a progress bar.
        sync_debug: fail on any host synchronisation of the replayed CUDA graph (GPU acceptance).
        fwd_to_bwd: for symmetric registration (two pairs: forward, backward), the 4×4 map from the forward
            network's frame to the backward one's; adds the cycle-consistency term (:class:`SymmetricStep`).
    """
    device = settings.torch_device
    batch = min(settings.batch_size, min(p.num_points for p in pairs))
    if fwd_to_bwd is None and len({min(settings.batch_size, p.num_points) for p in pairs}) != 1:
        raise ValueError("pairs of one batched step must share the effective batch size")
    choice = backends.select(settings.backend, device)
    sirens = [new_siren(settings) for _ in pairs]
    capturable = settings.loop == "fast" and device.type == "cuda"
    if fwd_to_bwd is not None:
        step = SymmetricStep(sirens, pairs, choice, settings, fwd_to_bwd, capturable=capturable)
    elif len(pairs) == 1:
        step = PairStep(sirens[0], pairs[0], choice, settings, capturable=capturable)
    else:
        step = BatchedStep(sirens, pairs, choice, settings, capturable=capturable)
    sampler = PointSampler([p.points for p in pairs], [p.fixed_values for p in pairs], batch, settings.seed)
    result = run(step, sampler, settings.epochs, device=device, loop=settings.loop,
                 progress=_progress_label(settings, step.choice, len(pairs)) if progress else None,
                 sync_debug=sync_debug)
    if isinstance(step, BatchedStep):
        for i, siren in enumerate(sirens):
            with torch.no_grad():
                for dst, src in zip(siren.parameter_list(), step.pair_parameters(i)):
                    dst.copy_(src)
    return Trained(sirens=sirens, loop=result, choice=step.choice, batch_size=batch)
