/* quant_ref.c — see quant_ref.h. The encoder works on the value (frexp-free: exact scaling by powers of
 * two and rintf, which rounds to nearest even in the default rounding mode), not on the kernels' bit
 * tricks, so it is an independent statement of the format. */
#include "quant_ref.h"

#include "half_ref.h"

#include <float.h>
#include <math.h>
#include <string.h>

float tpc_ref_e4m3_decode(uint8_t code) {
  const int sign = code >> 7, exp = (code >> 3) & 0xf, man = code & 7;
  float v;
  if (exp == 0xf && man == 7) v = NAN;
  else if (exp == 0) v = ldexpf((float)man, -9); /* subnormal: man * 2^-9 */
  else v = ldexpf(1.0f + (float)man / 8.0f, exp - 7);
  return sign ? -v : v;
}

uint8_t tpc_ref_e4m3_encode(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
  if (isnan(f)) return sign | 0x7f;
  const float a = fabsf(f);
  if (a >= 448.0f) return sign | 0x7e; /* saturate (everything from 448 up rounds to or past 448) */
  if (a < ldexpf(1.0f, -6)) {          /* subnormal range: multiples of 2^-9 */
    const float q = rintf(a * 512.0f); /* exact scaling; 0..8, 8 being the smallest normal (code 0x08) */
    return sign | (uint8_t)q;
  }
  int e = (int)floorf(log2f(a));
  /* log2f may be off by one near powers of two: fix e so that 2^e <= a < 2^(e+1) */
  while (ldexpf(1.0f, e) > a) e--;
  while (ldexpf(1.0f, e + 1) <= a) e++;
  float man = rintf((ldexpf(a, -e) - 1.0f) * 8.0f); /* exact: a / 2^e has 24 bits, minus 1, times 8 */
  if (man == 8.0f) {                                 /* rounded up to the next binade */
    man = 0.0f;
    e++;
  }
  const int code = ((e + 7) << 3) | (int)man;
  return sign | (uint8_t)(code > 0x7e ? 0x7e : code);
}

int tpc_ref_e4m3_same(uint8_t a, uint8_t b) {
  const int nan_a = (a & 0x7f) == 0x7f, nan_b = (b & 0x7f) == 0x7f;
  return a == b || (nan_a && nan_b);
}

float tpc_ref_bf16_to_f32(uint16_t h) { return href_bf16_to_f32(h); }

float tpc_ref_f16_to_f32(uint16_t h) { return href_f16_to_f32(h); }

float tpc_ref_half_to_f32(uint16_t h, int is_fp16) { return is_fp16 ? tpc_ref_f16_to_f32(h) : tpc_ref_bf16_to_f32(h); }

float tpc_ref_quant_scale(float amax) {
  const float s = amax / TPC_REF_E4M3_MAX;
  return s < TPC_REF_MIN_SCALE ? TPC_REF_MIN_SCALE : s;
}

void tpc_ref_quant_fp8_per_token(const uint16_t* x, int is_fp16, int64_t rows, int64_t hidden, int64_t x_stride,
                                 uint8_t* q, int64_t q_stride, float* scales) {
  for (int64_t r = 0; r < rows; r++) {
    const uint16_t* xr = x + r * x_stride;
    float amax = 0.0f;
    for (int64_t i = 0; i < hidden; i++) {
      const float a = fabsf(tpc_ref_half_to_f32(xr[i], is_fp16));
      if (a <= FLT_MAX && a > amax) amax = a; /* NaN and Inf do not count */
    }
    const float scale = tpc_ref_quant_scale(amax);
    const float inv = 1.0f / scale;
    for (int64_t i = 0; i < hidden; i++) q[r * q_stride + i] = tpc_ref_e4m3_encode(tpc_ref_half_to_f32(xr[i], is_fp16) * inv);
    scales[r] = scale;
  }
}

void tpc_ref_quant_fp8_static(const uint16_t* x, int is_fp16, int64_t rows, int64_t hidden, int64_t x_stride,
                              float scale, uint8_t* q, int64_t q_stride) {
  float s = scale;
  if (!(s >= TPC_REF_MIN_SCALE)) s = TPC_REF_MIN_SCALE; /* also NaN */
  if (s > FLT_MAX) s = FLT_MAX;
  const float inv = 1.0f / s;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < hidden; i++)
      q[r * q_stride + i] = tpc_ref_e4m3_encode(tpc_ref_half_to_f32(x[r * x_stride + i], is_fp16) * inv);
}
