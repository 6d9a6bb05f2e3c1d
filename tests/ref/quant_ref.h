/* quant_ref.h — CPU reference of tpcomm's FP8 (e4m3) quantization (kernels/quant_fp8.cu), in plain C:
 * e4m3 decode/encode (round to nearest even, saturating to +-448), bf16/fp16 decode, and the per-token and
 * static quantizations with exactly the kernels' arithmetic (fp32 division for the scale, one fp32
 * reciprocal per row, fp32 multiply), so the GPU must match it bit for bit (NaN codes aside: the hardware
 * may give 0x7F or 0xFF, tpc_ref_e4m3_same() accepts either).
 *
 * e4m3 (OCP FP8 E4M3, "fn"): sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; S.1111.111 is
 * NaN; largest finite 448 = 1.75 * 2^8 (0x7E); smallest normal 2^-6; subnormals m * 2^-9.
 * Relies on: IEEE binary32 arithmetic in float (FLT_EVAL_METHOD 0, no -ffast-math) and the default
 * rounding mode. Used by tests/gemm and by tpcomm-bench. */
#ifndef TPCOMM_TESTS_QUANT_REF_H
#define TPCOMM_TESTS_QUANT_REF_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TPC_REF_E4M3_MAX 448.0f
#define TPC_REF_MIN_SCALE 1.17549435082228750797e-38f /* 2^-126 */

/* The value of an e4m3 code (NaN for 0x7F / 0xFF, with the code's sign). */
float tpc_ref_e4m3_decode(uint8_t code);
/* f rounded to nearest even e4m3; |f| >= 448 and +-Inf give +-448 (0x7E / 0xFE); NaN gives 0x7F with the
 * sign of f (0xFF for a negative NaN); the sign of zero and of underflows is kept (-0 -> 0x80). */
uint8_t tpc_ref_e4m3_encode(float f);
/* Whether two codes mean the same: equal, or both NaN. */
int tpc_ref_e4m3_same(uint8_t a, uint8_t b);

float tpc_ref_bf16_to_f32(uint16_t h);
float tpc_ref_f16_to_f32(uint16_t h);
/* A 16-bit element as float: is_fp16 0 = bfloat16, 1 = float16. */
float tpc_ref_half_to_f32(uint16_t h, int is_fp16);

/* The per-token scale of a row with this finite absolute maximum: max(amax / 448, 2^-126). */
float tpc_ref_quant_scale(float amax);

/* Per-token: rows x hidden 16-bit inputs (row stride x_stride elements) -> q (row stride q_stride bytes)
 * and scales[rows]. amax over finite elements only. */
void tpc_ref_quant_fp8_per_token(const uint16_t* x, int is_fp16, int64_t rows, int64_t hidden, int64_t x_stride,
                                 uint8_t* q, int64_t q_stride, float* scales);
/* Static: q = e4m3(x * (1 / s)) with s = scale clamped to [2^-126, FLT_MAX] (NaN -> 2^-126). */
void tpc_ref_quant_fp8_static(const uint16_t* x, int is_fp16, int64_t rows, int64_t hidden, int64_t x_stride,
                              float scale, uint8_t* q, int64_t q_stride);

#ifdef __cplusplus
}
#endif
#endif
