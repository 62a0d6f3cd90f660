// Raw-pointer launchers of the local NCC's CUDA kernels (local_ncc.cu). CUDA headers only (no PyTorch), so the
// .cu file compiles with plain nvcc; local_ncc_cuda.cpp passes data pointers and the current stream.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace idir {

// One thread per point. vol: nz*ny*nx; phi: n*3; jac: n*9; fc: n*k; delta: k*3; lin: 9; off: 3.
// Outputs cov, var: n; values: n*k; grads: n*k*3.
template <typename T>
cudaError_t local_moments_forward_launch(const T* vol, int nx, int ny, int nz, const T* phi, const T* jac,
                                         const T* fc, const T* delta, const T* lin, const T* off, int64_t n,
                                         int64_t k, T* cov, T* var, T* values, T* grads, cudaStream_t stream);

// g_cov, g_var: n; values: n*k; grads: n*k*3; fc: n*k; delta: k*3; lin: 9. Outputs g_phi: n*3, g_jac: n*9.
template <typename T>
cudaError_t local_moments_backward_launch(const T* g_cov, const T* g_var, const T* values, const T* grads,
                                          const T* fc, const T* delta, const T* lin, int64_t n, int64_t k, T* g_phi,
                                          T* g_jac, cudaStream_t stream);

}  // namespace idir
