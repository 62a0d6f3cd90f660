// Per-point math of the local NCC's fused moving neighbourhoods (local_ncc.h), shared by the CPU loop and the CUDA
// kernel: no PyTorch or CUDA runtime headers, so the CPU tests exercise the arithmetic the GPU runs.
#pragma once

#include <cstdint>

#include "sample_ncc_math.h"

namespace idir {

// Point p's K moving samples m at q_k = Φ + J δ_k (index q_k · lin + off), their index-frame gradients g (K×3),
// and the moments cov = (1/K) Σ f̃_k m_k, var = (1/K) Σ (m_k − m̄)².
//   ph: 3, J: 9 (row c: ∂Φ_c/∂x), fc: K (centred fixed samples), delta: K×3, lin: 9 (row-major), off: 3.
template <typename T>
IDIR_HD void local_point_forward(const T* vol, int nx, int ny, int nz, const T* ph, const T* J, const T* fc,
                                 const T* delta, const T* lin, const T* off, int64_t k, T* m, T* g, T* cov,
                                 T* var) {
  T sum_fm = 0, sum_m = 0;
  for (int64_t s = 0; s < k; ++s) {
    const T* d = delta + 3 * s;
    T q[3];
    for (int c = 0; c < 3; ++c) q[c] = ph[c] + J[3 * c] * d[0] + J[3 * c + 1] * d[1] + J[3 * c + 2] * d[2];
    T idx[3];
    for (int j = 0; j < 3; ++j) idx[j] = q[0] * lin[j] + q[1] * lin[3 + j] + q[2] * lin[6 + j] + off[j];
    trilinear_value_grad<T>(vol, nx, ny, nz, idx[0], idx[1], idx[2], m + s, g + 3 * s, g + 3 * s + 1,
                            g + 3 * s + 2);
    sum_fm += fc[s] * m[s];
    sum_m += m[s];
  }
  const T mean = sum_m / T(k);
  T sum_sq = 0;
  for (int64_t s = 0; s < k; ++s) sum_sq += (m[s] - mean) * (m[s] - mean);
  *cov = sum_fm / T(k);
  *var = sum_sq / T(k);
}

// Point p's ∂L/∂Φ (3) and ∂L/∂J (9) from ∂L/∂cov and ∂L/∂var (local_ncc.h states the chain).
template <typename T>
IDIR_HD void local_point_backward(T g_cov, T g_var, const T* m, const T* g, const T* fc, const T* delta,
                                  const T* lin, int64_t k, T* g_phi, T* g_jac) {
  T mean = 0;
  for (int64_t s = 0; s < k; ++s) mean += m[s];
  mean /= T(k);
  const T a = g_cov / T(k), b = T(2) * g_var / T(k);
  T gp[3] = {0, 0, 0}, gj[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t s = 0; s < k; ++s) {
    const T dm = a * fc[s] + b * (m[s] - mean);
    const T* d = delta + 3 * s;
    for (int c = 0; c < 3; ++c) {
      // ∂L/∂q_c = Σ_j lin[c][j] ∂L/∂index_j with ∂L/∂index_j = dm ∇M_j
      const T gq = dm * (lin[3 * c] * g[3 * s] + lin[3 * c + 1] * g[3 * s + 1] + lin[3 * c + 2] * g[3 * s + 2]);
      gp[c] += gq;
      gj[3 * c] += gq * d[0];
      gj[3 * c + 1] += gq * d[1];
      gj[3 * c + 2] += gq * d[2];
    }
  }
  for (int c = 0; c < 3; ++c) g_phi[c] = gp[c];
  for (int e = 0; e < 9; ++e) g_jac[e] = gj[e];
}

}  // namespace idir
