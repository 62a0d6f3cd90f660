// CPU implementation of the fused sine-layer stream algebra. The sines and cosines come in as tensors (computed
// once by ATen's vectorised kernels and kept for the backward); this loop does the rest of the algebra in one pass
// over the N·M elements, specialised per derivative order so the compiler can vectorise it, in parallel with
// ATen's thread pool (the same threads as torch's own ops: a second OpenMP runtime would oversubscribe the cores).
#include "sine_streams.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kGrain = 1 << 16;  // elements per task
constexpr int64_t kSpan = 4096;     // contiguous elements per inner loop

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

// Pointers to the 10 streams of an (S, N, M) tensor (the ones beyond S are never touched).
template <typename T>
struct Streams {
  T* p[10];
  Streams(T* base, int64_t stride, int64_t count) {
    for (int k = 0; k < 10; ++k) p[k] = base + (k < count ? k : 0) * stride;
  }
};

// ``m`` contiguous elements from offset ``o`` of every stream: branch-free and without index arithmetic, so the
// compiler vectorises it. FIRST: one row (the span lines up with the weight columns W0[:, i]), z_ab = 0.
template <typename T, int ORDER, bool FIRST>
void forward_span(const Streams<const T>& z, const T* __restrict__ wx, const T* __restrict__ wy,
                  const T* __restrict__ wz, const T* __restrict__ sn, const T* __restrict__ cs, T w2, int64_t o,
                  int64_t m, const Streams<T>& a) {
  {
    const T* __restrict__ s = sn + o;
    const T* __restrict__ c = cs + o;
    T* __restrict__ a0 = a.p[0] + o;
    for (int64_t j = 0; j < m; ++j) a0[j] = s[j];
    if constexpr (ORDER >= 1) {
      const T* __restrict__ z1 = FIRST ? wx : z.p[1] + o;
      const T* __restrict__ z2 = FIRST ? wy : z.p[2] + o;
      const T* __restrict__ z3 = FIRST ? wz : z.p[3] + o;
      T* __restrict__ a1 = a.p[1] + o;
      T* __restrict__ a2 = a.p[2] + o;
      T* __restrict__ a3 = a.p[3] + o;
      for (int64_t j = 0; j < m; ++j) {
        a1[j] = c[j] * z1[j];
        a2[j] = c[j] * z2[j];
        a3[j] = c[j] * z3[j];
      }
      if constexpr (ORDER >= 2) {
        T* __restrict__ a4 = a.p[4] + o;
        T* __restrict__ a5 = a.p[5] + o;
        T* __restrict__ a6 = a.p[6] + o;
        T* __restrict__ a7 = a.p[7] + o;
        T* __restrict__ a8 = a.p[8] + o;
        T* __restrict__ a9 = a.p[9] + o;
        if constexpr (FIRST) {
          for (int64_t j = 0; j < m; ++j) {
            const T q = -w2 * s[j];
            a4[j] = q * z1[j] * z1[j];
            a5[j] = q * z2[j] * z2[j];
            a6[j] = q * z3[j] * z3[j];
            a7[j] = q * z1[j] * z2[j];
            a8[j] = q * z1[j] * z3[j];
            a9[j] = q * z2[j] * z3[j];
          }
        } else {
          const T* __restrict__ z4 = z.p[4] + o;
          const T* __restrict__ z5 = z.p[5] + o;
          const T* __restrict__ z6 = z.p[6] + o;
          const T* __restrict__ z7 = z.p[7] + o;
          const T* __restrict__ z8 = z.p[8] + o;
          const T* __restrict__ z9 = z.p[9] + o;
          for (int64_t j = 0; j < m; ++j) {
            const T q = -w2 * s[j];
            a4[j] = c[j] * z4[j] + q * z1[j] * z1[j];
            a5[j] = c[j] * z5[j] + q * z2[j] * z2[j];
            a6[j] = c[j] * z6[j] + q * z3[j] * z3[j];
            a7[j] = c[j] * z7[j] + q * z1[j] * z2[j];
            a8[j] = c[j] * z8[j] + q * z1[j] * z3[j];
            a9[j] = c[j] * z9[j] + q * z2[j] * z3[j];
          }
        }
      }
    }
  }
}

