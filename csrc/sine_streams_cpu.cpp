// CPU implementation of the fused sine-layer stream algebra. The sines and cosines come in as tensors (computed
// once by ATen's vectorised kernels and kept for the backward); this loop does the rest of the algebra in one pass
// over the N·M elements, specialised per derivative order so the compiler can vectorise it, in parallel with
// ATen's thread pool (the same threads as torch's own ops: a second OpenMP runtime would oversubscribe the cores).
#include "sine_streams.h"

#include <ATen/Parallel.h>

namespace {

constexpr int kPairA[6] = {0, 1, 2, 0, 0, 1};
constexpr int kPairB[6] = {0, 1, 2, 1, 2, 2};
constexpr int64_t kGrain = 4096;  // elements per task

int64_t streams_of(int64_t order) {
  TORCH_CHECK(order >= 0 && order <= 2, "sine_streams: 'order' must be 0, 1 or 2, got ", order);
  return order == 0 ? 1 : (order == 1 ? 4 : 10);
}

void check_float(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), "sine_streams: '", name, "' must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "sine_streams: '", name,
              "' must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "sine_streams: '", name, "' must have the dtype of 'z'");
  TORCH_CHECK(t.is_contiguous(), "sine_streams: '", name, "' must be contiguous");
}

// a_s from the pre-activation streams; FIRST: z_i = W0[col, i] and z_ab = 0 (the input is x itself).
template <typename T, int ORDER, bool FIRST>
void forward_loop(const T* z, const T* w0, const T* sn, const T* cs, T omega, int64_t n, int64_t m, T* a) {
  const int64_t stride = n * m;
  const T w2 = omega * omega;
  at::parallel_for(0, stride, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const T s = sn[e], c = cs[e];
      a[e] = s;
      if constexpr (ORDER >= 1) {
        T zi[3];
        const int64_t col = e % m;
        for (int i = 0; i < 3; ++i) zi[i] = FIRST ? w0[3 * col + i] : z[(1 + i) * stride + e];
        for (int i = 0; i < 3; ++i) a[(1 + i) * stride + e] = c * zi[i];
        if constexpr (ORDER >= 2) {
          const T q = -w2 * s;
          for (int p = 0; p < 6; ++p) {
            const T zab = FIRST ? T(0) : z[(4 + p) * stride + e];
            a[(4 + p) * stride + e] = c * zab + q * zi[kPairA[p]] * zi[kPairB[p]];
          }
        }
      }
    }
  });
}

template <typename T, int ORDER, bool FIRST>
void backward_loop(const T* ga, const T* z, const T* w0, const T* sn, const T* cs, T omega, int64_t n, int64_t m,
                   T* gz) {
  const int64_t stride = n * m;
  const T w2 = omega * omega;
  at::parallel_for(0, stride, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const T s = sn[e], c = cs[e];
      T g0 = c * ga[e];
      if constexpr (ORDER >= 1) {
        const T q = -w2 * s;
        T zi[3], gi[3];
        const int64_t col = e % m;
        for (int i = 0; i < 3; ++i) zi[i] = FIRST ? w0[3 * col + i] : z[(1 + i) * stride + e];
        for (int i = 0; i < 3; ++i) {
          const T gai = ga[(1 + i) * stride + e];
          gi[i] = c * gai;
          g0 += q * zi[i] * gai;
        }
        if constexpr (ORDER >= 2) {
          const T w2c = w2 * c;
          for (int p = 0; p < 6; ++p) {
            const int ia = kPairA[p], ib = kPairB[p];
            const T gp = ga[(4 + p) * stride + e];
            const T zab = FIRST ? T(0) : z[(4 + p) * stride + e];
            gi[ia] += q * zi[ib] * gp;  // ∂(z_a z_b)/∂z_a = z_b (and 2 z_a when a = b: both lines add)
            gi[ib] += q * zi[ia] * gp;
            g0 += (q * zab - w2c * zi[ia] * zi[ib]) * gp;
            gz[(4 + p) * stride + e] = c * gp;
          }
        }
        for (int i = 0; i < 3; ++i) gz[(1 + i) * stride + e] = gi[i];
      }
      gz[e] = g0;
    }
  });
}

template <typename T, bool FIRST>
void forward_dispatch(int64_t order, const T* z, const T* w0, const T* s, const T* c, T omega, int64_t n, int64_t m,
                      T* a) {
  if (order == 0) forward_loop<T, 0, FIRST>(z, w0, s, c, omega, n, m, a);
  if (order == 1) forward_loop<T, 1, FIRST>(z, w0, s, c, omega, n, m, a);
  if (order == 2) forward_loop<T, 2, FIRST>(z, w0, s, c, omega, n, m, a);
}

