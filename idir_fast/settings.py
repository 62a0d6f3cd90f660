"""Every setting of a registration run, in one place: defaults, values derived from ``compat``, validation.

:class:`RunSettings` is built by :func:`idir_fast.register`, :func:`idir_fast.register_many`, the cohort runner and
the ``idir-fast`` command alike, and recorded in every report. A new option is one field here: its metadata
(``help``, ``parse``, ``choices``) also makes its command-line flag (:func:`add_cli_options`).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from . import backends
from .config import setting_default
from .core import objectives
from .core.compat import COMPAT, COMPAT_MODES, CompatProfile, check_compat
from .core.geometry import NORMALISATIONS
from .core.siren import INITS
from .errors import InputError
from .schedule import SAMPLINGS, SCHEDULES
from .threads import check_threads

DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOOPS = ("fast", "eager")


def _setting(default, help: str, *, check: Optional[Callable[[Any], Any]] = None, parse=None, choices=None,
             metavar: Optional[str] = None, cli: bool = True, shown: Optional[str] = None, aliases=()):
    """A field of :class:`RunSettings`. ``check`` validates and normalises a value (raising
    :class:`InputError`); without one, ``choices`` are the allowed values; ``parse`` turns command-line text into
    a value; ``shown`` is the default as ``--help`` states it."""
    return field(default=default, metadata={"help": help, "check": check, "parse": parse, "choices": choices,
                                            "metavar": metavar, "cli": cli, "shown": shown, "aliases": aliases})


def parse_hidden(text: str) -> Tuple[int, ...]:
    """``"256,256,256"`` or ``"256x256x256"`` → ``(256, 256, 256)``."""
    try:  # every separated part must be a width: "4,x" or "4,,4" is a typo, not (4,) or (4, 4)
        return tuple(int(v) for v in str(text).strip().replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"'hidden' must be comma-separated widths like 256,256,256, got {text!r}") from None


@dataclass(frozen=True)
class RunSettings:
    """Settings of one registration run (README, "Python"; each field's help: ``idir-fast register --help``).

    ``None`` means "derived": from ``compat`` (:data:`idir_fast.core.compat.COMPAT`), from the schedule, from the
    environment (:mod:`idir_fast.config`: a variable gives a field's default) or from the machine (``device``);
    :meth:`resolved` fills them in. Every field is validated once, by the check its metadata declares.
    """

    regularizer: Optional[str] = _setting(
        "bending", "regulariser on Φ: none, jacobian (|1 − det J|), hyperelastic (Burger et al.), bending (energy "
        "of the Hessian, paper eq. 3)", check=lambda v: _value_error(objectives.check_regularizer, v),
        choices=[r.label for r in objectives.REGULARIZERS.values()])
    similarity: str = _setting(
        "auto", "image similarity of every stage: ncc (global normalised cross-correlation, the paper), lncc (the "
        "NCC of each point's 3×3×3 neighbourhood, averaged: robust to intensity that varies across the image, "
        "finer alignment), ncc+lncc (their mean), or auto (the schedule's per stage)",
        choices=["auto"] + list(objectives.SIMILARITIES))
    sampling: str = _setting(
        "uniform", "how each step draws its points from the fixed mask: uniform, or gradient (in proportion to the "
        "fixed image's gradient magnitude, a tenth of the weight spread evenly: more points on vessels, fissures and "
        "tissue borders; on the lung cases of docs/measurements.md a lower TRE on average, on smooth textures and the "
        "brain a higher one)",
        choices=list(SAMPLINGS))
    lncc_spacing: Optional[float] = _setting(
        None, "voxels (of the fixed image) between the samples of a local-NCC neighbourhood, a window of "
        "2·spacing + 1 voxels per axis (default: from the schedule)", parse=float, shown="derived",
        check=lambda v: _number(v, "lncc_spacing", "a finite positive number", lambda x: x > 0))
    alpha: Optional[float] = _setting(None, "regulariser weight α (default: per regulariser, schedule and compat, "
                                            "from idir_fast.schedule; the report records the one used)",
                                      check=lambda v: _number(v, "alpha", "a finite number ≥ 0", lambda x: x >= 0),
                                      parse=float, shown="derived")
    regularizer_share: Optional[float] = _setting(
        None, "share of each step's points at which the regulariser (and the fold guard) is evaluated, 0 < s ≤ 1: "
        "the first s·B of the step's random batch of B; the similarity uses all B. Below 1 the regulariser's "
        "derivative streams (bending's 10 per point) pass through fewer points: a third takes ~0.8× the time on "
        "one CPU thread, for a slightly higher TRE (docs/measurements.md) (default: 1, every point, as the paper)",
        parse=float, shown="derived",
        check=lambda v: _number(v, "regularizer_share", "a number in (0, 1]", lambda x: 0 < x <= 1))
    fold_guard: Optional[float] = _setting(
        None, "weight of the fold guard, mean max(0, 0.3 − det J)² added to the loss: it acts only where Φ "
        "shrinks a region below 0.3 of its volume, toward folding (0: off; default: from the schedule — 10 on "
        "fine on a CPU, including the pairs auto switches to fine; 0 otherwise, with --compat and with "
        "--regularizer none)", parse=float, shown="derived",
        check=lambda v: _number(v, "fold_guard", "a finite number ≥ 0", lambda x: x >= 0))
    schedule: str = _setting(
        "auto", "auto: coarse-to-fine stages and a network sized for the device (docs/measurements.md); on "
        "a CPU a pair still far apart after the blurred stage (inter-subject) is run again on fine; "
        "fast: auto without that switch; "
        "fine: on a CPU a wider network, 3× the steps and the local NCC in the sharp stage (inter-subject pairs); "
        "paper: the paper's single stage (3×256, 10,000 points × 2500 steps, lr 1e-4)",
        choices=list(SCHEDULES))
    epochs: Optional[int] = _setting(None, "optimisation steps in all, over every stage (default: from the "
                                           "schedule)", parse=int, check=lambda v: _positive_int(v, "epochs"),
                                     aliases=("--steps",))
    batch_size: Optional[int] = _setting(
        None, "points drawn from the fixed mask per step, in the last stage (default: from the schedule)", parse=int,
        check=lambda v: _positive_int(v, "batch_size"))
    lr: Optional[float] = _setting(None, "peak Adam learning rate (default: from the schedule; 1e-5 with --compat "
                                         "idir-2022)", parse=float,
                                   check=lambda v: _number(v, "lr", "a positive number", lambda x: x > 0))
    hidden: Optional[Tuple[int, ...]] = _setting(None, "SIREN sine-layer widths, comma-separated (default: from "
                                                       "the schedule)", parse=parse_hidden, metavar="W,W,W",
                                                 check=lambda v: _hidden(v))
    omega: Optional[float] = _setting(None, "SIREN frequency ω of every sine layer (default: from the schedule)",
                                      parse=float,
                                      check=lambda v: _number(v, "omega", "a finite positive number", lambda x: x > 0))
    tol: Optional[float] = _setting(
        None, "stop a stage early when the loss improves by less than this per step, relative to its range so far "
        "(0: never; default: from the schedule)", parse=float,
        check=lambda v: _number(v, "tol", "a finite number ≥ 0", lambda x: x >= 0))
    seed: int = _setting(0, "seed of the network init and the point sampling (same seed → same result on CPU)",
                         parse=int, check=lambda v: _seed(v))
    compat: Optional[str] = _setting(
        None, "'idir-2022' reproduces the released IDIR code's quirks (N−1 NCC, bending weights, init, lr, "
        "per-axis normalisation); default: the paper's equations",
        choices=[c or "none" for c in COMPAT_MODES], check=lambda v: _value_error(check_compat, v))
    init: Optional[str] = _setting(None, "SIREN initialisation (default: identity, i.e. Φ starts as the identity; "
                                         "idir-2022 with --compat idir-2022)", choices=list(INITS))
    normalisation: Optional[str] = _setting(
        None, "network coordinate frame (default: isotropic; per-axis with --compat idir-2022)",
        choices=list(NORMALISATIONS))
    dtype: torch.dtype = _setting(torch.float32, "floating-point type of the optimisation", parse=str,
                                  choices=list(DTYPES), check=lambda v: _dtype(v), shown="float32")
    device: Optional[str] = _setting(None, "cpu, cuda, cuda:1 … (default: cuda when available)",
                                     check=lambda v: str(_parse_device(v)), shown="derived")
    backend: Optional[str] = _setting(
        None, "compute backend: " + "; ".join(f"{b.name} = {b.summary}" for b in backends.BACKENDS.values())
        + "; auto picks the fastest available for the device (default: auto, or $IDIR_FAST_BACKEND)",
        choices=list(backends.names()) + ["auto"], check=lambda v: _value_error(backends.check_name, v))
    precision: Optional[str] = _setting(
        None, "matrix-product precision of the Triton kernels: ieee, tf32x3, tf32 (default: $IDIR_FAST_PRECISION "
        "or ieee)", choices=list(backends.PRECISIONS))
    cpu_kernels: Optional[str] = _setting(
        None, "the stream algebra of a CPU step: fused (compiled kernels, the step's large tensors made once and "
        "reused), ops (PyTorch's ops: the same maths in another float32 rounding order) or auto (fused up to the "
        "network size where ops become faster, ops.siren_streams.fused_pays) (default: auto; "
        "IDIR_FAST_CPU_FUSED=1/0 gives fused/ops)", choices=["auto", "fused", "ops"])
    threads: Any = _setting(
        None, "CPU threads of the run: auto (the cores this process may use — affinity mask, cgroup CPU quota — "
        "divided among the cohort's workers, one fewer while the run's threads queue behind other busy processes) "
        "or a number; results do not depend on it (default: auto, or $IDIR_FAST_THREADS)", metavar="auto|N",
        check=lambda v: check_threads(v))
    self_check: Optional[bool] = _setting(
        None, "compare a fast backend with the reference on its first use in the process and fall back on a "
        "mismatch (default: on; IDIR_FAST_SELF_CHECK=0 turns it off)", check=lambda v: _bool(v, "self_check"),
        cli=False)
    memory_check: Optional[bool] = _setting(
        None, "refuse a run whose estimated memory does not fit, before any work (default: on; "
        "IDIR_FAST_NO_MEMORY_CHECK=1 turns it off)", check=lambda v: _bool(v, "memory_check"), cli=False)
    loop: str = _setting("fast", "optimisation loop: fast (no per-step host reads; CUDA graph on a GPU) or eager "
                                 "(reads the loss every step; the reference the fast loop is tested against)",
                         choices=list(LOOPS), cli=False)
    affine: Optional[str] = _setting(
        None, "affine stage before the SIREN: auto (SimpleITK, correlation metric, 3-level pyramid; starts from "
        "--initial-transform when given), detect (only when the images' foreground moments say their poses differ: "
        "shifts over 10 mm, scalings, rotations of elongated bodies; a few degrees of a rounded one go unseen) "
        "or none. Use auto for pairs known to differ in pose (a follow-up scan)", choices=["auto", "detect", "none"],
        check=lambda v: _affine(v))
    symmetric: bool = _setting(
        False, "train a forward and a backward SIREN together with a cycle-consistency term (ccIDIR); writes both "
        "fields and the consistency map, a per-voxel uncertainty", check=lambda v: _bool(v, "symmetric"))
    alpha_cycle: float = _setting(
        1e-2, "weight of the cycle-consistency term with --symmetric (per mm² of mean squared cycle error)",
        parse=float, check=lambda v: _number(v, "alpha_cycle", "a finite number ≥ 0", lambda x: x >= 0))
    consistency_flag_mm: float = _setting(
        2.0, "with --symmetric: a pair is flagged as doubtful when the 95th percentile of its cycle error in the "
        "mask exceeds this (mm)", parse=float,
        check=lambda v: _number(v, "consistency_flag_mm", "a finite positive number", lambda x: x > 0))

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                found, value = setting_default(f.name)  # an environment variable may give the default
                if not found:
                    value = _BUILT_IN_DEFAULTS.get(f.name)
            check, choices = f.metadata.get("check"), f.metadata.get("choices")
            if value is not None and check is not None:
                value = check(value)
            elif value is not None and choices is not None and value not in choices:
                raise InputError(f"'{f.name}' must be one of {tuple(choices)}, got {value!r}")
            object.__setattr__(self, f.name, value)
        if self.fold_guard and self.regularizer_spec.order == 0:
            raise InputError(f"'fold_guard' needs a regulariser: it acts on det J, and regularizer none computes "
                             f"none (got {self.fold_guard!r}; choose a regulariser or leave the guard unset)")
        if self.symmetric and self.backend not in ("auto", "torch"):
            raise InputError("'symmetric' trains the forward and backward networks in one batched step of the "
                             f"'torch' backend; backend={self.backend!r} cannot")

    # ------------------------------------------------------------------------------------------- derived
    @property
    def regularizer_spec(self) -> objectives.Regularizer:
        return objectives.get_regularizer(self.regularizer)

    @property
    def order(self) -> int:
        """Derivative order of Φ a step needs (0, 1, 2): the regulariser's, at least 1 when a stage uses the
        local NCC (its neighbourhoods follow Φ's Jacobian)."""
        local = any("lncc" in stage.similarity for stage in self.stages())
        return max(self.regularizer_spec.order, 1 if local else 0)

    @property
    def compat_profile(self) -> CompatProfile:
        return COMPAT[self.compat]

    @property
    def profile(self):
        """The schedule's profile for this device (:mod:`idir_fast.schedule`)."""
        from .schedule import profile_for

        return profile_for(self.schedule_name, resolve_device(self.device).type)

    @property
    def schedule_name(self) -> str:
        """A compat mode may run its own schedule (``idir-2022``: the paper's, as the released code)."""
        return self.compat_profile.schedule or self.schedule

    def stages(self):
        """The stages of the run (resolved settings): :func:`idir_fast.schedule.build_stages`."""
        from .schedule import build_stages

        return build_stages(self.profile, self.epochs, self.batch_size, self.lr, self.similarity, self.sampling)

    def resolved(self) -> "RunSettings":
        """A copy with every derived value filled in and the device checked against this machine."""
        profile, compat = self.profile, self.compat_profile
        own = profile.regularizers.get(self.regularizer, {}) if self.compat is None else {}
        hidden, points = self.hidden or profile.hidden, self.batch_size or profile.points
        cpu_kernels = self.cpu_kernels
        if cpu_kernels == "auto":
            from .ops.siren_streams import fused_pays

            cpu_kernels = "fused" if fused_pays(points, max(hidden)) else "ops"
        return dataclasses.replace(
            self,
            schedule=self.schedule_name, cpu_kernels=cpu_kernels,
            epochs=self.epochs or profile.epochs, batch_size=points,
            hidden=hidden, omega=self.omega or own.get("omega", profile.omega),
            lncc_spacing=self.lncc_spacing or profile.lncc_spacing,
            fold_guard=(profile.fold_guard if self.compat is None and self.regularizer_spec.order else 0.0)
            if self.fold_guard is None else self.fold_guard,
            tol=own.get("tol", profile.tol) if self.tol is None else self.tol,
            alpha=own.get("alpha", self.regularizer_spec.default_alpha(self.compat)) if self.alpha is None
            else self.alpha,
            regularizer_share=own.get("regularizer_share", 1.0) if self.regularizer_share is None
            else self.regularizer_share,
            lr=self.lr or compat.lr or profile.lr,
            init=self.init or compat.init or profile.init,
            normalisation=self.normalisation or compat.normalisation,
            precision=self.precision or backends.DEFAULT_PRECISION,
            device=str(_device_for_backend(self.backend, self.device)),
        )

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def replace(self, **changes) -> "RunSettings":
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------------------- reporting
    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict of every setting (dtype as its name, widths as a list)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.dtype):
                v = str(v).replace("torch.", "")
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunSettings":
        """The inverse of :meth:`to_dict`; keys that are not settings are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def build(cls, settings: Optional["RunSettings"] = None, caller: str = "register", **options) -> "RunSettings":
        """``settings`` updated with keyword ``options``; an unknown option is a ``TypeError`` as Python gives
        for an unknown keyword argument."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
        if settings is None:
            return cls(**options)
        if not isinstance(settings, cls):
            raise InputError(f"'settings' must be an idir_fast.RunSettings, got {type(settings).__name__}")
        return dataclasses.replace(settings, **options) if options else settings


_BUILT_IN_DEFAULTS = {"backend": "auto", "cpu_kernels": "auto", "threads": "auto", "self_check": True,
                      "memory_check": True}
"""Defaults of the fields whose default an environment variable may give (:mod:`idir_fast.config`)."""


# ------------------------------------------------------------------------------------------- validation
def _value_error(check, value):
    try:
        return check(value)
    except ValueError as err:
        raise InputError(str(err)) from None


def _bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"'{name}' must be True or False, got {value!r}")
    return bool(value)


def _affine(value):
    if isinstance(value, str) and value.lower() == "none":
        return None
    if value not in ("auto", "detect"):
        raise InputError(f"'affine' must be 'auto', 'detect' or None, got {value!r}")
    return value


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"'{name}' must be a positive integer, got {value!r}")
    return int(value)


