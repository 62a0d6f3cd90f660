"""The local NCC's moving neighbourhoods and their two moments, fused: ``_C.local_moments_forward`` samples the
``K`` neighbours of every point at ``Φ + J δ_k`` and returns each neighbourhood's covariance with the (centred)
fixed neighbourhood and its variance; its backward maps the gradients of those moments to Φ and J in one pass
(math in ``csrc/local_ncc.h``; one CPU loop and one CUDA kernel over the same per-point functions). The same
moments from PyTorch ops (:func:`local_moments_reference`, through the compiled trilinear sampling where it runs)
are the definition it is tested against, and the path without the compiled op.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from ..core.sampling import trilinear
from .sample_ncc import extension, trilinear_fast


def local_moments_reference(moving: torch.Tensor, phi: torch.Tensor, jac: torch.Tensor,
                            fixed_centred: torch.Tensor, offsets: torch.Tensor, lin: torch.Tensor,
                            off: torch.Tensor, sample: Callable[..., torch.Tensor] = trilinear
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(cov (N,), var (N,))`` of the moving neighbourhoods ``M((Φ_n + J_n δ_k) · lin + off)`` against
    ``fixed_centred`` ``(N, K)`` (its row means 0); ``phi`` ``(N, 3)``, ``jac`` ``(N, 3, 3)``, ``offsets`` δ
    ``(K, 3)`` in the network frame. Differentiable w.r.t. ``phi`` and ``jac`` through ``sample``."""
    n, k = fixed_centred.shape
    q = phi.unsqueeze(1) + torch.einsum("nci,ki->nkc", jac, offsets)
    m = sample(moving, (q.reshape(-1, 3) @ lin + off)).reshape(n, k)
    centred = m - m.mean(dim=1, keepdim=True)
    return (fixed_centred * m).mean(dim=1), (centred * centred).mean(dim=1)


class MomentsWorkspace:
    """The op's largest outputs — the samples ``(N, K)`` and their image gradients ``(N, K, 3)``, kept for the
    backward — in buffers made once and reused by every step (grown when a step has more points), so a step of the
    local NCC allocates only per-point tensors. One forward's buffers serve until its backward: a second forward
    through the same workspace before it makes that backward an error (``generation``), never a wrong gradient."""

    def __init__(self):
        self._values: Optional[torch.Tensor] = None
        self._grads: Optional[torch.Tensor] = None
        self.generation = 0

    def buffers(self, n: int, k: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(values (n, k), gradients (n, k, 3))`` views of the buffers, for a forward (a new generation)."""
        if (self._values is None or self._values.numel() < n * k or self._values.dtype != like.dtype
                or self._values.device != like.device):
            self._values = torch.empty(n * k, dtype=like.dtype, device=like.device)
            self._grads = torch.empty(n * k * 3, dtype=like.dtype, device=like.device)
        self.generation += 1
        return self._values[: n * k].view(n, k), self._grads[: n * k * 3].view(n, k, 3)


class _LocalMomentsFn(torch.autograd.Function):
    """The compiled op; its backward reuses the samples and image gradients of the forward (no autograd graph),
    held in a :class:`MomentsWorkspace` when one is given."""

    @staticmethod
    def forward(ctx, moving, phi, jac, fixed_centred, offsets, lin, off, workspace=None):
        out = {}
        if workspace is not None:
            values_out, grads_out = workspace.buffers(phi.shape[0], fixed_centred.shape[1], phi)
            out = dict(values_out=values_out, gradients_out=grads_out)
        cov, var, values, grads = extension().local_moments_forward(
            moving.contiguous(), phi.detach().contiguous(), jac.detach().contiguous(), fixed_centred.contiguous(),
            offsets.contiguous(), lin.contiguous(), off.contiguous(), **out)
        ctx.workspace = workspace
        ctx.generation = None if workspace is None else workspace.generation
        ctx.save_for_backward(values, grads, fixed_centred.contiguous(), offsets.contiguous(), lin.contiguous())
        return cov, var

    @staticmethod
    def backward(ctx, grad_cov, grad_var):
        if ctx.workspace is not None and ctx.workspace.generation != ctx.generation:
            raise RuntimeError("local_moments: another forward through the same MomentsWorkspace overwrote this "
                               "one's samples before its backward; give each pending forward its own workspace")
        values, grads, fixed_centred, offsets, lin = ctx.saved_tensors
        n = values.shape[0]
        zero = values.new_zeros(n)
        g_cov = zero if grad_cov is None else grad_cov.contiguous()
        g_var = zero if grad_var is None else grad_var.contiguous()
        g_phi, g_jac = extension().local_moments_backward(g_cov, g_var, values, grads, fixed_centred, offsets, lin)
        return None, g_phi, g_jac, None, None, None, None, None


def fused_available(moving: torch.Tensor, phi: torch.Tensor) -> bool:
    """Whether the compiled op runs for these tensors: float32/float64 of one dtype on one device, the CPU or a
    CUDA device when ``_C`` was built with its CUDA kernels."""
    ext = extension()
    if ext is None or not hasattr(ext, "local_moments_forward") or moving.device != phi.device:
        return False
    on_device = moving.device.type == "cpu" or (moving.device.type == "cuda" and getattr(ext, "with_cuda", False))
    return on_device and moving.dtype == phi.dtype and moving.dtype in (torch.float32, torch.float64)


def local_moments(moving: torch.Tensor, phi: torch.Tensor, jac: torch.Tensor, fixed_centred: torch.Tensor,
                  offsets: torch.Tensor, lin: torch.Tensor, off: torch.Tensor,
                  workspace: Optional[MomentsWorkspace] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`local_moments_reference` through the compiled op where it runs (its large outputs in ``workspace``'s
    buffers when one is given), else through PyTorch ops with the fast trilinear sampling (same values and
    gradients, tested)."""
    if fused_available(moving, phi):
        return _LocalMomentsFn.apply(moving, phi, jac, fixed_centred, offsets, lin, off, workspace)
    return local_moments_reference(moving, phi, jac, fixed_centred, offsets, lin, off, sample=trilinear_fast)


__all__ = ["local_moments", "local_moments_reference", "fused_available", "MomentsWorkspace"]
