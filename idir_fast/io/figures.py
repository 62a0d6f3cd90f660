"""Figures of a run (matplotlib, PNG): cumulative TRE (paper Fig. 2a), det J on a slice (Fig. 3), loss curves.

Each figure function writes ``path`` atomically (checked, see :mod:`.files`) or, with ``path=None``, returns the
PNG bytes (how :meth:`idir_fast.registration.Registration.save` puts figures into its output set)."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .files import IMAGE_FORMATS, write_bytes
from .model_file import read_model_state


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, run_id: Optional[str] = None) -> Union[Path, bytes]:
    buf = io.BytesIO()
    meta = {"Description": f"idir_fast run_id={run_id}"} if run_id else None
    try:
        fig.savefig(buf, dpi=120, bbox_inches="tight", format="png", metadata=meta)
    finally:
        _pyplot().close(fig)
    return buf.getvalue() if path is None else write_bytes(buf.getvalue(), path)


def cumulative_tre(errors: Dict[str, Sequence[float]], path: Union[str, os.PathLike, None],
                   run_id: Optional[str] = None) -> Union[Path, bytes]:
    """Cumulative distribution of landmark errors, one line per label (left = more accurate)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, e in errors.items():
        e = np.sort(np.asarray(e, dtype=float))
        if e.size:
            ax.step(e, np.arange(1, e.size + 1) / e.size, where="post",
                    label=f"{label} (mean {e.mean():.2f} mm)")
    ax.set_xlabel("target registration error (mm)")
    ax.set_ylabel("fraction of landmarks")
    ax.set_ylim(0, 1.01)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path, run_id)


def jacobian_slice(jacobian: sitk.Image, path: Union[str, os.PathLike, None], mask: Optional[sitk.Image] = None,
                   axis: str = "coronal", run_id: Optional[str] = None) -> Union[Path, bytes]:
    """det J on the slice through the centre of the mask (or the image), values outside the mask hidden."""
    plt = _pyplot()
    det = sitk.GetArrayFromImage(jacobian)  # (z, y, x)
    m = sitk.GetArrayFromImage(mask) > 0 if mask is not None else np.ones_like(det, dtype=bool)
    if m.shape != det.shape:
        raise InputError(f"'mask' shape {m.shape} does not match the Jacobian map {det.shape}")
    centre = np.round(np.argwhere(m).mean(0)).astype(int) if m.any() else np.array(det.shape) // 2
    ax_index = {"axial": 0, "coronal": 1, "sagittal": 2}[axis]
    sl = [slice(None)] * 3
    sl[ax_index] = int(centre[ax_index])
    img, msk = det[tuple(sl)], m[tuple(sl)]
    sp = jacobian.GetSpacing()
    aspect = {0: sp[1] / sp[0], 1: sp[2] / sp[0], 2: sp[2] / sp[1]}[ax_index]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    shown = np.ma.masked_where(~msk, img)
    im = ax.imshow(shown, cmap="RdBu_r", vmin=0.0, vmax=2.0, origin="lower" if ax_index else "upper",
                   aspect=aspect, interpolation="nearest")
    inside = img[msk]
    folded = int(np.count_nonzero(inside <= 0))
    ax.set_title(f"det J, {axis} slice {sl[ax_index]} ({inside.min():.2f}–{inside.max():.2f}; "
                 f"{folded} folded)" if inside.size else f"det J, {axis} slice", fontsize=9)
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, shrink=0.8, label="det ∂Φ/∂x")
    return _save(fig, path, run_id)


