"""Shared fixtures: small synthetic pairs (fast on a 2-core CPU) and the optional shared data folder."""
import os
from pathlib import Path

import torch as _torch

# Without a GPU the Triton kernels run in the interpreter (a stray value such as "0" or "true" is replaced, so the
# kernel tests run instead of skipping); with a GPU they run for real. Set before idir_fast.kernels is imported.
if _torch.cuda.is_available():
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np
import pytest
import SimpleITK as sitk
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    yield


@pytest.fixture(scope="session")
def small_pair():
    """A 48×44×40 phantom at 5 mm with a breathing deformation (≈ 10 mm initial TRE)."""
    from idir_fast.data import phantom_pair

    return phantom_pair(size=(48, 44, 40), spacing=(5.0, 5.0, 5.0), num_landmarks=60, seed=1)


@pytest.fixture(scope="session")
def tiny_pair():
    from idir_fast.data import phantom_pair

    return phantom_pair(size=(20, 18, 16), spacing=(8.0, 8.0, 8.0), num_landmarks=10, seed=2)


def oblique_image(size=(13, 11, 9), spacing=(1.3, 0.9, 2.1), origin=(-40.0, 25.5, 110.0), angle=0.3, seed=0):
    """A smooth random image with oblique direction cosines, anisotropic spacing and a non-zero origin."""
    rng = np.random.default_rng(seed)
    c, s = np.cos(angle), np.sin(angle)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    d = rz @ rx
    arr = rng.normal(size=tuple(reversed(size))).astype(np.float32)
    img = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(arr), 1.0)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(tuple(d.ravel()))
    return img


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (only present in the development checkout)")
    return SHARED_DATA


# ------------------------------------------------------------------------------------------------ order
FIRST = ("test_units.py",)
"""Fast unit tests of what a refactor breaks quietly: they run first, so a planted bug fails within seconds."""


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: 0 if item.fspath.basename in FIRST else 1)  # stable: the rest keep their order


# ------------------------------------------------------------------------------------------------ skip budget
# With IDIR_FAST_STRICT_SKIPS=1 (set by .ci/run) a skip is a failure unless its reason starts with "[device]":
# tests that only mean something on another kind of device (GPU-only checks on a CPU, interpreter checks on a GPU).
# A missing compiled op, a missing optional package or missing shared data must not pass CI silently.
_skips = []


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        _skips.append((report.nodeid, str(report.longrepr[2])))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("IDIR_FAST_STRICT_SKIPS") != "1":
        return
    unexpected = [(n, r) for n, r in _skips if not r.replace("Skipped: ", "").startswith("[device]")]
    if unexpected:
        print("\nIDIR_FAST_STRICT_SKIPS: skips outside the known device-only tests:")
        for nodeid, reason in unexpected:
            print(f"  {nodeid}: {reason}")
        session.exitstatus = 1
