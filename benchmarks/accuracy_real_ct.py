"""Accuracy bar on real anatomy: the shared chest CT deformed by a known breathing motion.

    python -m benchmarks.accuracy_real_ct [--data DIR] [--epochs N] [--skip-paper] [--skip-default]
                                          [--skip-normalisation]

1. ``register()`` with ``schedule="paper"`` (bending, 3×256, 10,000 points × 2500 epochs, lr 1e-4) and with the
   package defaults (``schedule="auto"``) on the pair from ``idir_fast.data.deformed_pair`` (18 mm amplitude, 100
   landmarks in the lungs): mean TRE, folding inside the mask, run time.
2. Isotropic vs per-axis network normalisation on an anisotropic version of the same pair (resampled to
   1.5 × 1.5 × 3.0 mm), with reduced settings, same seed: the TRE of both (the measurement behind the default).

Results are printed and written to ``benchmarks/results/accuracy_<timestamp>.json``.
"""
import argparse
import time

import numpy as np
import SimpleITK as sitk

import idir_fast
from idir_fast.environment import machine_info
from idir_fast.data import deformed_pair
from idir_fast.core.metrics import folding, sdlogj

from .cases import CT_FILE
from .common import data_file, write_record


def run_pair(pair, label, **kw):
    t = time.perf_counter()
    reg = idir_fast.register(pair.fixed, pair.moving, pair.mask, fixed_landmarks=pair.fixed_landmarks,
                             moving_landmarks=pair.moving_landmarks, progress=False, **kw)
    seconds = time.perf_counter() - t
    jac = reg.jacobian_determinant()
    row = {"label": label, "settings": {k: v for k, v in reg.record.settings_dict().items() if k != "versions"},
           "tre_initial": reg.metrics["tre_initial"], "tre": reg.metrics["tre"],
           "folding_in_mask": folding(jac, pair.mask), "sdlogj_in_mask": sdlogj(jac, pair.mask),
           "seconds": seconds, "ms_per_epoch": reg.timings["ms_per_epoch"]}
    print(f"{label}: TRE {row['tre_initial']['mean']:.2f} → {row['tre']['mean']:.2f} mm "
          f"(p95 {row['tre']['p95']:.2f}), folded voxels {row['folding_in_mask']['count']}, "
          f"SDlogJ {row['sdlogj_in_mask']:.3f}, {seconds:.0f} s", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--data", default=None, help="the shared data folder (default: ../shared/data)")
    ap.add_argument("--epochs", type=int, default=None, help="override the default 2500 (then it is not the "
                                                             "default-settings figure)")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--skip-default", action="store_true")
    ap.add_argument("--skip-normalisation", action="store_true")
    a = ap.parse_args()
    ct_path = data_file(a.data, *CT_FILE)
    ct = sitk.ReadImage(str(ct_path))
    out = {"machine": machine_info("cpu"), "ct": ct_path.name, "runs": []}
    pair = deformed_pair(ct, amplitude_mm=18.0, num_landmarks=100, seed=0)
    if not a.skip_paper:
        kw = {"epochs": a.epochs} if a.epochs else {}
        out["runs"].append(run_pair(pair, "paper schedule" if not a.epochs else f"paper, {a.epochs} epochs",
                                    schedule="paper", **kw))
    if not a.skip_default:
        out["runs"].append(run_pair(pair, "package defaults (auto schedule)"))
    if not a.skip_normalisation:
        aniso_spacing = (1.5, 1.5, 3.0)
        size = [int(round(s * sp / n)) for s, sp, n in zip(ct.GetSize(), ct.GetSpacing(), aniso_spacing)]
        ref = sitk.Image(size, sitk.sitkFloat32)
        ref.SetSpacing(aniso_spacing)
        ref.SetOrigin(ct.GetOrigin())
        ref.SetDirection(ct.GetDirection())
        aniso_ct = sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
        aniso = deformed_pair(aniso_ct, amplitude_mm=18.0, num_landmarks=100, seed=0)
        reduced = dict(schedule="paper", hidden=(128, 128, 128), batch_size=4000, epochs=500)
        for norm in ("isotropic", "per-axis"):
            out["runs"].append(run_pair(aniso, f"anisotropic 1.5×1.5×3 mm, {norm}, 3×128 / 4000 pts / 500 ep",
                                        normalisation=norm, **reduced))
    print(f"written {write_record('accuracy', out)}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
