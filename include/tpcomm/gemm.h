/* gemm.h — single-GPU kernels of tpcomm for the projections around a tensor-parallel layer: per-token FP8
 * (e4m3) quantization, a static per-tensor FP8 quantization, and GEMMs through cuBLASLt (plain, merged
 * "linear" over several weights that share one input, strided batched, and FP8 with per-token and
 * per-channel scales). Plain C11, usable from C and C++.
 *
 * Conventions (as tpcomm.h): every call returns a tpc_status_t and, on failure, records a message that
 * tpc_get_last_error(NULL) returns ("invalid argument: tpc_gemm: k=0 (must be >= 1)"). Arguments are
 * validated before any CUDA call. Work is stream-ordered: a call returns once its kernels are enqueued on
 * `stream`, which is always the last argument. Shapes and strides are in elements (int64_t), matrices are
 * row-major: element (r, c) of a matrix with leading dimension ld is at r*ld + c. Every call on device
 * memory may be captured in a CUDA graph (except the create/destroy calls, which synchronize).
 *
 * Relies on: cuBLASLt (CUDA 13) for the GEMMs, sm_89+ for FP8 (tpcomm is built for sm_90a). */
#ifndef TPCOMM_GEMM_H
#define TPCOMM_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "tpcomm/tpcomm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ==== FP8 (e4m3) quantization ============================================================================
 *
 * Per-token: for each row t of x (rows x hidden, bf16 or fp16):
 *   amax[t]   = max |x[t][i]| over the FINITE elements of the row (NaN and +-Inf do not count)
 *   scale[t]  = max(amax[t] / 448, 2^-126)          (fp32; never 0, never subnormal, never NaN)
 *   q[t][i]   = e4m3(x[t][i] * (1 / scale[t]))      (fp32 multiply, round to nearest even, saturated to +-448)
 * so that x ~= q * scale. An all-zero row gives q = 0 and scale = 2^-126. Special values: +-Inf encodes as
 * +-448 (saturation), NaN as an e4m3 NaN (0x7F or 0xFF). 1/scale is computed once per row, rounded to fp32,
 * exactly as the CPU reference in tests/ref/quant_ref.c does, so GPU and reference agree bit for bit.
 * q_out holds one byte per element (__nv_fp8_e4m3 / torch.float8_e4m3fn), rows x q_stride bytes.
 * Applied to a weight matrix [n, k] the same call gives per-output-channel weight scales. */
#define TPC_FP8_E4M3_MAX 448.0f
#define TPC_FP8_MIN_SCALE 1.17549435082228750797e-38f /* 2^-126 = FLT_MIN */

/* How a per-token quantization keeps its row on chip (the input is read from memory once, except
 * TWO_PASS). AUTO chooses by hidden size and row count (see tpc_quant_fp8_per_token_path). */
typedef enum {
  TPC_QUANT_PATH_AUTO = 0,
  TPC_QUANT_PATH_WARP = 1,     /* one warp per row, the row in registers: hidden <= 4096 */
  TPC_QUANT_PATH_BLOCK = 2,    /* one block per row, the row in registers: hidden <= 32768 */
  TPC_QUANT_PATH_SMEM = 3,     /* one block per row, the row in shared memory: 2*hidden bytes rounded up to
                                  16 <= the device's opt-in shared memory per block less 1 KiB (~113K on H100) */
  TPC_QUANT_PATH_TWO_PASS = 4, /* one block per row, reads the row twice (the second time mostly from L2) */
  TPC_NUM_QUANT_PATHS = 5
} tpc_quant_path_t;

/* "auto", "warp", "block", "smem", "two-pass" ("invalid" otherwise). */
const char* tpc_quant_path_name(tpc_quant_path_t path);

/* Per-token quantization (see above). x: rows x hidden, row stride x_stride >= hidden elements, bf16 or
 * fp16 (TPC_FLOAT32 answers TPC_ERR_UNSUPPORTED); q_out: rows x hidden e4m3 bytes, row stride
 * q_stride >= hidden; scales: rows floats. hidden >= 1, any value (tails of any length). rows == 0 is a
 * no-op. Fast path: x 16-byte aligned with x_stride a multiple of 8, q_out 8-byte aligned with q_stride a
 * multiple of 8; anything else works element by element. Uses programmatic dependent launch on sm_90+
 * (TPCOMM_PDL=0 turns it off). */
