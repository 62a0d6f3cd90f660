"""Several pairs registered at once on one device: a leading pair dimension on the SIREN weights, the Adam state
and the point batches, so every layer is one batched matrix product over all pairs (``torch.func.vmap`` over the
derivative-stream forward).

The pairs share nothing but the kernels: the loss is the sum of the per-pair losses, whose parameters are
disjoint, and Adam is elementwise, so each pair follows exactly the trajectory it would follow alone with the
same seed (tested).
"""
from __future__ import annotations

import math
import time
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.func import vmap

from . import objectives
from .api import DEFAULT_LR, COMPAT_LR, environment, resolve_device, _summary
from .backends import resolve_backend
from .backends.torch_streams import derivatives_from_streams, siren_streams
from .engine import HISTORY_TERMS, DivergenceError, prepare_pair
from .io import InputError, as_image, as_mask
from .registration import Registration
from .siren import Siren


def _pair_args(item) -> dict:
    if isinstance(item, dict):
        return dict(item)
    if isinstance(item, (tuple, list)) and 2 <= len(item) <= 3:
        return dict(zip(("fixed", "moving", "mask"), item))
    raise InputError("register_many(): each pair must be a (fixed, moving[, mask]) tuple or a dict with 'fixed', "
                     f"'moving' and optionally 'mask', 'fixed_landmarks', 'moving_landmarks'; got {type(item).__name__}")


