"""pytest-benchmark: one optimisation step per regulariser × backend (``python -m pytest benchmarks
--benchmark-only``). Sizes default to a CPU-friendly 2,000 points × 3×128; set IDIR_BENCH_POINTS and
IDIR_BENCH_HIDDEN (e.g. 10000 and 256x256x256) for the paper's size."""
import os

import pytest
import torch

from idir_fast import backends
from idir_fast.apps.bench import make_step
from idir_fast.core import objectives

POINTS = int(os.environ.get("IDIR_BENCH_POINTS", "2000"))
HIDDEN = tuple(int(h) for h in os.environ.get("IDIR_BENCH_HIDDEN", "128x128x128").split("x"))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = [b for b in backends.names() if backends.get(b).unavailable(DEVICE) is None]


@pytest.mark.parametrize("regularizer", [None, "jacobian", "hyperelastic", "bending"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_step(benchmark, backend, regularizer):
    step, pair = make_step(backend, regularizer, POINTS, HIDDEN, DEVICE)
    x, f = pair.points[None], pair.fixed_values[None]

    def run():
        out = step(x, f)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.extra_info.update(backend=backend, regularizer=regularizer or "none", points=POINTS,
                                passes=step.backend.backward_passes(objectives.derivative_order(regularizer)))
    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert torch.isfinite(out).all()
