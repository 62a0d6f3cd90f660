// CPU implementation of the fused sampling + NCC op, same math as the CUDA kernel (sample_ncc_math.h). It runs in
// PyTorch's own thread pool (at::parallel_for), so torch.set_num_threads governs it like every other op: a second
// OpenMP pool here would ignore the run's thread policy. The NCC sums are reduced over fixed chunks of points, in
// chunk order, so they do not depend on how many threads ran them (same seed → same result at any thread count).
#include "sample_ncc.h"
#include "sample_ncc_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kChunk = 512;  // points per partial sum (and per task)

template <typename T>
void forward_loop(const T* vol, int nx, int ny, int nz, const T* index, const T* fixed, int64_t n, T* values,
                  T* grads, double* sums) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks) * 5, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double* s = partial.data() + 5 * c;
      const int64_t end = std::min(n, (c + 1) * kChunk);
      for (int64_t k = c * kChunk; k < end; ++k) {
        T v, gx, gy, gz;
        idir::trilinear_value_grad<T>(vol, nx, ny, nz, index[3 * k], index[3 * k + 1], index[3 * k + 2], &v, &gx,
                                      &gy, &gz);
        values[k] = v;
        grads[3 * k] = gx;
        grads[3 * k + 1] = gy;
        grads[3 * k + 2] = gz;
        idir::ncc_accumulate(static_cast<double>(fixed[k]), static_cast<double>(v), s);
      }
    }
  });
  for (int j = 0; j < 5; ++j) sums[j] = 0.0;
  for (int64_t c = 0; c < chunks; ++c)
    for (int j = 0; j < 5; ++j) sums[j] += partial[5 * c + j];
}

template <typename T>
void backward_loop(const T* fixed, const T* values, const T* grads, int64_t n, const double* coef, T* out) {
  at::parallel_for(0, n, 4 * kChunk, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      idir::ncc_point_backward<T>(fixed[k], values[k], grads[3 * k], grads[3 * k + 1], grads[3 * k + 2], coef,
                                  out + 3 * k);
    }
  });
}

template <typename T>
void sample_loop(const T* vol, int nx, int ny, int nz, const T* index, int64_t n, T* values, T* grads) {
  at::parallel_for(0, n, 4 * kChunk, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      idir::trilinear_value_grad<T>(vol, nx, ny, nz, index[3 * k], index[3 * k + 1], index[3 * k + 2], values + k,
                                    grads + 3 * k, grads + 3 * k + 1, grads + 3 * k + 2);
    }
  });
}

}  // namespace

std::vector<at::Tensor> trilinear_forward_cpu(const at::Tensor& volume, const at::Tensor& index) {
  const int64_t n = index.size(0);
  auto values = at::empty({n}, volume.options());
  auto grads = at::empty({n, 3}, volume.options());
  const int nz = volume.size(0), ny = volume.size(1), nx = volume.size(2);
  AT_DISPATCH_FLOATING_TYPES(volume.scalar_type(), "trilinear_forward_cpu", [&] {
    sample_loop<scalar_t>(volume.data_ptr<scalar_t>(), nx, ny, nz, index.data_ptr<scalar_t>(), n,
                          values.data_ptr<scalar_t>(), grads.data_ptr<scalar_t>());
  });
  return {values, grads};
}

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
