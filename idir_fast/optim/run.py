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
from ..schedule import ConvergenceRule, Probe
from .prepare import PreparedPair
from .step import HISTORY_TERMS, BatchedStep, PairStep, SymmetricStep, regularizer_points


@dataclass
class Trained:
    """Networks after the loop, with what the report needs.

    Attributes:
        sirens: one trained network per pair (on the training device).
        loop: the loop's result (history ``(epochs, P, 3)``).
        choice: the backend actually used (and why others were not).
        batch_size: points per step actually used (in the last stage).
        stages: per stage: epochs planned and run, points, smoothing, peak lr, seconds, whether it stopped early.
        probe: per pair, the schedule probe's finding (:meth:`Probe.record`), when the run had a probe; a run
            whose every pair escalates stops after the probe's stage.
    """

    sirens: List[Siren]
    loop: LoopResult
    choice: backends.BackendChoice
    batch_size: int
    stages: List[dict]
    probe: Optional[List[dict]] = None

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


def _stage_label(label: str, k: int, stages) -> str:
    if len(stages) == 1:
        return label
    blur = f", images blurred ({stages[k].smoothing:g} voxels)" if stages[k].smoothing else ", sharp images"
    return f"{label} stage {k + 1}/{len(stages)}{blur}"


def optimise(pairs: Sequence[PreparedPair], settings: RunSettings, progress: bool = False,
             sync_debug: bool = False, fwd_to_bwd: Optional[np.ndarray] = None, governor=None,
             probe: Optional[Probe] = None) -> Trained:
    """Train one network per pair, all in one loop (one pair: any backend; several: a batched step).

    Args:
        pairs: prepared pairs on ``settings.device``; with several pairs they must share the effective batch
            size ``min(batch_size, mask points)``.
        settings: resolved settings (:meth:`RunSettings.resolved`).
        progress: show a progress bar.
        sync_debug: fail on any host synchronisation of the replayed CUDA graph (GPU acceptance).
        fwd_to_bwd: for symmetric registration (two pairs: forward, backward), the 4×4 map from the forward
            network's frame to the backward one's; adds the cycle-consistency term (:class:`SymmetricStep`).
        governor: the run's :class:`~idir_fast.threads.ThreadGovernor` (CPU), started here and told of every step.
        probe: the schedule's probe (:class:`~idir_fast.schedule.Probe`): after its stage, each pair's NCC is
            recorded in :attr:`Trained.probe`; when every pair falls below it the remaining stages are skipped
            (the caller runs them again on the finer schedule).
    """
    device = settings.torch_device
    if fwd_to_bwd is None and len({min(settings.batch_size, p.num_points) for p in pairs}) != 1:
        raise ValueError("pairs of one batched step must share the effective batch size")
    stages = settings.stages()
    choice = backends.select(settings.backend, device)
    sirens = [new_siren(settings) for _ in pairs]
    capturable = settings.loop == "fast" and device.type == "cuda"
    if fwd_to_bwd is not None:
        step = SymmetricStep(sirens, pairs, choice, settings, fwd_to_bwd, capturable=capturable)
    elif len(pairs) == 1:
        step = PairStep(sirens[0], pairs[0], choice, settings, capturable=capturable)
    else:
        step = BatchedStep(sirens, pairs, choice, settings, capturable=capturable)
    label = _progress_label(settings, step.choice, len(pairs)) if progress else None
    results, record, found = [], [], None
    if governor is not None:
        governor.start()
    for k, stage in enumerate(stages):
        stage_pairs = [p.with_smoothing(stage.smoothing) for p in pairs]
        step.set_pairs(stage_pairs, stage.similarity)
        batch = min(stage.points, min(p.num_points for p in pairs))
        sampler = PointSampler([p.points for p in stage_pairs], [p.fixed_values for p in stage_pairs], batch,
                               settings.seed + k, weights=[p.sampling_weights(stage.sampling) for p in stage_pairs])
        rule = ConvergenceRule(settings.tol, min_epochs=max(100, stage.epochs // 2)) if settings.tol else None
        result = run(step, sampler, stage.epochs, device=device, loop=settings.loop,
                     progress=_stage_label(label, k, stages) if label else None,
                     sync_debug=sync_debug, lr_at=stage.lr_at, stop_rule=rule, governor=governor)
        sampler = None  # its buffers go before the next stage's are made
        results.append(result)
        record.append({"epochs": stage.epochs, "epochs_run": result.epochs_run, "points": batch,
                       "smoothing_voxels": stage.smoothing, "similarity": stage.similarity,
                       "sampling": stage.sampling, "lr": stage.lr,
                       "regularizer_points": regularizer_points(batch, settings.regularizer_share or 1.0),
                       "seconds": result.seconds,
                       "stopped_early": result.epochs_run < stage.epochs})
        if probe is not None and k == probe.stage and stage.similarity == "ncc":
            similarity = result.history[:, :, HISTORY_TERMS.index("similarity")]
            found = [probe.record(probe.ncc(similarity[:, i])) for i in range(similarity.shape[1])]
            if all(f["escalated_to"] for f in found):
                break
    if isinstance(step, BatchedStep):
        for i, siren in enumerate(sirens):
            with torch.no_grad():
                for dst, src in zip(siren.parameter_list(), step.pair_parameters(i)):
                    dst.copy_(src)
    loop = LoopResult(history=np.concatenate([r.history for r in results]), seconds=sum(r.seconds for r in results),
                      epochs_run=sum(r.epochs_run for r in results), graph=all(r.graph for r in results))
    return Trained(sirens=sirens, loop=loop, choice=step.choice, batch_size=record[-1]["points"], stages=record,
                   probe=found)
