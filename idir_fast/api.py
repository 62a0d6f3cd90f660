"""``idir_fast.register`` and ``idir_fast.register_many``: read and check the inputs, build one
:class:`~idir_fast.settings.RunSettings`, optimise (:mod:`idir_fast.optim`), and return
:class:`~idir_fast.registration.Registration` objects — the same path for one pair and for many."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from . import memory
from .core.geometry import ImageGeometry
from .core.metrics import tre
from .environment import environment
from .errors import InputError
from .io.images import ImageLike, as_image, as_mask
from .io.landmarks import read_points
from .io.transforms import matrix_to_transform, transform_matrix
from .optim.affine import affine_stage, pose_difference
from .optim.prepare import PreparedPair, prepare_pair
from .optim.run import Trained, optimise
from .optim.step import HISTORY_TERMS
from . import consistency
from .record import RunRecord
from .registration import Registration
from .transform import Network, Transform
from .settings import RunSettings, with_setting_parameters
from .threads import run_threads


@dataclass
class PairInputs:
    """One pair's inputs, read and checked (before any optimisation)."""

    fixed: sitk.Image
    moving: sitk.Image
    mask: Optional[sitk.Image]
    fixed_landmarks: Optional[np.ndarray] = None
    moving_landmarks: Optional[np.ndarray] = None
    paths: Dict[str, str] = field(default_factory=dict)
    moving_mask: Optional[sitk.Image] = None
    initial_transform: Optional[np.ndarray] = None  # 4×4 fixed-world → moving-world


def read_pair(fixed: ImageLike, moving: ImageLike, mask: Optional[ImageLike] = None, *, names=None, spacing=None,
              origin=None, direction=None, fixed_landmarks=None, moving_landmarks=None, moving_mask=None,
              initial_transform=None) -> PairInputs:
    """Read and validate one pair's images, masks, landmarks and starting transform; ``names`` prefixes argument
    names in errors."""
    label = (names or "{}").format
    geometry = dict(spacing=spacing, origin=origin, direction=direction)
    given = [k for k, v in geometry.items() if v is not None]
    if given and not any(isinstance(obj, np.ndarray) for obj in (fixed, moving)):
        raise InputError(f"'{given[0]}' applies to NumPy images only; 'fixed' and 'moving' are files or SimpleITK "
                         "images, which carry their own geometry (it would be ignored)")
    fixed_img = as_image(fixed, label("fixed"), **geometry)
    moving_img = as_image(moving, label("moving"), **geometry)
    mask_img = as_mask(mask, label("mask"), fixed_img)
    moving_mask_img = as_mask(moving_mask, label("moving_mask"), moving_img, "moving image")
    start = None if initial_transform is None else transform_matrix(initial_transform, label("initial_transform"))
    fl, ml = _landmarks(fixed_landmarks, moving_landmarks, label)
    paths = {f"{name}_path": os.path.abspath(os.fspath(obj)) for name, obj in
             (("fixed", fixed), ("moving", moving), ("mask", mask), ("moving_mask", moving_mask),
              ("initial_transform", initial_transform)) if isinstance(obj, (str, os.PathLike))}
    return PairInputs(fixed_img, moving_img, mask_img, fl, ml, paths, moving_mask_img, start)


def _landmarks(fixed_landmarks, moving_landmarks, label=str.format):
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError(f"'{label('fixed_landmarks')}' and '{label('moving_landmarks')}' must be given together")
    if fixed_landmarks is None:
        return None, None
    out = []
    for name, pts in (("fixed_landmarks", fixed_landmarks), ("moving_landmarks", moving_landmarks)):
        name = label(name)
        arr = read_points(pts, name) if isinstance(pts, (str, bytes, os.PathLike)) \
            else np.asarray(pts, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise InputError(f"'{name}' must have shape (N, 3), got {arr.shape}")
        if arr.shape[0] == 0:
            raise InputError(f"'{name}' holds no points")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"'{name}' contains NaN/Inf")
        out.append(arr)
    if out[0].shape != out[1].shape:
        raise InputError(f"'{label('fixed_landmarks')}' and '{label('moving_landmarks')}' must have the same number "
                         f"of points, got {len(out[0])} and {len(out[1])}")
    return out[0], out[1]