tpc_status_t tpc_quant_fp8_per_token(void* q_out, float* scales, const void* x, int64_t rows, int64_t hidden,
                                     int64_t x_stride, int64_t q_stride, tpc_dtype_t dtype, cudaStream_t stream);

/* The same with the kernel path pinned (for tests and benchmarks). A path that cannot serve `hidden` on
 * this device answers TPC_ERR_UNSUPPORTED. Every path gives bit-identical results. */
tpc_status_t tpc_quant_fp8_per_token_ex(void* q_out, float* scales, const void* x, int64_t rows, int64_t hidden,
                                        int64_t x_stride, int64_t q_stride, tpc_dtype_t dtype,
                                        tpc_quant_path_t path, cudaStream_t stream);

/* The path AUTO uses for this shape on the current device: WARP when hidden <= 4096, rows >= 4 x the SM
 * count and either hidden <= 2048 or rows >= 128 x the SM count; else BLOCK up to hidden 32768, else SMEM
 * while the row fits in shared memory, else TWO_PASS. */
tpc_status_t tpc_quant_fp8_per_token_path(int64_t rows, int64_t hidden, tpc_dtype_t dtype, tpc_quant_path_t* path);

/* Static (per-tensor) quantization: q[t][i] = e4m3(x[t][i] * (1 / s)) with s = *scale read on the device
 * when the kernel runs (so a previous kernel may produce it), clamped to [2^-126, FLT_MAX] (0 and NaN
 * become 2^-126). Same layouts, dtypes and special values as the per-token call; no scales are written. */
tpc_status_t tpc_quant_fp8_static(void* q_out, const void* x, const float* scale, int64_t rows, int64_t hidden,
                                  int64_t x_stride, int64_t q_stride, tpc_dtype_t dtype, cudaStream_t stream);

/* ==== GEMM through cuBLASLt ===============================================================================
 *
 * Every GEMM computes y = x . W^T like torch.nn.Linear: x [m, k] row-major (leading dimension x_ld >= k),
 * W [n, k] row-major (w_ld >= k), y [m, n] row-major (y_ld >= n). bf16 or fp16 in and out with fp32
 * accumulation (CUBLAS_COMPUTE_32F); TPC_FLOAT32 answers TPC_ERR_UNSUPPORTED. m == 0 is a no-op; n, k >= 1.
 * Internally one column-major cuBLASLt "TN" matmul: D[n, m] = op_T(W) . x, which is y row-major.
 *
 * The handle owns the cublasLtHandle_t, a workspace (32 MiB by default) and a cache of plans: per
 * (kind, m, n, k, types, leading dimensions, batch, strides, pointer alignments) the matmul descriptor,
 * the matrix layouts and the algorithm from cublasLtMatmulAlgoGetHeuristic, queried once. The cache is
 * guarded by a mutex, but the workspace is shared: calls on one handle must not run concurrently on
 * different streams (use a handle per stream). Run a shape once before capturing it in a graph, so the
 * heuristic query is not part of the capture (it would also work inside the capture). cuBLASLt errors
 * map to tpc_ statuses (NOT_SUPPORTED, ARCH_MISMATCH -> TPC_ERR_UNSUPPORTED; INVALID_VALUE ->
 * TPC_ERR_INVALID_ARGUMENT; others -> TPC_ERR_CUDA) with cublasLtGetStatusString in the message. */
typedef struct tpc_gemm_handle* tpc_gemm_handle_t;

#define TPC_GEMM_DEFAULT_WORKSPACE ((size_t)32 << 20)

/* Creates a handle on the current CUDA device; workspace_bytes 0 means TPC_GEMM_DEFAULT_WORKSPACE. Calls
 * with the handle must run with that device current. TPC_ERR_NO_DEVICE without a GPU. */
