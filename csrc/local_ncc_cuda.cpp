// PyTorch side of the local NCC's CUDA kernels: device guard, outputs, the current stream (local_ncc.h states the
// contract; the arguments are checked there before this runs).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "local_ncc.h"
#include "local_ncc_cuda.h"

std::vector<at::Tensor> local_moments_forward_cuda(const at::Tensor& moving, const at::Tensor& phi,
                                                   const at::Tensor& jac, const at::Tensor& fixed_centred,
                                                   const at::Tensor& offsets, const at::Tensor& lin,
                                                   const at::Tensor& off, const at::Tensor& values,
                                                   const at::Tensor& grads) {
  const c10::cuda::CUDAGuard guard(moving.device());
  const int64_t n = phi.size(0), k = fixed_centred.size(1);
  auto cov = at::empty({n}, phi.options());
  auto var = at::empty({n}, phi.options());
  auto stream = at::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES(moving.scalar_type(), "local_moments_forward_cuda", [&] {
    const cudaError_t err = idir::local_moments_forward_launch<scalar_t>(
        moving.data_ptr<scalar_t>(), moving.size(2), moving.size(1), moving.size(0), phi.data_ptr<scalar_t>(),
        jac.data_ptr<scalar_t>(), fixed_centred.data_ptr<scalar_t>(), offsets.data_ptr<scalar_t>(),
        lin.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), n, k, cov.data_ptr<scalar_t>(),
        var.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), grads.data_ptr<scalar_t>(), stream);
    TORCH_CHECK(err == cudaSuccess, "local_moments forward kernel failed: ", cudaGetErrorString(err));
  });
  return {cov, var, values, grads};
}

std::vector<at::Tensor> local_moments_backward_cuda(const at::Tensor& grad_cov, const at::Tensor& grad_var,
                                                    const at::Tensor& values, const at::Tensor& gradients,
                                                    const at::Tensor& fixed_centred, const at::Tensor& offsets,
                                                    const at::Tensor& lin) {
  const c10::cuda::CUDAGuard guard(values.device());
  const int64_t n = values.size(0), k = values.size(1);
  auto g_phi = at::empty({n, 3}, values.options());
  auto g_jac = at::empty({n, 3, 3}, values.options());
  auto stream = at::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "local_moments_backward_cuda", [&] {
    const cudaError_t err = idir::local_moments_backward_launch<scalar_t>(
        grad_cov.data_ptr<scalar_t>(), grad_var.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
        gradients.data_ptr<scalar_t>(), fixed_centred.data_ptr<scalar_t>(), offsets.data_ptr<scalar_t>(),
        lin.data_ptr<scalar_t>(), n, k, g_phi.data_ptr<scalar_t>(), g_jac.data_ptr<scalar_t>(), stream);
    TORCH_CHECK(err == cudaSuccess, "local_moments backward kernel failed: ", cudaGetErrorString(err));
  });
  return {g_phi, g_jac};
}
