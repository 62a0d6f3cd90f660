"""A fixed registration whose saved output set is kept as reference data (``tests/data/golden_outputs.npz``): the
arrays of every image, the model's parameters and the report's stable content. A change that should not change
results (a refactor) must reproduce them; ``test_outputs_golden.py`` checks it.

    PYTHONPATH=<tree> python tests/golden.py --write tests/data/golden_outputs.npz   # (re)make the reference
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

SETTINGS = dict(schedule="paper", hidden=(16, 16), epochs=30, batch_size=300, lr=1e-4, omega=32.0,
                regularizer="bending", seed=3, device="cpu", threads=1, progress=False)
"""Every setting explicit (defaults may change; this reference must not)."""
IMAGES = ("0Warp", "Warped", "JacDet")
VOLATILE = ("run_id", "files", "outputs", "timings", "versions", "threads_used", "stale_files_removed",
            "temporary_files_removed", "backend_notes", "seconds")
"""Report entries that differ between runs of the same computation (ids, paths, times, machine)."""


def stable(value):
    """The report without its volatile entries."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def run(folder: Path) -> dict:
    """Register the golden pair (the tests' small phantom), save it into ``folder``; returns the arrays and the
    stable report."""
    import SimpleITK as sitk
    import torch

    import idir_fast
    from idir_fast.data import phantom_pair

    pair = phantom_pair(size=(20, 18, 16), spacing=(8.0, 8.0, 8.0), num_landmarks=10, seed=2)
    reg = idir_fast.register(pair.fixed, pair.moving, pair.mask, fixed_landmarks=pair.fixed_landmarks,
                             moving_landmarks=pair.moving_landmarks, **SETTINGS)
    outputs = reg.save(str(folder) + os.sep)
    arrays = {name: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{name}.nii.gz"))) for name in IMAGES}
    state = torch.load(outputs["model"], weights_only=True)
    for i, p in enumerate(state["parameters"]):
        arrays[f"parameter{i}"] = p.numpy()
    report = json.loads(Path(outputs["report"]).read_text())
    return {"arrays": arrays, "report": stable(report)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", required=True, help="the .npz file to write")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        got = run(Path(tmp))
    np.savez_compressed(a.write, report=json.dumps(got["report"], sort_keys=True), **got["arrays"])
    print(f"written {a.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
