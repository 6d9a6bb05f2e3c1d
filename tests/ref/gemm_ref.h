/* gemm_ref.h — CPU references of tpcomm's GEMMs (comm/gemm.c): y = x . W^T accumulated in fp64, for
 * 16-bit inputs given as floats and for FP8 codes with per-token and per-channel scales, plus the
 * tolerance check the tests and the benchmark share.
 * Layouts as in include/tpcomm/gemm.h: x [m, k] (x_ld), W [n, k] (w_ld), y [m, n] (y_ld), row-major.
 * Relies on: quant_ref.h for the e4m3 decoding. */
#ifndef TPCOMM_TESTS_GEMM_REF_H
#define TPCOMM_TESTS_GEMM_REF_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[t][j] = sum_i x[t][i] * w[j][i] in fp64; yabs (may be NULL) = sum_i |x[t][i] * w[j][i]|, the scale of
 * the rounding error of any summation order. */
void tpc_ref_gemm(const float* x, int64_t x_ld, const float* w, int64_t w_ld, double* y, double* yabs, int64_t y_ld,
                  int64_t m, int64_t n, int64_t k);

/* y[t][j] = x_scales[t] * w_scales[j] * sum_i dec(xq[t][i]) * dec(wq[j][i]) in fp64; yabs likewise with
 * absolute values (may be NULL). */
void tpc_ref_gemm_fp8(const uint8_t* xq, int64_t x_ld, const float* x_scales, const uint8_t* wq, int64_t w_ld,
                      const float* w_scales, double* y, double* yabs, int64_t y_ld, int64_t m, int64_t n, int64_t k);

/* Elements of got (floats, got_ld) that are not finite or off the reference by more than
 * rel * |ref| + acc * refabs + 1e-30, over an m x n block. *worst (may be NULL) gets the largest
 * |got - ref| / (rel * |ref| + acc * refabs + 1e-30) seen. */
int64_t tpc_ref_count_wrong(const float* got, int64_t got_ld, const double* ref, const double* refabs, int64_t ref_ld,
                            int64_t m, int64_t n, double rel, double acc, double* worst);

#ifdef __cplusplus
}
#endif
#endif
