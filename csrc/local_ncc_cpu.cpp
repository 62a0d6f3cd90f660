// CPU implementation of the local NCC's fused moving neighbourhoods (local_ncc.h): the same trilinear interpolant
// as the sampling ops (sample_ncc_math.h), in PyTorch's thread pool (at::parallel_for), one point per iteration.
#include "local_ncc.h"
#include "sample_ncc_math.h"

#include <ATen/Parallel.h>

namespace {

constexpr int64_t kGrain = 64;  // points per task

template <typename T>
void forward_points(const T* vol, int nx, int ny, int nz, const T* phi, const T* jac, const T* fc, const T* delta,
                    const T* lin, const T* off, int64_t n, int64_t k, T* cov, T* var, T* values, T* grads) {
  at::parallel_for(0, n, kGrain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* ph = phi + 3 * p;
      const T* J = jac + 9 * p;
      T* m = values + k * p;
      T* g = grads + 3 * k * p;
      T sum_fm = 0, sum_m = 0;
      for (int64_t s = 0; s < k; ++s) {
        const T* d = delta + 3 * s;
        T q[3];
        for (int c = 0; c < 3; ++c) q[c] = ph[c] + J[3 * c] * d[0] + J[3 * c + 1] * d[1] + J[3 * c + 2] * d[2];
        T idx[3];
        for (int j = 0; j < 3; ++j) idx[j] = q[0] * lin[j] + q[1] * lin[3 + j] + q[2] * lin[6 + j] + off[j];
        idir::trilinear_value_grad<T>(vol, nx, ny, nz, idx[0], idx[1], idx[2], m + s, g + 3 * s, g + 3 * s + 1,
                                      g + 3 * s + 2);
        sum_fm += fc[k * p + s] * m[s];
        sum_m += m[s];
      }
      const T mean = sum_m / T(k);
      T sum_sq = 0;
      for (int64_t s = 0; s < k; ++s) sum_sq += (m[s] - mean) * (m[s] - mean);
      cov[p] = sum_fm / T(k);
      var[p] = sum_sq / T(k);
    }
  });
}

template <typename T>
void backward_points(const T* g_cov, const T* g_var, const T* values, const T* grads, const T* fc, const T* delta,
                     const T* lin, int64_t n, int64_t k, T* g_phi, T* g_jac) {
  at::parallel_for(0, n, kGrain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* m = values + k * p;
      const T* g = grads + 3 * k * p;
      T mean = 0;
      for (int64_t s = 0; s < k; ++s) mean += m[s];
      mean /= T(k);
      const T a = g_cov[p] / T(k), b = T(2) * g_var[p] / T(k);
      T gp[3] = {0, 0, 0}, gj[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t s = 0; s < k; ++s) {
        const T dm = a * fc[k * p + s] + b * (m[s] - mean);
        const T* d = delta + 3 * s;
        for (int c = 0; c < 3; ++c) {
          // ∂L/∂q_c = Σ_j lin[c][j] ∂L/∂index_j, ∂L/∂index_j = dm ∇M_j
          const T gq = dm * (lin[3 * c] * g[3 * s] + lin[3 * c + 1] * g[3 * s + 1] + lin[3 * c + 2] * g[3 * s + 2]);
          gp[c] += gq;
          gj[3 * c] += gq * d[0];
          gj[3 * c + 1] += gq * d[1];
          gj[3 * c + 2] += gq * d[2];
        }
      }
      for (int c = 0; c < 3; ++c) g_phi[3 * p + c] = gp[c];
      for (int e = 0; e < 9; ++e) g_jac[9 * p + e] = gj[e];
    }
  });
}

}  // namespace

std::vector<at::Tensor> local_moments_forward_cpu(const at::Tensor& moving, const at::Tensor& phi,
                                                  const at::Tensor& jac, const at::Tensor& fixed_centred,
                                                  const at::Tensor& offsets, const at::Tensor& lin,
                                                  const at::Tensor& off) {
  local_moments_check(moving, phi, jac, fixed_centred, offsets, lin, off);
  const int64_t n = phi.size(0), k = fixed_centred.size(1);
  auto cov = at::empty({n}, phi.options());
  auto var = at::empty({n}, phi.options());
  auto values = at::empty({n, k}, phi.options());
  auto grads = at::empty({n, k, 3}, phi.options());
  const int nz = moving.size(0), ny = moving.size(1), nx = moving.size(2);
  AT_DISPATCH_FLOATING_TYPES(moving.scalar_type(), "local_moments_forward_cpu", [&] {
    forward_points<scalar_t>(moving.data_ptr<scalar_t>(), nx, ny, nz, phi.data_ptr<scalar_t>(),
                             jac.data_ptr<scalar_t>(), fixed_centred.data_ptr<scalar_t>(),
                             offsets.data_ptr<scalar_t>(), lin.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), n, k,
                             cov.data_ptr<scalar_t>(), var.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                             grads.data_ptr<scalar_t>());
  });
  return {cov, var, values, grads};
}

std::vector<at::Tensor> local_moments_backward_cpu(const at::Tensor& grad_cov, const at::Tensor& grad_var,
                                                   const at::Tensor& values, const at::Tensor& gradients,
                                                   const at::Tensor& fixed_centred, const at::Tensor& offsets,
                                                   const at::Tensor& lin) {
  const int64_t n = values.size(0), k = values.size(1);
  TORCH_CHECK(grad_cov.numel() == n && grad_var.numel() == n && gradients.numel() == 3 * n * k &&
                  fixed_centred.numel() == n * k && offsets.numel() == 3 * k && lin.numel() == 9,
              "local_moments_backward: shapes do not match values (N, K) = ", values.sizes());
  for (const at::Tensor* t : {&grad_cov, &grad_var, &gradients, &fixed_centred, &offsets, &lin})
    TORCH_CHECK(t->scalar_type() == values.scalar_type() && t->device().is_cpu() && t->is_contiguous(),
                "local_moments_backward: arguments must be contiguous CPU tensors of dtype ", values.scalar_type());
  auto g_phi = at::empty({n, 3}, values.options());
  auto g_jac = at::empty({n, 3, 3}, values.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "local_moments_backward_cpu", [&] {
    backward_points<scalar_t>(grad_cov.data_ptr<scalar_t>(), grad_var.data_ptr<scalar_t>(),
                              values.data_ptr<scalar_t>(), gradients.data_ptr<scalar_t>(),
                              fixed_centred.data_ptr<scalar_t>(), offsets.data_ptr<scalar_t>(),
                              lin.data_ptr<scalar_t>(), n, k, g_phi.data_ptr<scalar_t>(), g_jac.data_ptr<scalar_t>());
  });
  return {g_phi, g_jac};
}
