"""Schedules: the stages of one optimisation, and how the network is sized for the device.

A stage trains the same network(s) for a number of steps on images smoothed by a Gaussian of ``smoothing``
voxels (of the fixed image's largest spacing), with ``points`` per step and a learning rate that warms up
linearly and decays by a cosine to 5 % of its peak; a stage ends early when the loss stops improving (the
``tol`` rule of :class:`ConvergenceRule`). Coarse stages see blurred images, so the network first captures the
large, smooth motion (a wide capture range, as the image pyramids of ANTs and elastix), then the fine stage
registers the sharp images.

Named schedules (``RunSettings.schedule``):

* ``"paper"`` — one stage: the paper's settings (3×256, 10,000 points × 2500 steps, constant lr 1e-4, no early
  stop, the released code's initialisation scheme "siren"). Its accuracy is the package's reference figure.
* ``"auto"`` — sized for the device (:data:`AUTO`): on a CPU a small network, few points and two stages (blurred
  images on the global NCC, then sharp ones on the global + local NCC), measured against ANTs and elastix on the
  same machine; on a GPU, for now, the paper's schedule (no GPU has measured a staged one yet). On a CPU its first
  stage is also a probe (:class:`Probe`): a pair that the small network cannot bring close on the blurred images
  (an inter-subject pair, anatomy that differs) is run again on ``"fine"``.
* ``"fast"`` — ``"auto"`` without the probe: always the small network (cohorts of same-subject pairs, where the
  probe would never fire anyway, or a fixed time per pair).
* ``"fine"`` — :data:`FINE`: on a CPU a wider network, three times the steps and the local NCC in the sharp stage,
  for inter-subject pairs where the last points of overlap matter more than time; on a GPU the paper's.

Explicit ``epochs``, ``batch_size`` or ``lr`` override a schedule: ``epochs`` is the total (spread over the stages
in the schedule's proportions), ``batch_size`` the last stage's points (earlier stages scaled alike), ``lr`` the
peak learning rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import numpy as np


#: how a stage draws its points (:class:`idir_fast.optim.points.PointSampler`)
SAMPLINGS = ("uniform", "gradient")


@dataclass(frozen=True)
class Stage:
    """One stage: ``epochs`` steps of ``points`` points on images smoothed by ``smoothing`` voxels, peak ``lr``,
    the image ``similarity`` (:data:`idir_fast.core.objectives.SIMILARITIES`), the points drawn by ``sampling``
    (:data:`SAMPLINGS`: ``"uniform"`` over the mask, or ``"gradient"``, in proportion to the
    fixed image's gradient magnitude)."""

    epochs: int
    points: int
    smoothing: float
    lr: float
    warmup: int = 0
    constant_lr: bool = False
    similarity: str = "ncc"
    sampling: str = "uniform"

    def lr_at(self, epoch: int) -> float:
        """Linear warm-up over ``warmup`` steps, then a cosine from the peak to 5 % of it (or constant)."""
        if self.constant_lr:
            return self.lr
        if epoch < self.warmup:
            return self.lr * (epoch + 1) / self.warmup
        t = (epoch - self.warmup) / max(1, self.epochs - self.warmup)
        return self.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))


@dataclass(frozen=True)
class Probe:
    """A schedule's choice between itself and a finer one, made from the run's own first stage.

    After stage ``stage`` (the global NCC on blurred images), the pair's NCC — the mean over the stage's last
    ``window`` steps, each a fresh point batch — tells how far the small network got. Same-subject pairs reach
    0.95–1.0 there (0.95: a brain under an 8 mm sine, where ``"auto"`` beats ``"fine"``); an inter-subject brain
    pair stays near 0.86 and gains Dice from a wider network and more steps (docs/measurements.md). Below
    ``min_ncc`` the pair is run again, from the start, on ``schedule``; the probe's steps are lost (a sixth of
    ``"auto"``'s time; in a batch of :func:`~idir_fast.register_many` where only some pairs switch, the batch's
    whole run).
    """

    stage: int
    min_ncc: float
    schedule: str
    window: int = 20

    def ncc(self, similarity: np.ndarray) -> float:
        """The probe's NCC from a stage's per-step similarity history (−NCC) of one pair."""
        return float(-np.mean(similarity[-self.window:]))

    def record(self, ncc: float) -> dict:
        """What the report keeps: the NCC, the threshold, and the schedule the pair goes on to (``None``: stays)."""
        return {"ncc": ncc, "min_ncc": self.min_ncc, "after_stage": self.stage + 1,
                "escalated_to": self.schedule if ncc < self.min_ncc else None}


