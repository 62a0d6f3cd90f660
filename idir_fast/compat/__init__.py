"""A drop-in for the released IDIR code (MIAGroupUT/IDIR, 2022): its registrator class, keywords and helpers,
trained by idir_fast with ``compat="idir-2022"`` (the released code's quirks: N−1 NCC, bending weights, init,
lr 1e-5, the per-axis frame, the paper's single-stage schedule).

The released example needs only its imports changed::

    from idir_fast.compat.utils import general      # was: from utils import general
    from idir_fast.compat.models import models      # was: from models import models

:class:`ImplicitRegistrator` takes the released constructor's keywords (an unknown one, or a value idir_fast does
not implement, is an :class:`~idir_fast.errors.InputError` naming it) and offers ``fit``, ``network``,
``transform``/``transform_no_add`` and the call returning a warped slice; :mod:`.utils.general` has
``compute_landmarks``, ``compute_landmark_accuracy`` (both with the released evaluation's conventions) and
``load_image_DIRLab``.
"""
from .registrator import ImplicitRegistrator, KEYWORDS

__all__ = ["ImplicitRegistrator", "KEYWORDS"]
