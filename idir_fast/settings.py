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
from .core import objectives
from .core.geometry import NORMALISATIONS
from .core.siren import INITS
from .errors import InputError

COMPAT_LR = {"idir-2022": 1e-5}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOOPS = ("fast", "eager")


def _setting(default, help: str, *, parse: Optional[Callable[[str], Any]] = None, choices=None,
             metavar: Optional[str] = None, cli: bool = True):
    return field(default=default, metadata={"help": help, "parse": parse, "choices": choices, "metavar": metavar,
                                            "cli": cli})


def parse_hidden(text: str) -> Tuple[int, ...]:
    """``"256,256,256"`` or ``"256x256x256"`` → ``(256, 256, 256)``."""
    try:
        widths = tuple(int(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ValueError(f"'hidden' must be comma-separated widths like 256,256,256, got {text!r}") from None
    return widths


@dataclass(frozen=True)
class RunSettings:
    """Settings of one registration run (see README, "Settings and defaults").

    ``None`` means "derived": from ``compat`` (``alpha``, ``lr``, ``init``, ``normalisation``), from the
    environment (``precision``) or from the machine (``device``); :meth:`resolved` fills them in.
    """

    regularizer: Optional[str] = _setting(
        "bending", "regulariser on Φ: none, jacobian (|1 − det J|), hyperelastic (Burger et al.), bending (energy "
        "of the Hessian, paper eq. 3)", choices=[r.label for r in
                                                                     objectives.REGULARIZERS.values()])
    alpha: Optional[float] = _setting(None, "regulariser weight α (default: per regulariser and compat, README)",
                                      parse=float)
    schedule: str = _setting(
        "auto", "auto: coarse-to-fine stages and a network sized for the device (README, 'Time to accuracy'); "
        "paper: the paper's single stage (3×256, 10,000 points × 2500 steps, lr 1e-4)", choices=["auto", "paper"])
    epochs: Optional[int] = _setting(None, "optimisation steps in all (default: from the schedule)", parse=int)
    batch_size: Optional[int] = _setting(
        None, "points drawn from the fixed mask per step, in the last stage (default: from the schedule)", parse=int)
    lr: Optional[float] = _setting(None, "peak Adam learning rate (default: from the schedule; 1e-5 with --compat "
                                         "idir-2022)", parse=float)
    hidden: Optional[Tuple[int, ...]] = _setting(None, "SIREN sine-layer widths, comma-separated (default: from "
                                                       "the schedule)", parse=parse_hidden, metavar="W,W,W")
    omega: Optional[float] = _setting(None, "SIREN frequency ω of every sine layer (default: from the schedule)",
                                      parse=float)
    tol: Optional[float] = _setting(
        None, "stop a stage early when the loss improves by less than this per step, relative to its range so far "
        "(0: never; default: from the schedule)", parse=float)
    seed: int = _setting(0, "seed of the network init and the point sampling (same seed → same result on CPU)",
                         parse=int)
    compat: Optional[str] = _setting(
        None, "'idir-2022' reproduces the released IDIR code's quirks (N−1 NCC, bending weights, init, lr, "
        "per-axis normalisation); default: the paper's equations",
        choices=[c or "none" for c in objectives.COMPAT_MODES])
    init: Optional[str] = _setting(None, "SIREN initialisation (default: identity, i.e. Φ starts as the identity; idir-2022 with --compat idir-2022)",
                                   choices=list(INITS))
    normalisation: Optional[str] = _setting(
        None, "network coordinate frame (default: isotropic; per-axis with --compat idir-2022)",
        choices=list(NORMALISATIONS))
    dtype: torch.dtype = _setting(torch.float32, "floating-point type of the optimisation", parse=str,
                                  choices=list(DTYPES))
    device: Optional[str] = _setting(None, "cpu, cuda, cuda:1 … (default: cuda when available)")
    backend: str = _setting("auto", "compute backend: " + "; ".join(f"{b.name} = {b.summary}" for b in
                                                                     backends.BACKENDS.values())
                            + "; auto picks the fastest available for the device",
                            choices=list(backends.names()) + ["auto"])
    precision: Optional[str] = _setting(
        None, "matrix-product precision of the Triton kernels: ieee, tf32x3, tf32 (default: $IDIR_FAST_PRECISION "
        "or ieee)", choices=list(backends.PRECISIONS))
    loop: str = _setting("fast", "optimisation loop: fast (no per-step host reads; CUDA graph on a GPU) or eager "
                                 "(reads the loss every step; the reference the fast loop is tested against)",
                         choices=list(LOOPS), cli=False)
    affine: Optional[str] = _setting(
        None, "affine stage before the SIREN: auto (SimpleITK, correlation metric, 3-level pyramid; starts from "
        "--initial-transform when given) or none", choices=["auto", "none"])
    symmetric: bool = _setting(
        False, "train a forward and a backward SIREN together with a cycle-consistency term (ccIDIR); writes both "
        "fields and the consistency map, a per-voxel uncertainty")
    alpha_cycle: float = _setting(
        1e-2, "weight of the cycle-consistency term with --symmetric (per mm² of mean squared cycle error)",
        parse=float)
    consistency_flag_mm: float = _setting(
        2.0, "with --symmetric: a pair is flagged as doubtful when the 95th percentile of its cycle error in the "
        "mask exceeds this (mm)", parse=float)

    def __post_init__(self):
        set_ = object.__setattr__
        try:
            set_(self, "regularizer", objectives.check_regularizer(self.regularizer))
            set_(self, "compat", objectives.check_compat(self.compat))
            set_(self, "backend", backends.check_name(self.backend))
            if self.precision is not None:
                set_(self, "precision", backends.check_precision(self.precision))
        except ValueError as err:
            raise InputError(str(err)) from None
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is not None:
                set_(self, name, _positive_int(getattr(self, name), name))
        if self.schedule not in ("auto", "paper"):
            raise InputError(f"'schedule' must be 'auto' or 'paper', got {self.schedule!r}")
        if self.tol is not None:
            set_(self, "tol", _number(self.tol, "tol", "a finite number ≥ 0", lambda v: v >= 0))
        set_(self, "seed", _seed(self.seed))
        if self.alpha is not None:
            set_(self, "alpha", _number(self.alpha, "alpha", "a finite number ≥ 0", lambda v: v >= 0))
        if self.lr is not None:
            set_(self, "lr", _number(self.lr, "lr", "a positive number", lambda v: v > 0))
        if self.omega is not None:
            set_(self, "omega", _number(self.omega, "omega", "a finite positive number", lambda v: v > 0))
        if self.hidden is not None:
            set_(self, "hidden", _hidden(self.hidden))
        if self.init is not None and self.init not in INITS:
            raise InputError(f"'init' must be one of {INITS}, got {self.init!r}")
        if self.normalisation is not None and self.normalisation not in NORMALISATIONS:
            raise InputError(f"'normalisation' must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        set_(self, "dtype", _dtype(self.dtype))
        if self.device is not None:
            set_(self, "device", str(_parse_device(self.device)))
        if self.loop not in LOOPS:
            raise InputError(f"'loop' must be one of {LOOPS}, got {self.loop!r}")
        if isinstance(self.affine, str) and self.affine.lower() == "none":
            set_(self, "affine", None)
        if self.affine not in (None, "auto"):
            raise InputError(f"'affine' must be 'auto' or None, got {self.affine!r}")
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise InputError(f"'symmetric' must be True or False, got {self.symmetric!r}")
        set_(self, "symmetric", bool(self.symmetric))
        if self.symmetric and self.backend not in ("auto", "torch"):
            raise InputError("'symmetric' trains the forward and backward networks in one batched step of the "
                             f"'torch' backend; backend={self.backend!r} cannot")
        set_(self, "alpha_cycle", _number(self.alpha_cycle, "alpha_cycle", "a finite number ≥ 0", lambda v: v >= 0))
        set_(self, "consistency_flag_mm", _number(self.consistency_flag_mm, "consistency_flag_mm",
                                                  "a finite positive number", lambda v: v > 0))

    # ------------------------------------------------------------------------------------------- derived
    @property
    def regularizer_spec(self) -> objectives.Regularizer:
        return objectives.get_regularizer(self.regularizer)

    @property
    def order(self) -> int:
        """Derivative order of Φ the regulariser needs (0, 1, 2)."""
        return self.regularizer_spec.order

    @property
    def profile(self):
        """The schedule's profile for this device (:mod:`idir_fast.schedule`)."""
        from .schedule import profile_for

        return profile_for(self.schedule_name, resolve_device(self.device).type)

    @property
    def schedule_name(self) -> str:
        """``compat="idir-2022"`` reproduces the released code, so it runs the paper's schedule unless told."""
        return "paper" if self.compat == "idir-2022" else self.schedule

    def stages(self):
        """The stages of the run (resolved settings): :func:`idir_fast.schedule.build_stages`."""
        from .schedule import build_stages

        return build_stages(self.profile, self.epochs, self.batch_size, self.lr)

    def resolved(self) -> "RunSettings":
        """A copy with every derived value filled in and the device checked against this machine."""
        profile = self.profile
        return dataclasses.replace(
            self,
            schedule=self.schedule_name,
            epochs=self.epochs or profile.epochs, batch_size=self.batch_size or profile.points,
            hidden=self.hidden or profile.hidden, omega=self.omega or profile.omega,
            tol=profile.tol if self.tol is None else self.tol,
            alpha=self.regularizer_spec.default_alpha(self.compat) if self.alpha is None else self.alpha,
            lr=self.lr or COMPAT_LR.get(self.compat, profile.lr),
            init=self.init or ("idir-2022" if self.compat == "idir-2022" else profile.init),
            normalisation=self.normalisation or ("per-axis" if self.compat == "idir-2022" else "isotropic"),
            precision=backends.check_precision(self.precision),
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


# ------------------------------------------------------------------------------------------- validation
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
            raise InputError(f"'backend' is {backend!r}, which does not run on {dev}: {why}; use backend='auto' "
                             "(or 'torch')")
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
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


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
           "parse_hidden", "COMPAT_LR"]
