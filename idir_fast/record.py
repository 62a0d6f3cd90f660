"""What a run was and what it measured, as data made once, when :func:`idir_fast.register` returns.

:class:`RunRecord` is frozen: the settings (a resolved :class:`~idir_fast.settings.RunSettings`), what the run
used (the backend after any fallback, the stages as they ran, threads, versions, input paths …), the loss
history, the timings and the metrics (TRE when landmarks were given; folding and SDlogJ of det J inside the mask;
with a backward network the cycle and inverse consistency). Saving a run writes these; it never changes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Dict, Mapping

import numpy as np

from .io.files import plain
from .settings import RunSettings


def _frozen(value):
    """Read-only views: mappings become ``MappingProxyType``, arrays non-writeable copies, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, np.ndarray):
        out = np.array(value)
        out.setflags(write=False)
        return out
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class RunRecord:
    """One run, as data.

    Attributes:
        settings: the resolved settings the run had.
        run: what the run used beside its settings (``backend``, ``backend_requested``, ``backend_notes``,
            ``batch_size``, ``mask_voxels``, ``stages``, ``backward_passes_per_epoch``, ``cuda_graph``,
            ``threads_used``, ``versions``, input paths, ``world_affine``, ``affine_stage``, …).
        history: per-step ``loss``, ``similarity`` (−NCC) and ``regularization`` arrays.
        timings: seconds per phase and ms per step.
        metrics: ``tre``/``tre_initial`` (+ per-point errors), ``folding``, ``sdlogj``, ``consistency``,
            ``inverse_consistency`` — those that apply.
    """

    settings: RunSettings
    run: Mapping[str, Any]
    history: Mapping[str, np.ndarray]
    timings: Mapping[str, float]
    metrics: Mapping[str, Any]

    def __post_init__(self):
        for name in ("run", "history", "timings", "metrics"):
            object.__setattr__(self, name, _frozen(getattr(self, name) or {}))

    def settings_dict(self) -> Dict[str, Any]:
        """The report's ``settings`` block: every setting, then what the run used (one flat dict, as before)."""
        return {**self.settings.to_dict(), **plain(self.run)}

    def report(self) -> Dict[str, Any]:
        """``settings``, ``timings``, ``final_losses`` and ``metrics`` as JSON-friendly dicts."""
        final = {k: float(v[-1]) for k, v in self.history.items() if len(v)}
        return {"settings": self.settings_dict(), "timings": plain(self.timings), "final_losses": final,
                "metrics": plain(self.metrics)}

    @classmethod
    def from_saved(cls, settings: Mapping[str, Any], history: Mapping[str, Any], timings: Mapping[str, Any],
                   metrics: Mapping[str, Any]) -> "RunRecord":
        """The record of a model file: its flat ``settings`` block split into the settings and the rest."""
        names = RunSettings.field_names()
        known = {k: v for k, v in settings.items() if k in names}
        try:
            run_settings = RunSettings.from_dict(known)
        except Exception:  # noqa: BLE001 — a file of another version: keep what it says, as the run's record
            run_settings, known = RunSettings(), {}
        return cls(run_settings, {k: v for k, v in settings.items() if k not in known},
                   {k: np.asarray(v) for k, v in history.items()}, dict(timings), dict(metrics))


__all__ = ["RunRecord", "plain"]