def _seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2 ** 63:
        raise InputError(f"'seed' must be an integer in [0, 2**63), got {value!r}")
    return int(value)


def _number(value, name: str, what: str, ok: Callable[[float], bool]) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"'{name}' must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or not ok(v):
        raise InputError(f"'{name}' must be {what}, got {value!r}")
    return v


MAX_WIDTH = 4096


def _hidden(value) -> Tuple[int, ...]:
    if isinstance(value, str):
        try:
            value = parse_hidden(value)
        except ValueError as err:
            raise InputError(str(err)) from None
    try:
        widths = tuple(value)
    except TypeError:
        raise InputError(f"'hidden' must be a sequence of layer widths like (256, 256, 256), got {value!r}") from None
    if (not widths or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not 1 <= w <= MAX_WIDTH
                          for w in widths)):
        raise InputError(f"'hidden' must be 1 or more widths between 1 and {MAX_WIDTH}, got {value!r}")
    return tuple(int(w) for w in widths)


def _dtype(value) -> torch.dtype:
    if isinstance(value, str) and value.replace("torch.", "") in DTYPES:
        return DTYPES[value.replace("torch.", "")]
    if value not in DTYPES.values():
        raise InputError(f"'dtype' must be torch.float32 or torch.float64, got {value!r}")
    return value


