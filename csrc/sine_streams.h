// The element-wise part of a SIREN sine layer with derivative streams (shared/notes/engine-math.md), fused into
// one pass per layer: the CPU twin of the Triton kernels' epilogue and adjoint (idir_fast/kernels/siren_streams.py).
//
// Streams: S = 1, 4, 10 for order 0, 1, 2 — the value, ∂/∂x_i, ∂²/∂x_a∂x_b for the pairs 00, 11, 22, 01, 02, 12.
// With s = sin ωz, c = ω cos ωz, q = −ω² sin ωz:
//   forward   a = s,  a_i = c z_i,  a_ab = c z_ab + q z_a z_b
//   backward  z̄_ab = c ā_ab;  z̄_i = c ā_i + q Σ_{pairs ∋ i} ā_kl ∂(z_k z_l)/∂z_i;
//             z̄ = c ā + q Σ_i z_i ā_i + Σ_pairs (q z_kl − ω² c z_k z_l) ā_kl
#pragma once
#include <torch/extension.h>

// Forward: the output streams a (S, N, M) of a sine layer.
//   z:      (S, N, M) pre-activation streams (the bias already in the value stream), float32/float64, contiguous;
//           for the first layer (w0 given) only the value stream is read: (1, N, M) or (N, M) viewed as such.
//   w0:     (M, 3) first-layer weights (then z_i = W0[:, i], z_ab = 0), or an empty tensor.
//   sin_z:  (N, M) sin(ω z), cos_z: (N, M) ω cos(ω z) — from ATen's vectorised kernels, kept for the backward.
at::Tensor sine_streams_forward(const at::Tensor& z, const at::Tensor& w0, const at::Tensor& sin_z,
                                const at::Tensor& cos_z, double omega, int64_t order);

// Backward: pre-activation adjoints z̄ (S, N, M) from output adjoints ā (S, N, M), with the forward's z, w0,
// sin_z and cos_z.
at::Tensor sine_streams_backward(const at::Tensor& grad_a, const at::Tensor& z, const at::Tensor& w0,
                                 const at::Tensor& sin_z, const at::Tensor& cos_z, double omega, int64_t order);

// The same, writing into a preallocated 'out' (S, N, M) of z's dtype (a workspace reused every step: no allocation).
void sine_streams_forward_out(const at::Tensor& z, const at::Tensor& w0, const at::Tensor& sin_z,
                              const at::Tensor& cos_z, double omega, int64_t order, at::Tensor& out);
void sine_streams_backward_out(const at::Tensor& grad_a, const at::Tensor& z, const at::Tensor& w0,
                               const at::Tensor& sin_z, const at::Tensor& cos_z, double omega, int64_t order,
                               at::Tensor& out);
