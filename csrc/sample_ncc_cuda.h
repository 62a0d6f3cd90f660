// Raw-pointer launchers of the CUDA kernels. CUDA headers only (no PyTorch), so sample_ncc.cu compiles with
// plain nvcc; the PyTorch side (sample_ncc_cuda.cpp) passes data pointers and the current stream.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace idir {

// vol: nz*ny*nx; index: n*3 (x, y, z voxel indices); fixed: n. Outputs values: n; grads: n*3;
// sums: 5 doubles, zeroed by the caller (Σf, Σm, Σf², Σm², Σfm).
template <typename T>
cudaError_t sample_ncc_forward_launch(const T* vol, int nx, int ny, int nz, const T* index, const T* fixed,
                                      int64_t n, T* values, T* grads, double* sums, cudaStream_t stream);

// vol: nz*ny*nx; index: n*3. Outputs values: n; grads: n*3 (the interpolant's value and index-frame gradient).
template <typename T>
cudaError_t trilinear_forward_launch(const T* vol, int nx, int ny, int nz, const T* index, int64_t n, T* values,
                                     T* grads, cudaStream_t stream);

// out: n*3 = (a (f − f̄) + b (m − m̄)) ∇M per point; coef: 4 doubles in device memory, [a, b, f̄, m̄].
template <typename T>
cudaError_t sample_ncc_backward_launch(const T* fixed, const T* values, const T* grads, int64_t n,
                                       const double* coef, T* out, cudaStream_t stream);

}  // namespace idir