@dataclass(frozen=True)
class Profile:
    """A schedule for one kind of device: network, ω, and the stages as (share of epochs, share of points,
    smoothing in voxels, similarity)."""

    hidden: Tuple[int, ...]
    omega: float
    epochs: int
    points: int
    lr: float
    stages: Tuple[Tuple[float, float, float, str], ...]
    tol: Optional[float]
    init: str = "identity"
    warmup: int = 20
    constant_lr: bool = False
    lncc_spacing: float = 2.0
    regularizers: Dict[str, Dict[str, float]] = field(default_factory=dict)
    """Per regulariser, what differs from the profile for it: ``alpha`` (its weight under this schedule, instead
    of the compat table's), ``omega``, ``tol`` (its stopping rule), ``regularizer_share`` (the share of each
    step's points it is evaluated at; 1 otherwise)."""
    probe: Optional[Probe] = None
    """When set, the run may switch to a finer schedule after the probe's stage (:class:`Probe`)."""
    fold_guard: float = 0.0
    """Weight of the fold guard (:func:`idir_fast.core.objectives.fold_guard_penalty`) added to the loss."""


PAPER = Profile(hidden=(256, 256, 256), omega=32.0, epochs=2500, points=10_000, lr=1e-4,
                stages=((1.0, 1.0, 0.0, "ncc"),), tol=None, init="siren", warmup=0, constant_lr=True)

# first-order penalties do not damp curvature: a lower ω keeps the SIREN from fitting noise; with the local NCC
# in the sharp stage ω 24 (16 before it) (benchmarks/results/peers_20261202T073659Z.json, docs/measurements.md)
_FIRST_ORDER = {"jacobian": {"omega": 24.0}, "hyperelastic": {"omega": 24.0, "alpha": 0.1}}

AUTO: Dict[str, Profile] = {
    # measured with benchmarks/peers on the 2-core CPU (docs/measurements.md): a small network, few points, a
    # blurred stage on the global NCC (the large motion), then the sharp images on the global + local NCC (the
    # fine alignment; the local term alone loses on smooth textures)
    "cpu": Profile(hidden=(48, 48, 48), omega=32.0, epochs=400, points=1500, lr=5e-4,
                   stages=((0.4, 0.5, 2.0, "ncc"), (0.6, 1.0, 0.0, "ncc+lncc")), tol=1e-4,
                   regularizers=_FIRST_ORDER, probe=Probe(stage=0, min_ncc=0.92, schedule="fine")),
    # on a GPU the paper's schedule until a GPU session measures a staged one (idir-fast doctor --gpu-acceptance)
    "cuda": PAPER,
}

FAST: Dict[str, Profile] = {device: replace(profile, probe=None) for device, profile in AUTO.items()}

# the sharp local-NCC stage pulls harder: the Jacobian penalty at 0.05 let 0.3 % of the inter-subject brain fold
# (4,320 voxels), 0.3 none (Dice 0.717); hyperelastic stays at 0.1 (0.05: +0.01 Dice, 0.03 diverges)
# (benchmarks/results/peers_20261203T120321Z.json, peers_20261203T120450Z.json, peers_20261203T121521Z.json)
_FIRST_ORDER_FINE = {**_FIRST_ORDER, "jacobian": {"omega": 24.0, "alpha": 0.3}}

# the bending energy at 1.5e-4 (3.3e-4 elsewhere) with the fold guard at 10: the inter-subject brain's cortex reaches
# ANTs' Dice; without the guard 2e-4 already folds 114 voxels (peers_20261203T121521Z.json), with it the few
# regions that folded stay above det J 0.1 (docs/measurements.md, "the fold guard")
_FINE_REGULARIZERS = {**_FIRST_ORDER_FINE, "bending": {"alpha": 1.5e-4}}

