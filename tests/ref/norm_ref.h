/* norm_ref.h — CPU references of the norm kernels of include/tpcomm/kernels.h (kernels/norm.cu), shared by
 * tests/norms/test_norms.c and bench/bench_kernels_norm.c.
 *
 * Inputs are raw 16-bit elements of a dtype (bfloat16 or float16, as on the device); references are fp64:
 * y[i] = x[i] / sqrt(mean(x^2) + eps) * w[i], with the sum of squares and the product in double, so the
 * kernels' fp32 results are compared against something strictly more accurate (tpc_ref_close). The fused
 * reference rounds x + residual to the dtype first (fp32 add, round to nearest even), exactly as the kernel
 * stores it, and normalizes the rounded value. Outputs are dense: element (r, i) of a [rows][n] reference
 * sits at r * n + i whatever the strides of the inputs. Plain C11, no CUDA. */
#ifndef TPCOMM_NORM_REF_H
#define TPCOMM_NORM_REF_H

#include <stddef.h>
#include <stdint.h>

#include "tpcomm/tpcomm.h"

/* dtype element <-> float (round to nearest even; NaN, inf and subnormals handled). dtype: TPC_BFLOAT16 or
 * TPC_FLOAT16. */
float tpc_ref_to_float(uint16_t h, tpc_dtype_t dtype);
uint16_t tpc_ref_from_float(float f, tpc_dtype_t dtype);

/* One row of n elements: y[i] = x[i] / sqrt(sum(x^2)/n + eps) * w[i], in double. */
void tpc_ref_rmsnorm_row(double* y, const uint16_t* x, const uint16_t* w, int64_t n, float eps, tpc_dtype_t dtype);

/* ref[rows][hidden] = rmsnorm of the rows of in (row r at in + r * in_stride). */
void tpc_ref_rmsnorm(double* ref, const uint16_t* in, const uint16_t* w, int64_t rows, int64_t hidden,
                     int64_t in_stride, float eps, tpc_dtype_t dtype);

/* res_out[rows][hidden] = round(x + residual) (what the kernel stores to residual, bit for bit);
 * ref[rows][hidden] = rmsnorm(res_out) (what it stores to x). */
void tpc_ref_fused_add_rmsnorm(double* ref, uint16_t* res_out, const uint16_t* x, const uint16_t* residual,
                               const uint16_t* w, int64_t rows, int64_t hidden, int64_t x_stride,
                               int64_t residual_stride, float eps, tpc_dtype_t dtype);

/* ref_q[tokens][q_heads][head_dim] and ref_k[tokens][kv_heads][head_dim]: every head normalized over head_dim
 * with wq / wk; q and k rows at q + t * q_stride, k + t * k_stride. */
void tpc_ref_qk_rmsnorm_per_head(double* ref_q, double* ref_k, const uint16_t* q, const uint16_t* k, const uint16_t* wq,
                                 const uint16_t* wk, int64_t tokens, int q_heads, int kv_heads, int head_dim,
                                 int64_t q_stride, int64_t k_stride, float eps, tpc_dtype_t dtype);

/* The accepted error of a kernel output against a reference value. One fp32 computation rounded once to the
 * dtype is off by at most half an ulp (bf16: 2^-8 relative, fp16: 2^-11) plus fp32 noise; this allows twice
 * that for bf16 (2^-7 |ref| + 1e-3) and four times for fp16 (2^-9 |ref| + 1e-5). */
double tpc_ref_tolerance(double ref, tpc_dtype_t dtype);
/* 1 when got (a dtype element) is finite and within tpc_ref_tolerance of ref. */
int tpc_ref_close(uint16_t got, double ref, tpc_dtype_t dtype);

#endif
