"""The saved output set of a fixed registration (:mod:`tests.golden`) matches the reference made before the
result object was split into a transform and a run record: same images, same model parameters, same report
(apart from run ids, timings, versions and paths) — and ``reg.metrics`` is the same before and after ``save()``."""
import json
from pathlib import Path

import numpy as np

from tests import golden

REFERENCE = Path(__file__).parent / "data" / "golden_outputs.npz"


def _close(a, b, path=""):
    """Reports equal up to float32 round-off in their numbers."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert np.isclose(a, b, rtol=1e-5, atol=1e-7, equal_nan=True), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_the_output_set_matches_the_reference(tmp_path):
    got = golden.run(tmp_path)
    ref = np.load(REFERENCE)
    for name, arr in got["arrays"].items():
        # float32 round-off, which also differs between CPUs (BLAS kernels per instruction set): 1e-5 of each
        # image's range (mm of a field, HU of the warped image); anything the code changes on purpose moves far more
        scale = max(1.0, float(np.abs(ref[name]).max()))
        np.testing.assert_allclose(arr, ref[name], rtol=1e-5, atol=1e-5 * scale, err_msg=name)
    _close(got["report"], golden.stable(json.loads(str(ref["report"]))))


def test_metrics_are_the_same_before_and_after_save(tiny_pair, tmp_path):
    import idir_fast
    from idir_fast.io.files import plain

    reg = idir_fast.register(tiny_pair.fixed, tiny_pair.moving, tiny_pair.mask,
                             fixed_landmarks=tiny_pair.fixed_landmarks, moving_landmarks=tiny_pair.moving_landmarks,
                             **{k: v for k, v in golden.SETTINGS.items()})
    before = plain(reg.metrics)
    outputs = reg.save(str(tmp_path / "a_"), write_inverse=True)
    assert plain(reg.metrics) == before
    report = json.loads(Path(outputs["report"]).read_text())["metrics"]
    assert {"folding", "sdlogj", "inverse_consistency"} <= set(report)  # what the files add, in the report
    assert {k: report[k] for k in before} == json.loads(json.dumps(before))
    evaluated = reg.evaluate(inverse=True)
    assert evaluated.metrics["folding"] == report["folding"] and plain(reg.metrics) == before