def _tre_summary(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "errors"}


@dataclass
class PreparedRun:
    """One pair made ready: the affine stage done, the pair(s) on the device (two for symmetric registration)."""

    pairs: List[PreparedPair]
    affine_info: Dict[str, Any]
    fwd_to_bwd: Optional[np.ndarray] = None


def prepare_run(inputs: PairInputs, settings: RunSettings) -> PreparedRun:
    """Affine stage (``settings.affine``, from the starting transform when given), then the forward pair and,
    with ``settings.symmetric``, the backward pair (moving → fixed) and the map between the two network frames.

    The backward pair draws its points from the moving mask; without one, from the fixed mask carried onto the
    moving grid by the affine part (the whole moving image when there is no fixed mask either).
    """
    A, info = inputs.initial_transform, {}
    run_affine = settings.affine == "auto"
    if settings.affine == "detect" and A is None:  # the images' moments say whether their poses differ
        pose = pose_difference(inputs.fixed, inputs.moving)
        run_affine, info = pose["differs"], {"pose": pose, "seconds": 0.0}
    if run_affine:
        A, stage = affine_stage(inputs.fixed, inputs.moving, inputs.mask, inputs.moving_mask, initial=A,
                                seed=settings.seed)
        info = {**info, **stage}
    common = dict(normalisation=settings.normalisation, device=settings.torch_device, dtype=settings.dtype)
    fwd = prepare_pair(inputs.fixed, inputs.moving, inputs.mask, world_affine=A, moving_mask=inputs.moving_mask,
                       **common)
    if not settings.symmetric:
        return PreparedRun([fwd], info)
    A = fwd.world_affine
    points_mask = inputs.moving_mask
    if points_mask is None and inputs.mask is not None:
        points_mask = sitk.Resample(inputs.mask, inputs.moving, matrix_to_transform(np.linalg.inv(A)),
                                    sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        if not np.any(sitk.GetArrayViewFromImage(points_mask)):
            points_mask = None
    bwd = prepare_pair(inputs.moving, inputs.fixed, points_mask, world_affine=np.linalg.inv(A),
                       moving_mask=inputs.mask if inputs.moving_mask is not None else None,
                       names=("moving", "fixed"), **common)
    return PreparedRun([fwd, bwd], info, bwd.world_to_normalised @ A @ np.linalg.inv(fwd.world_to_normalised))


def _result(i: int, trained: Trained, pair: PreparedPair, inputs: PairInputs, settings: RunSettings,
            timings: dict, t_start: float, extra: Optional[dict] = None, backward=None,
            governor=None) -> Registration:
    """The :class:`Registration` of pair ``i`` of a trained batch, its record made once: what the run used, the
    history, the timings (``total_s`` up to here), TRE when landmarks were given, the cycle consistency of a
    symmetric registration (``backward`` = ``(siren, backward pair)``)."""
    run = dict(trained.choice.record())
    run.update(batch_size=trained.batch_size, mask_voxels=pair.num_points, stages=trained.stages,
               backward_passes_per_epoch=trained.choice.backend.backward_passes(settings.order),
               cuda_graph=trained.loop.graph, versions=environment(settings.torch_device), **inputs.paths,
               **(extra or {}))
    if governor is not None:
        run["threads_used"] = governor.record()
    network = lambda siren, p: Network(siren, np.asarray(p.world_to_normalised, dtype=np.float64))  # noqa: E731
    transform = Transform(network(trained.sirens[i], pair), pair.fixed_geometry, world_affine=pair.world_affine,
                          moving_geometry=pair.moving_geometry,
                          backward=None if backward is None else network(*backward),
                          device=settings.torch_device)
    metrics = {}
    if backward is not None:
        metrics["consistency"] = consistency.consistency_summary(transform, inputs.mask, settings.consistency_flag_mm)
    if inputs.fixed_landmarks is not None:
        before = tre(inputs.fixed_landmarks, inputs.moving_landmarks)
        after = tre(transform.transform_points(inputs.fixed_landmarks), inputs.moving_landmarks)
        metrics.update(tre_initial=_tre_summary(before), tre=_tre_summary(after),
                       tre_initial_errors=before["errors"], tre_errors=after["errors"])
    history = {name: trained.history(i)[:, k] for k, name in enumerate(HISTORY_TERMS)}
    timings = dict(timings, total_s=time.perf_counter() - t_start)
    return Registration(transform, RunRecord(settings, run, history, timings, metrics), moving=inputs.moving,
                        mask=inputs.mask)


@with_setting_parameters
def register(fixed: ImageLike, moving: ImageLike, mask: Optional[ImageLike] = None, *, spacing=None, origin=None,
             direction=None, fixed_landmarks=None, moving_landmarks=None, moving_mask: Optional[ImageLike] = None,
             initial_transform=None, progress: bool = True, settings: Optional[RunSettings] = None,
             **options: Any) -> Registration:
    """Register ``moving`` to ``fixed``: find Φ with ``M(Φ(x)) ≈ F(x)`` on the fixed mask.

    Args:
        fixed, moving, mask: file path (NIfTI/MetaImage/NRRD/… or a DICOM folder), ``SimpleITK.Image``, or NumPy
            array in ``(z, y, x)`` order (then ``spacing``/``origin``/``direction`` give the geometry, in
            SimpleITK ``(x, y, z)`` order; a NumPy mask takes the fixed image's geometry). Points are drawn from
            voxels where ``mask > 0`` (all voxels when ``mask`` is None).
        fixed_landmarks, moving_landmarks: optional ``(N, 3)`` world points (LPS mm) or point files; when both
            are given the initial and final TRE are stored in ``metrics``.
        moving_mask: a mask on the moving image's grid: the similarity then counts only points whose Φ(x) falls
            inside it (and inside ``mask``).
        initial_transform: a starting fixed → moving transform (ITK ``.tfm``/``.txt``/``.h5``, ANTs ``.mat``, a
            ``SimpleITK.Transform`` or a 4×4 matrix); linear. With ``affine="auto"`` the affine stage starts from it,
            otherwise the SIREN models the residual after it.
        progress: show a tqdm progress bar with the current loss.
        settings: a :class:`~idir_fast.settings.RunSettings`; keyword ``options`` override its fields.
        **options: any field of :class:`~idir_fast.settings.RunSettings` — ``regularizer`` (``None``,
            ``"jacobian"``, ``"hyperelastic"``, ``"bending"``), ``alpha``, ``epochs``, ``batch_size``, ``lr``,
            ``hidden``, ``omega``, ``seed``, ``compat`` (``"idir-2022"``: the released code's quirks), ``init``,
            ``normalisation``, ``dtype``, ``device``, ``backend`` (``"auto"``, ``"reference"``, ``"torch"``,
            ``"triton"``), ``precision``, ``affine`` (``"auto"``: an affine stage first), ``symmetric`` (forward +
            backward networks with cycle consistency); defaults in :class:`~idir_fast.settings.RunSettings`, the
            measurements behind them in docs/measurements.md.

    Returns:
        :class:`~idir_fast.registration.Registration`.
    """
    t_start = time.perf_counter()
    requested = RunSettings.build(settings, "register", **options)
    settings = requested.resolved()
    with run_threads(settings.threads, settings.torch_device.type) as governor, torch.enable_grad():
        return _register(fixed, moving, mask, requested, settings, governor, t_start, progress=progress,
                         spacing=spacing, origin=origin, direction=direction, fixed_landmarks=fixed_landmarks,
                         moving_landmarks=moving_landmarks, moving_mask=moving_mask,
                         initial_transform=initial_transform)


def _register(fixed, moving, mask, requested: RunSettings, settings: RunSettings, governor, t_start: float, *,
              progress: bool, **inputs_kw) -> Registration:
    """:func:`register` after the settings are checked, inside the run's thread policy."""
    inputs = read_pair(fixed, moving, mask, **inputs_kw)
    check_memory(inputs, settings)
    run = prepare_run(inputs, settings)
    t_prepared = time.perf_counter()
    probe = schedule_probe(requested, settings)
    if probe is not None and not _fits(inputs, switched_settings(requested, probe)):
        probe = None  # the finer schedule would not fit in memory: stay on this one
    trained = optimise(run.pairs, settings, progress=progress, fwd_to_bwd=run.fwd_to_bwd, governor=governor,
                       probe=probe)
    extra, probe_s = _affine_record(run), 0.0
    if trained.probe is not None:
        found = _pair_probe(trained.probe)
        extra["schedule_probe"] = found
        if found["escalated_to"]:
            probe_s = found["seconds"] = trained.loop.seconds
            settings = switched_settings(requested, probe)
            trained = optimise(run.pairs, settings, progress=progress, fwd_to_bwd=run.fwd_to_bwd,
                               governor=governor)
    timings = {"prepare_s": t_prepared - t_start, "optimise_s": trained.loop.seconds + probe_s,
               "ms_per_epoch": 1000.0 * trained.loop.seconds / max(trained.loop.epochs_run, 1)}
    if run.affine_info:
        timings["affine_s"] = run.affine_info["seconds"]
    backward = (trained.sirens[1], run.pairs[1]) if settings.symmetric else None
    return _result(0, trained, run.pairs[0], inputs, settings, timings, t_start, extra=extra,
                   backward=backward, governor=governor)


#: settings a schedule chooses: a caller who sets one has chosen the run's size or objective themselves (e.g.
#: the global NCC alone, for throughput), and the schedule's probe does not change it
_SCHEDULE_CHOICES = ("hidden", "omega", "epochs", "batch_size", "lr", "lncc_spacing")


def schedule_probe(requested: RunSettings, settings: RunSettings):
    """The schedule's probe (:class:`~idir_fast.schedule.Probe`) for this run, or ``None``: none when the
    schedule has none, when a compat mode runs its own, or when the caller chose the size or the similarity."""
    probe = settings.profile.probe
    if (probe is None or requested.compat is not None or requested.similarity != "auto"
            or any(getattr(requested, k) is not None for k in _SCHEDULE_CHOICES)):
        return None
    return probe


def switched_settings(requested: RunSettings, probe) -> RunSettings:
    """The settings a pair the probe switches runs on: the caller's, on the probe's schedule."""
    return requested.replace(schedule=probe.schedule).resolved()


def _pair_probe(found: List[dict]) -> dict:
    """One pair's probe finding (the lower NCC); a symmetric pair (forward and backward networks) escalates when
    both directions do, as :func:`~idir_fast.optim.run.optimise` stops early only then."""
    worst = min(found, key=lambda f: f["ncc"])
    return dict(worst, escalated_to=worst["escalated_to"] if all(f["escalated_to"] for f in found) else None)


def _affine_record(run: PreparedRun) -> dict:
    info = {k: v for k, v in run.affine_info.items() if k != "seconds"}
    out = {"world_affine": run.pairs[0].world_affine.tolist()}
    if info:
        out["affine_stage"] = info
    return out


def _pair_args(i: int, item) -> dict:
    if isinstance(item, dict):
        unknown = set(item) - {"fixed", "moving", "mask", "fixed_landmarks", "moving_landmarks", "moving_mask",
                               "initial_transform"}
        if unknown or not {"fixed", "moving"} <= set(item):
            raise InputError(f"'pairs[{i}]' must have keys 'fixed', 'moving' and optionally 'mask', "
                             f"'fixed_landmarks', 'moving_landmarks', 'moving_mask', 'initial_transform'; "
                             f"got {sorted(item)}")
        return dict(item)
    if isinstance(item, (tuple, list)) and 2 <= len(item) <= 3:
        return dict(zip(("fixed", "moving", "mask"), item))
    raise InputError(f"'pairs[{i}]' must be a (fixed, moving[, mask]) tuple or a dict with 'fixed', 'moving' and "
                     f"optionally 'mask', 'fixed_landmarks', 'moving_landmarks'; got {type(item).__name__}")


def memory_estimate(inputs: PairInputs, settings: RunSettings) -> Dict[str, int]:
    """Estimated peak bytes of one registration (resolved ``settings``) by part: :func:`idir_fast.memory.run_bytes`."""
    fg, mg = ImageGeometry.from_sitk(inputs.fixed), ImageGeometry.from_sitk(inputs.moving)
    nf = int(np.prod(fg.size))
    points = nf if inputs.mask is None else int(np.count_nonzero(sitk.GetArrayViewFromImage(inputs.mask)))
    return memory.run_bytes(mask_points=points, fixed_voxels=nf, moving_voxels=int(np.prod(mg.size)),
                            batch=settings.batch_size, hidden=settings.hidden, order=settings.order,
                            dtype_bytes=torch.tensor([], dtype=settings.dtype).element_size(),
                            device=settings.torch_device, symmetric=settings.symmetric,
                            sampling=settings.sampling)


def _fits(inputs: PairInputs, settings: RunSettings) -> bool:
    try:
        check_memory(inputs, settings)
    except InputError:
        return False
    return True


def check_memory(inputs: PairInputs, settings: RunSettings) -> None:
    """Refuse a run whose estimated peak memory (:func:`memory_estimate`) exceeds what the machine has free, before
    any work, with an :class:`InputError` naming the argument to change (``memory_check=False`` skips this)."""
    memory.check_run(memory_estimate(inputs, settings), settings.torch_device, batch_size=settings.batch_size,
                     hidden=settings.hidden, grid="×".join(map(str, inputs.fixed.GetSize())),
                     enabled=settings.memory_check)


@with_setting_parameters
def register_many(pairs: Sequence, *, pairs_per_batch: Optional[int] = None, progress: bool = True,
                  settings: Optional[RunSettings] = None, **options: Any) -> List[Registration]:
    """Register many pairs on one device, ``pairs_per_batch`` at a time (default: as many as fit in memory).

    With the ``torch`` backend (the default on CPU, and what ``"auto"`` uses here) the pairs of a batch share one
    batched step: a leading pair dimension on the weights, the Adam state and the point batches. Each pair then
    follows the trajectory it follows alone with the same seed (tested). Other backends run the pairs one after
    another through the same loop.

    Args:
        pairs: ``(fixed, moving[, mask])`` tuples or dicts (``fixed``, ``moving``, ``mask``, ``fixed_landmarks``,
            ``moving_landmarks``); images as for :func:`idir_fast.register`.
        pairs_per_batch: pairs per batched step.
        settings, **options: as :func:`idir_fast.register` (the same validation, the same messages).

    Returns:
        one :class:`Registration` per pair, in order.
    """
    requested = RunSettings.build(settings, "register_many", **options)
    settings = requested.resolved()
    if not pairs:
        raise InputError("'pairs' is empty")
    if pairs_per_batch is not None and (isinstance(pairs_per_batch, bool) or not isinstance(pairs_per_batch, int)
                                        or pairs_per_batch < 1):
        raise InputError(f"'pairs_per_batch' must be a positive integer, got {pairs_per_batch!r}")
    inputs = [read_pair(**_pair_args(i, item), names=f"pairs[{i}].{{}}") for i, item in enumerate(pairs)]
    with run_threads(settings.threads, settings.torch_device.type) as governor, torch.enable_grad():
        return _register_many(inputs, requested, settings, governor, pairs_per_batch, progress)


def _register_many(inputs: List[PairInputs], requested: RunSettings, settings: RunSettings, governor,
                   pairs_per_batch: Optional[int], progress: bool) -> List[Registration]:
    """:func:`register_many` after the inputs are read, inside the run's thread policy."""
    runs = [prepare_run(p, settings) for p in inputs]
    prepared = [r.pairs[0] for r in runs]
    batched = settings.backend in ("auto", "torch") and settings.loop == "fast" and not settings.symmetric
    if not batched:  # other backends, and symmetric pairs (already two networks each), go one at a time
        pairs_per_batch = 1
    elif pairs_per_batch is None:
        pairs_per_batch = _pairs_per_batch(settings, prepared)
    # pairs with the same effective batch size can share a batched step
    groups: Dict[int, List[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault(min(settings.batch_size, p.num_points), []).append(i)
    run_settings = settings.replace(backend="torch") if batched and settings.backend == "auto" else settings
    probe = schedule_probe(requested, settings)
    results: List[Optional[Registration]] = [None] * len(prepared)
    for members in groups.values():
        for start in range(0, len(members), pairs_per_batch):
            chunk = members[start:start + pairs_per_batch]
            t0 = time.perf_counter()
            trained = _optimise_chunk(runs, chunk, run_settings, progress, governor, probe)
            found = ([_pair_probe(trained.probe)] if settings.symmetric else [_pair_probe([f]) for f in trained.probe]
                     ) if trained.probe is not None else [None] * len(chunk)

            # the pairs that stay are done now (their total_s ends here); the pairs the probe sends to the finer
            # schedule run again on it, batched as its network and batch sizes allow
            again = [i for i, f in zip(chunk, found) if f and f["escalated_to"]]
            for k, i in enumerate(chunk):
                if i not in again:
                    results[i] = _batch_result(i, k, settings, trained, len(chunk), runs, inputs, found[k], t0,
                                               governor)
            if not again:
                continue
            finer = switched_settings(requested, probe)
            finer_run = finer.replace(backend="torch") if batched and finer.backend == "auto" else finer
            per_batch = min(pairs_per_batch, _pairs_per_batch(finer, [prepared[i] for i in again]))
            regrouped: Dict[int, List[int]] = {}
            for i in again:
                found[chunk.index(i)]["seconds"] = trained.loop.seconds
                regrouped.setdefault(min(finer.batch_size, prepared[i].num_points), []).append(i)
            for same in regrouped.values():
                for first in range(0, len(same), per_batch):
                    sub = same[first:first + per_batch]
                    retrained = _optimise_chunk(runs, sub, finer_run, progress, governor, None)
                    for k, i in enumerate(sub):
                        results[i] = _batch_result(i, k, finer, retrained, len(sub), runs, inputs,
                                                   found[chunk.index(i)], t0, governor, probe_s=trained.loop.seconds)
    return results


def _batch_result(i: int, index: int, used: RunSettings, trained: Trained, shared: int, runs: List[PreparedRun],
                  inputs: List[PairInputs], probe_found: Optional[dict], t_start: float, governor,
                  probe_s: float = 0.0) -> Registration:
    """The :class:`Registration` of pair ``i`` of :func:`register_many`: network ``index`` of ``trained``, a batch of
    ``shared`` pairs run on ``used``; ``probe_s``: the seconds of a first try the probe ended."""
    timings = {"optimise_s": trained.loop.seconds + probe_s,
               "ms_per_epoch": 1000.0 * trained.loop.seconds / max(trained.loop.epochs_run, 1),
               "shared_by_pairs": shared}
    if runs[i].affine_info:
        timings["affine_s"] = runs[i].affine_info["seconds"]
    backward = (trained.sirens[1], runs[i].pairs[1]) if used.symmetric else None
    extra = {"pairs_in_batch": shared, "backend_requested": used.backend, **_affine_record(runs[i])}
    if probe_found is not None:
        extra["schedule_probe"] = probe_found
    return _result(index, trained, runs[i].pairs[0], inputs[i], used, timings, t_start, extra=extra,
                   backward=backward, governor=governor)


def _pairs_per_batch(settings: RunSettings, prepared: List[PreparedPair]) -> int:
    """How many of ``prepared`` fit in one batched step of ``settings`` (:func:`idir_fast.memory.pairs_per_batch`)."""
    return memory.pairs_per_batch(min(settings.batch_size, max(p.num_points for p in prepared)), settings.hidden,
                                  settings.order, max(int(np.prod(p.moving.shape)) for p in prepared),
                                  settings.torch_device)


def _optimise_chunk(runs: List[PreparedRun], chunk: List[int], settings: RunSettings, progress: bool, governor,
                    probe) -> Trained:
    """One batched step over the pairs ``chunk`` of ``runs`` (a symmetric pair: its two networks)."""
    if settings.symmetric:
        return optimise(runs[chunk[0]].pairs, settings, progress=progress, fwd_to_bwd=runs[chunk[0]].fwd_to_bwd,
                        governor=governor, probe=probe)
    return optimise([runs[i].pairs[0] for i in chunk], settings, progress=progress, governor=governor, probe=probe)


__all__ = ["register", "register_many", "read_pair", "PairInputs"]
