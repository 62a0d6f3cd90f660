"""Autograd over the stream forward vs the hand-written adjoint backward, interleaved in one run.

``python benchmarks/backward_choice.py [POINTS] [HIDDEN]`` — the measurement behind the torch backend's choice.
"""
import statistics
import sys
import time

import torch

from idir_fast.backends.torch_streams import siren_streams, siren_streams_manual
from idir_fast.siren import Siren


def main(n=10_000, hidden=(256, 256, 256), repeats=7):
    torch.manual_seed(0)
    s = Siren(hidden)
    p = s.parameter_list()
    x = torch.rand(n, 3) * 2 - 1
    print(f"forward+backward of the SIREN streams, {n} points, hidden {hidden}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads (median of {repeats}, interleaved)")
    for order in (0, 1, 2):
        times = {"autograd": [], "manual": []}
        for _ in range(repeats):
            for name, fn in (("autograd", siren_streams), ("manual", siren_streams_manual)):
                t = time.perf_counter()
                u = fn(p, s.omega, x, order)
                torch.autograd.grad((u * u).sum(), p)
                times[name].append(time.perf_counter() - t)
        a, m = (1000 * statistics.median(times[k]) for k in ("autograd", "manual"))
        print(f"order {order}: autograd {a:7.1f} ms   hand-written {m:7.1f} ms   ratio {a / m:.2f}")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    hidden = tuple(int(h) for h in sys.argv[2].split("x")) if len(sys.argv) > 2 else (256, 256, 256)
    main(n, hidden)