tpc_status_t tpc_gemm_handle_create(tpc_gemm_handle_t* handle, size_t workspace_bytes);
/* Waits for the device, frees everything. NULL is a no-op. */
tpc_status_t tpc_gemm_handle_destroy(tpc_gemm_handle_t handle);
/* Cache statistics: number of plans cached, and cublasLtMatmulAlgoGetHeuristic calls made so far
 * (both may be NULL). A repeated shape adds neither. */
tpc_status_t tpc_gemm_handle_stats(tpc_gemm_handle_t handle, int64_t* plans, int64_t* heuristic_queries);

/* Autotuning, off by default (0 or 1: the heuristic's first algorithm; the environment variable
 * TPCOMM_GEMM_AUTOTUNE sets the default of new handles). candidates > 1 (at most 16): each cuBLASLt plan is
 * tuned at its first call outside graph capture: the first `candidates` of the heuristic's results plus
 * split-K variants (K split 2..16 ways with an fp32 reduction in the workspace) of its first 4 are timed on
 * the call's own operands (a warm-up, then 2..100 runs, about 0.3 ms each; the stream is synchronized, so
 * that call blocks for a few to a few hundred milliseconds) and the fastest is kept in the plan. A call
 * made while its stream is capturing (cudaStreamIsCapturing) cannot time anything: it runs the
 * heuristic's first algorithm, and the plan is tuned at its next call outside capture, so a graph
 * captured before that keeps the untuned algorithm — run each shape once eagerly before capturing. Operands
 * that fit in L2 stay there across the trials, so small shapes are tuned with a warm L2. Still one
 * heuristic query per plan. */
tpc_status_t tpc_gemm_handle_set_autotune(tpc_gemm_handle_t handle, int candidates);
/* How many plans autotuning has tuned so far (a plan whose trials all failed keeps the heuristic's first
 * algorithm and is not counted). */
tpc_status_t tpc_gemm_handle_autotuned(tpc_gemm_handle_t handle, int64_t* plans_tuned);

/* y = x . W^T (see above). */
tpc_status_t tpc_gemm(tpc_gemm_handle_t handle, int64_t m, int64_t n, int64_t k, const void* x, int64_t x_ld,
                      const void* w, int64_t w_ld, void* y, int64_t y_ld, tpc_dtype_t dtype, cudaStream_t stream);

/* batch independent products of one shape in one cuBLASLt call: y_b = x_b . W_b^T for b < batch, with
 * x_b = x + b*x_batch_stride, W_b = w + b*w_batch_stride, y_b = y + b*y_batch_stride (elements). Input
 * strides may be 0 (the same x or W for every product); the outputs must not overlap
 * (y_batch_stride >= (m-1)*y_ld + n when batch > 1). batch == 0 is a no-op. E.g. two [m,128] x [128,1024]
 * projections: k = 128, n = 1024, batch = 2. */
tpc_status_t tpc_gemm_strided_batched(tpc_gemm_handle_t handle, int64_t m, int64_t n, int64_t k, const void* x,
                                      int64_t x_ld, int64_t x_batch_stride, const void* w, int64_t w_ld,
                                      int64_t w_batch_stride, void* y, int64_t y_ld, int64_t y_batch_stride,
                                      int64_t batch, tpc_dtype_t dtype, cudaStream_t stream);

/* ---- merged linear: N weights [n_i, k] that share one input, one GEMM ------------------------------------ */
typedef struct tpc_merged_linear* tpc_merged_linear_t;

/* Copies the num weights (weights[i]: n_sizes[i] x k contiguous, row-major, host or device memory) into
 * one device buffer [n_total, k]. Weight i starts at row col_offset_i, a multiple of 8 (16 bytes of
 * output for 2-byte types): each n_i is padded to a multiple of 8 with zero rows, whose output columns
 * are 0. The copies are made on `stream`, which is then synchronized (the caller may free its weights on
 * return); not capturable. The merged linear keeps a reference to handle, which must outlive it. */
tpc_status_t tpc_merged_linear_create(tpc_gemm_handle_t handle, const void* const* weights, const int64_t* n_sizes,
                                      int num, int64_t k, tpc_dtype_t dtype, cudaStream_t stream,
                                      tpc_merged_linear_t* out);