FINE: Dict[str, Profile] = {
    # 2–3× the time of "auto" on the CPU for the inter-subject brain's last Dice points: a wider network, three
    # times the steps, the sharp stage on the local NCC of 7-voxel windows; 80 wide: the narrowest with the Dice
    # of ANTs SyN and no folds there (ω 40 or 96 wide: more Dice, folds; docs/measurements.md)
    "cpu": Profile(hidden=(80, 80, 80), omega=32.0, epochs=1200, points=1500, lr=5e-4,
                   stages=((0.4, 0.5, 2.0, "ncc"), (0.6, 1.0, 0.0, "lncc")), tol=1e-4, lncc_spacing=3.0,
                   regularizers=_FINE_REGULARIZERS, fold_guard=10.0),
    "cuda": PAPER,
}

#: every named schedule's profiles, per device type (the first one is the fallback for other devices)
TABLES: Dict[str, Dict[str, Profile]] = {"auto": AUTO, "fast": FAST, "fine": FINE,
                                         "paper": {"cpu": PAPER, "cuda": PAPER}}
SCHEDULES = tuple(TABLES)


def profile_for(schedule: str, device_type: str) -> Profile:
    table = TABLES.get(schedule, AUTO)
    return table.get(device_type, table["cpu"])


def schedule_fingerprint(schedule: str) -> dict:
    """What ``schedule`` is on every device, and what its probe may switch to: a cohort folder run under one
    version of the schedules does not resume silently under another."""
    from dataclasses import asdict

    table = TABLES.get(schedule, AUTO)
    out = {dev: asdict(profile) for dev, profile in table.items()}
    for dev, profile in table.items():
        if profile.probe is not None:
            out[f"{dev} → {profile.probe.schedule}"] = asdict(profile_for(profile.probe.schedule, dev))
    return out


def build_stages(profile: Profile, epochs: Optional[int] = None, points: Optional[int] = None,
                 lr: Optional[float] = None, similarity: Optional[str] = None,
                 sampling: str = "uniform") -> List[Stage]:
    """The stages of ``profile``, with explicit ``epochs`` (total), ``points`` (last stage), ``lr`` (peak) or
    ``similarity`` (every stage; ``None``/``"auto"``: the profile's); every stage draws its points by ``sampling``."""
    total = int(epochs or profile.epochs)
    last_points = int(points or profile.points)
    peak = float(lr or profile.lr)
    shares = np.array([s[0] for s in profile.stages], dtype=float)
    counts = np.maximum(1, np.floor(total * shares / shares.sum()).astype(int))
    counts[-1] = max(1, total - int(counts[:-1].sum())) if len(counts) > 1 else total
    out = []
    for (share, point_share, smoothing, own_similarity), n in zip(profile.stages, counts):
        out.append(Stage(epochs=int(n), points=max(1, int(round(last_points * point_share))), smoothing=smoothing,
                         lr=peak, warmup=min(profile.warmup, int(n) // 4), constant_lr=profile.constant_lr,
                         similarity=own_similarity if similarity in (None, "auto") else similarity,
                         sampling=sampling))
    return out


class ConvergenceRule:
    """Stop a stage when the loss has stopped improving: the mean loss of the last ``window`` steps is compared
    with the mean of the ``window`` before; the stage ends when the improvement, relative to the loss's spread
    over the stage so far, falls below ``tol`` per step (checked at the loop's host reads only)."""

    def __init__(self, tol: Optional[float], window: int = 50, min_epochs: int = 100):
        self.tol, self.window, self.min_epochs = tol, window, min_epochs

    def converged(self, losses: np.ndarray) -> bool:
        """``losses``: the stage's summed loss per epoch so far (host array)."""
        if not self.tol or len(losses) < max(self.min_epochs, 2 * self.window):
            return False
        recent = losses[-self.window:].mean()
        before = losses[-2 * self.window:-self.window].mean()
        scale = max(float(np.ptp(losses)), 1e-12)
        return (before - recent) / (scale * self.window) < self.tol
