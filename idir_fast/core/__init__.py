"""Core maths of IDIR, independent of files, devices and applications.

* :mod:`.geometry` — the index ↔ world (LPS mm) ↔ normalised frames, as 4×4 affines.
* :mod:`.siren` — the SIREN that represents ``u`` in ``Φ(x) = x + u(x)`` (module and functional forward).
* :mod:`.derivatives` — the layout of Φ, ∂Φ, ∂²Φ (derivative streams, Hessian pairs).
* :mod:`.objectives` — every loss term once: global NCC and the regularisers (one table).
* :mod:`.sampling` — the trilinear interpolant of the moving image (the reference definition).
* :mod:`.metrics` — TRE, folding, SDlogJ, Dice.
"""