def auto_pairs_per_batch(num_points: int, hidden: Sequence[int], order: int, volume_voxels: int,
                         device: torch.device, dtype_bytes: int = 4) -> int:
    """How many pairs fit at once: 70 % of the free device memory over an estimate of one pair's footprint
    (stream activations saved for the backward, about 6 tensors of S·N·width per layer, plus the moving volume)."""
    S = (1, 4, 10)[order]
    per_pair = dtype_bytes * (6 * S * num_points * sum(hidden) + volume_voxels) + (1 << 20)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = _available_host_memory()
    return max(1, int(0.7 * free // per_pair))


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def register_many(pairs: Sequence, *, regularizer: Optional[str] = "bending", alpha: Optional[float] = None,
                  epochs: int = 2500, batch_size: int = 10_000, lr: Optional[float] = None,
                  hidden: Sequence[int] = (256, 256, 256), omega: float = 32.0, device=None, seed: int = 0,
                  pairs_per_batch: Optional[int] = None, compat: Optional[str] = None, init: Optional[str] = None,
                  normalisation: Optional[str] = None, dtype: torch.dtype = torch.float32,
                  progress: bool = True) -> List[Registration]:
    """Register many pairs, ``pairs_per_batch`` at a time (default: as many as fit in memory).

    Args:
        pairs: ``(fixed, moving[, mask])`` tuples or dicts (``fixed``, ``moving``, ``mask``, ``fixed_landmarks``,
            ``moving_landmarks``); images as for :func:`idir_fast.register`.
        seed: every pair uses this seed, so each result equals ``register(..., seed=seed)`` of that pair alone.
        other arguments: as :func:`idir_fast.register` (the ``torch`` derivative streams are used).

    Returns:
        one :class:`Registration` per pair, in order.
    """
    regularizer = objectives.check_regularizer(regularizer)
    compat = objectives.check_compat(compat)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InputError(f"'{name}' must be a positive integer, got {value!r}")
    if not pairs:
        raise InputError("'pairs' is empty")
    alpha = objectives.default_alpha(regularizer, compat) if alpha is None else float(alpha)
    lr = COMPAT_LR.get(compat, DEFAULT_LR) if lr is None else float(lr)
    init = init or ("idir-2022" if compat == "idir-2022" else "siren")
    normalisation = normalisation or ("per-axis" if compat == "idir-2022" else "isotropic")
    dev = resolve_device(device)
    order = objectives.derivative_order(regularizer)

    prepared = []
    for i, item in enumerate(pairs):
        a = _pair_args(item)
        fixed = as_image(a["fixed"], f"pairs[{i}].fixed")
        moving = as_image(a["moving"], f"pairs[{i}].moving")
        mask = as_mask(a.get("mask"), f"pairs[{i}].mask", fixed)
        prepared.append((prepare_pair(fixed, moving, mask, normalisation=normalisation, device=dev, dtype=dtype),
                         moving, mask, a))
    if pairs_per_batch is None:
        biggest = max(p.num_points for p, *_ in prepared)
        voxels = max(int(np.prod(p.moving.shape)) for p, *_ in prepared)
        pairs_per_batch = auto_pairs_per_batch(min(batch_size, biggest), hidden, order, voxels, dev)
    # pairs with the same effective batch size can share a batched step
    groups = {}
    for idx, (p, *_rest) in enumerate(prepared):
        groups.setdefault(min(batch_size, p.num_points), []).append(idx)
    results: List[Optional[Registration]] = [None] * len(prepared)
    for n_points, members in groups.items():
        for start in range(0, len(members), pairs_per_batch):
            chunk = members[start:start + pairs_per_batch]
            regs = _register_chunk([prepared[i] for i in chunk], regularizer, alpha, compat, epochs, n_points,
                                   lr, hidden, omega, init, normalisation, seed, dtype, dev, progress)
            for i, r in zip(chunk, regs):
                results[i] = r
    return results


def _register_chunk(items, regularizer, alpha, compat, epochs, batch, lr, hidden, omega, init, normalisation, seed,
                    dtype, dev, progress):
    t0 = time.perf_counter()
    P = len(items)
    order = objectives.derivative_order(regularizer)
    backend = resolve_backend("torch", dev)
    sirens = []
    for _ in items:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            sirens.append(Siren(hidden=hidden, omega=omega, init=init, dtype=dtype))
    n_params = len(sirens[0].parameter_list())
    params = [torch.nn.Parameter(torch.stack([s.parameter_list()[k].detach() for s in sirens]).to(dev))
              for k in range(n_params)]
    opt = torch.optim.Adam(params, lr=lr)
    gens = []
    for _ in items:
        g = torch.Generator(device=dev)
        g.manual_seed(int(seed))
        gens.append(g)
    affines = []
    for pair, *_ in items:
        n2mi = torch.as_tensor(pair.normalised_to_moving_index, dtype=dtype, device=dev)
        affines.append((n2mi[:3, :3].T.contiguous(), n2mi[:3, 3].contiguous()))
    streams = vmap(lambda p, x: siren_streams(p, float(omega), x, order), in_dims=(0, 0))
    history = torch.zeros(epochs, P, len(HISTORY_TERMS), dtype=dtype, device=dev)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc=f"IDIR ×{P} pairs", unit="epoch", dynamic_ncols=True)
    sync_every = max(1, min(50, math.ceil(epochs / 20)))
    t_loop = time.perf_counter()
    try:
        for epoch in range(epochs):
            xs, fs = [], []
            for (pair, *_), g in zip(items, gens):
                if batch == pair.num_points:
                    xs.append(pair.points)
                    fs.append(pair.fixed_values)
                else:
                    idx = torch.randperm(pair.num_points, generator=g, device=dev)[:batch]
                    xs.append(pair.points[idx])
                    fs.append(pair.fixed_values[idx])
            x = torch.stack(xs)
            u = streams(params, x)  # (P, S, N, 3)
            total = 0.0
            rows = []
            for i, (pair, *_) in enumerate(items):
                d = derivatives_from_streams(x[i], u[i], order)
                lin, off = affines[i]
                sim = -backend.similarity(pair.moving, d.phi @ lin + off, fs[i], compat)
                reg = (objectives.regularization(regularizer, d.J, d.H6, compat) if regularizer is not None
                       else torch.zeros((), dtype=dtype, device=dev))
                loss = sim + alpha * reg if regularizer is not None else sim
                total = total + loss
                rows.append(torch.stack([loss.detach(), sim.detach(), reg.detach()]))
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            history[epoch] = torch.stack(rows)
            if (epoch + 1) % sync_every == 0 or epoch + 1 == epochs:
                recent = history[max(0, epoch + 1 - sync_every):epoch + 1].cpu()
                if not torch.isfinite(recent).all():
                    raise DivergenceError(f"register_many(): the loss became non-finite near epoch {epoch}")
                if bar is not None:
                    bar.update(epoch + 1 - bar.n)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t_loop
    hist = history.cpu().numpy()
    out = []
    for i, (pair, moving, mask, args) in enumerate(items):
        s = Siren(hidden=hidden, omega=omega, init=init, dtype=dtype)
        with torch.no_grad():
            for dst, src in zip(s.parameter_list(), params):
                dst.copy_(src[i].detach().cpu())
        settings = {"regularizer": regularizer, "alpha": alpha, "epochs": epochs, "batch_size": batch, "lr": lr,
                    "hidden": list(hidden), "omega": float(omega), "init": init, "normalisation": normalisation,
                    "compat": compat, "backend": "torch", "device": str(dev), "seed": int(seed),
                    "dtype": str(dtype).replace("torch.", ""), "mask_voxels": pair.num_points,
                    "pairs_in_batch": P, "backward_passes_per_epoch": 1, "versions": environment(dev)}
        timings = {"optimise_s": seconds, "ms_per_epoch": 1000 * seconds / epochs, "shared_by_pairs": P,
                   "total_s": time.perf_counter() - t0}
        reg = Registration(s, pair.world_to_normalised, pair.fixed_geometry, settings,
                           {name: hist[:, i, k] for k, name in enumerate(HISTORY_TERMS)}, timings, moving=moving,
                           mask=mask)
        if args.get("fixed_landmarks") is not None:
            from .api import _landmarks
            from .metrics import tre

            fl, ml = _landmarks(args["fixed_landmarks"], args["moving_landmarks"])
            before, after = tre(fl, ml), tre(reg.transform_points(fl), ml)
            reg.metrics.update(tre_initial=_summary(before), tre=_summary(after),
                               tre_initial_errors=before["errors"], tre_errors=after["errors"])
        out.append(reg)
    return out


__all__ = ["register_many", "auto_pairs_per_batch"]
