/* tp_qknorm_ref.h — CPU reference of the tensor-parallel QK-RMSNorm, shared by the GPU tests and the
 * benchmark (header-only). Inputs are generated from (seed, rank) so that every rank can rebuild every
 * other rank's shard and compute the full-vector statistics in double precision. */
#ifndef TPCOMM_TP_QKNORM_REF_H
#define TPCOMM_TP_QKNORM_REF_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "half_ref.h"

static inline float qkref_h2f(uint16_t h, int bf16) { return bf16 ? href_bf16_to_f32(h) : href_f16_to_f32(h); }
static inline uint16_t qkref_f2h(float f, int bf16) { return bf16 ? href_f32_to_bf16(f) : href_f32_to_f16(f); }

/* Deterministic values in [-2, 2): element i of stream (seed, rank, which) */
static inline float qkref_value(uint64_t seed, int rank, int which, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull ^ ((uint64_t)rank << 40) ^ ((uint64_t)which << 56) ^ (i * 0xBF58476D1CE4E5B9ull);
  z ^= z >> 31;
  z *= 0x94D049BB133111EBull;
  z ^= z >> 29;
  return (float)((double)(z >> 11) / (double)(1ull << 53) * 4.0 - 2.0);
}

/* Row t of rank r's q (which=0) or k (which=1) shard, dim elements, rounded to the dtype. */
static inline void qkref_row(uint64_t seed, int r, int which, int64_t t, int64_t dim, int bf16, uint16_t* out) {
  for (int64_t j = 0; j < dim; j++) out[j] = qkref_f2h(qkref_value(seed, r, which, (uint64_t)t * (uint64_t)dim + (uint64_t)j), bf16);
}
/* Rank r's weight shard (which=2 for q, 3 for k), in [0.5, 1.5). */
static inline void qkref_weight(uint64_t seed, int r, int which, int64_t dim, int bf16, uint16_t* out) {
  for (int64_t j = 0; j < dim; j++) out[j] = qkref_f2h(1.0f + 0.25f * qkref_value(seed, r, which, (uint64_t)j), bf16);
}

/* Sum of squares of row t of rank r's shard, in double. */
static inline double qkref_sumsq(uint64_t seed, int r, int which, int64_t t, int64_t dim, int bf16, uint16_t* tmp) {
  qkref_row(seed, r, which, t, dim, bf16, tmp);
  double s = 0;
  for (int64_t j = 0; j < dim; j++) {
    double x = qkref_h2f(tmp[j], bf16);
    s += x * x;
  }
  return s;
}

/* Counts elements of this rank's normalized shard `got` (row t, dim elements) that differ from the
 * reference y = x * rsqrt(total/(dim*world) + eps) * w beyond the dtype's tolerance. */
static inline int64_t qkref_check_row(uint64_t seed, int rank, int world, int which, int64_t t, int64_t dim, float eps,
                                      int bf16, const uint16_t* got, uint16_t* tmp, double* worst) {
  double total = 0;
  for (int r = 0; r < world; r++) total += qkref_sumsq(seed, r, which, t, dim, bf16, tmp);
  const double scale = 1.0 / sqrt(total / ((double)dim * world) + eps);
  qkref_weight(seed, rank, which + 2, dim, bf16, tmp);
  uint16_t* x = tmp + dim;
  qkref_row(seed, rank, which, t, dim, bf16, x);
  const double rel = bf16 ? 1.0 / 128 : 1.0 / 1024, abs_tol = bf16 ? 1e-3 : 1e-4;
  int64_t wrong = 0;
  for (int64_t j = 0; j < dim; j++) {
    const double want = qkref_h2f(x[j], bf16) * scale * qkref_h2f(tmp[j], bf16);
    const double have = qkref_h2f(got[j], bf16);
    const double err = fabs(have - want);
    if (!(err <= rel * fabs(want) + abs_tol)) wrong++;
    if (worst && err > *worst) *worst = err;
  }
  return wrong;
}

#endif
