"""Fused Triton kernels for the SIREN with derivative streams (``siren_streams``) and their ahead-of-time compile
check for real GPUs on a machine without one (``python -m idir_fast.kernels.aot``).

This folder is the home of the Triton source; the top-level ``kernels`` entry of the repository points here.
Importing this package does not import Triton: ``idir_fast.kernels.siren_streams`` does.
"""

PRECISIONS = ("ieee", "tf32x3", "tf32")
"""Matrix-product precision of the kernels: full float32 FMA (``ieee``), three TF32 tensor-core products per
float32 product (``tf32x3``, ≈ float32 accuracy), or one TF32 product (``tf32``, ≈ 3e-4 relative error)."""

DEFAULT_PRECISION = "ieee"  # until a GPU measurement shows a faster mode keeps TRE within 1 % (README)