template <typename T, int ORDER, bool FIRST>
void backward_span(const Streams<const T>& ga, const Streams<const T>& z, const T* __restrict__ wx,
                   const T* __restrict__ wy, const T* __restrict__ wz, const T* __restrict__ sn,
                   const T* __restrict__ cs, T w2, int64_t o, int64_t m, const Streams<T>& gz) {
  {
    const T* __restrict__ s = sn + o;
    const T* __restrict__ c = cs + o;
    const T* __restrict__ g0in = ga.p[0] + o;
    T* __restrict__ g0 = gz.p[0] + o;
    if constexpr (ORDER == 0) {
      for (int64_t j = 0; j < m; ++j) g0[j] = c[j] * g0in[j];
    } else {
      const T* __restrict__ z1 = FIRST ? wx : z.p[1] + o;
      const T* __restrict__ z2 = FIRST ? wy : z.p[2] + o;
      const T* __restrict__ z3 = FIRST ? wz : z.p[3] + o;
      const T* __restrict__ b1 = ga.p[1] + o;
      const T* __restrict__ b2 = ga.p[2] + o;
      const T* __restrict__ b3 = ga.p[3] + o;
      T* __restrict__ g1 = gz.p[1] + o;
      T* __restrict__ g2 = gz.p[2] + o;
      T* __restrict__ g3 = gz.p[3] + o;
      if constexpr (ORDER == 1) {
        for (int64_t j = 0; j < m; ++j) {
          const T q = -w2 * s[j];
          g0[j] = c[j] * g0in[j] + q * (z1[j] * b1[j] + z2[j] * b2[j] + z3[j] * b3[j]);
          g1[j] = c[j] * b1[j];
          g2[j] = c[j] * b2[j];
          g3[j] = c[j] * b3[j];
        }
      } else {
        const T* __restrict__ b4 = ga.p[4] + o;
        const T* __restrict__ b5 = ga.p[5] + o;
        const T* __restrict__ b6 = ga.p[6] + o;
        const T* __restrict__ b7 = ga.p[7] + o;
        const T* __restrict__ b8 = ga.p[8] + o;
        const T* __restrict__ b9 = ga.p[9] + o;
        T* __restrict__ g4 = gz.p[4] + o;
        T* __restrict__ g5 = gz.p[5] + o;
        T* __restrict__ g6 = gz.p[6] + o;
        T* __restrict__ g7 = gz.p[7] + o;
        T* __restrict__ g8 = gz.p[8] + o;
        T* __restrict__ g9 = gz.p[9] + o;
        const T* z4 = FIRST ? nullptr : z.p[4] + o;
        const T* z5 = FIRST ? nullptr : z.p[5] + o;
        const T* z6 = FIRST ? nullptr : z.p[6] + o;
        const T* z7 = FIRST ? nullptr : z.p[7] + o;
        const T* z8 = FIRST ? nullptr : z.p[8] + o;
        const T* z9 = FIRST ? nullptr : z.p[9] + o;
        for (int64_t j = 0; j < m; ++j) {
          const T q = -w2 * s[j], w2c = w2 * c[j];
          const T x1 = z1[j], x2 = z2[j], x3 = z3[j];
          T h0 = c[j] * g0in[j] + q * (x1 * b1[j] + x2 * b2[j] + x3 * b3[j]);
          h0 += -w2c * (x1 * x1 * b4[j] + x2 * x2 * b5[j] + x3 * x3 * b6[j] + x1 * x2 * b7[j] + x1 * x3 * b8[j] +
                        x2 * x3 * b9[j]);
          if constexpr (!FIRST)
            h0 += q * (z4[j] * b4[j] + z5[j] * b5[j] + z6[j] * b6[j] + z7[j] * b7[j] + z8[j] * b8[j] +
                       z9[j] * b9[j]);
          g0[j] = h0;
          g1[j] = c[j] * b1[j] + q * (T(2) * x1 * b4[j] + x2 * b7[j] + x3 * b8[j]);
          g2[j] = c[j] * b2[j] + q * (T(2) * x2 * b5[j] + x1 * b7[j] + x3 * b9[j]);
          g3[j] = c[j] * b3[j] + q * (T(2) * x3 * b6[j] + x1 * b8[j] + x2 * b9[j]);
          g4[j] = c[j] * b4[j];
          g5[j] = c[j] * b5[j];
          g6[j] = c[j] * b6[j];
          g7[j] = c[j] * b7[j];
          g8[j] = c[j] * b8[j];
          g9[j] = c[j] * b9[j];
        }
      }
    }
  }
}

// The first layer's weight columns W0[:, i] as three contiguous arrays (empty when not the first layer).
template <typename T>
std::vector<T> weight_columns(const T* w0, int64_t m) {
  std::vector<T> cols(w0 == nullptr ? 0 : 3 * m);
  for (int64_t j = 0; w0 != nullptr && j < m; ++j)
    for (int i = 0; i < 3; ++i) cols[i * m + j] = w0[3 * j + i];
  return cols;
}

// Spans of elements per task: long contiguous runs of each stream (a row of M elements at a time would touch
// 10–30 pages per M elements and leave the prefetchers and the TLB behind); the first layer goes row by row so a
// span lines up with the weight columns.
template <typename T, int ORDER, bool FIRST, typename Body>
void for_spans(int64_t n, int64_t m, const Body& body) {
  if constexpr (FIRST) {
    at::parallel_for(0, n, std::max<int64_t>(1, kGrain / m), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) body(r * m, m);
    });
  } else {
    at::parallel_for(0, n * m, kGrain, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; e += kSpan) body(e, std::min<int64_t>(kSpan, e1 - e));
    });
  }
}

