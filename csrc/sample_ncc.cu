// CUDA kernels of the fused trilinear-sampling + NCC op. One thread per point; the five NCC sums are reduced
// per block in shared memory (double) and added to global memory with one atomicAdd per block and sum.
#include "sample_ncc_cuda.h"
#include "sample_ncc_math.h"

namespace idir {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_ncc_fwd_kernel(const T* __restrict__ vol, int nx, int ny,
                                                                  int nz, const T* __restrict__ index,
                                                                  const T* __restrict__ fixed, int64_t n,
                                                                  T* __restrict__ values, T* __restrict__ grads,
                                                                  double* __restrict__ sums) {
  __shared__ double partial[5][kThreads / 32];
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  double s[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
  if (k < n) {
    T v, gx, gy, gz;
    trilinear_value_grad<T>(vol, nx, ny, nz, index[3 * k], index[3 * k + 1], index[3 * k + 2], &v, &gx, &gy, &gz);
    values[k] = v;
    grads[3 * k] = gx;
    grads[3 * k + 1] = gy;
    grads[3 * k + 2] = gz;
    ncc_accumulate(static_cast<double>(fixed[k]), static_cast<double>(v), s);
  }
  // warp reduction, then one value per warp in shared memory, then the first warp
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll 1  // rolled: keeps the float kernel within its registers on sm_80 (no spills)
  for (int i = 0; i < 5; ++i) {
    double x = s[i];
    for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xffffffffu, x, off);
    if (lane == 0) partial[i][warp] = x;
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll 1
    for (int i = 0; i < 5; ++i) {
      double x = lane < kThreads / 32 ? partial[i][lane] : 0.0;
      for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xffffffffu, x, off);
      if (lane == 0) atomicAdd(&sums[i], x);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_ncc_bwd_kernel(const T* __restrict__ fixed,
                                                                  const T* __restrict__ values,
                                                                  const T* __restrict__ grads, int64_t n,
                                                                  const double* __restrict__ coef,
                                                                  T* __restrict__ out) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < n) {
    ncc_point_backward<T>(fixed[k], values[k], grads[3 * k], grads[3 * k + 1], grads[3 * k + 2], coef,
                          out + 3 * k);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) trilinear_fwd_kernel(const T* __restrict__ vol, int nx, int ny, int nz,
                                                                 const T* __restrict__ index, int64_t n,
                                                                 T* __restrict__ values, T* __restrict__ grads) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < n) {
    trilinear_value_grad<T>(vol, nx, ny, nz, index[3 * k], index[3 * k + 1], index[3 * k + 2], values + k,
                            grads + 3 * k, grads + 3 * k + 1, grads + 3 * k + 2);
  }
}

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
cudaError_t sample_ncc_forward_launch(const T* vol, int nx, int ny, int nz, const T* index, const T* fixed,
                                      int64_t n, T* values, T* grads, double* sums, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  sample_ncc_fwd_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(vol, nx, ny, nz, index, fixed, n, values,
                                                                    grads, sums);
  return cudaGetLastError();
}

template <typename T>
cudaError_t sample_ncc_backward_launch(const T* fixed, const T* values, const T* grads, int64_t n,
                                       const double* coef, T* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  sample_ncc_bwd_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(fixed, values, grads, n, coef, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t trilinear_forward_launch(const T* vol, int nx, int ny, int nz, const T* index, int64_t n, T* values,
                                     T* grads, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  trilinear_fwd_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(vol, nx, ny, nz, index, n, values, grads);
  return cudaGetLastError();
}

template cudaError_t trilinear_forward_launch<float>(const float*, int, int, int, const float*, int64_t, float*,
                                                     float*, cudaStream_t);
template cudaError_t trilinear_forward_launch<double>(const double*, int, int, int, const double*, int64_t,
                                                      double*, double*, cudaStream_t);
template cudaError_t sample_ncc_forward_launch<float>(const float*, int, int, int, const float*, const float*,
                                                      int64_t, float*, float*, double*, cudaStream_t);
template cudaError_t sample_ncc_forward_launch<double>(const double*, int, int, int, const double*, const double*,
                                                       int64_t, double*, double*, double*, cudaStream_t);
template cudaError_t sample_ncc_backward_launch<float>(const float*, const float*, const float*, int64_t,
                                                       const double*, float*, cudaStream_t);
template cudaError_t sample_ncc_backward_launch<double>(const double*, const double*, const double*, int64_t,
                                                        const double*, double*, cudaStream_t);

}  // namespace idir
