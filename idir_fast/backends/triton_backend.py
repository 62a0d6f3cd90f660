"""Backend ``triton``: the SIREN's derivative streams from the fused Triton kernels (``idir_fast.kernels``),
sampling + NCC from the compiled op when built. Runs on CUDA tensors, and on CPU tensors only under the Triton
interpreter (``TRITON_INTERPRET=1``, used by the tests)."""
from __future__ import annotations

import os
import warnings

import torch

from .base import Derivatives
from .torch_streams import TorchBackend, derivatives_from_streams, siren_streams

PRECISION_ENV = "IDIR_FAST_PRECISION"


class TritonBackend(TorchBackend):
    name = "triton"

    def __init__(self, precision: str = None, fallback_on_error: bool = False):
        from ..kernels import siren_streams as kernels  # imports triton; raises where it is missing

        self._kernels = kernels
        precision = precision or os.environ.get(PRECISION_ENV, kernels.DEFAULT_PRECISION)
        if precision not in kernels.PRECISIONS:
            raise ValueError(f"precision must be one of {kernels.PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.fallback_on_error = fallback_on_error
        self._failed = None

    def supports(self, device: torch.device) -> bool:
        return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"

    def derivatives(self, siren, x: torch.Tensor, order: int) -> Derivatives:
        params = siren.parameter_list()
        if self._failed is None:
            try:
                u = self._kernels.siren_streams_triton(params, siren.omega, x, order, self.precision)
                return derivatives_from_streams(x, u, order)
            except Exception as err:  # noqa: BLE001 — e.g. a compile failure on an unusual GPU
                if not self.fallback_on_error:
                    raise
                self._failed = f"{type(err).__name__}: {err}"
                warnings.warn(f"idir_fast: the Triton kernels failed on {x.device} ({self._failed}); falling back "
                              "to the 'torch' backend", RuntimeWarning, stacklevel=2)
        u = siren_streams(params, siren.omega, x, order)
        return derivatives_from_streams(x, u, order)