def loss_curves(history: Dict[str, Sequence[float]], path: Union[str, os.PathLike, None],
                run_id: Optional[str] = None) -> Union[Path, bytes]:
    """Loss, similarity (−NCC) and regulariser per epoch."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("loss", "similarity"):
        if key in history and len(history[key]):
            axes[0].plot(np.asarray(history[key]), label=key, lw=0.8)
    axes[0].set_xlabel("epoch")
    axes[0].set_title("loss and −NCC")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    reg = np.asarray(history.get("regularization", []))
    if reg.size:
        axes[1].plot(reg, color="C2", lw=0.8)
        if np.all(reg > 0):
            axes[1].set_yscale("log")
    axes[1].set_xlabel("epoch")
    axes[1].set_title("regulariser")
    axes[1].grid(alpha=0.3)
    return _save(fig, path, run_id)


FIGURE_NAMES = {"tre": "fig_tre.png", "jacobian": "fig_jacdet.png", "loss": "fig_loss.png"}


def run_figures(metrics: dict, jacobian: Optional[sitk.Image], mask: Optional[sitk.Image],
                history: Optional[Dict[str, Sequence[float]]], run_id: Optional[str] = None
                ) -> Dict[str, Tuple[str, bytes]]:
    """The figures of a run as ``kind → (file name after the prefix, PNG bytes)``: cumulative TRE (with landmark
    errors in ``metrics``), det J on a slice (with ``jacobian``), loss curves (with ``history``); ``run_id`` goes
    into each PNG's ``Description`` text."""
    out = {}
    if "tre_errors" in metrics:
        errs = {"after": metrics["tre_errors"]}
        if "tre_initial_errors" in metrics:
            errs = {"before": metrics["tre_initial_errors"], **errs}
        out["tre"] = (FIGURE_NAMES["tre"], cumulative_tre(errs, None, run_id))
    if jacobian is not None:
        out["jacobian"] = (FIGURE_NAMES["jacobian"], jacobian_slice(jacobian, None, mask, run_id=run_id))
    if history and any(len(v) for v in history.values()):
        out["loss"] = (FIGURE_NAMES["loss"], loss_curves(history, None, run_id))
    return out


def figures_for_prefix(prefix: Union[str, os.PathLike], mask: Optional[sitk.Image] = None,
                       history: Optional[Dict[str, Sequence[float]]] = None) -> Dict[str, Path]:
    """Make the three figures of a saved run from its files (``{prefix}report.json``, ``…JacDet.*`` and, unless
    ``history`` is given, the loss history stored in ``…model.pt``)."""
    prefix = str(prefix)
    report_path = Path(prefix + "report.json")
    if not report_path.is_file():
        raise InputError(f"'run': {str(report_path)!r} not found (not a saved idir_fast run)")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"'run': {str(report_path)!r} is not a valid report (bad JSON: {err})") from None
    except OSError as err:
        raise InputError(f"'run': cannot read {str(report_path)!r} ({err.strerror or err})") from None
    if not isinstance(report, dict):
        raise InputError(f"'run': {str(report_path)!r} is not a valid report (not a JSON object)")
    m = report.get("metrics", {})
    jac_path = next((p for p in (prefix + "JacDet" + ext for ext in IMAGE_FORMATS) if Path(p).is_file()), None)
    jacobian = None
    if jac_path:
        if mask is None and isinstance(report.get("settings"), dict) and report["settings"].get("mask_path"):
            mp = Path(report["settings"]["mask_path"])
            mask = sitk.ReadImage(str(mp)) if mp.is_file() else None
        try:
            jacobian = sitk.ReadImage(jac_path)
        except RuntimeError as err:
            raise InputError(f"'run': cannot read {jac_path!r} ({str(err).strip().splitlines()[-1]})") from None
    if history is None and Path(prefix + "model.pt").is_file():
        history = {k: v.numpy() for k, v in read_model_state(prefix + "model.pt").get("history", {}).items()}
    run_id = report.get("run_id") if isinstance(report.get("run_id"), str) else None
    figures = run_figures(m if isinstance(m, dict) else {}, jacobian, mask, history, run_id)
    return {kind: write_bytes(data, prefix + name) for kind, (name, data) in figures.items()}


def report_run_dir(run_dir: Union[str, os.PathLike]) -> Dict[str, Dict[str, Path]]:
    """Figures for every saved run (``*report.json``) in a folder, or for one prefix."""
    d = Path(run_dir)
    if d.is_dir():
        prefixes = sorted(str(p)[: -len("report.json")] for p in d.glob("*report.json"))
        if not prefixes:
            raise InputError(f"'run_dir': no *report.json in {str(d)!r}")
    elif Path(str(d) + "report.json").is_file():
        prefixes = [str(d)]
    else:
        raise InputError(f"'run_dir': {str(d)!r} is neither a run folder nor a run prefix")
    return {p: figures_for_prefix(p) for p in prefixes}
