/* kernels.h — single-GPU kernels of tpcomm: RMSNorm, fused residual-add + RMSNorm, and the two QK-RMSNorms
 * of attention (per head, and across heads). Plain C11, usable from C and C++; link -ltpcomm.
 *
 * Conventions shared by every call here:
 *   - RMSNorm of a row x of n elements with weight w: y[i] = x[i] * rsqrt(mean(x^2) + eps) * w[i], eps added
 *     to the mean (as torch.nn.functional.rms_norm), fp32 accumulation, each output rounded once to dtype.
 *   - dtype is TPC_BFLOAT16 or TPC_FLOAT16 for inputs, outputs and weights alike; TPC_FLOAT32 answers
 *     TPC_ERR_UNSUPPORTED. eps must be finite and >= 0 (with eps 0 an all-zero row gives NaN, as in PyTorch).
 *   - Sizes and strides count elements, not bytes. A stride is the distance between the first elements of
 *     two consecutive rows (tokens) and must be >= the row width; rows are dense inside.
 *   - Pointers must be device memory of the current device, aligned to the element size (2 bytes). Data
 *     aligned to 16 bytes with strides and widths that are multiples of 8 elements take the fast path
 *     (16-byte vectors); anything else runs a slower element-wise path with the same results.
 *   - Calls are stream-ordered: they validate every argument before touching CUDA, enqueue one kernel on
 *     `stream` and return; capture in CUDA graphs is supported. Errors: TPC_ERR_INVALID_ARGUMENT (NULL
 *     pointer, non-positive size, stride smaller than the width, bad eps or dtype, misaligned pointer),
 *     TPC_ERR_UNSUPPORTED (a valid request these kernels do not serve: fp32, head_dim not 64/128/256,
 *     hidden above 65536), TPC_ERR_CUDA (the launch failed); tpc_get_last_error(NULL) says which argument.
 *   - On sm_90+ the kernels use programmatic dependent launch (TPCOMM_PDL=0 turns it off): they may start
 *     while the previous kernel on the stream finishes, prefetch their first rows into L2 (a cache hint,
 *     no read of values) and wait for it before reading anything; they let the next kernel launch as soon
 *     as they have waited (that kernel's own PDL wait still covers all of this one).
 *   - Buffers of one call must not share elements except where a call says so (out == in is allowed). */
#ifndef TPCOMM_KERNELS_H
#define TPCOMM_KERNELS_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "tpcomm/tpcomm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest row (hidden size, q_hidden, k_hidden) the row kernels accept. */
#define TPC_NORM_MAX_HIDDEN 65536

/* RMSNorm of `rows` rows of `hidden` elements: out[r][i] = in[r][i] * rsqrt(mean(in[r]^2) + eps) * weight[i].
 * in_stride / out_stride: elements between consecutive rows. out == in (same stride) normalizes in place. */
tpc_status_t tpc_rmsnorm(void* out, const void* in, const void* weight, int64_t rows, int64_t hidden, int64_t in_stride,
                         int64_t out_stride, float eps, tpc_dtype_t dtype, cudaStream_t stream);

/* Fused residual add + RMSNorm, both in place: residual[r] = x[r] + residual[r] (rounded to dtype), then
 * x[r] = rmsnorm(residual[r]) * weight, normalizing the rounded residual exactly as tpc_rmsnorm would.
 * x and residual must not overlap. */
tpc_status_t tpc_fused_add_rmsnorm(void* x, void* residual, const void* weight, int64_t rows, int64_t hidden,
                                   int64_t x_stride, int64_t residual_stride, float eps, tpc_dtype_t dtype,
                                   cudaStream_t stream);

/* Per-head QK-RMSNorm in place, one launch for q and k: q is [tokens][q_heads][head_dim] and k is
 * [tokens][kv_heads][head_dim], heads contiguous inside a token row; q_stride / k_stride are the elements
 * between consecutive tokens (>= heads * head_dim, e.g. the row of a fused qkv buffer). Every head is
 * normalized over its head_dim elements with q_weight (resp. k_weight) [head_dim]. head_dim is 64, 128
 * or 256; q_heads and kv_heads >= 1 (any ratio). q and k may be views into one buffer but must not share
 * elements. */
tpc_status_t tpc_qk_rmsnorm_per_head(void* q, void* k, const void* q_weight, const void* k_weight, int64_t tokens,
                                     int q_heads, int kv_heads, int head_dim, int64_t q_stride, int64_t k_stride,
                                     float eps, tpc_dtype_t dtype, cudaStream_t stream);

/* QK-RMSNorm across heads in place, one launch for q and k: each token row of q ([tokens][q_hidden], weight
 * q_weight[q_hidden]) and of k ([tokens][k_hidden], weight k_weight[k_hidden]) is normalized over the
 * whole row. q_hidden and k_hidden <= TPC_NORM_MAX_HIDDEN. q and k must not share elements. */
tpc_status_t tpc_qk_rmsnorm_across_heads(void* q, void* k, const void* q_weight, const void* k_weight, int64_t tokens,
                                         int64_t q_hidden, int64_t k_hidden, int64_t q_stride, int64_t k_stride,
                                         float eps, tpc_dtype_t dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif /* TPCOMM_KERNELS_H */
