// Python bindings of idir_fast._C: the fused sampling + NCC op (dispatched by device in sample_ncc.h), the fused
// sine-layer stream algebra for the CPU (sine_streams.h) and the local NCC's moving neighbourhoods (CPU,
// local_ncc.h).
#include "local_ncc.h"
#include "sample_ncc.h"
#include "sine_streams.h"

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
  m.def("trilinear_forward", &trilinear_forward,
        "values (N,), gradients (N,3) = trilinear_forward(volume (nz,ny,nx), index (N,3))", py::arg("volume"),
        py::arg("index"));
  m.def("local_moments_forward", &local_moments_forward,
        "cov (N,), var (N,), values (N,K), gradients (N,K,3) = local_moments_forward(moving (nz,ny,nx), phi (N,3), "
        "jac (N,3,3), fixed_centred (N,K), offsets (K,3), lin (3,3), off (3,), values_out=None, gradients_out=None)"
        " — values and gradients written into the given tensors when they are given",
        py::arg("moving"), py::arg("phi"), py::arg("jac"), py::arg("fixed_centred"), py::arg("offsets"),
        py::arg("lin"), py::arg("off"), py::arg("values_out") = py::none(), py::arg("gradients_out") = py::none());
  m.def("local_moments_backward", &local_moments_backward,
        "grad_phi (N,3), grad_jac (N,3,3) = local_moments_backward(grad_cov (N,), grad_var (N,), values, gradients, "
        "fixed_centred, offsets, lin)",
        py::arg("grad_cov"), py::arg("grad_var"), py::arg("values"), py::arg("gradients"), py::arg("fixed_centred"),
        py::arg("offsets"), py::arg("lin"));
  m.def("sine_streams_forward", &sine_streams_forward,
        "a (S,N,M) = sine_streams_forward(z (S,N,M), w0 (M,3) or empty, sin_z (N,M), cos_z (N,M) = ω cos, omega, "
        "order)",
        py::arg("z"), py::arg("w0"), py::arg("sin_z"), py::arg("cos_z"), py::arg("omega"), py::arg("order"));
  m.def("sine_streams_backward", &sine_streams_backward,
        "grad_z (S,N,M) = sine_streams_backward(grad_a (S,N,M), z, w0 or empty, sin_z, cos_z, omega, order)",
        py::arg("grad_a"), py::arg("z"), py::arg("w0"), py::arg("sin_z"), py::arg("cos_z"), py::arg("omega"),
        py::arg("order"));
  m.def("sine_streams_forward_out", &sine_streams_forward_out,
        "sine_streams_forward into a preallocated out (S,N,M)", py::arg("z"), py::arg("w0"), py::arg("sin_z"),
        py::arg("cos_z"), py::arg("omega"), py::arg("order"), py::arg("out"));
  m.def("sine_streams_backward_out", &sine_streams_backward_out,
        "sine_streams_backward into a preallocated out (S,N,M)", py::arg("grad_a"), py::arg("z"), py::arg("w0"),
        py::arg("sin_z"), py::arg("cos_z"), py::arg("omega"), py::arg("order"), py::arg("out"));
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
