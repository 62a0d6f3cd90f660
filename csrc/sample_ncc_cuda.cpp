// PyTorch side of the CUDA implementation: checks were done by the dispatcher; pass pointers and the stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "sample_ncc.h"
#include "sample_ncc_cuda.h"

std::vector<at::Tensor> trilinear_forward_cuda(const at::Tensor& volume, const at::Tensor& index) {
  const c10::cuda::CUDAGuard guard(volume.device());
  const int64_t n = index.size(0);
  auto values = at::empty({n}, volume.options());
  auto grads = at::empty({n, 3}, volume.options());
  const int nz = volume.size(0), ny = volume.size(1), nx = volume.size(2);
  auto stream = at::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES(volume.scalar_type(), "trilinear_forward_cuda", [&] {
    const cudaError_t err = idir::trilinear_forward_launch<scalar_t>(
        volume.data_ptr<scalar_t>(), nx, ny, nz, index.data_ptr<scalar_t>(), n, values.data_ptr<scalar_t>(),
        grads.data_ptr<scalar_t>(), stream);
    TORCH_CHECK(err == cudaSuccess, "trilinear forward kernel failed: ", cudaGetErrorString(err));
  });
  return {values, grads};
}

std::vector<at::Tensor> sample_ncc_forward_cuda(const at::Tensor& moving, const at::Tensor& index,
                                                const at::Tensor& fixed_values) {
  const c10::cuda::CUDAGuard guard(moving.device());
  const int64_t n = index.size(0);
  auto values = at::empty({n}, moving.options());
  auto grads = at::empty({n, 3}, moving.options());
  auto sums = at::zeros({5}, moving.options().dtype(at::kDouble));
  const int nz = moving.size(0), ny = moving.size(1), nx = moving.size(2);
  auto stream = at::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES(moving.scalar_type(), "sample_ncc_forward_cuda", [&] {
    const cudaError_t err = idir::sample_ncc_forward_launch<scalar_t>(
        moving.data_ptr<scalar_t>(), nx, ny, nz, index.data_ptr<scalar_t>(), fixed_values.data_ptr<scalar_t>(), n,
        values.data_ptr<scalar_t>(), grads.data_ptr<scalar_t>(), sums.data_ptr<double>(), stream);
    TORCH_CHECK(err == cudaSuccess, "sample_ncc forward kernel failed: ", cudaGetErrorString(err));
  });
  return {values, grads, sums};
}

at::Tensor sample_ncc_backward_cuda(const at::Tensor& fixed_values, const at::Tensor& values,
                                    const at::Tensor& gradients, const at::Tensor& coef) {
  const c10::cuda::CUDAGuard guard(values.device());
  auto out = at::empty_like(gradients);
  auto stream = at::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "sample_ncc_backward_cuda", [&] {
    const cudaError_t err = idir::sample_ncc_backward_launch<scalar_t>(
        fixed_values.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), gradients.data_ptr<scalar_t>(),
        values.size(0), coef.data_ptr<double>(), out.data_ptr<scalar_t>(), stream);
    TORCH_CHECK(err == cudaSuccess, "sample_ncc backward kernel failed: ", cudaGetErrorString(err));
  });
  return out;
}
