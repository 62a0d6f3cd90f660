"""idir_fast — implicit-neural-representation deformable image registration (IDIR, Wolterink et al., MIDL 2022),
made fast.

A SIREN MLP represents the transform ``Φ(x) = x + u(x)`` that maps points of the fixed image to the moving image
(world frame LPS mm, as SimpleITK). It is optimised per image pair so that ``M(Φ(x))`` matches ``F(x)`` (global
NCC), regularised by the Jacobian determinant, a hyperelastic energy or the bending energy, all computed from the
network's analytic derivatives.

Entry points: :func:`register`, :func:`load`, :class:`Registration`, the ``idir-fast`` command.
"""
__version__ = "0.1.0"

from .api import register  # noqa: E402
from .cohort import register_cohort  # noqa: E402
from .io import InputError  # noqa: E402
from .many import register_many  # noqa: E402
from .registration import Registration, load  # noqa: E402

__all__ = ["register", "register_many", "register_cohort", "load", "Registration", "InputError", "__version__"]
