"""README's Python example runs as written: its block is read from README.md and executed on a tiny pair (the names
it leaves to the reader bound to small files here, and every run made short by the same keyword arguments)."""
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import idir_fast
from helpers import write_pair_files

README = Path(__file__).resolve().parents[1] / "README.md"
SHORT = dict(epochs=20, batch_size=200, hidden=(16, 16), progress=False)


def python_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Python section has no python code block"
    return match.group(1)


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, tiny_pair):
    monkeypatch.chdir(tmp_path)
    files = write_pair_files(tiny_pair, tmp_path)
    for name, path in (("fixed", "fixed.nii.gz"), ("moving", "moving.nii.gz"), ("mask", "lungs.nii.gz")):
        Path(files[name]).rename(tmp_path / path)
    labels = sitk.Cast(sitk.BinaryThreshold(tiny_pair.moving, 150.0, 1e9, 5, 0), sitk.sitkUInt8)
    labels.CopyInformation(tiny_pair.moving)
    sitk.WriteImage(labels, str(tmp_path / "labels.nii.gz"))
    (tmp_path / "manifest.csv").write_text("pair_id,fixed,moving,mask\na,fixed.nii.gz,moving.nii.gz,lungs.nii.gz\n")
    # the example's calls, each made short (the example itself is not changed: only what it calls)
    for name in ("register", "register_many", "register_cohort"):
        real = getattr(idir_fast, name)
        monkeypatch.setattr(idir_fast, name, lambda *a, _real=real, **k: _real(*a, **{**SHORT, **k}))
    pts = tiny_pair.fixed_landmarks[:3]
    scope = dict(fixed_points_mm=pts, moving_points_mm=tiny_pair.moving_landmarks[:3], pts=pts,
                 f1="fixed.nii.gz", m1="moving.nii.gz", k1="lungs.nii.gz",
                 f2=tiny_pair.fixed, m2=tiny_pair.moving, k2=tiny_pair.mask)
    exec(compile(python_block(), str(README), "exec"), scope)  # noqa: S102 — the README's own code
    assert (tmp_path / "out" / "case1_0Warp.nii.gz").is_file() and (tmp_path / "runs" / "a" / "report.json").is_file()
    assert scope["moved"].shape == (3, 3) and np.all(np.isfinite(scope["back"]))
    assert len(scope["regs"]) == 2 and scope["summary"]["completed"] == 1

