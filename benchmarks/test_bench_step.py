"""pytest-benchmark: one optimisation step per regulariser × backend (``python -m pytest benchmarks
--benchmark-only``). Sizes default to a CPU-friendly 2,000 points × 3×128; set IDIR_BENCH_POINTS and
IDIR_BENCH_HIDDEN (e.g. 10000 and 256x256x256) for the paper's size."""
import os

import pytest
import torch

from idir_fast import objectives
from idir_fast.backends import resolve_backend
from idir_fast.bench import synthetic_pair
from idir_fast.engine import StepFunction
from idir_fast.siren import Siren

POINTS = int(os.environ.get("IDIR_BENCH_POINTS", "2000"))
HIDDEN = tuple(int(h) for h in os.environ.get("IDIR_BENCH_HIDDEN", "128x128x128").split("x"))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["reference", "torch"] + (["triton"] if DEVICE.type == "cuda" else [])


@pytest.mark.parametrize("regularizer", [None, "jacobian", "hyperelastic", "bending"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_step(benchmark, backend, regularizer):
    pair = synthetic_pair(POINTS, DEVICE)
    torch.manual_seed(0)
    impl = resolve_backend(backend, DEVICE)
    step = StepFunction(Siren(HIDDEN).to(DEVICE), pair, impl, regularizer=regularizer,
                        alpha=objectives.default_alpha(regularizer), compat=None, lr=1e-4)

    def run():
        out = step(pair.points, pair.fixed_values)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.extra_info.update(backend=backend, regularizer=regularizer or "none", points=POINTS,
                                passes=impl.backward_passes(objectives.derivative_order(regularizer)))
    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert torch.isfinite(out).all()
