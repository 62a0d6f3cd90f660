"""``idir_fast.register``: one call that registers two 3-D images the way the IDIR paper does."""
from __future__ import annotations

import os
import platform
import time
from typing import Optional, Sequence

import numpy as np
import torch

from . import objectives
from .backends import resolve_backend
from .engine import HISTORY_TERMS, default_sync_every, optimise, prepare_pair
from .geometry import NORMALISATIONS
from .io import ImageLike, InputError, as_image, as_mask
from .registration import Registration
from .siren import Siren

DEFAULT_LR = 1e-4
COMPAT_LR = {"idir-2022": 1e-5}


def environment(device: Optional[torch.device] = None) -> dict:
    """Library versions and the device, recorded with every run."""
    import SimpleITK as sitk

    from . import __version__

    env = {"idir_fast": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "SimpleITK": sitk.Version_VersionString(), "platform": platform.platform(),
           "torch_threads": torch.get_num_threads()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 — triton is optional on non-Linux platforms
        env["triton"] = None
    if device is not None and torch.device(device).type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"'device' is not a valid torch device: {device!r} ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"'device' is {device!r} but CUDA is not available on this machine "
                         "(this PyTorch build or machine has no GPU); use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"'device' must be a CPU or CUDA device, got {device!r}")
    return dev


def register(fixed: ImageLike, moving: ImageLike, mask: Optional[ImageLike] = None, *,
             regularizer: Optional[str] = "bending", alpha: Optional[float] = None, epochs: int = 2500,
             batch_size: int = 10_000, lr: Optional[float] = None, hidden: Sequence[int] = (256, 256, 256),
             omega: float = 32.0, backend: str = "auto", device=None, seed: int = 0, progress: bool = True,
             compat: Optional[str] = None, init: Optional[str] = None, normalisation: Optional[str] = None,
             spacing=None, origin=None, direction=None, dtype: torch.dtype = torch.float32,
             fixed_landmarks=None, moving_landmarks=None) -> Registration:
    """Register ``moving`` to ``fixed``: find Φ with ``M(Φ(x)) ≈ F(x)`` on the fixed mask.

    Args:
        fixed, moving, mask: file path (NIfTI/MetaImage/NRRD/… or a DICOM folder), ``SimpleITK.Image``, or NumPy
            array in ``(z, y, x)`` order (then ``spacing``/``origin``/``direction`` give the geometry, in
            SimpleITK ``(x, y, z)`` order; a NumPy mask takes the fixed image's geometry). Points are drawn from
            voxels where ``mask > 0`` (all voxels when ``mask`` is None).
        regularizer: ``None``, ``"jacobian"``, ``"hyperelastic"`` or ``"bending"``.
        alpha: regulariser weight; ``None`` takes :data:`idir_fast.objectives.DEFAULT_ALPHA`.
        epochs: Adam steps. batch_size: points per step (drawn without replacement each step).
        lr: Adam learning rate; default 1e-4 (1e-5 with ``compat="idir-2022"``). See README for the measurement.
        hidden: widths of the sine layers. omega: ω of every sine layer.
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"`` (see :mod:`idir_fast.backends`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; default CUDA when available.
        seed: seeds the network init and the point sampling; same seed → same result on CPU.
        progress: show a tqdm progress bar with the current loss.
        compat: ``None`` (the paper's equations) or ``"idir-2022"`` (the released code's quirks: N−1 NCC,
            bending yz weight and double division, its init, lr 1e-5, per-axis normalisation).
        init: SIREN init (``"siren"`` or ``"idir-2022"``); default from ``compat``.
        normalisation: ``"isotropic"`` or ``"per-axis"`` network frame; default from ``compat``.
        dtype: float32 (default) or float64.
        fixed_landmarks, moving_landmarks: optional ``(N, 3)`` world points (LPS mm); when both are given the
            initial and final TRE are stored in ``metrics``.

    Returns:
        :class:`~idir_fast.registration.Registration`.
    """
    t_start = time.perf_counter()
    regularizer = _checked(objectives.check_regularizer, regularizer, "regularizer")
    compat = _checked(objectives.check_compat, compat, "compat")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InputError(f"'{name}' must be a positive integer, got {value!r}")
    if alpha is None:
        alpha = objectives.default_alpha(regularizer, compat)
    if not np.isfinite(alpha) or alpha < 0:
        raise InputError(f"'alpha' must be a finite number ≥ 0, got {alpha!r}")
    if lr is None:
        lr = COMPAT_LR.get(compat, DEFAULT_LR)
    if not np.isfinite(lr) or lr <= 0:
        raise InputError(f"'lr' must be a positive number, got {lr!r}")
    init = init or ("idir-2022" if compat == "idir-2022" else "siren")
    normalisation = normalisation or ("per-axis" if compat == "idir-2022" else "isotropic")
    if normalisation not in NORMALISATIONS:
        raise InputError(f"'normalisation' must be one of {NORMALISATIONS}, got {normalisation!r}")
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"'dtype' must be torch.float32 or torch.float64, got {dtype!r}")
    dev = resolve_device(device)
    try:
        backend_impl = resolve_backend(backend, dev)
    except ValueError as err:
        raise InputError(str(err)) from None

    geometry = dict(spacing=spacing, origin=origin, direction=direction)
    fixed_img = as_image(fixed, "fixed", **geometry)
    moving_img = as_image(moving, "moving", **geometry)
    mask_img = as_mask(mask, "mask", fixed_img)
    fl, ml = _landmarks(fixed_landmarks, moving_landmarks)

    pair = prepare_pair(fixed_img, moving_img, mask_img, normalisation=normalisation, device=dev, dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            siren = Siren(hidden=hidden, omega=omega, init=init, dtype=dtype)
        except ValueError as err:
            raise InputError(str(err)) from None
    siren = siren.to(dev)
    t_prepared = time.perf_counter()

    result = optimise(siren, pair, backend_impl, regularizer=regularizer, alpha=float(alpha), compat=compat,
                      epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), seed=int(seed),
                      progress=progress, sync_every=default_sync_every(int(epochs)))
    settings = {
        "regularizer": regularizer, "alpha": float(alpha), "epochs": int(epochs),
        "batch_size": int(min(batch_size, pair.num_points)), "lr": float(lr), "hidden": list(siren.hidden),
        "omega": float(omega), "init": init, "normalisation": normalisation, "compat": compat,
        "backend": backend_impl.name, "backend_requested": backend, "device": str(dev), "seed": int(seed),
        "dtype": str(dtype).replace("torch.", ""), "mask_voxels": pair.num_points,
        "backward_passes_per_epoch": backend_impl.backward_passes(objectives.derivative_order(regularizer)),
        "versions": environment(dev),
    }
    timings = {"prepare_s": t_prepared - t_start, "optimise_s": result.seconds,
               "ms_per_epoch": 1000.0 * result.seconds / max(result.epochs_run, 1)}
    history = {name: result.history[:, i] for i, name in enumerate(HISTORY_TERMS)}
    if isinstance(mask, (str, os.PathLike)):
        settings["mask_path"] = os.path.abspath(os.fspath(mask))
    for name, obj in (("fixed", fixed), ("moving", moving)):
        if isinstance(obj, (str, os.PathLike)):
            settings[f"{name}_path"] = os.path.abspath(os.fspath(obj))
    reg = Registration(siren, pair.world_to_normalised, pair.fixed_geometry, settings, history, timings,
                       moving=moving_img, mask=mask_img)
    if fl is not None:
        from .metrics import tre

        before, after = tre(fl, ml), tre(reg.transform_points(fl), ml)
        reg.metrics["tre_initial"], reg.metrics["tre"] = _summary(before), _summary(after)
        reg.metrics["tre_initial_errors"], reg.metrics["tre_errors"] = before["errors"], after["errors"]
    reg.timings["total_s"] = time.perf_counter() - t_start
    return reg


def _summary(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "errors"}


def _checked(fn, value, name):
    try:
        return fn(value)
    except ValueError as err:
        raise InputError(str(err)) from None


def _landmarks(fixed_landmarks, moving_landmarks):
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError("'fixed_landmarks' and 'moving_landmarks' must be given together")
    if fixed_landmarks is None:
        return None, None
    from .landmarks import read_points

    out = []
    for name, pts in (("fixed_landmarks", fixed_landmarks), ("moving_landmarks", moving_landmarks)):
        arr = read_points(pts, name) if isinstance(pts, (str, bytes)) or hasattr(pts, "__fspath__") \
            else np.asarray(pts, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise InputError(f"'{name}' must have shape (N, 3), got {arr.shape}")
        out.append(arr)
    if out[0].shape != out[1].shape:
        raise InputError(f"'fixed_landmarks' and 'moving_landmarks' must have the same number of points, got "
                         f"{len(out[0])} and {len(out[1])}")
    return out[0], out[1]
