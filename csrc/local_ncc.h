// The local NCC's moving neighbourhoods, fused: declarations, argument shapes, checks and the device dispatch.
//
// A point n of a step has the network's Φ_n (3) and J_n (3×3, J[c][i] = ∂Φ_c/∂x_i) and a fixed neighbourhood
// f_nk (k < K, its mean subtracted: f̃). Its moving neighbourhood is M sampled at q_nk = Φ_n + J_n δ_k (the
// first-order image of the fixed stencil δ_k, network frame), i.e. at voxel index q_nk · lin + off. The op
// returns the two moments the local NCC needs of it (idir_fast.core.objectives.local_ncc_from_moments):
//   cov_n = (1/K) Σ_k f̃_nk m_nk   (f̃ sums to 0, so m's mean drops out)
//   var_n = (1/K) Σ_k (m_nk − m̄_n)²
// and its backward maps ∂L/∂cov, ∂L/∂var to Φ and J in one pass:
//   ∂L/∂m_nk = (∂L/∂cov_n f̃_nk + 2 ∂L/∂var_n (m_nk − m̄_n)) / K
//   ∂L/∂q_nk = lin · (∂L/∂m_nk ∇M(q_nk))           (∇M in the index frame)
//   ∂L/∂Φ_n = Σ_k ∂L/∂q_nk,   ∂L/∂J_n[c][i] = Σ_k ∂L/∂q_nk[c] δ_k[i]
// Every output is per point (no reduction across points), so any thread count gives the same bits. The per-point
// math is local_ncc_math.h, shared by the CPU loop (local_ncc_cpu.cpp) and the CUDA kernel (local_ncc.cu).
#pragma once
#include <torch/extension.h>

#include <vector>

// Forward.
//   moving:        (nz, ny, nx) float32/float64, contiguous.
//   phi:           (N, 3), jac: (N, 3, 3), fixed_centred: (N, K), offsets: (K, 3), lin: (3, 3), off: (3,) — the
//                  dtype and device of moving, contiguous.
//   values:        (N, K), gradients: (N, K, 3) — outputs, written (the samples and their image gradients, for
//                  the backward): given by the caller (a step's buffers, reused) or made by the dispatch below.
// Returns {cov (N,), var (N,), values, gradients}.
std::vector<at::Tensor> local_moments_forward_cpu(const at::Tensor& moving, const at::Tensor& phi,
                                                  const at::Tensor& jac, const at::Tensor& fixed_centred,
                                                  const at::Tensor& offsets, const at::Tensor& lin,
                                                  const at::Tensor& off, const at::Tensor& values,
                                                  const at::Tensor& gradients);

// Backward.
//   grad_cov, grad_var: (N,); values (N, K), gradients (N, K, 3), fixed_centred (N, K), offsets (K, 3),
//   lin (3, 3): as above.
// Returns {grad_phi (N, 3), grad_jac (N, 3, 3)}.
std::vector<at::Tensor> local_moments_backward_cpu(const at::Tensor& grad_cov, const at::Tensor& grad_var,
                                                   const at::Tensor& values, const at::Tensor& gradients,
                                                   const at::Tensor& fixed_centred, const at::Tensor& offsets,
                                                   const at::Tensor& lin);

#ifdef WITH_CUDA
std::vector<at::Tensor> local_moments_forward_cuda(const at::Tensor& moving, const at::Tensor& phi,
                                                   const at::Tensor& jac, const at::Tensor& fixed_centred,
                                                   const at::Tensor& offsets, const at::Tensor& lin,
                                                   const at::Tensor& off, const at::Tensor& values,
                                                   const at::Tensor& gradients);
std::vector<at::Tensor> local_moments_backward_cuda(const at::Tensor& grad_cov, const at::Tensor& grad_var,
                                                    const at::Tensor& values, const at::Tensor& gradients,
                                                    const at::Tensor& fixed_centred, const at::Tensor& offsets,
                                                    const at::Tensor& lin);
#endif

