"""Memory: how much there is, how much a run needs, and the checks that refuse a run that cannot fit — before any
work, with an :class:`~idir_fast.errors.InputError` naming the argument to change.

One reading of free memory (:func:`available_host_memory`: Linux ``MemAvailable``, capped by the cgroup limit a
container or a scheduler sets) and one set of estimates, used by reading, training, batching, writing and cohort
planning alike. The estimates are deliberately simple formulas, each written once here:

* reading an image: its voxels as stored plus the float32 copy the run works on (:func:`read_bytes`);
* the pair on the training device: about 100 bytes per mask point at their peak, and the moving volume twice
  (:func:`pair_bytes`);
* training: the stream activations kept for the backward, about 6 tensors of ``S·batch·width`` per layer, plus the
  weights and Adam's state (:func:`training_bytes`);
* writing the outputs: a vector field assembled on the host (36 bytes per voxel, 48 with the float64 field of an
  ITK transform) and one chunk of network streams on the device (:func:`output_bytes`).
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from .core.derivatives import num_streams
from .errors import InputError

CHUNK_POINTS = {"cpu": 1 << 16, "cuda": 1 << 18}
"""The most points evaluated at once per device type when writing fields: bounds the memory of field evaluation."""

CPU_CHUNK_PER_THREAD = 1 << 12
"""Grid points per CPU thread in one chunk: a chunk's streams (4 × width floats per point for det J) then stay
in the core's L2 cache (``python -m benchmarks.grid_pass``; benchmarks/results/grid_pass_20261203T140435Z.json,
grid_pass_20261203T140500Z.json)."""


def chunk_points(device_type: str) -> int:
    """Points per chunk of a grid pass on ``device_type`` (a CPU's scales with the threads torch uses now)."""
    if device_type == "cpu":
        return min(CHUNK_POINTS["cpu"], CPU_CHUNK_PER_THREAD * max(1, torch.get_num_threads()))
    return CHUNK_POINTS.get(device_type, 1 << 16)


def checks_enabled(setting: Optional[bool] = None) -> bool:
    """Whether to check: the run's ``RunSettings.memory_check`` when given, else that field's default (on, unless
    ``IDIR_FAST_NO_MEMORY_CHECK=1``, :mod:`idir_fast.config`)."""
    if setting is not None:
        return bool(setting)
    from .config import setting_default

    found, value = setting_default("memory_check")
    return bool(value) if found else True


# ------------------------------------------------------------------------------------------------ what there is
def available_host_memory() -> int:
    """Bytes of host memory available to a new allocation (Linux ``MemAvailable``, capped by a cgroup limit
    less its reclaimable page cache); a huge number where it cannot be known, so no run is refused on a guess."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    for base, limit_name, usage_name, cache_key in (
            ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")):
        try:
            limit = Path(base, limit_name).read_text().strip()
            usage = int(Path(base, usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            cache = 0  # page cache the kernel reclaims before it kills
            with contextlib.suppress(OSError, ValueError):
                for line in Path(base, "memory.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == cache_key:
                        cache = int(value)
            room = max(0, int(limit) - usage + cache)
            avail = room if avail is None else min(avail, room)
        break
    return avail if avail is not None else 1 << 62  # unknown (not Linux): no refusal on a guess


def device_free_memory(device) -> int:
    """Free bytes on ``device``: the GPU's free memory, or the host's available memory for the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    return available_host_memory()


def human_bytes(n: int) -> str:
    """``1536`` → ``"1.5 KiB"``, ``512`` → ``"512 bytes"``."""
    v = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "bytes" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TiB"


# ------------------------------------------------------------------------------------------------ estimates
def read_bytes(voxels: int, components: int = 1) -> int:
    """Reading an image: the voxels as stored (at most 8 bytes each) plus the float32 copy the run works on."""
    return int(voxels) * (8 * max(1, int(components)) + 4)


GRADIENT_SAMPLING_BYTES = 40
"""Bytes per mask point that gradient sampling adds: the weights and their cumulative sum while the sampler is made,
then the cumulative sum, the uniform draws and the drawn indices (float64/int64 each)."""


def pair_bytes(mask_points: int, moving_voxels: int, dtype_bytes: int, sampling: str = "uniform") -> int:
    """A prepared pair: the mask's points and values (~100 bytes per point at their peak, more with gradient
    sampling) and the moving volume (and its smoothed copy)."""
    per_point = 100 + (GRADIENT_SAMPLING_BYTES if sampling == "gradient" else 0)
    return int(mask_points) * per_point + int(moving_voxels) * 2 * int(dtype_bytes)


def network_parameters(hidden: Sequence[int]) -> int:
    widths = [3] + [int(w) for w in hidden] + [3]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def training_bytes(batch: int, hidden: Sequence[int], order: int, dtype_bytes: int, networks: int = 1) -> int:
    """One step of training: the stream activations kept for the backward (about 6 tensors of ``S·batch·width``
    per layer), the weights and Adam's two moments, per network."""
    per_network = 6 * num_streams(order) * int(batch) * sum(int(w) for w in hidden) + 4 * network_parameters(hidden)
    return int(networks) * int(dtype_bytes) * per_network


def output_bytes(fixed_voxels: int, moving_voxels: Optional[int], hidden: Sequence[int], dtype_bytes: int, device,
                 *, itk_transform: bool = False, inverse: bool = False) -> Dict[str, int]:
    """Writing a run's outputs: ``host`` (a vector field assembled in NumPy, its SimpleITK image and the writer's
    copy: 36 bytes per fixed voxel, 48 with the float64 field of the ITK transform; the inverse field likewise per
    moving voxel) and ``device`` (one chunk of network streams — 4 streams for det J, ~5 live — and the moving volume
    in float64 for ``Warped``)."""
    nf = int(fixed_voxels)
    nm = nf if moving_voxels is None else int(moving_voxels)
    host = nf * (48 if itk_transform else 36) + (nm * 36 if inverse else 0)
    chunk = min(CHUNK_POINTS.get(torch.device(device).type, 1 << 16), max(nf, nm))
    work = chunk * max(int(w) for w in hidden) * 4 * int(dtype_bytes) * 5
    return {"host": host, "device": work + nm * 8}


def run_bytes(*, mask_points: int, fixed_voxels: int, moving_voxels: int, batch: int, hidden: Sequence[int],
              order: int, dtype_bytes: int, device, symmetric: bool = False,
              sampling: str = "uniform") -> Dict[str, int]:
    """Peak bytes of one registration by part: ``points``, ``training``, ``outputs_host``, ``outputs_device``."""
    networks = 2 if symmetric else 1
    out = output_bytes(fixed_voxels, moving_voxels, hidden, dtype_bytes, device, inverse=symmetric)
    return {"points": pair_bytes(mask_points, moving_voxels, dtype_bytes, sampling),
            "training": training_bytes(min(int(batch), int(mask_points)), hidden, order, dtype_bytes, networks),
            "outputs_host": out["host"], "outputs_device": out["device"]}


def host_peak(estimate: Dict[str, int], device) -> int:
    """The host part of :func:`run_bytes`' estimate: on a CPU the training and the outputs share the host."""
    if torch.device(device).type == "cuda":
        return estimate["points"] + estimate["outputs_host"]
    return estimate["points"] + max(estimate["training"], estimate["outputs_host"] + estimate["outputs_device"])


def pairs_per_batch(num_points: int, hidden: Sequence[int], order: int, volume_voxels: int, device,
                    dtype_bytes: int = 4) -> int:
    """How many pairs fit in one batched step: 70 % of the free device memory over one pair's training and
    moving volume."""
    per_pair = training_bytes(num_points, hidden, order, dtype_bytes) + int(volume_voxels) * int(dtype_bytes) + (1 << 20)
    return max(1, int(0.7 * device_free_memory(device) // per_pair))


# ------------------------------------------------------------------------------------------------ the checks
def check_read(path, size: Sequence[int], components: int, name: str) -> None:
    """Refuse an image file whose voxels do not fit in the memory available, before reading them."""
    if not checks_enabled():
        return
    need = read_bytes(math.prod(int(s) for s in size), components)
    avail = available_host_memory()
    if need > avail:
        raise InputError(f"'{name}': {str(path)!r} ({' × '.join(map(str, size))} voxels) needs about "
                         f"{human_bytes(need)} of memory to read, {human_bytes(avail)} is available; crop or "
                         "downsample it, or use a machine with more memory")


def check_run(estimate: Dict[str, int], device, *, batch_size: int, hidden: Sequence[int], grid: str,
              enabled: Optional[bool] = None) -> None:
    """Refuse a run whose estimate (:func:`run_bytes`) exceeds what is free, naming what to change: the network
    (``batch_size``/``hidden``) when it is the larger part, else the image (``fixed``, on its ``grid``)."""
    if not checks_enabled(enabled):
        return
    dev = torch.device(device)
    if dev.type == "cuda":
        free = device_free_memory(dev)
        device_need = max(estimate["training"], estimate["outputs_device"]) + estimate["points"] // 4
        if device_need > free:
            raise InputError(f"'batch_size'/'hidden': the optimisation needs about {human_bytes(device_need)} on "
                             f"{dev}, {human_bytes(free)} is free; lower batch_size (now {batch_size}) or the widths "
                             f"of hidden (now {list(hidden)})")
    need, avail = host_peak(estimate, dev), available_host_memory()
    if need <= avail:
        return
    network = max(estimate["training"], estimate["outputs_device"]) if dev.type == "cpu" else 0
    if network >= estimate["points"] + estimate["outputs_host"]:
        raise InputError(f"'batch_size'/'hidden': the optimisation needs about {human_bytes(need)} of memory "
                         f"(batch_size {batch_size}, hidden {list(hidden)}), {human_bytes(avail)} is available; lower "
                         "batch_size or the widths of hidden")
    raise InputError(f"'fixed': registering on its {grid} grid needs about {human_bytes(need)} of memory (mask "
                     f"points and output fields), {human_bytes(avail)} is available; give a 'mask', crop or "
                     "downsample the images, or use a machine with more memory")


def check_outputs(estimate: Dict[str, int], device, name: str = "fixed", enabled: Optional[bool] = None) -> None:
    """:class:`InputError` naming ``name`` when :func:`output_bytes`' estimate exceeds the memory available."""
    if not checks_enabled(enabled):
        return
    dev = torch.device(device)
    host_need = estimate["host"] + (estimate["device"] if dev.type == "cpu" else 0)
    avail = available_host_memory()
    if host_need > avail:
        raise InputError(f"'{name}': writing the outputs on its grid needs about {human_bytes(host_need)} of memory, "
                         f"{human_bytes(avail)} is available; crop or downsample the image, or use a machine with "
                         "more memory")
    if dev.type == "cuda":
        free = device_free_memory(dev)
        if estimate["device"] > free:
            raise InputError(f"'{name}': evaluating the outputs needs about {human_bytes(estimate['device'])} on "
                             f"{dev}, {human_bytes(free)} is free")


__all__ = ["available_host_memory", "device_free_memory", "human_bytes", "read_bytes", "pair_bytes",
           "training_bytes", "output_bytes", "run_bytes", "host_peak", "pairs_per_batch", "check_read", "check_run",
           "check_outputs", "checks_enabled", "CHUNK_POINTS", "chunk_points"]