/* Frees the merged weight (after waiting for the device). NULL is a no-op. */
tpc_status_t tpc_merged_linear_destroy(tpc_merged_linear_t ml);
/* One cuBLASLt GEMM: y[m, n_total] = x[m, k] . W_merged^T, x_ld >= k, y_ld >= n_total. Output i is the
 * column block y[:, col_offset_i : col_offset_i + n_i] (tpc_merged_linear_output), readable in place with
 * leading dimension y_ld. */
tpc_status_t tpc_merged_linear_forward(tpc_merged_linear_t ml, const void* x, int64_t m, int64_t x_ld, void* y,
                                       int64_t y_ld, cudaStream_t stream);
/* Where output i (0 <= i < num) lives in y: its first column and its width n_i. */
tpc_status_t tpc_merged_linear_output(tpc_merged_linear_t ml, int i, int64_t* col_offset, int64_t* n);
/* The merged shape and buffer (any pointer may be NULL): num weights, n_total columns (the GEMM's n, with
 * padding), k, and the device weight [n_total, k] (leading dimension k). */
tpc_status_t tpc_merged_linear_info(tpc_merged_linear_t ml, int* num, int64_t* n_total, int64_t* k,
                                    const void** weight);

/* ---- FP8 GEMM with per-token and per-channel scales --------------------------------------------------------
 *
 *   y[t][j] = x_scales[t] * w_scales[j] * sum_i dec(xq[t][i]) * dec(wq[j][i])      (fp32 accumulation)
 *
 * xq [m, k] and wq [n, k] are e4m3 (as written by tpc_quant_fp8_per_token, which applied to the weight
 * gives w_scales); y is bf16, fp16 or fp32 (out_dtype). cuBLASLt's FP8 rules apply: k, x_ld and w_ld
 * multiples of 16, xq and wq 16-byte aligned (checked); keep the rows of y 16-byte multiples too (n and
 * y_ld), or cuBLASLt may answer TPC_ERR_UNSUPPORTED.
 *
 * Two implementations (`scaling`):
 *   TPC_FP8_SCALING_OUTER_VEC: one cuBLASLt matmul with CUBLASLT_MATMUL_DESC_{A,B}_SCALE_MODE =
 *     CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F (per-row scale of A = w_scales, per-column scale of
 *     B = x_scales in the TN form). cuBLAS 12.9+ supports it on Hopper; the scale vectors must be
 *     16-byte aligned. TPC_ERR_UNSUPPORTED where cuBLASLt refuses it (remembered per shape).
 *   TPC_FP8_SCALING_EPILOGUE: a cuBLASLt FP8 matmul with unit scales into fp32 (into y itself when
 *     out_dtype is fp32, else into a scratch buffer of the handle, 32 MiB, allocated on first use and in
 *     row chunks), then a kernel y = acc * x_scales[t] * w_scales[j] (kernels/fp8_epilogue.cu).
 *   TPC_FP8_SCALING_AUTO: OUTER_VEC when cuBLASLt accepts it for this shape and the scale vectors are
 *     16-byte aligned, else EPILOGUE. The first EPILOGUE call of a handle allocates its scratch and must not
 *     be captured (TPC_ERR_INVALID_USAGE): run every shape once before capture. */
typedef enum {
  TPC_FP8_SCALING_AUTO = 0,
  TPC_FP8_SCALING_OUTER_VEC = 1,
  TPC_FP8_SCALING_EPILOGUE = 2,
  TPC_NUM_FP8_SCALINGS = 3
} tpc_fp8_scaling_t;

tpc_status_t tpc_gemm_fp8(tpc_gemm_handle_t handle, int64_t m, int64_t n, int64_t k, const void* xq, int64_t x_ld,
                          const float* x_scales, const void* wq, int64_t w_ld, const float* w_scales, void* y,
                          int64_t y_ld, tpc_dtype_t out_dtype, tpc_fp8_scaling_t scaling, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif /* TPCOMM_GEMM_H */
