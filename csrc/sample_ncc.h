// Fused trilinear sampling + global NCC sums: declarations, argument shapes and the device dispatch.
#pragma once
#include <torch/extension.h>

#include <vector>

// Forward.
//   moving:       (nz, ny, nx) float32/float64, contiguous — the moving volume (NumPy order).
//   index:        (N, 3) same dtype and device, contiguous — points in moving voxel indices (x, y, z).
//   fixed_values: (N,) same dtype and device — fixed intensities at the points.
// Returns {values (N,), gradients (N, 3) in the index frame, sums (5,) float64: Σf, Σm, Σf², Σm², Σfm}.
std::vector<at::Tensor> sample_ncc_forward_cpu(const at::Tensor& moving, const at::Tensor& index,
                                               const at::Tensor& fixed_values);

// Backward: ∂L/∂index_k = (a (f_k − f̄) + b (m_k − m̄)) ∇M_k, where a, b (already multiplied by ∂L/∂NCC),
// f̄, m̄ come from idir_fast.objectives.ncc_backward_coefficients.
//   fixed_values, values: (N,); gradients: (N, 3); all same dtype/device, contiguous.
//   coef: (4,) float64 on the same device: [a, b, f̄, m̄] (a tensor, so the GPU path needs no host sync).
// Returns grad_index (N, 3).
at::Tensor sample_ncc_backward_cpu(const at::Tensor& fixed_values, const at::Tensor& values,
                                   const at::Tensor& gradients, const at::Tensor& coef);

// Trilinear sampling alone (the local NCC's neighbourhoods, the weighted NCC): value and index-frame gradient of
// the same interpolant (sample_ncc_math.h) at every point.
//   volume: (nz, ny, nx) float32/float64, contiguous.
//   index:  (N, 3) same dtype and device, contiguous — voxel indices (x, y, z).
// Returns {values (N,), gradients (N, 3)}.
std::vector<at::Tensor> trilinear_forward_cpu(const at::Tensor& volume, const at::Tensor& index);

#ifdef WITH_CUDA
std::vector<at::Tensor> trilinear_forward_cuda(const at::Tensor& volume, const at::Tensor& index);
std::vector<at::Tensor> sample_ncc_forward_cuda(const at::Tensor& moving, const at::Tensor& index,
                                                const at::Tensor& fixed_values);
at::Tensor sample_ncc_backward_cuda(const at::Tensor& fixed_values, const at::Tensor& values,
                                    const at::Tensor& gradients, const at::Tensor& coef);
#endif

// Argument checks shared by both devices; messages name the argument.
inline void sample_ncc_check_forward(const at::Tensor& moving, const at::Tensor& index,
                                     const at::Tensor& fixed_values) {
  TORCH_CHECK(moving.dim() == 3, "sample_ncc: 'moving' must be a 3-D volume (nz, ny, nx), got ", moving.dim(),
              "-D");
  TORCH_CHECK(moving.size(0) >= 2 && moving.size(1) >= 2 && moving.size(2) >= 2,
              "sample_ncc: 'moving' needs at least 2 voxels per axis, got ", moving.sizes());
  TORCH_CHECK(index.dim() == 2 && index.size(1) == 3, "sample_ncc: 'index' must have shape (N, 3), got ",
              index.sizes());
  TORCH_CHECK(fixed_values.dim() == 1 && fixed_values.size(0) == index.size(0),
              "sample_ncc: 'fixed_values' must have shape (N,) with N = ", index.size(0), ", got ",
              fixed_values.sizes());
  TORCH_CHECK(moving.scalar_type() == at::kFloat || moving.scalar_type() == at::kDouble,
              "sample_ncc: 'moving' must be float32 or float64, got ", moving.scalar_type());
  TORCH_CHECK(index.scalar_type() == moving.scalar_type() && fixed_values.scalar_type() == moving.scalar_type(),
              "sample_ncc: 'index' and 'fixed_values' must have the dtype of 'moving' (", moving.scalar_type(),
              "), got ", index.scalar_type(), " and ", fixed_values.scalar_type());
  TORCH_CHECK(index.device() == moving.device() && fixed_values.device() == moving.device(),
              "sample_ncc: 'moving', 'index' and 'fixed_values' must be on one device, got ", moving.device(),
              ", ", index.device(), ", ", fixed_values.device());
  TORCH_CHECK(moving.is_contiguous() && index.is_contiguous() && fixed_values.is_contiguous(),
              "sample_ncc: 'moving', 'index' and 'fixed_values' must be contiguous");
}

