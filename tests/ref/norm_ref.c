/* norm_ref.c — see norm_ref.h: fp64 CPU references of the norm kernels and their tolerance.
 *
 * Relies on: IEEE fp32 arithmetic on the host (the fused reference's x + residual must be the same fp32 add
 * the kernel does; with SSE math, C's float + float is exactly that). No allocation, no global state. */
#include "norm_ref.h"

#include <math.h>
#include <string.h>

static float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static uint16_t f32_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);                                          /* round to nearest even */
  return (uint16_t)(u >> 16);
}

static uint16_t f32_to_f16(float f) {
  const uint32_t x = float_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t mant = x & 0x007fffffu;
  const int32_t exp = (int32_t)((x >> 23) & 0xff);
  if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
  const int32_t e = exp - 127 + 15;
  if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) { /* subnormal half (or zero) */
    if (e < -10) return (uint16_t)sign;
    mant |= 0x00800000u;
    const uint32_t shift = (uint32_t)(14 - e);
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t h = sign | ((uint32_t)e << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; /* may carry into the exponent: correct, up to inf */
  return (uint16_t)h;
}

static float f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
  if (exp == 0) {
    const float f = ldexpf((float)mant, -24);
    return sign ? -f : f;
  }
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  return bits_to_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

float tpc_ref_to_float(uint16_t h, tpc_dtype_t dtype) {
  return dtype == TPC_BFLOAT16 ? bits_to_float((uint32_t)h << 16) : f16_to_f32(h);
}

uint16_t tpc_ref_from_float(float f, tpc_dtype_t dtype) {
  return dtype == TPC_BFLOAT16 ? f32_to_bf16(f) : f32_to_f16(f);
}

void tpc_ref_rmsnorm_row(double* y, const uint16_t* x, const uint16_t* w, int64_t n, float eps, tpc_dtype_t dtype) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const double v = tpc_ref_to_float(x[i], dtype);
    ss += v * v;
  }
  const double r = 1.0 / sqrt(ss / (double)n + (double)eps);
  for (int64_t i = 0; i < n; i++)
    y[i] = (double)tpc_ref_to_float(x[i], dtype) * r * (double)tpc_ref_to_float(w[i], dtype);
}

void tpc_ref_rmsnorm(double* ref, const uint16_t* in, const uint16_t* w, int64_t rows, int64_t hidden,
                     int64_t in_stride, float eps, tpc_dtype_t dtype) {
  for (int64_t r = 0; r < rows; r++) tpc_ref_rmsnorm_row(ref + r * hidden, in + r * in_stride, w, hidden, eps, dtype);
}

void tpc_ref_fused_add_rmsnorm(double* ref, uint16_t* res_out, const uint16_t* x, const uint16_t* residual,
                               const uint16_t* w, int64_t rows, int64_t hidden, int64_t x_stride,
                               int64_t residual_stride, float eps, tpc_dtype_t dtype) {
  for (int64_t r = 0; r < rows; r++) {
    uint16_t* s = res_out + r * hidden;
    for (int64_t i = 0; i < hidden; i++) {
      const float a = tpc_ref_to_float(x[r * x_stride + i], dtype);
      const float b = tpc_ref_to_float(residual[r * residual_stride + i], dtype);
      const volatile float sum = a + b; /* one fp32 add, as the kernel (no excess precision) */
      s[i] = tpc_ref_from_float(sum, dtype);
    }
    tpc_ref_rmsnorm_row(ref + r * hidden, s, w, hidden, eps, dtype);
  }
}

void tpc_ref_qk_rmsnorm_per_head(double* ref_q, double* ref_k, const uint16_t* q, const uint16_t* k, const uint16_t* wq,
                                 const uint16_t* wk, int64_t tokens, int q_heads, int kv_heads, int head_dim,
                                 int64_t q_stride, int64_t k_stride, float eps, tpc_dtype_t dtype) {
  for (int64_t t = 0; t < tokens; t++) {
    for (int h = 0; h < q_heads; h++)
      tpc_ref_rmsnorm_row(ref_q + (t * q_heads + h) * head_dim, q + t * q_stride + (int64_t)h * head_dim, wq, head_dim,
                          eps, dtype);
    for (int h = 0; h < kv_heads; h++)
      tpc_ref_rmsnorm_row(ref_k + (t * kv_heads + h) * head_dim, k + t * k_stride + (int64_t)h * head_dim, wk, head_dim,
                          eps, dtype);
  }
}

double tpc_ref_tolerance(double ref, tpc_dtype_t dtype) {
  return dtype == TPC_BFLOAT16 ? fabs(ref) / 128.0 + 1e-3 : fabs(ref) / 512.0 + 1e-5;
}

int tpc_ref_close(uint16_t got, double ref, tpc_dtype_t dtype) {
  const double g = tpc_ref_to_float(got, dtype);
  return isfinite(g) && fabs(g - ref) <= tpc_ref_tolerance(ref, dtype);
}
