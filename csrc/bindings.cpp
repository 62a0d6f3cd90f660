// Python bindings of idir_fast._C: the fused sampling + NCC op, dispatched by device in sample_ncc.h.
#include "sample_ncc.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "idir_fast compiled ops: fused trilinear sampling + NCC sums (CPU and, when built with it, CUDA)";
  m.def("sample_ncc_forward", &sample_ncc_forward,
        "values (N,), gradients (N,3), sums (5,) float64 = sample_ncc_forward(moving (nz,ny,nx), index (N,3), "
        "fixed_values (N,))",
        py::arg("moving"), py::arg("index"), py::arg("fixed_values"));
  m.def("sample_ncc_backward", &sample_ncc_backward,
        "grad_index (N,3) = sample_ncc_backward(fixed_values, values, gradients, coef (4,) float64 = [a, b, f_mean, "
        "m_mean])",
        py::arg("fixed_values"), py::arg("values"), py::arg("gradients"), py::arg("coef"));
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
