// CPU implementation of the local NCC's fused moving neighbourhoods (local_ncc.h): the per-point math of
// local_ncc_math.h (the CUDA kernel's too) in PyTorch's thread pool (at::parallel_for), one point per iteration.
#include "local_ncc.h"
#include "local_ncc_math.h"

#include <ATen/Parallel.h>

namespace {

constexpr int64_t kGrain = 64;  // points per task

template <typename T>
void forward_points(const T* vol, int nx, int ny, int nz, const T* phi, const T* jac, const T* fc, const T* delta,
                    const T* lin, const T* off, int64_t n, int64_t k, T* cov, T* var, T* values, T* grads) {
  at::parallel_for(0, n, kGrain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      idir::local_point_forward<T>(vol, nx, ny, nz, phi + 3 * p, jac + 9 * p, fc + k * p, delta, lin, off, k,
                                   values + k * p, grads + 3 * k * p, cov + p, var + p);
    }
  });
}

template <typename T>
void backward_points(const T* g_cov, const T* g_var, const T* values, const T* grads, const T* fc, const T* delta,
                     const T* lin, int64_t n, int64_t k, T* g_phi, T* g_jac) {
  at::parallel_for(0, n, kGrain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      idir::local_point_backward<T>(g_cov[p], g_var[p], values + k * p, grads + 3 * k * p, fc + k * p, delta, lin,
                                    k, g_phi + 3 * p, g_jac + 9 * p);
    }
  });
}

}  // namespace

std::vector<at::Tensor> local_moments_forward_cpu(const at::Tensor& moving, const at::Tensor& phi,
                                                  const at::Tensor& jac, const at::Tensor& fixed_centred,
                                                  const at::Tensor& offsets, const at::Tensor& lin,
                                                  const at::Tensor& off, const at::Tensor& values,
                                                  const at::Tensor& grads) {
  const int64_t n = phi.size(0), k = fixed_centred.size(1);
  auto cov = at::empty({n}, phi.options());
  auto var = at::empty({n}, phi.options());
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
