"""Compute backends: how Φ's derivatives and the similarity are computed, as data.

A :class:`Backend` is a name, a derivatives op ``(params, ω, x, order, precision) → Derivatives``, a similarity
op ``(moving, index, fixed_values, compat) → NCC``, the backward passes per step, and a test of whether it runs
on a device. The registry :data:`BACKENDS` holds ``reference`` (nested autograd, the paper), ``torch`` (analytic
derivative streams in PyTorch) and ``triton`` (fused kernels); :data:`DEVICE_PREFERENCE` is the one place that
says which backend ``"auto"`` picks per device type.

One rule for choosing (:func:`select`) and falling back (:meth:`BackendChoice.fall_back`): ``backend="auto"``
takes the first available backend of the device's preference list; when that backend cannot run or fails its
first-use self-check, the next one is taken with one warning, and the run's report records the backend actually
used and why. A backend named explicitly (``RunSettings.backend``, whose default ``IDIR_FAST_BACKEND`` may give)
never falls back: it raises :class:`~idir_fast.errors.BackendError`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..core.derivatives import Derivatives, derivatives_from_streams
from ..core.sampling import trilinear
from ..errors import BackendError
from ..kernels import DEFAULT_PRECISION, PRECISIONS
from . import reference

@dataclass(frozen=True)
class Backend:
    """One way of computing a step.

    Attributes:
        name: registry key.
        summary: one line for ``--help`` and the doctor.
        derivatives: ``(params, omega, x (N, 3), order, precision) → Derivatives``, differentiable w.r.t. params.
        similarity: ``(moving (nz, ny, nx), index (N, 3), fixed_values (N,), compat, weights=None) → NCC``,
            differentiable w.r.t. ``index``; ``weights`` ``(N,)`` restricts it to a moving mask.
        backward_passes: ``order → passes`` over the network per step.
        unavailable: ``device → reason`` it cannot run there, ``None`` when it can.
        batchable: whether ``derivatives`` can run under ``torch.func.vmap`` over a leading pair dimension.
        workspace: ``(hidden, order, dtype, device, cpu_kernels) →`` buffers the step makes once and passes to
            every call of ``derivatives`` (``workspace=``), or ``None`` when the backend allocates its own.
        sample: ``(volume (nz, ny, nx), index (M, 3)) → (M,)`` trilinear sampling, differentiable w.r.t.
            ``index`` (the local NCC's neighbourhoods).
        local_moments: the local NCC's moving neighbourhoods and their moments in one op
            (:func:`idir_fast.ops.local_ncc.local_moments`), or ``None`` to sample them with ``sample`` and score
            them with PyTorch ops (the reference).
    """

    name: str
    summary: str
    derivatives: Callable[..., Derivatives]
    similarity: Callable[..., torch.Tensor]
    backward_passes: Callable[[int], int]
    unavailable: Callable[[torch.device], Optional[str]]
    batchable: bool = False
    workspace: Callable[..., Optional[object]] = lambda hidden, order, dtype, device, cpu_kernels=None: None
    sample: Callable[..., torch.Tensor] = trilinear
    local_moments: Optional[Callable[..., tuple]] = None


# ---------------------------------------------------------------------------------------------- the ops
def _torch_derivatives(params, omega, x, order, precision=None, workspace=None):
    """The compiled CPU kernels where they run (with the step's buffers, unless its workspace asks for PyTorch's
    ops), PyTorch's ops elsewhere (GPU, no compiled op, under vmap)."""
    from ..ops.siren_streams import fused_available, siren_streams, siren_streams_fused

    fused = fused_available(x) and (workspace is None or workspace.fused)
    if fused:
        u = siren_streams_fused(params, omega, x, order, workspace)
    else:
        u = siren_streams(params, omega, x, order)
    return derivatives_from_streams(x, u, order)


def _torch_workspace(hidden, order, dtype, device, cpu_kernels="fused"):
    from ..ops.siren_streams import StreamWorkspace, fused_available

    if not fused_available(torch.empty(1, 3, dtype=dtype, device=device)):
        return None
    return StreamWorkspace(hidden, order, dtype, fused=cpu_kernels == "fused")


def _triton_derivatives(params, omega, x, order, precision=None, workspace=None):
    from ..kernels.siren_streams import siren_streams_triton

    u = siren_streams_triton(params, omega, x, order, precision or DEFAULT_PRECISION)
    return derivatives_from_streams(x, u, order)


def _fast_sample(volume, index):
    from ..ops.sample_ncc import trilinear_fast

    return trilinear_fast(volume, index)


def _fast_local_moments(moving, phi, jac, fixed_centred, offsets, lin, off, workspace=None):
    from ..ops.local_ncc import local_moments

    return local_moments(moving, phi, jac, fixed_centred, offsets, lin, off, workspace)


def _fast_similarity(moving, index, fixed_values, compat=None, weights=None):
    from ..ops.sample_ncc import sample_ncc

    return sample_ncc(moving, index, fixed_values, compat, weights)


def _one_pass(order: int) -> int:
    return 1


def _runs_anywhere(device: torch.device) -> Optional[str]:
    return None if torch.device(device).type in ("cpu", "cuda") else f"device type {device.type!r} is not supported"


def _triton_unavailable(device: torch.device) -> Optional[str]:
    device = torch.device(device)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the Triton kernels need a CUDA device (or TRITON_INTERPRET=1, the slow CPU interpreter)"
    try:
        import triton  # noqa: F401
    except Exception as err:  # noqa: BLE001 — triton is absent on some platforms
        return f"Triton is not importable ({type(err).__name__}: {err})"
    return None


BACKENDS: Dict[str, Backend] = {b.name: b for b in (
    Backend("reference", "nested autograd, the paper's method (1/4/13 backward passes for none/J/H)",
            reference.derivatives, reference.similarity, reference.backward_passes, _runs_anywhere),
    Backend("torch", "analytic derivative streams: PyTorch matrix products, the element-wise stream algebra in "
            "fused CPU kernels for small networks (PyTorch ops elsewhere); sampling + NCC by the compiled op",
            _torch_derivatives, _fast_similarity, _one_pass, _runs_anywhere, batchable=True,
            workspace=_torch_workspace, sample=_fast_sample, local_moments=_fast_local_moments),
    Backend("triton", "fused Triton kernels of the derivative streams (GPU); sampling + NCC by the compiled op",
            _triton_derivatives, _fast_similarity, _one_pass, _triton_unavailable, sample=_fast_sample,
            local_moments=_fast_local_moments),
)}

DEVICE_PREFERENCE: Dict[str, Tuple[str, ...]] = {"cuda": ("triton", "torch"), "cpu": ("torch",)}
"""What ``backend="auto"`` tries, in order, per device type (the CLI and the benchmark read it from here)."""


def names() -> Tuple[str, ...]:
    return tuple(BACKENDS)


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"'backend' must be one of {names() + ('auto',)}, got {name!r}")
    return BACKENDS[name]


