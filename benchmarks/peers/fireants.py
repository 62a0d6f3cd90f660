"""FireANTs (PyPI ``fireants``) on the CPU (``device="cpu"``; its fused CUDA ops are optional and absent here):
an affine stage, then greedy (or SyN) deformable registration with the local cross-correlation loss, started from
the affine — the quickstart's settings (``docs/docs/quickstart.md`` of the FireANTs repository).

Install beside the peers extra with ``pip install --no-deps fireants`` (its requirements pin SimpleITK 2.2.1,
which would replace this project's SimpleITK; what it imports at run time is already here).

Points: fixed world → FireANTs' normalised ``torch`` frame of the fixed image (``phy2torch``), through the affine
(``get_warp_parameters()['affine']``) plus the displacement grid sampled there (``grid_sample``,
``align_corners=True``), then the moving image's ``torch2phy``; checked on a known shift (:mod:`.conventions`).
``det J`` from the world displacement field it exports (``save_as_ants_transforms``, affine included).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..common import Stopwatch, importable, package_version
from . import Registered, displacement_jacobian

AFFINE = dict(scales=[4, 2, 1], iterations=[200, 100, 50], optimizer="Adam", optimizer_lr=3e-3, cc_kernel_size=5)
GREEDY = dict(scales=[4, 2, 1], iterations=[200, 100, 25], cc_kernel_size=5, deformation_type="compositive",
              smooth_grad_sigma=1, optimizer="adam", optimizer_lr=0.5)
PROFILES = {"default": ("greedy", AFFINE, GREEDY),
            "syn": ("syn", AFFINE, dict(GREEDY, optimizer_lr=0.5)),
            "quick": ("greedy", dict(AFFINE, iterations=[30, 15, 5]), dict(GREEDY, iterations=[30, 15, 5]))}


def unavailable() -> Optional[str]:
    if not importable("fireants"):
        return "fireants is not importable (pip install --no-deps fireants)"
    return None


@contextlib.contextmanager
def _quiet():
    """FireANTs announces its missing fused ops and draws progress bars on every call."""
    logging.getLogger("fireants").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def register(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, *, threads: int,
             profile: str = "default") -> Registered:
    """Affine, then greedy/SyN with CC, on the CPU (no mask)."""
    import torch

    with _quiet():
        from fireants.io.image import BatchedImages, Image
        from fireants.registration.affine import AffineRegistration
        from fireants.registration.greedy import GreedyRegistration
        from fireants.registration.syn import SyNRegistration

    kind, affine_kw, deform_kw = PROFILES[profile]
    torch.set_num_threads(int(threads))
    cast = (lambda im: sitk.Cast(im, sitk.sitkFloat32))
    with _quiet():
        fi, mi = Image(cast(fixed), device="cpu"), Image(cast(moving), device="cpu")
        fb, mb = BatchedImages([fi]), BatchedImages([mi])
    with Stopwatch() as sw, _quiet():
        affine = AffineRegistration(fixed_images=fb, moving_images=mb, loss_type="cc", **affine_kw)
        affine.optimize()
        cls = GreedyRegistration if kind == "greedy" else SyNRegistration
        deform = cls(fixed_images=fb, moving_images=mb, loss_type="cc",
                     init_affine=affine.get_affine_matrix().detach(), **deform_kw)
        deform.optimize()
    with _quiet(), torch.no_grad():  # the warp once (SyN re-solves an inverse on every query)
        params = deform.get_warp_parameters(fb, mb)
        with tempfile.TemporaryDirectory(prefix="peers_fireants_") as work:
            path = os.path.join(work, "warp.nii.gz")
            deform.save_as_ants_transforms(path)
            field = sitk.ReadImage(path)
    phy2torch = fi.phy2torch[0].detach().double().numpy()
    torch2phy = mi.torch2phy[0].detach().double().numpy()
    affine_t = params["affine"][0].detach().double().numpy()  # fixed torch → moving torch, (3, 4)
    grid = params.get("grid")

    def mapping(points):
        x = np.asarray(points, dtype=np.float64)
        xt = x @ phy2torch[:3, :3].T + phy2torch[:3, 3]
        yt = xt @ affine_t[:, :3].T + affine_t[:, 3]
        if grid is not None:
            g = grid.detach().permute(0, 4, 1, 2, 3).double()
            at = torch.from_numpy(xt).view(1, 1, 1, -1, 3)
            yt = yt + torch.nn.functional.grid_sample(g, at, mode="bilinear", align_corners=True).view(3, -1).T.numpy()
        return yt @ torch2phy[:3, :3].T + torch2phy[:3, 3]

    def warp_labels(labels):
        transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        return sitk.Resample(labels, fixed, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())

    return Registered(mapping, lambda: displacement_jacobian(field), sw.wall, sw.cpu,
                      {"deformable": kind, "affine": affine_kw, kind: deform_kw, "loss": "cc", "device": "cpu",
                       "mask": "none", "threads": threads},
                      package_version("fireants"),
                      extra={"recipe": "phy2torch → affine + grid_sample(align_corners) → torch2phy"},
                      warp_labels=warp_labels)
