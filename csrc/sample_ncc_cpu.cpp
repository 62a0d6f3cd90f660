// CPU implementation of the fused sampling + NCC op (OpenMP where available), same math as the CUDA kernel.
#include "sample_ncc.h"
#include "sample_ncc_math.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

template <typename T>
void forward_loop(const T* vol, int nx, int ny, int nz, const T* index, const T* fixed, int64_t n, T* values,
                  T* grads, double* sums) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0;
#pragma omp parallel for schedule(static) reduction(+ : s0, s1, s2, s3, s4)
  for (int64_t k = 0; k < n; ++k) {
    T v, gx, gy, gz;
    idir::trilinear_value_grad<T>(vol, nx, ny, nz, index[3 * k], index[3 * k + 1], index[3 * k + 2], &v, &gx, &gy,
                                  &gz);
    values[k] = v;
    grads[3 * k] = gx;
    grads[3 * k + 1] = gy;
    grads[3 * k + 2] = gz;
    double s[5] = {0, 0, 0, 0, 0};
    idir::ncc_accumulate(static_cast<double>(fixed[k]), static_cast<double>(v), s);
    s0 += s[0];
    s1 += s[1];
    s2 += s[2];
    s3 += s[3];
    s4 += s[4];
  }
  sums[0] = s0;
  sums[1] = s1;
  sums[2] = s2;
  sums[3] = s3;
  sums[4] = s4;
}

template <typename T>
void backward_loop(const T* fixed, const T* values, const T* grads, int64_t n, const double* coef, T* out) {
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < n; ++k) {
    idir::ncc_point_backward<T>(fixed[k], values[k], grads[3 * k], grads[3 * k + 1], grads[3 * k + 2], coef,
                                out + 3 * k);
  }
}

}  // namespace

std::vector<at::Tensor> sample_ncc_forward_cpu(const at::Tensor& moving, const at::Tensor& index,
                                               const at::Tensor& fixed_values) {
  const int64_t n = index.size(0);
  auto values = at::empty({n}, moving.options());
  auto grads = at::empty({n, 3}, moving.options());
  auto sums = at::zeros({5}, moving.options().dtype(at::kDouble));
  const int nz = moving.size(0), ny = moving.size(1), nx = moving.size(2);
  AT_DISPATCH_FLOATING_TYPES(moving.scalar_type(), "sample_ncc_forward_cpu", [&] {
    forward_loop<scalar_t>(moving.data_ptr<scalar_t>(), nx, ny, nz, index.data_ptr<scalar_t>(),
                           fixed_values.data_ptr<scalar_t>(), n, values.data_ptr<scalar_t>(),
                           grads.data_ptr<scalar_t>(), sums.data_ptr<double>());
  });
  return {values, grads, sums};
}

at::Tensor sample_ncc_backward_cpu(const at::Tensor& fixed_values, const at::Tensor& values,
                                   const at::Tensor& gradients, const at::Tensor& coef) {
  auto out = at::empty_like(gradients);
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "sample_ncc_backward_cpu", [&] {
    backward_loop<scalar_t>(fixed_values.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                            gradients.data_ptr<scalar_t>(), values.size(0), coef.data_ptr<double>(),
                            out.data_ptr<scalar_t>());
  });
  return out;
}
