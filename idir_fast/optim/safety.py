"""Checks, runnable on a CPU, that a step can live inside a CUDA graph and never stalls the host.

A CUDA graph replays device work only: a step must not read device values on the host (``.item()``,
``bool(t)``), build tensors from host data (``torch.tensor(list)``: a pageable host→device copy), or produce
shapes that depend on data (``nonzero``, boolean indexing). Those show up as aten ops on any device, so a
``TorchDispatchMode`` sees them on a CPU too (:class:`HostSyncDetector`). A tensor created without the tensors'
device would land on the default device, on CUDA the wrong GPU or the CPU; running the step with the default
device set to ``meta`` makes every such factory fail loudly (:func:`check_step`).
"""
from __future__ import annotations

from typing import List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that read device data on the host, copy host data in, or have data-dependent output shapes
FORBIDDEN = {
    "aten._local_scalar_dense": "reads a device value on the host (.item(), float(t), bool(t))",
    "aten.lift_fresh": "builds a tensor from host data inside the step (torch.tensor(...))",
    "aten.lift_fresh_copy": "builds a tensor from host data inside the step (torch.tensor(...))",
    "aten.nonzero": "has a data-dependent output shape",
    "aten.masked_select": "has a data-dependent output shape",
    "aten.unique": "has a data-dependent output shape",
    "aten._unique2": "has a data-dependent output shape",
    "aten.is_nonzero": "reads a device value on the host",
    "aten.equal": "reads a device value on the host",
}


class HostSyncDetector(TorchDispatchMode):
    """Records every op that would stall the host or break CUDA-graph capture (see :data:`FORBIDDEN`), and
    copies from the CPU to another device."""

    def __init__(self):
        super().__init__()
        self.violations: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        if name in FORBIDDEN:
            self.violations.append(f"{func}: {FORBIDDEN[name]}")
        elif name in ("aten.index", "aten.index_put", "aten.index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ())
                if i is not None):
            self.violations.append(f"{func}: boolean-mask indexing has a data-dependent output shape")
        elif name in ("aten._to_copy", "aten.copy_"):
            src = args[1] if name == "aten.copy_" else args[0]
            dst_device = args[0].device if name == "aten.copy_" else kwargs.get("device")
            if (isinstance(src, torch.Tensor) and src.device.type == "cpu" and dst_device is not None
                    and torch.device(dst_device).type != "cpu"):
                self.violations.append(f"{func}: copies a host tensor to {dst_device} inside the step")
        return func(*args, **kwargs)


def check_step(step, sampler, steps: int = 2) -> List[str]:
    """Run ``steps`` draws + steps (as the loop's captured region does) under :class:`HostSyncDetector`, then one
    more with the default device set to ``meta``; returns the violations (empty when capture-safe).

    The sampler's host-side :meth:`~idir_fast.optim.points.PointSampler.before_step` runs outside the check, as it
    runs outside the graph.
    """
    for _ in range(2):  # warm-up: lazy state (optimizer buffers, caches) is made outside the captured region
        sampler.before_step()
        step(*sampler.draw())
    detector = HostSyncDetector()
    for _ in range(steps):
        sampler.before_step()
        with detector:
            step(*sampler.draw())
    violations = list(detector.violations)
    sampler.before_step()
    previous = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        step(*sampler.draw())
    except Exception as err:  # noqa: BLE001 — any failure here is a finding
        violations.append(f"a tensor is made without the tensors' device ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]})")
    finally:
        torch.set_default_device(previous)
    return sorted(set(violations))
