"""The SIREN that represents the displacement: ``u(x) = W_out h_L + b_out``, ``h_{l+1} = sin(ω (W_l h_l + b_l))``.

``Φ(x) = x + u(x)`` maps normalised fixed-image coordinates to normalised coordinates of the same frame, which
the optimisation then takes to the moving image's voxels. Every sine layer uses the same ω (as the released IDIR code).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import nn

INITS = ("identity", "siren", "idir-2022")


class Siren(nn.Module):
    """SIREN MLP ``3 → hidden[0] → … → hidden[-1] → 3`` with sine activations.

    Args:
        hidden: widths of the sine layers (at least one).
        omega: frequency factor ω of every sine layer.
        init: ``"identity"`` (the ``"siren"`` init with a zero output layer: Φ starts as the identity, as a
            registration starts from its initial transform; the sine layers are random, so gradients flow from
            the first step), ``"siren"`` (Sitzmann et al.: first layer U(±1/fan_in), later layers
            U(±√(6/fan_in)/ω), PyTorch's default bias init, output bias 0 so the initial displacement is centred on
            zero) or
            ``"idir-2022"`` (the released IDIR code: the same weights, every bias PyTorch's default, so the
            initial displacement has an offset of up to ±1/√fan_in).
        dtype: parameter dtype.
    """

    def __init__(self, hidden: Sequence[int] = (256, 256, 256), omega: float = 32.0, init: str = "siren",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if len(hidden) < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"'hidden' must be a non-empty sequence of positive widths, got {hidden!r}")
        if init not in INITS:
            raise ValueError(f"'init' must be one of {INITS}, got {init!r}")
        self.hidden, self.omega, self.init_scheme = hidden, float(omega), init
        widths = (3,) + hidden + (3,)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            self.weights.append(nn.Parameter(torch.empty(fan_out, fan_in, dtype=dtype)))
            self.biases.append(nn.Parameter(torch.empty(fan_out, dtype=dtype)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            fan_in = w.shape[1]
            bound = 1.0 / fan_in if layer == 0 else math.sqrt(6.0 / fan_in) / self.omega
            w.uniform_(-bound, bound)
            b.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
        if self.init_scheme in ("siren", "identity"):
            self.biases[-1].zero_()
        if self.init_scheme == "identity":
            self.weights[-1].zero_()

    def parameter_list(self) -> List[torch.Tensor]:
        """``[W_0, b_0, W_1, b_1, …, W_out, b_out]`` — the order every backend uses."""
        out = []
        for w, b in zip(self.weights, self.biases):
            out += [w, b]
        return out

    def displacement(self, x: torch.Tensor) -> torch.Tensor:
        """``u(x)`` for points ``x`` of shape ``(N, 3)`` (plain, autograd-friendly forward)."""
        return siren_displacement(self.parameter_list(), self.omega, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Φ(x) = x + u(x)``."""
        return x + self.displacement(x)

    def config(self) -> dict:
        return {"hidden": list(self.hidden), "omega": self.omega, "init": self.init_scheme}


def siren_displacement(params: Sequence[torch.Tensor], omega: float, x: torch.Tensor) -> torch.Tensor:
    """``u(x)`` of the SIREN with parameters ``[W_0, b_0, …, W_out, b_out]`` at points ``x`` ``(N, 3)``: the plain
    forward that nested autograd differentiates (the reference backend)."""
    h = x
    for layer in range(len(params) // 2 - 1):
        h = torch.sin(omega * (h @ params[2 * layer].T + params[2 * layer + 1]))
    return h @ params[-2].T + params[-1]
