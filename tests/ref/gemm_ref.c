/* gemm_ref.c — see gemm_ref.h. Plain triple loops in fp64: small shapes only (tests, sampled rows in the
 * benchmark). */
#include "gemm_ref.h"

#include <math.h>

#include "quant_ref.h"

void tpc_ref_gemm(const float* x, int64_t x_ld, const float* w, int64_t w_ld, double* y, double* yabs, int64_t y_ld,
                  int64_t m, int64_t n, int64_t k) {
  for (int64_t t = 0; t < m; t++) {
    for (int64_t j = 0; j < n; j++) {
      double s = 0, a = 0;
      for (int64_t i = 0; i < k; i++) {
        const double p = (double)x[t * x_ld + i] * (double)w[j * w_ld + i];
        s += p;
        a += fabs(p);
      }
      y[t * y_ld + j] = s;
      if (yabs) yabs[t * y_ld + j] = a;
    }
  }
}

void tpc_ref_gemm_fp8(const uint8_t* xq, int64_t x_ld, const float* x_scales, const uint8_t* wq, int64_t w_ld,
                      const float* w_scales, double* y, double* yabs, int64_t y_ld, int64_t m, int64_t n, int64_t k) {
  float dec[256];
  for (int c = 0; c < 256; c++) dec[c] = tpc_ref_e4m3_decode((uint8_t)c);
  for (int64_t t = 0; t < m; t++) {
    for (int64_t j = 0; j < n; j++) {
      double s = 0, a = 0;
      for (int64_t i = 0; i < k; i++) {
        const double p = (double)dec[xq[t * x_ld + i]] * (double)dec[wq[j * w_ld + i]];
        s += p;
        a += fabs(p);
      }
      const double sc = (double)x_scales[t] * (double)w_scales[j];
      y[t * y_ld + j] = s * sc;
      if (yabs) yabs[t * y_ld + j] = a * fabs(sc);
    }
  }
}

int64_t tpc_ref_count_wrong(const float* got, int64_t got_ld, const double* ref, const double* refabs, int64_t ref_ld,
                            int64_t m, int64_t n, double rel, double acc, double* worst) {
  int64_t wrong = 0;
  double w = 0;
  for (int64_t t = 0; t < m; t++) {
    for (int64_t j = 0; j < n; j++) {
      const double g = got[t * got_ld + j], r = ref[t * ref_ld + j];
      const double tol = rel * fabs(r) + acc * (refabs ? refabs[t * ref_ld + j] : 0) + 1e-30;
      const double e = fabs(g - r) / tol;
      if (!isfinite(g) || !(e <= 1.0)) wrong++;
      if (isfinite(e) && e > w) w = e;
    }
  }
  if (worst) *worst = w;
  return wrong;
}