def check_name(name) -> str:
    """Validate a backend setting (``"auto"`` or a registry name); ``ValueError`` with the allowed values."""
    if name is None:
        return "auto"
    if not isinstance(name, str) or name not in names() + ("auto",):
        raise ValueError(f"'backend' must be one of {names() + ('auto',)}, got {name!r}")
    return name


def check_precision(precision) -> str:
    """``None`` → the default; ``ValueError`` for an unknown mode."""
    if precision is None:
        precision = DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise ValueError(f"'precision' must be one of {PRECISIONS}, got {precision!r}")
    return precision


def preference(device) -> Tuple[str, ...]:
    return DEVICE_PREFERENCE.get(torch.device(device).type, ("torch",))


# ----------------------------------------------------------------------------------------- choice + fallback
_warned: set = set()
_verified: Dict[tuple, Optional[str]] = {}  # self-check result per configuration: None = passed, else why not


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@dataclass
class BackendChoice:
    """The backend a run uses, and the one fallback rule.

    Attributes:
        requested: what was asked for (``"auto"`` or a name).
        explicit: asked for by name (argument or environment): never falls back, raises instead.
        device: where it runs.
        candidates: the remaining names to fall back to, in order.
        backend: the backend in use.
        notes: why earlier candidates were not used (recorded in the report).
    """

    requested: str
    explicit: bool
    device: torch.device
    candidates: List[str]
    backend: Backend = None
    notes: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.backend.name

    def fall_back(self, reason: str) -> Backend:
        """The current backend cannot be used (``reason``): raise if explicit, else take the next candidate."""
        if self.explicit:
            raise BackendError(f"backend {self.backend.name!r} on {self.device}: {reason}")
        self.notes.append(f"{self.backend.name}: {reason}")
        while self.candidates:
            nxt = BACKENDS[self.candidates.pop(0)]
            why = nxt.unavailable(self.device)
            if why is None:
                _warn_once((self.backend.name, str(self.device), reason),
                           f"idir_fast: backend {self.backend.name!r} is not used on {self.device} ({reason}); "
                           f"using {nxt.name!r}")
                self.backend = nxt
                return nxt
            self.notes.append(f"{nxt.name}: {why}")
        raise BackendError(f"no backend can run on {self.device}: " + "; ".join(self.notes))

    def record(self) -> dict:
        return {"backend": self.backend.name, "backend_requested": self.requested,
                "backend_notes": list(self.notes)}


def select(name: Optional[str] = "auto", device=torch.device("cpu")) -> BackendChoice:
    """Choose the backend for ``name`` on ``device`` (see the module docstring for ``"auto"``)."""
    device = torch.device(device)
    name = check_name(name)
    explicit = name != "auto"
    order = [name] if explicit else list(preference(device))
    choice = BackendChoice(requested=name if explicit else "auto", explicit=explicit, device=device,
                           candidates=order[1:], backend=BACKENDS[order[0]])
    why = choice.backend.unavailable(device)
    if why is not None:
        if explicit:
            raise BackendError(f"backend {name!r} does not run on {device}: {why}")
        choice.fall_back(why)
    return choice


