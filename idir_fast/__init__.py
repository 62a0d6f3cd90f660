"""idir_fast — implicit-neural-representation deformable image registration (IDIR, Wolterink et al., MIDL 2022),
made fast.

A SIREN MLP represents the transform ``Φ(x) = x + u(x)`` that maps points of the fixed image to the moving image
(world frame LPS mm, as SimpleITK). It is optimised per image pair so that ``M(Φ(x))`` matches ``F(x)`` (global
NCC), regularised by the Jacobian determinant, a hyperelastic energy or the bending energy, all computed from the
network's analytic derivatives.

Entry points: :func:`register`, :func:`register_many`, :func:`register_cohort`, :func:`load`,
:class:`Registration`, :class:`RunSettings`, :func:`keep_freed_memory` (CPU allocator policy), the
``idir-fast`` command. Layers (each imports only those below
it): ``core`` (maths) → ``ops``/``kernels`` (fast paths) → ``backends`` → ``settings`` → ``optim`` (the loop) and
``io`` (files) → ``registration``/``api`` → ``apps`` (command line, cohorts, benchmark).
"""
from .version import __version__  # noqa: E402

from .api import register, register_many  # noqa: E402
from .apply import apply  # noqa: E402
from .apps.cohort import register_cohort  # noqa: E402
from .environment import keep_freed_memory  # noqa: E402
from .errors import BackendError, DivergenceError, InputError  # noqa: E402
from .registration import Registration, load  # noqa: E402
from .settings import RunSettings  # noqa: E402

__all__ = ["register", "register_many", "register_cohort", "load", "apply", "Registration", "RunSettings", "InputError",
           "DivergenceError", "BackendError", "keep_freed_memory", "__version__"]
