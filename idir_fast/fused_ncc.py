"""Similarity through the compiled fused op (``csrc/``): trilinear sampling of the moving image, the five NCC
sums and ∂NCC/∂Φ in two passes over the points, instead of a dozen small PyTorch launches.

The op is optional: without the compiled extension :func:`fused_ncc` is unavailable and callers use
:func:`idir_fast.objectives.ncc` over :mod:`idir_fast.sampling` — the same definition (tested equal).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from . import objectives

_ext = None
_ext_error: Optional[str] = None
_warned = False


def extension():
    """The compiled module ``idir_fast._C`` or ``None`` (with the reason in :func:`extension_error`)."""
    global _ext, _ext_error
    if _ext is None and _ext_error is None:
        try:
            from . import _C  # type: ignore[attr-defined]

            _ext = _C
        except ImportError as err:  # not built (no compiler at install time) or built for another torch
            _ext_error = str(err)
    return _ext


def extension_error() -> Optional[str]:
    extension()
    return _ext_error


def available(device: torch.device) -> bool:
    """Whether the fused op runs on ``device``; warns once when the extension is missing."""
    global _warned
    ext = extension()
    if ext is None:
        if not _warned:
            _warned = True
            warnings.warn("idir_fast: the compiled sampling/NCC extension (idir_fast._C) is not available "
                          f"({_ext_error}); using the PyTorch implementation. Reinstall with "
                          "`pip install --no-build-isolation -e .` and a C++ compiler to build it.",
                          RuntimeWarning, stacklevel=3)
        return False
    return torch.device(device).type == "cpu" or bool(getattr(ext, "with_cuda", False))


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


def fused_ncc(moving: torch.Tensor, index: torch.Tensor, fixed_values: torch.Tensor,
              compat: Optional[str] = None) -> torch.Tensor:
    """NCC of ``fixed_values`` ``(N,)`` and the moving volume ``(nz, ny, nx)`` sampled at voxel indices ``index``
    ``(N, 3)``; differentiable w.r.t. ``index``. Same definition as :func:`idir_fast.objectives.ncc`."""
    return _FusedSampleNCC.apply(moving, index, fixed_values, compat)
