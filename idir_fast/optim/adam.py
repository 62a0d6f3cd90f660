"""Adam as one call of PyTorch's fused kernel per step, without ``torch.optim``'s wrapper.

``torch.optim.Optimizer`` imports ``torch._dynamo`` the first time an optimiser is built or stepped (its
``add_param_group`` and ``step`` are wrapped to keep the compiler out). That import costs over a second of CPU
time per process (docs/measurements.md): a large share of one registration from the command line, paid again by
every cohort worker, for a loop that never compiles. :class:`FusedAdam` keeps the same state (``exp_avg``,
``exp_avg_sq``, a float32 step count per parameter on its device) and calls the same kernel,
``torch._fused_adam_``, after the same step-count increment, so its update is bit for bit that of
``torch.optim.Adam(fused=True)`` (tests/test_adam.py).

CUDA-graph capture keeps ``torch.optim.Adam(capturable=True)``: its device-side learning rate inside a graph is
what PyTorch's own tests cover, and a CUDA process pays far more than the import to initialise the device.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

BETAS = (0.9, 0.999)
EPS = 1e-8


def fused_kernel_available(device: torch.device) -> bool:
    """Whether this torch has the fused Adam kernel for ``device`` (CPU and CUDA since torch 2.4)."""
    return hasattr(torch, "_fused_adam_") and torch.device(device).type in ("cpu", "cuda")


class FusedAdam:
    """Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8, no weight decay, no amsgrad) but ``lr``.

    The interface the loop uses of an optimiser: ``param_groups`` (one group; its ``"lr"`` may be changed between
    steps), ``zero_grad(set_to_none)`` and ``step()``. Parameters without a gradient are skipped, as by
    ``torch.optim``.

    Args:
        params: the tensors optimised in place (leaves with ``requires_grad``).
        lr: the learning rate.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: float):
        self.params: List[torch.Tensor] = list(params)
        if not self.params:
            raise ValueError("'params' is empty: nothing to optimise")
        self.param_groups = [{"params": self.params, "lr": float(lr)}]
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.state_steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter with a gradient: one kernel call per (device, dtype) group."""
        groups: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
        for i, p in enumerate(self.params):
            if p.grad is not None:
                groups.setdefault((p.device, p.dtype), []).append(i)
        lr = float(self.param_groups[0]["lr"])
        for members in groups.values():
            steps = [self.state_steps[i] for i in members]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_([self.params[i] for i in members], [self.params[i].grad for i in members],
                               [self.exp_avg[i] for i in members], [self.exp_avg_sq[i] for i in members], [],
                               steps, amsgrad=False, lr=lr, beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.0,
                               eps=EPS, maximize=False, grad_scale=None, found_inf=None)


def make_adam(params: Sequence[torch.Tensor], lr: float, device: torch.device, capturable: bool = False):
    """Adam with PyTorch's defaults but ``lr``: :class:`FusedAdam` where this torch has the fused kernel for the
    device; ``torch.optim.Adam`` for CUDA-graph capture (the rate lives on the device) and on an old torch."""
    if not capturable and fused_kernel_available(device):
        return FusedAdam(params, lr)
    kwargs = {}
    if capturable:
        kwargs["capturable"] = True
        lr = torch.tensor(float(lr), device=device)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # an old torch without fused Adam on this device
        return torch.optim.Adam(params, lr=lr, **kwargs)


__all__ = ["FusedAdam", "make_adam", "fused_kernel_available", "BETAS", "EPS"]