def _parse_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"'device' is not a valid torch device: {device!r} ({err})") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"'device' must be a CPU or CUDA device, got {device!r}")
    return dev


def resolve_device(device=None) -> torch.device:
    """``None`` → CUDA when available, else CPU; a named device is checked against this machine."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dev = _parse_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"'device' is {str(device)!r} but CUDA is not available on this machine "
                             "(this PyTorch build or machine has no GPU); use device='cpu'")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise InputError(f"'device' is {str(device)!r} but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
        dev = torch.device("cuda", index)
    return dev


def _device_for_backend(backend: str, device=None) -> torch.device:
    """:func:`resolve_device`, then an explicitly named backend checked against that device (before any work,
    not at the first step)."""
    dev = resolve_device(device)
    if backend != "auto":
        why = backends.get(backend).unavailable(dev)
        if why is not None:
            raise InputError(f"'backend' is {backend!r}, which does not run on {dev}: {why}; choose the 'auto' "
                             "backend (or 'torch')")
    return dev


# ------------------------------------------------------------------------------------------------- CLI
def add_cli_options(parser, *, only=None, group_titles=("optimisation", "compute")) -> None:
    """Add one ``--flag`` per setting (its help, type and choices from the field's metadata). Flags default to
    ``None`` (= the setting's default), so :func:`from_cli` passes on only what was given."""
    compute = {"device", "backend", "precision", "dtype"}
    groups = {title: parser.add_argument_group(title) for title in group_titles}
    for f in dataclasses.fields(RunSettings):
        meta = f.metadata
        if not meta.get("cli") or (only is not None and f.name not in only):
            continue
        default = f.default
        shown = {None: "derived", torch.float32: "float32"}.get(default, default) if not isinstance(default, tuple) \
            else ",".join(map(str, default))
        if default is None and f.name not in ("alpha", "lr", "init", "normalisation", "device", "precision"):
            shown = "none"
        text = meta["help"] if "default" in meta["help"] else f"{meta['help']} (default: {shown})"
        kwargs = dict(default=None, help=text)
        if isinstance(default, bool):  # a switch: --symmetric
            kwargs.update(action="store_const", const=True)
        elif meta.get("parse") is not None:
            kwargs["type"] = _argparse_type(meta["parse"], f.name)
        if meta.get("choices") and not isinstance(default, bool):
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        group = groups[group_titles[1] if f.name in compute else group_titles[0]]
        group.add_argument(*meta.get("aliases", ()), "--" + f.name.replace("_", "-"), dest=f.name, **kwargs)


def _argparse_type(parse, name):
    import argparse

    def convert(text):
        try:
            return parse(text)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err) if "'" in str(err) else
                                             f"invalid value for --{name.replace('_', '-')}: {text!r}") from None

    convert.__name__ = name
    return convert


def options_from_cli(args) -> Dict[str, Any]:
    """The settings given on the command line (flags left out keep their defaults)."""
    out = {}
    for f in dataclasses.fields(RunSettings):
        if f.metadata.get("cli") and getattr(args, f.name, None) is not None:
            out[f.name] = getattr(args, f.name)
    return out  # "none" strings become None in RunSettings


# ---------------------------------------------------------------------------------------------- signatures
def with_setting_parameters(func):
    """Make ``inspect.signature(func)`` (and ``help``) list every setting as a keyword-only parameter, for a
    function that takes them as ``**options`` and builds a :class:`RunSettings`."""
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    existing = {p.name for p in params}
    for f in dataclasses.fields(RunSettings):
        if f.name not in existing:
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                            annotation=f.type))
    func.__signature__ = sig.replace(parameters=params)
    return func


__all__ = ["RunSettings", "resolve_device", "add_cli_options", "options_from_cli", "with_setting_parameters",
           "parse_hidden"]
