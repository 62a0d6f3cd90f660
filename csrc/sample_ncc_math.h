// Per-point math of the fused trilinear-sampling + NCC op, shared by the CUDA kernel and the CPU loop.
//
// No PyTorch or CUDA runtime headers here: this file is included by sample_ncc.cu (nvcc) and
// sample_ncc_cpu.cpp (host compiler) alike, so the CPU tests exercise the same arithmetic as the GPU.
//
// Boundary semantics (identical to idir_fast/sampling.py): each index coordinate is clamped to [0, n-1];
// outside the volume the value is the border's and the derivative along a clamped axis is zero. The cell is
// floor(i) clamped to n-2, so a point on an interior voxel plane takes the derivative of the cell above it.
#pragma once

#if defined(__CUDACC__)
#define IDIR_HD __host__ __device__ __forceinline__
#else
#define IDIR_HD inline
#endif

namespace idir {

// Value and index-frame gradient of the trilinear interpolant of `vol` (C order nz*ny*nx) at (x, y, z).
template <typename T>
IDIR_HD void trilinear_value_grad(const T* vol, int nx, int ny, int nz, T x, T y, T z, T* value, T* gx, T* gy,
                                  T* gz) {
  const T hx = T(nx - 1), hy = T(ny - 1), hz = T(nz - 1);
  const bool in_x = (x >= T(0)) && (x <= hx);
  const bool in_y = (y >= T(0)) && (y <= hy);
  const bool in_z = (z >= T(0)) && (z <= hz);
  // written so NaN lands on 0 (a NaN index must never reach the integer cast); NaN is propagated below
  const T cx = x >= T(0) ? (x <= hx ? x : hx) : T(0);
  const T cy = y >= T(0) ? (y <= hy ? y : hy) : T(0);
  const T cz = z >= T(0) ? (z <= hz ? z : hz) : T(0);
  int i0 = static_cast<int>(cx);  // cx >= 0: truncation is floor
  int j0 = static_cast<int>(cy);
  int k0 = static_cast<int>(cz);
  if (i0 > nx - 2) i0 = nx - 2;
  if (j0 > ny - 2) j0 = ny - 2;
  if (k0 > nz - 2) k0 = nz - 2;
  const T tx = cx - T(i0), ty = cy - T(j0), tz = cz - T(k0);
  const T ux = T(1) - tx, uy = T(1) - ty, uz = T(1) - tz;
  const long long sk = static_cast<long long>(ny) * nx, sj = nx;
  const long long o = k0 * sk + j0 * sj + i0;
  const T c000 = vol[o], c001 = vol[o + 1], c010 = vol[o + sj], c011 = vol[o + sj + 1];
  const T c100 = vol[o + sk], c101 = vol[o + sk + 1], c110 = vol[o + sk + sj], c111 = vol[o + sk + sj + 1];
  const T c00 = c000 * ux + c001 * tx, c01 = c010 * ux + c011 * tx;
  const T c10 = c100 * ux + c101 * tx, c11 = c110 * ux + c111 * tx;
  const T c0 = c00 * uy + c01 * ty, c1 = c10 * uy + c11 * ty;
  *value = c0 * uz + c1 * tz;
  *gz = in_z ? (c1 - c0) : T(0);
  *gy = in_y ? ((c01 - c00) * uz + (c11 - c10) * tz) : T(0);
  *gx = in_x ? (((c001 - c000) * uy + (c011 - c010) * ty) * uz + ((c101 - c100) * uy + (c111 - c110) * ty) * tz)
             : T(0);
  if (x != x || y != y || z != z) {  // a diverged transform: let NaN reach the loss (and the divergence guard)
    const T nan = x + y + z;
    *value = nan;
    *gx = nan;
    *gy = nan;
    *gz = nan;
  }
}

// The five NCC sums of one point, accumulated in double: [Σf, Σm, Σf², Σm², Σfm].
IDIR_HD void ncc_accumulate(double f, double m, double* s) {
  s[0] += f;
  s[1] += m;
  s[2] += f * f;
  s[3] += m * m;
  s[4] += f * m;
}

// ∂L/∂index of one point: g · (a (f − f̄) + b (m − m̄)) · ∇M, with the scalars from idir_fast.objectives.
// coef = [a, b, f̄, m̄].
template <typename T>
IDIR_HD void ncc_point_backward(T f, T m, T gx, T gy, T gz, const double* coef, T* out) {
  const T w = static_cast<T>(coef[0] * (static_cast<double>(f) - coef[2]) +
                             coef[1] * (static_cast<double>(m) - coef[3]));
  out[0] = w * gx;
  out[1] = w * gy;
  out[2] = w * gz;
}

}  // namespace idir
