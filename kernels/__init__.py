"""Fused Triton kernels for the SIREN with derivative streams (installed as ``idir_fast.kernels``)."""
