"""Autograd over the stream forward vs the hand-written adjoint backward, interleaved in one run.

``python benchmarks/backward_choice.py [--sizes 1500:48x48x48,…]`` — the measurement behind the torch backend's
choices: autograd over the PyTorch stream forward, this hand-written adjoint in PyTorch, and the compiled CPU
kernels (``siren_streams_fused``, the CPU default). Writes ``results/backward_choice_<timestamp>.json``.
The hand-written backward lives here, not in the package: it lost the measurement, and it is the PyTorch
blueprint of the Triton adjoint kernel (``idir_fast/kernels/siren_streams.py``), tested equal to autograd in
``tests/test_torch_streams.py``.
"""
import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from idir_fast.core.derivatives import PAIRS
from idir_fast.core.siren import Siren
from idir_fast.environment import machine_info
from idir_fast.ops.sample_ncc import extension
from idir_fast.ops.siren_streams import _sine_streams, siren_streams, siren_streams_fused

# Hand-written backward (the adjoints of shared/notes/engine-math.md). The same algebra is what the Triton
# kernels implement; kept here as their blueprint and measured against autograd over the forward (README).
def _sine_adjoint(ga: torch.Tensor, z0: torch.Tensor, zi, zab, omega: float, order: int) -> torch.Tensor:
    """Pre-activation adjoints ``z̄`` ``(S, N, H)`` of a sine layer from its output adjoints ``ā``.

    ``zi``/``zab`` are the pre-activation derivative streams (``None`` for ``zab`` in the first layer, where
    they vanish; ``zi`` are then ``(H,)`` weight columns).
    """
    s = torch.sin(omega * z0)
    c = omega * torch.cos(omega * z0)
    ga = ga.unbind(0)
    g0 = c * ga[0]
    if order == 0:
        return g0.unsqueeze(0)
    q = (-omega * omega) * s
    gi = [c * ga[1 + i] for i in range(3)]
    acc0 = zi[0] * ga[1] + zi[1] * ga[2] + zi[2] * ga[3]
    gab = []
    if order >= 2:
        w2c = (omega * omega) * c
        for p, (a, b) in enumerate(PAIRS):
            gp = ga[4 + p]
            gab.append(c * gp)
            if a == b:
                gi[a] = gi[a] + q * (2.0 * zi[a]) * gp
            else:
                gi[a] = gi[a] + q * zi[b] * gp
                gi[b] = gi[b] + q * zi[a] * gp
            zz = zi[a] * zi[b]
            g0 = g0 + (-w2c * zz) * gp if zab is None else g0 + (q * zab[p] - w2c * zz) * gp
    g0 = g0 + q * acc0
    return torch.stack([g0] + gi + gab)


class _SirenStreamsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, omega, order, *params):
        n_layers = len(params) // 2
        hs, zs = [], []
        with torch.no_grad():
            w0, b0 = params[0], params[1]
            z0 = torch.addmm(b0, x, w0.T)
            zs.append(z0)
            h = _sine_streams(z0, torch.zeros_like(b0), omega, order, first_layer_w=w0)
            for layer in range(1, n_layers):
                w, b = params[2 * layer], params[2 * layer + 1]
                S, N, width = h.shape
                hs.append(h)
                z = (h.reshape(S * N, width) @ w.T).reshape(S, N, -1)
                z[0].add_(b)
                if layer == n_layers - 1:
                    out = z
                    break
                zs.append(z)
                h = _sine_streams(z, torch.zeros_like(b), omega, order)
        ctx.omega, ctx.order, ctx.n_layers = omega, order, n_layers
        ctx.save_for_backward(x, *params, *hs, *zs)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        omega, order, L = ctx.omega, ctx.order, ctx.n_layers
        saved = ctx.saved_tensors
        x, params = saved[0], saved[1:1 + 2 * L]
        hs, zs = saved[1 + 2 * L:1 + 3 * L - 1], saved[1 + 3 * L - 1:]
        grads = [None] * (2 * L)
        g = grad_out.contiguous()
        for layer in range(L - 1, 0, -1):
            w = params[2 * layer]
            h = hs[layer - 1]
            S, N, width = h.shape
            g2 = g.reshape(S * N, -1)
            grads[2 * layer] = g2.T @ h.reshape(S * N, width)
            grads[2 * layer + 1] = g[0].sum(0)
            gh = (g2 @ w).reshape(S, N, width)
            z = zs[layer - 1]
            if layer - 1 == 0:
                w0 = params[0]
                g = _sine_adjoint(gh, z, w0.unbind(1), None, omega, order)
            else:
                zu = z.unbind(0)
                g = _sine_adjoint(gh, zu[0], zu[1:4], zu[4:], omega, order)
        # first layer: z = W0 x + b0, z_i = W0[:, i]
        gw0 = g[0].T @ x
        if order >= 1:
            gw0 = gw0 + torch.stack([g[1 + i].sum(0) for i in range(3)], dim=1)
        grads[0], grads[1] = gw0, g[0].sum(0)
        return (None, None, None, *grads)


def siren_streams_manual(params: Sequence[torch.Tensor], omega: float, x: torch.Tensor, order: int) -> torch.Tensor:
    """:func:`siren_streams` with the hand-written backward (gradients w.r.t. the parameters only)."""
    return _SirenStreamsFn.apply(x, float(omega), int(order), *params)



def time_size(n, hidden, repeats=7):
    """Rows (one per derivative order) of forward+backward times of every contender at one size."""
    torch.manual_seed(0)
    s = Siren(hidden)
    p = s.parameter_list()
    x = torch.rand(n, 3) * 2 - 1
    contenders = {"autograd": siren_streams, "hand-written": siren_streams_manual}
    if extension() is not None and hasattr(extension(), "sine_streams_forward"):
        contenders["fused-cpu"] = siren_streams_fused  # the compiled kernels, whatever the crossover rule says
    rows = []
    for order in (0, 1, 2):
        times = {k: [] for k in contenders}
        for _ in range(repeats):
            for name, fn in contenders.items():
                t = time.perf_counter()
                u = fn(p, s.omega, x, order)
                torch.autograd.grad((u * u).sum(), p)
                times[name].append(time.perf_counter() - t)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        rows.append({"points": n, "hidden": list(hidden), "order": order, "median_ms": ms,
                     "autograd_over": {k: ms["autograd"] / v for k, v in ms.items()}})
        print(f"{n:>6} pts {'x'.join(map(str, hidden)):>11} order {order}: "
              + "   ".join(f"{k} {v:7.1f} ms" for k, v in ms.items())
              + "   (autograd / other: " + ", ".join(f"{k} {ms['autograd'] / v:.2f}" for k, v in ms.items()
                                                  if k != "autograd") + ")", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1500:48x48x48,2000:256x256x256,8000:128x128x128,10000:256x256x256",
                    help="POINTS:WxWxW,… (the last is the paper's setting)")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    print(f"forward+backward of the SIREN streams, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(median of {a.repeats}, interleaved)")
    rows = []
    for size in a.sizes.split(","):
        n, hidden = size.split(":")
        rows += time_size(int(n), tuple(int(h) for h in hidden.split("x")), a.repeats)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(__file__).resolve().parent / "results" / f"backward_choice_{stamp}.json"
    out.write_text(json.dumps({"command": ["benchmarks/backward_choice.py", *sys.argv[1:]],
                               "machine": machine_info("cpu"), "repeats": a.repeats, "rows": rows}, indent=1) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
