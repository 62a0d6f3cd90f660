"""The similarity op: trilinear sampling of the moving image at Φ, the global NCC, and ∂NCC/∂Φ.

Two implementations of one definition (:func:`idir_fast.core.objectives.ncc` over
:func:`idir_fast.core.sampling.trilinear`, tested equal):

* the compiled op of ``csrc/`` (``idir_fast._C``): sampling, the five NCC sums and the per-point adjoint in two
  passes over the points (OpenMP on CPU, one CUDA kernel per pass on GPU);
* a PyTorch path (:func:`trilinear_fast`): value and gradient of the interpolant from the same 8 reads (the
  compiled sampling op ``_C.trilinear_forward`` where it runs), with a hand-written backward instead of an
  autograd graph of a dozen small ops.

:func:`sample_ncc` takes the compiled op when it runs on the points' device and the PyTorch path otherwise, with
one warning when the compiled op is missing (or built without CUDA for a CUDA device).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..core import objectives
from ..core.sampling import trilinear_with_gradient

_ext = None
_ext_error: Optional[str] = None
_warned = set()


def extension():
    """The compiled module ``idir_fast._C`` or ``None`` (with the reason in :func:`extension_error`)."""
    global _ext, _ext_error
    if _ext is None and _ext_error is None:
        try:
            from .. import _C  # type: ignore[attr-defined]

            _ext = _C
        except ImportError as err:  # not built (no compiler at install time) or built for another torch
            _ext_error = str(err)
    return _ext


def extension_error() -> Optional[str]:
    extension()
    return _ext_error


def extension_has_cuda() -> bool:
    ext = extension()
    return bool(ext is not None and getattr(ext, "with_cuda", False))


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def available(device: torch.device) -> bool:
    """Whether the compiled op runs on ``device``; warns once per reason when it does not."""
    device = torch.device(device)
    if extension() is None:
        _warn_once("missing", "idir_fast: the compiled sampling/NCC extension (idir_fast._C) is not available "
                              f"({_ext_error}); using the PyTorch implementation. Reinstall with "
                              "`pip install --no-build-isolation -e .` and a C++ compiler to build it.")
        return False
    if device.type == "cuda" and not extension_has_cuda():
        _warn_once("no-cuda", "idir_fast: idir_fast._C was built without CUDA (no CUDA toolkit was found when it "
                              "was installed), so sampling + NCC on the GPU uses the slower PyTorch path. Install "
                              "with a CUDA toolkit (nvcc) on PATH or CUDA_HOME set to build the CUDA kernels.")
        return False
    return device.type in ("cpu", "cuda")


class _FusedSampleNCC(torch.autograd.Function):
    @staticmethod
    def forward(ctx, moving, index, fixed_values, compat):
        ext = extension()
        values, grads, sums = ext.sample_ncc_forward(moving.contiguous(), index.detach().contiguous(),
                                                     fixed_values.detach().contiguous())
        n = index.shape[0]
        ctx.save_for_backward(fixed_values, values, grads, sums)
        ctx.n, ctx.compat = n, compat
        return objectives.ncc_from_sums(n, sums, compat).to(index.dtype)

    @staticmethod
    def backward(ctx, grad_ncc):
        fixed_values, values, grads, sums = ctx.saved_tensors
        a, b, f_mean, m_mean = objectives.ncc_backward_coefficients(ctx.n, sums, ctx.compat)
        g = grad_ncc.double()
        coef = torch.stack([a * g, b * g, f_mean, m_mean]).contiguous()  # stays on the device: no host sync
        grad_index = extension().sample_ncc_backward(fixed_values.contiguous(), values, grads, coef)
        return None, grad_index, None, None


class _TrilinearFn(torch.autograd.Function):
    """Sampling whose backward reuses the gradient computed with the value (one pass, no autograd graph)."""

    @staticmethod
    def forward(ctx, volume, index):
        if volume.dtype == index.dtype and available(index.device):
            value, grad = extension().trilinear_forward(volume.contiguous(), index.detach().contiguous())
        else:
            value, grad = trilinear_with_gradient(volume, index)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, grad_value):
        (grad,) = ctx.saved_tensors
        return None, grad_value.unsqueeze(-1) * grad


def trilinear_fast(volume: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Same values and ``index`` gradient as :func:`idir_fast.core.sampling.trilinear`, with a hand-written
    backward (no gradient for ``volume``): value and gradient from one pass of the compiled op
    (``_C.trilinear_forward``) where it runs, of :func:`~idir_fast.core.sampling.trilinear_with_gradient`
    elsewhere."""
    return _TrilinearFn.apply(volume, index)


def fused_ncc(moving: torch.Tensor, index: torch.Tensor, fixed_values: torch.Tensor,
              compat: Optional[str] = None) -> torch.Tensor:
    """NCC through the compiled op (which must be built): ``fixed_values`` ``(N,)`` against the moving volume
    ``(nz, ny, nx)`` sampled at voxel indices ``index`` ``(N, 3)``; differentiable w.r.t. ``index``."""
    return _FusedSampleNCC.apply(moving, index, fixed_values, compat)


def sample_ncc(moving: torch.Tensor, index: torch.Tensor, fixed_values: torch.Tensor,
               compat: Optional[str] = None, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Global NCC of ``fixed_values`` ``(N,)`` and ``moving`` ``(nz, ny, nx)`` sampled at voxel indices ``index``
    ``(N, 3)`` (``(x, y, z)`` order); differentiable w.r.t. ``index``. The compiled op when it runs on
    ``index``'s device, else the PyTorch path — the same definition. With ``weights`` (a moving mask sampled at
    the points) the weighted NCC of :func:`idir_fast.core.objectives.ncc`, on the PyTorch path."""
    if weights is None and available(index.device):
        return fused_ncc(moving, index, fixed_values, compat)
    return objectives.ncc(fixed_values, trilinear_fast(moving, index), compat, weights)
