/* norm_ref.c — see norm_ref.h: fp64 CPU references of the norm kernels and their tolerance.
 *
 * Relies on: IEEE fp32 arithmetic on the host (the fused reference's x + residual must be the same fp32 add
 * the kernel does; with SSE math, C's float + float is exactly that). No allocation, no global state. */
#include "norm_ref.h"

#include <math.h>
#include <string.h>

#include "half_ref.h"

float tpc_ref_to_float(uint16_t h, tpc_dtype_t dtype) {
  return dtype == TPC_BFLOAT16 ? href_bf16_to_f32(h) : href_f16_to_f32(h);
}

uint16_t tpc_ref_from_float(float f, tpc_dtype_t dtype) {
  return dtype == TPC_BFLOAT16 ? href_f32_to_bf16(f) : href_f32_to_f16(f);
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
