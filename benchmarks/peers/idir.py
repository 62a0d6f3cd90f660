"""idir_fast: :func:`idir_fast.register` with one settings profile of :data:`PROFILES`; points by
``transform_points``, ``det J`` on the fixed grid. It samples its loss inside the fixed mask (its design)."""
from __future__ import annotations

from typing import Optional

import SimpleITK as sitk

from ..common import Stopwatch
from . import Registered

#: name → keyword arguments of idir_fast.register ("default" passes nothing: whatever the package's defaults are).
#: Add a profile here and select it with --idir-profiles.
PROFILES = {
    "default": {},
    "default+affine": dict(affine="auto"),
    "detect": dict(affine="detect"),
    "paper": dict(schedule="paper"),
    "fine": dict(schedule="fine"),
    # "auto" without its probe: the small network whatever the pair (equal to "default" where the probe stays)
    "fast": dict(schedule="fast"),
    # the similarity alone changed: the global NCC in every stage (the defaults before the local NCC)
    "ncc": dict(similarity="ncc"),
    "lncc": dict(similarity="lncc"),
    # one change each from the CPU default (the sensitivity behind the defaults)
    "hidden96": dict(hidden=(96, 96, 96)),
    "points3000": dict(batch_size=3000),
    "epochs800": dict(epochs=800),
    "lr2e-4": dict(lr=2e-4),
    "omega16": dict(omega=16.0),
    "quick": dict(hidden=(32, 32, 32), batch_size=1000, epochs=30),
    # the other regularisers under the staged schedule: their weight and stopping rule (the sensitivity behind
    # their defaults)
    **{f"{reg}-a{alpha:g}": dict(regularizer=reg, alpha=alpha)
       for reg, alphas in (("jacobian", (0.05, 0.01, 0.002, 5e-4)), ("hyperelastic", (0.25, 0.05, 0.01, 2e-3)))
       for alpha in alphas},
    **{f"{reg}-a{alpha:g}-notol": dict(regularizer=reg, alpha=alpha, tol=0.0)
       for reg, alpha in (("jacobian", 0.05), ("jacobian", 0.002), ("hyperelastic", 0.25), ("hyperelastic", 0.01))},
    # the same time budget as bending (order-1 steps cost about half), and a lower frequency
    **{f"{reg}-a{alpha:g}-e{epochs}-w{omega:g}": dict(regularizer=reg, alpha=alpha, epochs=epochs, omega=omega)
       for reg, alphas in (("jacobian", (0.05, 0.02)), ("hyperelastic", (0.25, 0.1)))
       for alpha in alphas for epochs in (400, 800) for omega in (32.0, 16.0)},
    "jacobian": dict(regularizer="jacobian"),
    "hyperelastic": dict(regularizer="hyperelastic"),
    # the convention check: a small fixed setting
    "check": dict(hidden=(64, 64, 64), batch_size=2000, epochs=300),
}


def profile_settings(profile: str) -> dict:
    """The keyword arguments of ``profile``: a name of :data:`PROFILES`, or ad-hoc settings for a sweep,
    ``key=value`` pairs joined by ``:`` (tuples with ``x``), e.g. ``epochs=800:hidden=96x96x96:affine=detect``."""
    if profile in PROFILES:
        return dict(PROFILES[profile])
    if "=" not in profile:
        raise ValueError(f"unknown idir profile {profile!r}; known: {', '.join(PROFILES)} (or key=value:key=value)")

    def value(text: str):
        if "x" in text and all(part.replace(".", "", 1).isdigit() for part in text.split("x")):
            return tuple(value(part) for part in text.split("x"))
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return text

    return {key: value(text) for key, text in (item.split("=", 1) for item in profile.split(":"))}


def unavailable() -> Optional[str]:
    return None


def register(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, *, threads: int,
             profile: str = "default", device: str = "cpu") -> Registered:
    import idir_fast

    settings = profile_settings(profile)
    with Stopwatch() as sw:
        reg = idir_fast.register(fixed, moving, mask, progress=False, device=device, threads=threads, **settings)
    used = {k: v for k, v in reg.record.settings_dict().items() if k != "versions"}
    return Registered(reg.transform_points, reg.jacobian_determinant, sw.wall, sw.cpu,
                      {"profile": profile, "requested": settings, "used": used,
                       "mask": "fixed mask (loss sampled inside)", "threads": threads},
                      idir_fast.__version__, extra={"recipe": "Registration.transform_points"},
                      warp_labels=lambda labels: idir_fast.apply(reg, labels, interpolation="nearest"))