template <typename T, bool FIRST>
void backward_dispatch(int64_t order, const T* ga, const T* z, const T* w0, const T* s, const T* c, T omega,
                       int64_t n, int64_t m, T* gz) {
  if (order == 0) backward_loop<T, 0, FIRST>(ga, z, w0, s, c, omega, n, m, gz);
  if (order == 1) backward_loop<T, 1, FIRST>(ga, z, w0, s, c, omega, n, m, gz);
  if (order == 2) backward_loop<T, 2, FIRST>(ga, z, w0, s, c, omega, n, m, gz);
}

void check_sc(const at::Tensor& z, const at::Tensor& sin_z, const at::Tensor& cos_z, int64_t n, int64_t m) {
  check_float(sin_z, "sin_z", z);
  check_float(cos_z, "cos_z", z);
  TORCH_CHECK(sin_z.numel() == n * m && cos_z.numel() == n * m,
              "sine_streams: 'sin_z' and 'cos_z' must hold N·M values (the value stream)");
}

}  // namespace

at::Tensor sine_streams_forward(const at::Tensor& z, const at::Tensor& w0, const at::Tensor& sin_z,
                                const at::Tensor& cos_z, double omega, int64_t order) {
  const int64_t S = streams_of(order);
  const bool first = w0.numel() > 0;
  TORCH_CHECK(z.dim() == 3, "sine_streams_forward: 'z' must have shape (S, N, M), got ", z.sizes());
  check_float(z, "z", z);
  const int64_t n = z.size(1), m = z.size(2);
  TORCH_CHECK(first ? z.size(0) >= 1 : z.size(0) == S, "sine_streams_forward: 'z' must hold ", S, " streams");
  if (first) {
    check_float(w0, "w0", z);
    TORCH_CHECK(w0.dim() == 2 && w0.size(0) == m && w0.size(1) == 3, "sine_streams_forward: 'w0' must be (M, 3)");
  }
  check_sc(z, sin_z, cos_z, n, m);
  auto a = at::empty({S, n, m}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "sine_streams_forward", [&] {
    const scalar_t* w = first ? w0.data_ptr<scalar_t>() : nullptr;
    auto fn = first ? forward_dispatch<scalar_t, true> : forward_dispatch<scalar_t, false>;
    fn(order, z.data_ptr<scalar_t>(), w, sin_z.data_ptr<scalar_t>(), cos_z.data_ptr<scalar_t>(),
       static_cast<scalar_t>(omega), n, m, a.data_ptr<scalar_t>());
  });
  return a;
}

at::Tensor sine_streams_backward(const at::Tensor& grad_a, const at::Tensor& z, const at::Tensor& w0,
                                 const at::Tensor& sin_z, const at::Tensor& cos_z, double omega, int64_t order) {
  const int64_t S = streams_of(order);
  const bool first = w0.numel() > 0;
  check_float(grad_a, "grad_a", grad_a);
  check_float(z, "z", grad_a);
  TORCH_CHECK(grad_a.dim() == 3 && grad_a.size(0) == S, "sine_streams_backward: 'grad_a' must have shape (", S,
              ", N, M), got ", grad_a.sizes());
  const int64_t n = grad_a.size(1), m = grad_a.size(2);
  TORCH_CHECK(z.numel() >= n * m && (first || z.sizes() == grad_a.sizes()),
              "sine_streams_backward: 'z' must have the shape of 'grad_a' (the value stream alone for the first "
              "layer)");
  if (first) {
    check_float(w0, "w0", grad_a);
    TORCH_CHECK(w0.dim() == 2 && w0.size(0) == m && w0.size(1) == 3, "sine_streams_backward: 'w0' must be (M, 3)");
  }
  check_sc(grad_a, sin_z, cos_z, n, m);
  auto gz = at::empty_like(grad_a);
  AT_DISPATCH_FLOATING_TYPES(grad_a.scalar_type(), "sine_streams_backward", [&] {
    const scalar_t* w = first ? w0.data_ptr<scalar_t>() : nullptr;
    auto fn = first ? backward_dispatch<scalar_t, true> : backward_dispatch<scalar_t, false>;
    fn(order, grad_a.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), w, sin_z.data_ptr<scalar_t>(),
       cos_z.data_ptr<scalar_t>(), static_cast<scalar_t>(omega), n, m, gz.data_ptr<scalar_t>());
  });
  return gz;
}
