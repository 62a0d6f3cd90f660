// CUDA kernels of the local NCC's fused moving neighbourhoods: one thread per point, the per-point math of
// local_ncc_math.h (the CPU loop's too). Outputs are per point: no reductions, no atomics.
#include "local_ncc_cuda.h"
#include "local_ncc_math.h"

namespace idir {
namespace {

constexpr int kThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kThreads) local_moments_fwd_kernel(
    const T* __restrict__ vol, int nx, int ny, int nz, const T* __restrict__ phi, const T* __restrict__ jac,
    const T* __restrict__ fc, const T* __restrict__ delta, const T* __restrict__ lin, const T* __restrict__ off,
    int64_t n, int64_t k, T* __restrict__ cov, T* __restrict__ var, T* __restrict__ values, T* __restrict__ grads) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < n) {
    local_point_forward<T>(vol, nx, ny, nz, phi + 3 * p, jac + 9 * p, fc + k * p, delta, lin, off, k,
                           values + k * p, grads + 3 * k * p, cov + p, var + p);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) local_moments_bwd_kernel(
    const T* __restrict__ g_cov, const T* __restrict__ g_var, const T* __restrict__ values,
    const T* __restrict__ grads, const T* __restrict__ fc, const T* __restrict__ delta, const T* __restrict__ lin,
    int64_t n, int64_t k, T* __restrict__ g_phi, T* __restrict__ g_jac) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p < n) {
    local_point_backward<T>(g_cov[p], g_var[p], values + k * p, grads + 3 * k * p, fc + k * p, delta, lin, k,
                            g_phi + 3 * p, g_jac + 9 * p);
  }
}

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
cudaError_t local_moments_forward_launch(const T* vol, int nx, int ny, int nz, const T* phi, const T* jac,
                                         const T* fc, const T* delta, const T* lin, const T* off, int64_t n,
                                         int64_t k, T* cov, T* var, T* values, T* grads, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  local_moments_fwd_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(vol, nx, ny, nz, phi, jac, fc, delta, lin,
                                                                       off, n, k, cov, var, values, grads);
  return cudaGetLastError();
}

template <typename T>
cudaError_t local_moments_backward_launch(const T* g_cov, const T* g_var, const T* values, const T* grads,
                                          const T* fc, const T* delta, const T* lin, int64_t n, int64_t k, T* g_phi,
                                          T* g_jac, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  local_moments_bwd_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(g_cov, g_var, values, grads, fc, delta, lin,
                                                                       n, k, g_phi, g_jac);
  return cudaGetLastError();
}

#define IDIR_LOCAL_MOMENTS_INSTANTIATE(T)                                                                       \
  template cudaError_t local_moments_forward_launch<T>(const T*, int, int, int, const T*, const T*, const T*,    \
                                                       const T*, const T*, const T*, int64_t, int64_t, T*, T*,    \
                                                       T*, T*, cudaStream_t);                                     \
  template cudaError_t local_moments_backward_launch<T>(const T*, const T*, const T*, const T*, const T*,       \
                                                        const T*, const T*, int64_t, int64_t, T*, T*, cudaStream_t);
IDIR_LOCAL_MOMENTS_INSTANTIATE(float)
IDIR_LOCAL_MOMENTS_INSTANTIATE(double)
#undef IDIR_LOCAL_MOMENTS_INSTANTIATE

}  // namespace idir