inline void sample_ncc_check_backward(const at::Tensor& fixed_values, const at::Tensor& values,
                                      const at::Tensor& gradients, const at::Tensor& coef) {
  TORCH_CHECK(coef.dim() == 1 && coef.size(0) == 4 && coef.scalar_type() == at::kDouble && coef.is_contiguous(),
              "sample_ncc_backward: 'coef' must be a contiguous float64 tensor of shape (4,)");
  TORCH_CHECK(coef.device() == values.device(), "sample_ncc_backward: 'coef' must be on the device of 'values'");
  TORCH_CHECK(values.dim() == 1 && fixed_values.sizes() == values.sizes(),
              "sample_ncc_backward: 'values' and 'fixed_values' must both have shape (N,)");
  TORCH_CHECK(gradients.dim() == 2 && gradients.size(0) == values.size(0) && gradients.size(1) == 3,
              "sample_ncc_backward: 'gradients' must have shape (N, 3), got ", gradients.sizes());
  TORCH_CHECK(values.scalar_type() == gradients.scalar_type() && values.scalar_type() == fixed_values.scalar_type(),
              "sample_ncc_backward: all tensors must have one dtype");
  TORCH_CHECK(values.device() == gradients.device() && values.device() == fixed_values.device(),
              "sample_ncc_backward: all tensors must be on one device");
  TORCH_CHECK(values.is_contiguous() && gradients.is_contiguous() && fixed_values.is_contiguous(),
              "sample_ncc_backward: all tensors must be contiguous");
}

inline std::vector<at::Tensor> sample_ncc_forward(const at::Tensor& moving, const at::Tensor& index,
                                                  const at::Tensor& fixed_values) {
  sample_ncc_check_forward(moving, index, fixed_values);
  if (moving.is_cuda()) {
#ifdef WITH_CUDA
    return sample_ncc_forward_cuda(moving, index, fixed_values);
#else
    TORCH_CHECK(false, "sample_ncc: idir_fast was built without CUDA support");
#endif
  }
  return sample_ncc_forward_cpu(moving, index, fixed_values);
}

inline at::Tensor sample_ncc_backward(const at::Tensor& fixed_values, const at::Tensor& values,
                                      const at::Tensor& gradients, const at::Tensor& coef) {
  sample_ncc_check_backward(fixed_values, values, gradients, coef);
  if (values.is_cuda()) {
#ifdef WITH_CUDA
    return sample_ncc_backward_cuda(fixed_values, values, gradients, coef);
#else
    TORCH_CHECK(false, "sample_ncc: idir_fast was built without CUDA support");
#endif
  }
  return sample_ncc_backward_cpu(fixed_values, values, gradients, coef);
}

inline std::vector<at::Tensor> trilinear_forward(const at::Tensor& volume, const at::Tensor& index) {
  TORCH_CHECK(volume.dim() == 3, "trilinear_forward: 'volume' must be a 3-D volume (nz, ny, nx), got ",
              volume.dim(), "-D");
  TORCH_CHECK(volume.size(0) >= 2 && volume.size(1) >= 2 && volume.size(2) >= 2,
              "trilinear_forward: 'volume' needs at least 2 voxels per axis, got ", volume.sizes());
  TORCH_CHECK(index.dim() == 2 && index.size(1) == 3, "trilinear_forward: 'index' must have shape (N, 3), got ",
              index.sizes());
  TORCH_CHECK(volume.scalar_type() == at::kFloat || volume.scalar_type() == at::kDouble,
              "trilinear_forward: 'volume' must be float32 or float64, got ", volume.scalar_type());
  TORCH_CHECK(index.scalar_type() == volume.scalar_type(), "trilinear_forward: 'index' must have the dtype of "
              "'volume' (", volume.scalar_type(), "), got ", index.scalar_type());
  TORCH_CHECK(index.device() == volume.device(), "trilinear_forward: 'volume' and 'index' must be on one device, "
              "got ", volume.device(), " and ", index.device());
  TORCH_CHECK(volume.is_contiguous() && index.is_contiguous(),
              "trilinear_forward: 'volume' and 'index' must be contiguous");
  if (volume.is_cuda()) {
#ifdef WITH_CUDA
    return trilinear_forward_cuda(volume, index);
#else
    TORCH_CHECK(false, "trilinear_forward: idir_fast was built without CUDA support");
#endif
  }
  return trilinear_forward_cpu(volume, index);
}