template <typename T, int ORDER, bool FIRST>
void forward_loop(const T* z, const T* w0, const T* sn, const T* cs, T omega, int64_t n, int64_t m, T* a) {
  const int64_t stride = n * m, S = ORDER == 0 ? 1 : (ORDER == 1 ? 4 : 10);
  const auto cols = weight_columns<T>(w0, m);
  const T* wx = FIRST ? cols.data() : nullptr;
  const Streams<const T> zs(z, stride, FIRST ? 1 : S);
  const Streams<T> as(a, stride, S);
  for_spans<T, ORDER, FIRST>(n, m, [&](int64_t o, int64_t len) {
    forward_span<T, ORDER, FIRST>(zs, wx, FIRST ? wx + m : nullptr, FIRST ? wx + 2 * m : nullptr, sn, cs,
                                  omega * omega, o, len, as);
  });
}

template <typename T, int ORDER, bool FIRST>
void backward_loop(const T* ga, const T* z, const T* w0, const T* sn, const T* cs, T omega, int64_t n, int64_t m,
                   T* gz) {
  const int64_t stride = n * m, S = ORDER == 0 ? 1 : (ORDER == 1 ? 4 : 10);
  const auto cols = weight_columns<T>(w0, m);
  const T* wx = FIRST ? cols.data() : nullptr;
  const Streams<const T> gas(ga, stride, S), zs(z, stride, FIRST ? 1 : S);
  const Streams<T> gzs(gz, stride, S);
  for_spans<T, ORDER, FIRST>(n, m, [&](int64_t o, int64_t len) {
    backward_span<T, ORDER, FIRST>(gas, zs, wx, FIRST ? wx + m : nullptr, FIRST ? wx + 2 * m : nullptr, sn, cs,
                                   omega * omega, o, len, gzs);
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


void check_out(const at::Tensor& out, const char* op, int64_t S, int64_t n, int64_t m, const at::Tensor& like) {
  check_float(out, "out", like);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == S && out.size(1) == n && out.size(2) == m, op, ": 'out' must have shape (",
              S, ", ", n, ", ", m, "), got ", out.sizes());
}

}  // namespace

void sine_streams_forward_out(const at::Tensor& z, const at::Tensor& w0, const at::Tensor& sin_z,
                              const at::Tensor& cos_z, double omega, int64_t order, at::Tensor& out) {
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
  check_out(out, "sine_streams_forward", S, n, m, z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "sine_streams_forward", [&] {
    const scalar_t* w = first ? w0.data_ptr<scalar_t>() : nullptr;
    auto fn = first ? forward_dispatch<scalar_t, true> : forward_dispatch<scalar_t, false>;
    fn(order, z.data_ptr<scalar_t>(), w, sin_z.data_ptr<scalar_t>(), cos_z.data_ptr<scalar_t>(),
       static_cast<scalar_t>(omega), n, m, out.data_ptr<scalar_t>());
  });
}

at::Tensor sine_streams_forward(const at::Tensor& z, const at::Tensor& w0, const at::Tensor& sin_z,
                                const at::Tensor& cos_z, double omega, int64_t order) {
  TORCH_CHECK(z.dim() == 3, "sine_streams_forward: 'z' must have shape (S, N, M), got ", z.sizes());
  auto a = at::empty({streams_of(order), z.size(1), z.size(2)}, z.options());
  sine_streams_forward_out(z, w0, sin_z, cos_z, omega, order, a);
  return a;
}

void sine_streams_backward_out(const at::Tensor& grad_a, const at::Tensor& z, const at::Tensor& w0,
                               const at::Tensor& sin_z, const at::Tensor& cos_z, double omega, int64_t order,
                               at::Tensor& out) {
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
  check_out(out, "sine_streams_backward", S, n, m, grad_a);
  TORCH_CHECK(out.data_ptr() != grad_a.data_ptr(), "sine_streams_backward: 'out' must not be 'grad_a'");
  AT_DISPATCH_FLOATING_TYPES(grad_a.scalar_type(), "sine_streams_backward", [&] {
    const scalar_t* w = first ? w0.data_ptr<scalar_t>() : nullptr;
    auto fn = first ? backward_dispatch<scalar_t, true> : backward_dispatch<scalar_t, false>;
    fn(order, grad_a.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), w, sin_z.data_ptr<scalar_t>(),
       cos_z.data_ptr<scalar_t>(), static_cast<scalar_t>(omega), n, m, out.data_ptr<scalar_t>());
  });
}

at::Tensor sine_streams_backward(const at::Tensor& grad_a, const at::Tensor& z, const at::Tensor& w0,
                                 const at::Tensor& sin_z, const at::Tensor& cos_z, double omega, int64_t order) {
  auto gz = at::empty_like(grad_a);
  sine_streams_backward_out(grad_a, z, w0, sin_z, cos_z, omega, order, gz);
  return gz;
}
