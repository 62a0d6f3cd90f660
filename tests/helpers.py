"""Helpers shared by the tests: error measures, random networks, derivatives by backend name."""
import random

import torch

from idir_fast import backends
from idir_fast.core.siren import Siren


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of the reference ``b``."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def random_siren(hidden, omega: float = 32.0, scale: float = 1.0, dtype=torch.float64, seed=None, device="cpu"):
    """A SIREN with random parameters and no exact zeros (output bias included); ``seed=None`` draws a fresh seed,
    returned beside the network so a failure can be reproduced."""
    if seed is None:
        seed = random.randrange(2 ** 31)
    torch.manual_seed(seed)
    s = Siren(hidden, omega=omega, dtype=dtype)
    with torch.no_grad():
        for p in s.parameters():
            p.mul_(scale * (0.5 + torch.rand_like(p)))
            p.add_(1e-3 * torch.randn_like(p))
    return s.to(device), seed


def random_points(n: int, dtype=torch.float64, seed: int = 0, spread: float = 1.2, device="cpu"):
    """``n`` points in ``[-spread, spread]³`` (some outside the network's box when spread > 1)."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(n, 3, generator=g, dtype=dtype) * 2 - 1) * spread).to(device)


def derivatives(backend: str, siren: Siren, x: torch.Tensor, order: int, precision: str = "ieee"):
    """Φ, J, H6 of ``siren`` at ``x`` through the named backend."""
    return backends.get(backend).derivatives(siren.parameter_list(), siren.omega, x, order, precision)


def write_pair_files(pair, folder, landmarks: bool = True) -> dict:
    """Write a test pair's images (``fixed``, ``moving``, ``mask`` as .nii.gz) and, with ``landmarks``, its point
    files (``fl``, ``ml``) into ``folder``; returns name → path."""
    import SimpleITK as sitk

    from idir_fast.io.landmarks import write_points

    paths = {}
    for name in ("fixed", "moving", "mask"):
        paths[name] = str(folder / f"{name}.nii.gz")
        sitk.WriteImage(getattr(pair, name), paths[name])
    if landmarks:
        paths["fl"], paths["ml"] = str(folder / "fl.txt"), str(folder / "ml.txt")
        write_points(pair.fixed_landmarks, paths["fl"])
        write_points(pair.moving_landmarks, paths["ml"])
    return paths