inline void local_moments_check(const at::Tensor& moving, const at::Tensor& phi, const at::Tensor& jac,
                                const at::Tensor& fixed_centred, const at::Tensor& offsets, const at::Tensor& lin,
                                const at::Tensor& off) {
  TORCH_CHECK(moving.dim() == 3 && moving.size(0) >= 2 && moving.size(1) >= 2 && moving.size(2) >= 2,
              "local_moments: 'moving' must be a 3-D volume (nz, ny, nx) with at least 2 voxels per axis, got ",
              moving.sizes());
  TORCH_CHECK(moving.scalar_type() == at::kFloat || moving.scalar_type() == at::kDouble,
              "local_moments: 'moving' must be float32 or float64, got ", moving.scalar_type());
  const int64_t n = phi.size(0);
  TORCH_CHECK(phi.dim() == 2 && phi.size(1) == 3, "local_moments: 'phi' must have shape (N, 3), got ", phi.sizes());
  TORCH_CHECK(jac.dim() == 3 && jac.size(0) == n && jac.size(1) == 3 && jac.size(2) == 3,
              "local_moments: 'jac' must have shape (N, 3, 3) with N = ", n, ", got ", jac.sizes());
  TORCH_CHECK(fixed_centred.dim() == 2 && fixed_centred.size(0) == n,
              "local_moments: 'fixed_centred' must have shape (N, K) with N = ", n, ", got ", fixed_centred.sizes());
  TORCH_CHECK(offsets.dim() == 2 && offsets.size(1) == 3 && offsets.size(0) == fixed_centred.size(1),
              "local_moments: 'offsets' must have shape (K, 3) with K = ", fixed_centred.size(1), ", got ",
              offsets.sizes());
  TORCH_CHECK(lin.dim() == 2 && lin.size(0) == 3 && lin.size(1) == 3 && off.dim() == 1 && off.size(0) == 3,
              "local_moments: 'lin' must be (3, 3) and 'off' (3,), got ", lin.sizes(), " and ", off.sizes());
  for (const at::Tensor* t : {&phi, &jac, &fixed_centred, &offsets, &lin, &off}) {
    TORCH_CHECK(t->scalar_type() == moving.scalar_type(), "local_moments: every argument must have the dtype of "
                "'moving' (", moving.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->device() == moving.device() && t->is_contiguous(),
                "local_moments: every argument must be contiguous and on the device of 'moving' (", moving.device(),
                ")");
  }
  TORCH_CHECK(moving.is_contiguous(), "local_moments: 'moving' must be contiguous");
}

inline void local_moments_check_backward(const at::Tensor& grad_cov, const at::Tensor& grad_var,
                                         const at::Tensor& values, const at::Tensor& gradients,
                                         const at::Tensor& fixed_centred, const at::Tensor& offsets,
                                         const at::Tensor& lin) {
  TORCH_CHECK(values.dim() == 2, "local_moments_backward: 'values' must have shape (N, K), got ", values.sizes());
  const int64_t n = values.size(0), k = values.size(1);
  TORCH_CHECK(grad_cov.numel() == n && grad_var.numel() == n && gradients.numel() == 3 * n * k &&
                  fixed_centred.numel() == n * k && offsets.numel() == 3 * k && lin.numel() == 9,
              "local_moments_backward: shapes do not match values (N, K) = ", values.sizes());
  for (const at::Tensor* t : {&grad_cov, &grad_var, &gradients, &fixed_centred, &offsets, &lin})
    TORCH_CHECK(t->scalar_type() == values.scalar_type() && t->device() == values.device() && t->is_contiguous(),
                "local_moments_backward: arguments must be contiguous, of dtype ", values.scalar_type(),
                " and on ", values.device());
}

// Device dispatch (what idir_fast._C exposes).
// An output the caller gives must have the shape, dtype and device the op writes, and be contiguous.
inline at::Tensor local_moments_output(const c10::optional<at::Tensor>& given, at::IntArrayRef shape,
                                       const at::Tensor& like, const char* name) {
  if (!given.has_value()) return at::empty(shape, like.options());
  const at::Tensor& out = *given;
  TORCH_CHECK(out.sizes() == shape, "local_moments: '", name, "' must have shape ", shape, ", got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == like.scalar_type() && out.device() == like.device() && out.is_contiguous(),
              "local_moments: '", name, "' must be contiguous, of dtype ", like.scalar_type(), " and on ",
              like.device());
  return out;
}
inline std::vector<at::Tensor> local_moments_forward(const at::Tensor& moving, const at::Tensor& phi,
                                                     const at::Tensor& jac, const at::Tensor& fixed_centred,
                                                     const at::Tensor& offsets, const at::Tensor& lin,
                                                     const at::Tensor& off,
                                                     const c10::optional<at::Tensor>& values_out,
                                                     const c10::optional<at::Tensor>& gradients_out) {
  local_moments_check(moving, phi, jac, fixed_centred, offsets, lin, off);
  const int64_t n = phi.size(0), k = fixed_centred.size(1);
  const at::Tensor values = local_moments_output(values_out, {n, k}, phi, "values_out");
  const at::Tensor gradients = local_moments_output(gradients_out, {n, k, 3}, phi, "gradients_out");
  if (moving.is_cuda()) {
#ifdef WITH_CUDA
    return local_moments_forward_cuda(moving, phi, jac, fixed_centred, offsets, lin, off, values, gradients);
#else
    TORCH_CHECK(false, "local_moments: idir_fast was built without CUDA support");
#endif
  }
  return local_moments_forward_cpu(moving, phi, jac, fixed_centred, offsets, lin, off, values, gradients);
}

inline std::vector<at::Tensor> local_moments_backward(const at::Tensor& grad_cov, const at::Tensor& grad_var,
                                                      const at::Tensor& values, const at::Tensor& gradients,
                                                      const at::Tensor& fixed_centred, const at::Tensor& offsets,
                                                      const at::Tensor& lin) {
  local_moments_check_backward(grad_cov, grad_var, values, gradients, fixed_centred, offsets, lin);
  if (values.is_cuda()) {
#ifdef WITH_CUDA
    return local_moments_backward_cuda(grad_cov, grad_var, values, gradients, fixed_centred, offsets, lin);
#else
    TORCH_CHECK(false, "local_moments: idir_fast was built without CUDA support");
#endif
  }
  return local_moments_backward_cpu(grad_cov, grad_var, values, gradients, fixed_centred, offsets, lin);
}
