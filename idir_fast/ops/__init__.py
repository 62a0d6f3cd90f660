"""Fast paths, each tested against the plain definitions in :mod:`idir_fast.core`.

* :mod:`.siren_streams` — Φ, ∂Φ, ∂²Φ of the SIREN in one forward pass of batched matrix products (PyTorch).
* :mod:`.sample_ncc` — trilinear sampling of the moving image + global NCC with an analytic backward: the compiled
  op of ``csrc/`` (``idir_fast._C``) when built, else a two-pass PyTorch path.
* :mod:`.local_ncc` — the local NCC's moving neighbourhoods at Φ + Jδ and their moments, with the exact backward to
  Φ and J: the compiled CPU op when built, else PyTorch ops.
* :mod:`idir_fast.kernels` (beside this package) — the fused Triton kernels of the derivative streams.
"""