# ------------------------------------------------------------------------------------- first-use self-check
SELF_CHECK_POINTS = 64
# relative error per stream kind (each against its own largest magnitude), by precision
SELF_CHECK_TOLERANCE = {"ieee": {"phi": 1e-4, "J": 1e-3, "H6": 1e-2, "grad": 1e-2},
                        "tf32x3": {"phi": 1e-4, "J": 1e-3, "H6": 1e-2, "grad": 1e-2},
                        "tf32": {"phi": 1e-2, "J": 3e-2, "H6": 1e-1, "grad": 1e-1}}


def compare_with_reference(backend: Backend, params: Sequence[torch.Tensor], omega: float, order: int,
                           precision: str, n_points: int = SELF_CHECK_POINTS, seed: int = 0,
                           cpu_kernels: str = "fused") -> Dict[str, float]:
    """Relative errors of ``backend`` against the reference (float64, same parameters) at ``n_points`` random
    points: Φ, J, H6 each against its own scale, and the parameter gradients of a random linear functional —
    computed as a step computes them (with the backend's workspace for ``cpu_kernels``).

    Returns:
        ``{"phi": e, "J": e, "H6": e, "grad": max over parameters}`` (only the streams ``order`` provides).
    """
    dev = params[0].device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.rand(n_points, 3, generator=gen, dtype=torch.float64) * 2.2 - 1.1)
    fast_params = [p.detach().clone().requires_grad_(True) for p in params]
    ref_params = [p.detach().double().clone().requires_grad_(True) for p in params]
    widths = [int(p.shape[0]) for p in params[0:-2:2]]
    workspace = backend.workspace(widths, order, params[0].dtype, dev, cpu_kernels)
    fast = backend.derivatives(fast_params, omega, x.to(device=dev, dtype=params[0].dtype), order, precision,
                               workspace=workspace)
    ref = reference.derivatives(ref_params, omega, x.to(dev), order)
    errors, loss_fast, loss_ref = {}, 0.0, 0.0
    for key in ("phi", "J", "H6"):
        a, b = getattr(fast, key), getattr(ref, key)
        if b is None:
            continue
        scale = b.detach().abs().max().clamp_min(1e-30)
        errors[key] = float(((a.detach().double() - b.detach()).abs().max() / scale).item())
        w = torch.randn(b.shape, generator=gen, dtype=torch.float64).to(dev) / scale
        loss_fast = loss_fast + (a * w.to(a.dtype)).sum()
        loss_ref = loss_ref + (b * w).sum()
    g_fast = torch.autograd.grad(loss_fast, fast_params)
    g_ref = torch.autograd.grad(loss_ref, ref_params)
    errors["grad"] = max(float(((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())
                         for a, b in zip(g_fast, g_ref))
    return errors


def self_check(choice: BackendChoice, params: Sequence[torch.Tensor], omega: float, order: int,
               precision: str, cpu_kernels: str = "fused", enabled: bool = True) -> BackendChoice:
    """First use of a fast backend on a configuration (device, precision, widths, order, dtype) in this process:
    compare a few points with the reference; on an error or a mismatch fall back (or raise when explicit).

    Never a silent wrong answer from an unverified kernel; the result is cached per configuration.
    ``enabled=False`` (``RunSettings.self_check``) skips it.
    """
    if not enabled:
        return choice
    widths = tuple(int(p.shape[0]) for p in params[0::2])
    while choice.backend.name != "reference":
        key = (choice.backend.name, str(choice.device), precision, widths, order, params[0].dtype, cpu_kernels)
        if key not in _verified:
            try:
                errors = compare_with_reference(choice.backend, params, omega, order, precision,
                                                cpu_kernels=cpu_kernels)
                tol = SELF_CHECK_TOLERANCE[precision if choice.backend.name == "triton" else "ieee"]
                bad = {k: v for k, v in errors.items() if not v <= tol[k]}  # NaN counts as bad
                _verified[key] = None if not bad else (
                    "first-use self-check against the reference failed: " +
                    ", ".join(f"{k} rel. error {v:.2g} > {tol[k]:.0e}" for k, v in bad.items()))
            except Exception as err:  # noqa: BLE001 — e.g. a kernel that does not compile on this GPU
                _verified[key] = f"failed on first use ({type(err).__name__}: {err})"
        if _verified[key] is None:
            return choice
        choice.fall_back(_verified[key])
    return choice


__all__ = ["Backend", "BackendChoice", "BACKENDS", "DEVICE_PREFERENCE", "DEFAULT_PRECISION", "PRECISIONS",
           "BackendError", "Derivatives", "select", "self_check", "compare_with_reference", "get", "names",
           "check_name", "check_precision", "preference"]
