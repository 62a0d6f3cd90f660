"""Registration problems with a known answer, and lung masks.

* :mod:`.synthetic` — a procedural lung phantom, a breathing-like deformation and :func:`deformed_pair`, which
  deforms any CT by a known smooth map so that landmarks correspond exactly.
* :mod:`.lung_mask` — a lung mask from HU thresholds.
"""
from .lung_mask import lung_mask_from_hu  # noqa: F401
from .synthetic import (BreathingDeformation, SyntheticPair, deformed_pair, lung_phantom, phantom_pair,  # noqa: F401
                        warp_image)
