/* gemm.c — the cuBLASLt side of include/tpcomm/gemm.h: the GEMM handle (cublasLtHandle_t, workspace,
 * plan cache), plain, strided batched, merged-linear and FP8 GEMMs, and the mapping of cuBLASLt statuses to
 * tpc_ statuses.
 *
 * Every GEMM is one column-major cuBLASLt matmul in the "TN" form: y[m,n] row-major = D[n,m] column-major =
 * op_T(A) . B with A = W stored [k, n] column-major (lda = w_ld, TRANSA = T) and B = x stored [k, m]
 * column-major (ldb = x_ld, TRANSB = N), C = D with beta = 0. TN is also the only layout cuBLASLt accepts
 * for FP8. Compute type CUBLAS_COMPUTE_32F, scale type fp32, alpha = 1 and beta = 0 passed by host pointer
 * (captured by value in graphs).
 *
 * Plans: a plan is keyed by everything that selects an algorithm or shapes a descriptor — kind (16-bit,
 * FP8 with outer-vector scales, FP8 with unit scales), data types, m, n, k, leading dimensions, batch count
 * and strides, and the alignment (power of two up to 256) of each operand's base, ld and batch stride in
 * bytes, passed to cuBLASLt as CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES so the algorithm chosen never
 * needs more alignment than the call has. On a miss the plan's matmul descriptor and layouts are created
 * and cublasLtMatmulAlgoGetHeuristic is asked once for up to 16 candidates that fit the workspace; the
 * first is the plan's algorithm unless autotuning (tpc_gemm_handle_set_autotune, TPCOMM_GEMM_AUTOTUNE)
 * times the candidates and split-K variants of the first four at the plan's first call outside graph
 * capture and keeps the fastest. Plans are kept until the handle is destroyed. A plan cuBLASLt refuses (no algorithm, or NOT_SUPPORTED at
 * matmul time for the outer-vector FP8 mode) is remembered as refused. The cache is an open-addressing
 * hash table of plan pointers behind one mutex, which is held for the whole call (attribute updates on a
 * shared descriptor and the enqueue).
 *
 * FP8 scaling (see gemm.h): CUDA 13's cublasLt.h defines CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F
 * ("scaling factors are vectors of CUDA_R_32F ... M and N elements ... (i, j)-th element of the product is
 * multiplied by the i-th element of A scale and the j-th element of B scale"); the header does not name
 * architectures. NVIDIA's cuBLAS 12.9 release material introduces channel-wise (outer-vector) and
 * block-scaled FP8 matmuls on Hopper, and the cuBLAS documentation limits outer-vector scaling to D in
 * 16F/16BF/32F with both A and B in that mode. So OUTER_VEC is tried first on sm_90; because a refusal may
 * only surface when cublasLtMatmul runs (the header documents INVALID_VALUE there for unsupported scale
 * combinations), a refusal at heuristic or matmul time marks the plan refused and AUTO falls back to the
 * EPILOGUE path: an FP8 matmul with unit scales into fp32 plus kernels/fp8_epilogue.cu.
 *
 * Relies on: debug.h (tpc_error), param.h (TPCOMM_PDL, TPCOMM_GEMM_AUTOTUNE), kernels/fp8_epilogue.cu
 * (tpc_fp8_epilogue_launch, declared below); cuBLASLt from CUDA 12.9 or later (CUDA 13 here). */
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "checks.h"
#include "comm.h"
#include "debug.h"
#include "param.h"
#include "tpcomm/gemm.h"

/* kernels/fp8_epilogue.cu: y = acc * s_tok[t] * s_w[j]; out_dtype 0 bf16, 1 fp16, 2 fp32. */
cudaError_t tpc_fp8_epilogue_launch(const float* acc, int64_t acc_ld, const float* s_tok, const float* s_w, void* y,
                                    int64_t y_ld, int64_t m, int64_t n, int out_dtype, int pdl, cudaStream_t stream);

/* Maps a cuBLAS status to a tpc_ status and records "<call> failed: <name> (<string>)". Internal; exported
 * for the tests (tests/gemm/test_gemm.c declares it). */
tpc_status_t tpc_gemm_cublas_status(int cublas_status, const char* call);

#define GEMM_HANDLE_MAGIC 0x74706367u /* "tpcg" */
#define MERGED_MAGIC 0x7470636du      /* "tpcm" */
#define MERGED_ALIGN 8                /* each merged output starts at a multiple of 8 columns */
#define MERGED_MAX_NUM 4096
#define HEURISTIC_RESULTS 16 /* candidates asked for (the first that fits is used unless autotuning) */
#define SPLITK_BASES 4       /* autotuning: split-K variants of the first this many candidates ... */
#define MAX_TRIALS 48        /* ... up to this many trials in all */
#define TRIAL_TARGET_MS 0.3f /* autotuning: time each trial over about this long (2..100 runs) */
#define WHY_LEN 384

typedef enum { KIND_16BIT = 0, KIND_FP8_OUTER = 1, KIND_FP8_UNIT = 2 } plan_kind_t;

/* Everything that selects a plan. Zero-filled before use so that padding is deterministic (hash, memcmp). */
typedef struct {
  int32_t kind;
  int32_t a_type, b_type, d_type; /* cudaDataType_t */
  int64_t m, n, k;                /* the GEMM's m (tokens), n (outputs), k */
  int64_t lda, ldb, ldd;          /* w_ld, x_ld, y_ld */
  int64_t batch, stride_a, stride_b, stride_d;
  uint32_t align_a, align_b, align_d;
  uint32_t pad;
} plan_key_t;

typedef struct {
  plan_key_t key;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t la, lb, ld;
  cublasLtMatmulAlgo_t algo;
  int has_algo;
  int tuned;                                           /* autotuning has picked algo (or had nothing to pick) */
  int ncand;                                           /* the heuristic's usable candidates, kept for autotuning */
  cublasLtMatmulHeuristicResult_t cand[HEURISTIC_RESULTS];
  tpc_status_t refused; /* TPC_SUCCESS, or the status every call of this plan answers */
  char refused_why[WHY_LEN];
} plan_t;

struct tpc_gemm_handle {
  uint32_t magic;
  int device, cc_major, cc_minor;
  int pdl;
  cublasLtHandle_t lt;
  void* workspace;
  size_t workspace_bytes;
  float* scratch; /* FP8 EPILOGUE accumulator, allocated on first use */
  size_t scratch_bytes;
  pthread_mutex_t lock;
  plan_t** slots; /* open addressing, capacity a power of two, at most half full */
  size_t cap, count;
  int64_t heuristic_queries;
  int autotune;      /* > 1: time up to this many heuristic candidates (+ split-K variants) per plan */
  int64_t autotuned; /* plans autotuned so far */
  cudaEvent_t ev[2]; /* autotuning, created when autotuning is turned on */
};

struct tpc_merged_linear {
  uint32_t magic;
  tpc_gemm_handle_t handle;
  tpc_dtype_t dtype;
  int num;
  int64_t k, n_total;
  int64_t* offsets; /* num */
  int64_t* sizes;   /* num */
  void* weight;     /* [n_total, k] */
};

/* ---- cuBLAS statuses ------------------------------------------------------------------------------------ */

static tpc_status_t map_cublas(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_SUCCESS: return TPC_SUCCESS;
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
    case CUBLAS_STATUS_LICENSE_ERROR: return TPC_ERR_UNSUPPORTED;
    case CUBLAS_STATUS_INVALID_VALUE: return TPC_ERR_INVALID_ARGUMENT;
    case CUBLAS_STATUS_NOT_INITIALIZED:
    case CUBLAS_STATUS_ALLOC_FAILED:
    case CUBLAS_STATUS_MAPPING_ERROR:
    case CUBLAS_STATUS_EXECUTION_FAILED:
    case CUBLAS_STATUS_INTERNAL_ERROR:
    default: return TPC_ERR_CUDA;
  }
}

static const char* cublas_name(cublasStatus_t st) {
  const char* s = cublasLtGetStatusName(st);
  return s ? s : "unknown cuBLAS status";
}
static const char* cublas_string(cublasStatus_t st) {
  const char* s = cublasLtGetStatusString(st);
  return s ? s : "unknown cuBLAS status";
}

/* "<call> failed: CUBLAS_STATUS_X (text)" into why; returns the mapped status. */
static tpc_status_t cublas_why(cublasStatus_t st, const char* call, char* why, size_t len) {
  snprintf(why, len, "%s failed: %s (%s)", call, cublas_name(st), cublas_string(st));
  return map_cublas(st);
}

tpc_status_t tpc_gemm_cublas_status(int cublas_status, const char* call) {
  cublasStatus_t st = (cublasStatus_t)cublas_status;
  if (st == CUBLAS_STATUS_SUCCESS) return TPC_SUCCESS;
  char why[WHY_LEN];
  tpc_status_t s = cublas_why(st, call ? call : "cuBLASLt", why, sizeof why);
  return tpc_error(NULL, s, "%s", why);
}

/* "<call> failed: <cuda error>" into why (clears a non-sticky error); TPC_ERR_CUDA. */
static tpc_status_t cuda_why(cudaError_t err, const char* call, char* why, size_t len) {
  (void)cudaGetLastError();
  snprintf(why, len, "%s failed: %s", call, cudaGetErrorString(err));
  return TPC_ERR_CUDA;
}

/* ---- argument checks (no CUDA calls) -------------------------------------------------------------------- */

static tpc_status_t check_dtype16(const char* fn, const char* name, tpc_dtype_t dtype) {
  if ((int)dtype < 0 || (int)dtype >= TPC_NUM_DTYPES)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: %s=%d is not a tpc_dtype_t (0..%d)", fn, name, (int)dtype,
                     TPC_NUM_DTYPES - 1);
  if (dtype == TPC_FLOAT32)
    return tpc_error(NULL, TPC_ERR_UNSUPPORTED, "%s: %s=float32: GEMMs take bfloat16 or float16", fn, name);
  return TPC_SUCCESS;
}

static tpc_status_t check_dims(const char* fn, int64_t m, int64_t n, int64_t k) {
  if (m < 0) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: m=%lld (must be >= 0)", fn, (long long)m);
  if (n < 1) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: n=%lld (must be >= 1)", fn, (long long)n);
  if (k < 1) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: k=%lld (must be >= 1)", fn, (long long)k);
  const int64_t lim = (int64_t)INT32_MAX;
  if (m > lim || n > lim || k > lim)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: m=%lld n=%lld k=%lld: each must be < 2^31", fn, (long long)m,
                     (long long)n, (long long)k);
  return TPC_SUCCESS;
}

/* A matrix of `rows` rows of `cols` elements with leading dimension ld: ld >= cols, its byte span fits, and
 * p is aligned to the element size and not NULL when the call reads or writes it (need). */
static tpc_status_t check_matrix(const char* fn, const char* name, const void* p, int64_t rows, int64_t cols,
                                 const char* ld_name, int64_t ld, size_t esize, int need) {
  if (ld < cols)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: %s=%lld is smaller than %lld, the row length of %s", fn, ld_name,
                     (long long)ld, (long long)cols, name);
  if (rows > 0 && ld > (INT64_MAX / (int64_t)esize - cols) / rows)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: %s of %lld rows with %s=%lld overflows", fn, name,
                     (long long)rows, ld_name, (long long)ld);
  if (need && rows > 0 && !p) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, name);
  if (p && (uintptr_t)p % esize != 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: %s=%p is not aligned to its %zu-byte elements", fn, name, p,
                     esize);
  return TPC_SUCCESS;
}

static tpc_status_t check_handle(const char* fn, tpc_gemm_handle_t h) {
  if (!h) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: handle is NULL", fn);
  if (h->magic != GEMM_HANDLE_MAGIC)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: handle=%p is not a live tpc_gemm_handle_t", fn, (void*)h);
  int dev = -1;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return tpc_error(NULL, TPC_ERR_CUDA, "%s: cudaGetDevice failed: %s", fn, cudaGetErrorString(err));
  }
  if (dev != h->device)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: the handle belongs to device %d but device %d is current", fn,
                     h->device, dev);
  return TPC_SUCCESS;
}

/* ---- plan cache ------------------------------------------------------------------------------------------ */

/* Largest power of two <= 256 dividing the address and every byte offset added to it. */
static uint32_t align_of(const void* p, int64_t ld_bytes, int64_t stride_bytes) {
  uint64_t bits = (uint64_t)(uintptr_t)p | (uint64_t)ld_bytes | (uint64_t)stride_bytes | 256u;
  return (uint32_t)(bits & (~bits + 1)); /* lowest set bit */
}

static uint64_t key_hash(const plan_key_t* k) {
  const unsigned char* p = (const unsigned char*)k;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static void plan_free(plan_t* p) {
  if (!p) return;
  if (p->la) cublasLtMatrixLayoutDestroy(p->la);
  if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
  if (p->ld) cublasLtMatrixLayoutDestroy(p->ld);
  if (p->desc) cublasLtMatmulDescDestroy(p->desc);
  free(p);
}

static plan_t* cache_find(tpc_gemm_handle_t h, const plan_key_t* key) {
  if (!h->cap) return NULL;
  for (size_t i = key_hash(key) & (h->cap - 1);; i = (i + 1) & (h->cap - 1)) {
    plan_t* p = h->slots[i];
    if (!p) return NULL;
    if (memcmp(&p->key, key, sizeof *key) == 0) return p;
  }
}

static int cache_insert(tpc_gemm_handle_t h, plan_t* plan) {
  if (2 * (h->count + 1) > h->cap) {
    size_t cap = h->cap ? 2 * h->cap : 64;
    plan_t** slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < h->cap; i++) {
      plan_t* p = h->slots[i];
      if (!p) continue;
      size_t j = key_hash(&p->key) & (cap - 1);
      while (slots[j]) j = (j + 1) & (cap - 1);
      slots[j] = p;
    }
    free(h->slots);
    h->slots = slots;
    h->cap = cap;
  }
  size_t j = key_hash(&plan->key) & (h->cap - 1);
  while (h->slots[j]) j = (j + 1) & (h->cap - 1);
  h->slots[j] = plan;
  h->count++;
  return 0;
}

#define LT_TRY(call, what)                                   \
  do {                                                       \
    cublasStatus_t lt_st_ = (call);                          \
    if (lt_st_ != CUBLAS_STATUS_SUCCESS) {                   \
      res = cublas_why(lt_st_, (what), why, why_len);        \
      goto fail;                                             \
    }                                                        \
  } while (0)

static cublasStatus_t layout_create(cublasLtMatrixLayout_t* l, int32_t type, int64_t rows, int64_t cols, int64_t ld,
                                    int64_t batch, int64_t stride) {
  cublasStatus_t st = cublasLtMatrixLayoutCreate(l, (cudaDataType_t)type, (uint64_t)rows, (uint64_t)cols, ld);
  if (st != CUBLAS_STATUS_SUCCESS || batch <= 1) return st;
  int32_t count = (int32_t)batch;
  st = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
  return st;
}

/* A new plan for key: descriptor (TN, fp32 compute, scale modes) and layouts; no algorithm yet. */
static tpc_status_t plan_create(const plan_key_t* key, plan_t** out, char* why, size_t why_len) {
  tpc_status_t res = TPC_SUCCESS;
  plan_t* p = calloc(1, sizeof *p);
  if (!p) {
    snprintf(why, why_len, "out of host memory for a GEMM plan");
    return TPC_ERR_SYSTEM;
  }
  p->key = *key;
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  LT_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t),
         "cublasLtMatmulDescSetAttribute(TRANSA)");
  LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n),
         "cublasLtMatmulDescSetAttribute(TRANSB)");
  if (key->kind == KIND_FP8_OUTER) {
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode),
           "cublasLtMatmulDescSetAttribute(A_SCALE_MODE=OUTER_VEC_32F)");
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode),
           "cublasLtMatmulDescSetAttribute(B_SCALE_MODE=OUTER_VEC_32F)");
  }
  /* A = W as [k, n] column-major, B = x as [k, m], D = y as [n, m] */
  LT_TRY(layout_create(&p->la, key->a_type, key->k, key->n, key->lda, key->batch, key->stride_a),
         "cublasLtMatrixLayoutCreate(A)");
  LT_TRY(layout_create(&p->lb, key->b_type, key->k, key->m, key->ldb, key->batch, key->stride_b),
         "cublasLtMatrixLayoutCreate(B)");
  LT_TRY(layout_create(&p->ld, key->d_type, key->n, key->m, key->ldd, key->batch, key->stride_d),
         "cublasLtMatrixLayoutCreate(D)");
  *out = p;
  return TPC_SUCCESS;
fail:
  plan_free(p);
  return res;
}

/* Asks cuBLASLt once for the plan's candidates: the usable ones (in the heuristic's order) are kept in the
 * plan for autotuning and the first becomes its algorithm. A refusal (no algorithm) is remembered. */
static tpc_status_t plan_heuristic(tpc_gemm_handle_t h, plan_t* p, char* why, size_t why_len) {
  tpc_status_t res = TPC_SUCCESS;
  cublasLtMatmulPreference_t pref = NULL;
  cublasLtMatmulHeuristicResult_t results[HEURISTIC_RESULTS];
  int found = 0;
  const uint64_t ws = h->workspace_bytes;
  const uint32_t aa = p->key.align_a, ab = p->key.align_b, ad = p->key.align_d;
  LT_TRY(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
         "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa),
         "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_A_BYTES)");
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof ab),
         "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_B_BYTES)");
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ad, sizeof ad),
         "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_C_BYTES)");
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ad, sizeof ad),
         "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_D_BYTES)");
  h->heuristic_queries++;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h->lt, p->desc, p->la, p->lb, p->ld, p->ld, pref,
                                                     HEURISTIC_RESULTS, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  pref = NULL;
  const int refusal = st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_ARCH_MISMATCH ||
                      (p->key.kind == KIND_FP8_OUTER && st == CUBLAS_STATUS_INVALID_VALUE);
  if (st != CUBLAS_STATUS_SUCCESS && !refusal) return cublas_why(st, "cublasLtMatmulAlgoGetHeuristic", why, why_len);
  int nfit = 0; /* the usable candidates, in the heuristic's order */
  for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < found && i < HEURISTIC_RESULTS; i++)
    if (results[i].state == CUBLAS_STATUS_SUCCESS && results[i].workspaceSize <= h->workspace_bytes)
      p->cand[nfit++] = results[i];
  if (nfit > 0) {
    p->ncand = nfit;
    p->algo = p->cand[0].algo;
    p->has_algo = 1;
    return TPC_SUCCESS;
  }
  p->refused = TPC_ERR_UNSUPPORTED;
  if (st != CUBLAS_STATUS_SUCCESS)
    snprintf(p->refused_why, sizeof p->refused_why, "cublasLtMatmulAlgoGetHeuristic refused the problem: %s (%s)",
             cublas_name(st), cublas_string(st));
  else
    snprintf(p->refused_why, sizeof p->refused_why,
             "cuBLASLt has no algorithm for it (%d candidates, none fitting the %zu-byte workspace)", found,
             h->workspace_bytes);
  snprintf(why, why_len, "%s", p->refused_why);
  return p->refused;
fail:
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  return res;
}

/* One GEMM as the plan layer sees it. */
typedef struct gemm_op {
  plan_key_t key;
  const void* a; /* W */
  const void* b; /* x */
  void* d;       /* y */
  const float* a_scale; /* KIND_FP8_OUTER: w_scales */
  const float* b_scale; /* KIND_FP8_OUTER: x_scales */
} gemm_op_t;

/* Split-K variants of the plan's first SPLITK_BASES candidates that support split-K with an fp32 (compute
 * type) reduction and have no split yet: K split 2..16 ways while each part keeps >= 128 of k, each
 * accepted by cublasLtMatmulAlgoCheck within the workspace. Appended to trials[n..cap); returns the new n. */
static int splitk_variants(tpc_gemm_handle_t h, const plan_t* p, cublasLtMatmulHeuristicResult_t* trials, int n,
                           int cap) {
  static const int32_t splits[] = {2, 3, 4, 6, 8, 12, 16};
  for (int i = 0; i < p->ncand && i < SPLITK_BASES && n < cap; i++) {
    const cublasLtMatmulAlgo_t* base = &p->cand[i].algo;
    int32_t support = 0, cur = 1;
    uint32_t mask = 0;
    size_t written = 0;
    if (cublasLtMatmulAlgoCapGetAttribute(base, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &support, sizeof support, &written) !=
            CUBLAS_STATUS_SUCCESS ||
        !support)
      continue;
    if (cublasLtMatmulAlgoCapGetAttribute(base, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &mask, sizeof mask, &written) !=
            CUBLAS_STATUS_SUCCESS ||
        !(mask & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE))
      continue;
    if (cublasLtMatmulAlgoConfigGetAttribute(base, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &cur, sizeof cur, &written) !=
            CUBLAS_STATUS_SUCCESS ||
        cur > 1)
      continue;
    for (size_t j = 0; j < sizeof splits / sizeof splits[0] && n < cap; j++) {
      if (p->key.k / splits[j] < 128) break;
      cublasLtMatmulHeuristicResult_t r;
      memset(&r, 0, sizeof r);
      r.algo = *base;
      const uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
      if (cublasLtMatmulAlgoConfigSetAttribute(&r.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits[j], sizeof splits[j]) !=
              CUBLAS_STATUS_SUCCESS ||
          cublasLtMatmulAlgoConfigSetAttribute(&r.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof scheme) !=
              CUBLAS_STATUS_SUCCESS)
        continue;
      cublasLtMatmulHeuristicResult_t chk;
      memset(&chk, 0, sizeof chk);
      if (cublasLtMatmulAlgoCheck(h->lt, p->desc, p->la, p->lb, p->ld, p->ld, &r.algo, &chk) != CUBLAS_STATUS_SUCCESS ||
          chk.workspaceSize > h->workspace_bytes)
        continue;
      r.workspaceSize = chk.workspaceSize;
      r.state = CUBLAS_STATUS_SUCCESS;
      trials[n++] = r;
    }
  }
  return n;
}

/* Events around `runs` runs of algo on op; *ms the mean per run, or < 0 when cuBLASLt rejects the algo. */
static tpc_status_t time_trial(tpc_gemm_handle_t h, plan_t* p, const gemm_op_t* op, const cublasLtMatmulAlgo_t* algo,
                               int runs, cudaStream_t stream, float* ms, char* why, size_t why_len) {
  const float alpha = 1.0f, beta = 0.0f;
  cudaError_t err = cudaEventRecord(h->ev[0], stream);
  if (err != cudaSuccess) return cuda_why(err, "cudaEventRecord", why, why_len);
  for (int r = 0; r < runs; r++) {
    cublasStatus_t st = cublasLtMatmul(h->lt, p->desc, &alpha, op->a, p->la, op->b, p->lb, &beta, op->d, p->ld, op->d,
                                       p->ld, algo, h->workspace, h->workspace_bytes, stream);
    if (st != CUBLAS_STATUS_SUCCESS) {
      *ms = -1.0f;
      if ((err = cudaStreamSynchronize(stream)) != cudaSuccess) return cuda_why(err, "cudaStreamSynchronize", why, why_len);
      return TPC_SUCCESS;
    }
  }
  if ((err = cudaEventRecord(h->ev[1], stream)) != cudaSuccess) return cuda_why(err, "cudaEventRecord", why, why_len);
  if ((err = cudaEventSynchronize(h->ev[1])) != cudaSuccess) return cuda_why(err, "cudaEventSynchronize", why, why_len);
  float total = 0;
  if ((err = cudaEventElapsedTime(&total, h->ev[0], h->ev[1])) != cudaSuccess)
    return cuda_why(err, "cudaEventElapsedTime", why, why_len);
  *ms = total / (float)runs;
  return TPC_SUCCESS;
}

/* Autotunes p on op's own operands, unless the stream is capturing (then p keeps its algorithm and stays
 * untuned, to be tuned at its first call outside capture). Trials: the first h->autotune heuristic
 * candidates plus split-K variants (splitk_variants), each run once to warm up and to estimate its time,
 * then timed over 2..100 runs (about TRIAL_TARGET_MS); the fastest becomes p->algo. The stream is
 * synchronized. The output is overwritten by the trials, which is harmless: the call itself runs right
 * after. Operands that fit in L2 stay there across the runs, so small shapes are tuned L2-warm. */
static tpc_status_t autotune(tpc_gemm_handle_t h, plan_t* p, const gemm_op_t* op, cudaStream_t stream, char* why,
                             size_t why_len) {
  enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaError_t err = cudaStreamIsCapturing(stream, &cap);
  if (err != cudaSuccess) return cuda_why(err, "cudaStreamIsCapturing", why, why_len);
  if (cap != cudaStreamCaptureStatusNone || !h->ev[0] || !h->ev[1]) return TPC_SUCCESS;
  cublasLtMatmulHeuristicResult_t trials[MAX_TRIALS];
  int n = 0;
  for (int i = 0; i < p->ncand && i < h->autotune; i++) trials[n++] = p->cand[i];
  n = splitk_variants(h, p, trials, n, MAX_TRIALS);
  p->tuned = 1;
  if (n <= 1) return TPC_SUCCESS;
  float best = -1.0f, first = -1.0f;
  int best_i = 0;
  for (int i = 0; i < n; i++) {
    float est = 0, ms = 0;
    tpc_status_t st = time_trial(h, p, op, &trials[i].algo, 1, stream, &est, why, why_len); /* warm-up */
    if (st == TPC_SUCCESS && est >= 0) st = time_trial(h, p, op, &trials[i].algo, 1, stream, &est, why, why_len);
    if (st != TPC_SUCCESS) return st;
    if (est < 0) continue; /* this candidate does not run here */
    int runs = est > 0 ? (int)(TRIAL_TARGET_MS / est) + 1 : 100;
    runs = runs < 2 ? 2 : runs > 100 ? 100 : runs;
    if ((st = time_trial(h, p, op, &trials[i].algo, runs, stream, &ms, why, why_len)) != TPC_SUCCESS) return st;
    if (ms < 0) continue;
    if (i == 0) first = ms;
    if (best < 0 || ms < best) {
      best = ms;
      best_i = i;
    }
  }
  if (best < 0) return TPC_SUCCESS; /* nothing ran: keep the heuristic's first */
  p->algo = trials[best_i].algo;
  h->autotuned++;
  int32_t split = 1;
  size_t written = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&p->algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof split, &written);
  TPC_INFO(TPC_SUB_ALL,
           "gemm autotune m=%lld n=%lld k=%lld batch=%lld: trial %d of %d (split-K %d), %.2f us; heuristic's first %.2f us",
           (long long)p->key.m, (long long)p->key.n, (long long)p->key.k, (long long)p->key.batch, best_i, n, (int)split,
           best * 1e3, first * 1e3);
  return TPC_SUCCESS;
}

static void op_init(gemm_op_t* op, int kind, cudaDataType_t ab_type, cudaDataType_t d_type, int64_t m, int64_t n,
                    int64_t k, const void* w, int64_t w_ld, const void* x, int64_t x_ld, void* y, int64_t y_ld) {
  memset(op, 0, sizeof *op);
  op->key.kind = kind;
  op->key.a_type = op->key.b_type = (int32_t)ab_type;
  op->key.d_type = (int32_t)d_type;
  op->key.m = m;
  op->key.n = n;
  op->key.k = k;
  op->key.lda = w_ld;
  op->key.ldb = x_ld;
  op->key.ldd = y_ld;
  op->key.batch = 1;
  op->a = w;
  op->b = x;
  op->d = y;
}

static size_t cuda_type_size(int32_t t) {
  switch ((cudaDataType_t)t) {
    case CUDA_R_8F_E4M3: return 1;
    case CUDA_R_32F: return 4;
    default: return 2;
  }
}

static void op_set_alignment(gemm_op_t* op) {
  plan_key_t* k = &op->key;
  const int64_t ea = (int64_t)cuda_type_size(k->a_type), eb = (int64_t)cuda_type_size(k->b_type),
                ed = (int64_t)cuda_type_size(k->d_type);
  k->align_a = align_of(op->a, k->lda * ea, k->batch > 1 ? k->stride_a * ea : 0);
  k->align_b = align_of(op->b, k->ldb * eb, k->batch > 1 ? k->stride_b * eb : 0);
  k->align_d = align_of(op->d, k->ldd * ed, k->batch > 1 ? k->stride_d * ed : 0);
}

/* Runs op on stream through its (cached) plan. Caller holds h->lock. On failure why says what failed. */
static tpc_status_t gemm_run_locked(tpc_gemm_handle_t h, gemm_op_t* op, cudaStream_t stream, char* why,
                                    size_t why_len) {
  op_set_alignment(op);
  plan_t* p = cache_find(h, &op->key);
  if (!p) {
    tpc_status_t st = plan_create(&op->key, &p, why, why_len);
    if (st != TPC_SUCCESS) return st;
    if (cache_insert(h, p) != 0) {
      plan_free(p);
      snprintf(why, why_len, "out of host memory for the GEMM plan cache");
      return TPC_ERR_SYSTEM;
    }
  }
  if (p->refused != TPC_SUCCESS) {
    snprintf(why, why_len, "%s", p->refused_why);
    return p->refused;
  }
  if (op->key.kind == KIND_FP8_OUTER) { /* per call: the scale vectors (before the first heuristic query too) */
    cublasStatus_t st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &op->a_scale,
                                                       sizeof op->a_scale);
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &op->b_scale,
                                          sizeof op->b_scale);
    if (st != CUBLAS_STATUS_SUCCESS) return cublas_why(st, "cublasLtMatmulDescSetAttribute(A/B_SCALE_POINTER)", why, why_len);
  }
  if (!p->has_algo) {
    tpc_status_t st = plan_heuristic(h, p, why, why_len);
    if (st != TPC_SUCCESS) return st;
  }
  if (h->autotune > 1 && !p->tuned) {
    tpc_status_t st = autotune(h, p, op, stream, why, why_len);
    if (st != TPC_SUCCESS) return st;
  }
  const float alpha = 1.0f, beta = 0.0f;
  cublasStatus_t st = cublasLtMatmul(h->lt, p->desc, &alpha, op->a, p->la, op->b, p->lb, &beta, op->d, p->ld, op->d,
                                     p->ld, &p->algo, h->workspace, h->workspace_bytes, stream);
  if (st == CUBLAS_STATUS_SUCCESS) return TPC_SUCCESS;
  if (op->key.kind == KIND_FP8_OUTER && (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE ||
                                         st == CUBLAS_STATUS_ARCH_MISMATCH)) {
    p->refused = TPC_ERR_UNSUPPORTED; /* outer-vector scaling refused at run time: remember it */
    snprintf(p->refused_why, sizeof p->refused_why, "cublasLtMatmul refused outer-vector FP8 scaling: %s (%s)",
             cublas_name(st), cublas_string(st));
    snprintf(why, why_len, "%s", p->refused_why);
    return p->refused;
  }
  return cublas_why(st, "cublasLtMatmul", why, why_len);
}

static tpc_status_t gemm_run(tpc_gemm_handle_t h, gemm_op_t* op, cudaStream_t stream, const char* fn) {
  char why[WHY_LEN];
  pthread_mutex_lock(&h->lock);
  tpc_status_t st = gemm_run_locked(h, op, stream, why, sizeof why);
  pthread_mutex_unlock(&h->lock);
  if (st == TPC_SUCCESS) return st;
  const plan_key_t* k = &op->key;
  return tpc_error(NULL, st, "%s: m=%lld n=%lld k=%lld batch=%lld: %s", fn, (long long)k->m, (long long)k->n,
                   (long long)k->k, (long long)k->batch, why);
}

static cudaDataType_t cuda_dtype(tpc_dtype_t dtype) {
  switch (dtype) {
    case TPC_BFLOAT16: return CUDA_R_16BF;
    case TPC_FLOAT16: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}

/* ---- handle ------------------------------------------------------------------------------------------- */

tpc_status_t tpc_gemm_handle_create(tpc_gemm_handle_t* handle, size_t workspace_bytes) {
  const char* fn = "tpc_gemm_handle_create";
  if (!handle) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: handle is NULL", fn);
  *handle = NULL;
  if (workspace_bytes == 0) workspace_bytes = TPC_GEMM_DEFAULT_WORKSPACE;
  if (workspace_bytes > ((size_t)1 << 40))
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: workspace_bytes=%zu is too large", fn, workspace_bytes);
  int64_t pdl = 1, tune = 0;
  tpc_status_t res = tpc_param_resolve(TPC_P_PDL, TPC_CONFIG_UNDEF, &pdl);
  if (res == TPC_SUCCESS) res = tpc_param_resolve(TPC_P_GEMM_AUTOTUNE, TPC_CONFIG_UNDEF, &tune);
  if (res != TPC_SUCCESS) return res;
  if (tune > HEURISTIC_RESULTS)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: environment variable TPCOMM_GEMM_AUTOTUNE=%lld (must be 0..%d)", fn,
                     (long long)tune, HEURISTIC_RESULTS);
  int dev = -1;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) {
    int n = 0;
    err = cudaGetDeviceCount(&n);
    if (err == cudaSuccess && n == 0) err = cudaErrorNoDevice;
  }
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    const int none = err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver;
    return tpc_error(NULL, none ? TPC_ERR_NO_DEVICE : TPC_ERR_CUDA, "%s: no usable CUDA device: %s", fn,
                     cudaGetErrorString(err));
  }
  struct tpc_gemm_handle* h = calloc(1, sizeof *h);
  if (!h) return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: out of host memory", fn);
  char why[WHY_LEN];
  h->device = dev;
  h->workspace_bytes = workspace_bytes;
  pthread_mutex_init(&h->lock, NULL);
  err = cudaDeviceGetAttribute(&h->cc_major, cudaDevAttrComputeCapabilityMajor, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&h->cc_minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (err != cudaSuccess) {
    res = cuda_why(err, "cudaDeviceGetAttribute", why, sizeof why);
    goto fail;
  }
  h->pdl = pdl && h->cc_major >= 9;
  for (int i = 0; i < 2 && tune > 1; i++) {
    err = cudaEventCreate(&h->ev[i]);
    if (err != cudaSuccess) {
      h->ev[i] = NULL;
      res = cuda_why(err, "cudaEventCreate", why, sizeof why);
      goto fail;
    }
  }
  h->autotune = (int)tune;
  cublasStatus_t st = cublasLtCreate(&h->lt);
  if (st != CUBLAS_STATUS_SUCCESS) {
    h->lt = NULL;
    res = cublas_why(st, "cublasLtCreate", why, sizeof why);
    goto fail;
  }
  err = cudaMalloc(&h->workspace, workspace_bytes);
  if (err != cudaSuccess) {
    h->workspace = NULL;
    res = cuda_why(err, "cudaMalloc(workspace)", why, sizeof why);
    goto fail;
  }
  h->magic = GEMM_HANDLE_MAGIC;
  *handle = h;
  TPC_INFO(TPC_SUB_INIT, "gemm handle on device %d (sm_%d%d), workspace %zu bytes, PDL %s, autotune %d", dev,
           h->cc_major, h->cc_minor, workspace_bytes, h->pdl ? "on" : "off", h->autotune);
  return TPC_SUCCESS;
fail:
  if (h->workspace) cudaFree(h->workspace);
  if (h->lt) cublasLtDestroy(h->lt);
  for (int i = 0; i < 2; i++)
    if (h->ev[i]) cudaEventDestroy(h->ev[i]);
  pthread_mutex_destroy(&h->lock);
  free(h);
  return tpc_error(NULL, res, "%s: %s", fn, why);
}

tpc_status_t tpc_gemm_handle_destroy(tpc_gemm_handle_t h) {
  const char* fn = "tpc_gemm_handle_destroy";
  if (!h) return TPC_SUCCESS;
  if (h->magic != GEMM_HANDLE_MAGIC)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: handle=%p is not a live tpc_gemm_handle_t", fn, (void*)h);
  tpc_status_t res = TPC_SUCCESS;
  char why[WHY_LEN];
  int prev = -1;
  cudaError_t err = cudaGetDevice(&prev);
  if (err == cudaSuccess && prev != h->device) err = cudaSetDevice(h->device);
  if (err == cudaSuccess) err = cudaDeviceSynchronize(); /* work enqueued with the workspace is done */
  if (err != cudaSuccess && res == TPC_SUCCESS) res = cuda_why(err, "cudaDeviceSynchronize", why, sizeof why);
  h->magic = 0;
  for (size_t i = 0; i < h->cap; i++) plan_free(h->slots[i]);
  free(h->slots);
  if (h->workspace) {
    err = cudaFree(h->workspace);
    if (err != cudaSuccess && res == TPC_SUCCESS) res = cuda_why(err, "cudaFree(workspace)", why, sizeof why);
  }
  if (h->scratch) {
    err = cudaFree(h->scratch);
    if (err != cudaSuccess && res == TPC_SUCCESS) res = cuda_why(err, "cudaFree(scratch)", why, sizeof why);
  }
  for (int i = 0; i < 2; i++)
    if (h->ev[i]) cudaEventDestroy(h->ev[i]);
  if (h->lt) {
    cublasStatus_t st = cublasLtDestroy(h->lt);
    if (st != CUBLAS_STATUS_SUCCESS && res == TPC_SUCCESS) res = cublas_why(st, "cublasLtDestroy", why, sizeof why);
  }
  if (prev >= 0 && prev != h->device) cudaSetDevice(prev);
  pthread_mutex_destroy(&h->lock);
  free(h);
  return res == TPC_SUCCESS ? res : tpc_error(NULL, res, "%s: %s", fn, why);
}

tpc_status_t tpc_gemm_handle_stats(tpc_gemm_handle_t h, int64_t* plans, int64_t* heuristic_queries) {
  const char* fn = "tpc_gemm_handle_stats";
  if (!h) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: handle is NULL", fn);
  if (h->magic != GEMM_HANDLE_MAGIC)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: handle=%p is not a live tpc_gemm_handle_t", fn, (void*)h);
  pthread_mutex_lock(&h->lock);
  if (plans) *plans = (int64_t)h->count;
  if (heuristic_queries) *heuristic_queries = h->heuristic_queries;
  pthread_mutex_unlock(&h->lock);
  return TPC_SUCCESS;
}

tpc_status_t tpc_gemm_handle_set_autotune(tpc_gemm_handle_t h, int candidates) {
  const char* fn = "tpc_gemm_handle_set_autotune";
  if (candidates < 0 || candidates > HEURISTIC_RESULTS)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: candidates=%d (must be 0..%d)", fn, candidates, HEURISTIC_RESULTS);
  TPC_CHECK(check_handle(fn, h));
  pthread_mutex_lock(&h->lock);
  tpc_status_t res = TPC_SUCCESS;
  for (int i = 0; i < 2 && candidates > 1; i++) {
    if (h->ev[i]) continue;
    cudaError_t err = cudaEventCreate(&h->ev[i]);
    if (err != cudaSuccess) {
      h->ev[i] = NULL;
      (void)cudaGetLastError();
      res = tpc_error(NULL, TPC_ERR_CUDA, "%s: cudaEventCreate failed: %s", fn, cudaGetErrorString(err));
      break;
    }
  }
  if (res == TPC_SUCCESS) h->autotune = candidates;
  pthread_mutex_unlock(&h->lock);
  return res;
}

tpc_status_t tpc_gemm_handle_autotuned(tpc_gemm_handle_t h, int64_t* plans_tuned) {
  const char* fn = "tpc_gemm_handle_autotuned";
  if (!plans_tuned) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: plans_tuned is NULL", fn);
  if (!h) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: handle is NULL", fn);
  if (h->magic != GEMM_HANDLE_MAGIC)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: handle=%p is not a live tpc_gemm_handle_t", fn, (void*)h);
  pthread_mutex_lock(&h->lock);
  *plans_tuned = h->autotuned;
  pthread_mutex_unlock(&h->lock);
  return TPC_SUCCESS;
}

/* ---- 16-bit GEMMs ---------------------------------------------------------------------------------------- */

tpc_status_t tpc_gemm(tpc_gemm_handle_t handle, int64_t m, int64_t n, int64_t k, const void* x, int64_t x_ld,
                      const void* w, int64_t w_ld, void* y, int64_t y_ld, tpc_dtype_t dtype, cudaStream_t stream) {
  const char* fn = "tpc_gemm";
  TPC_CHECK(check_dtype16(fn, "dtype", dtype));
  TPC_CHECK(check_dims(fn, m, n, k));
  const size_t es = tpc_dtype_size(dtype);
  TPC_CHECK(check_matrix(fn, "x", x, m, k, "x_ld", x_ld, es, 1));
  TPC_CHECK(check_matrix(fn, "w", w, n, k, "w_ld", w_ld, es, m > 0));
  TPC_CHECK(check_matrix(fn, "y", y, m, n, "y_ld", y_ld, es, 1));
  TPC_CHECK(check_handle(fn, handle));
  if (m == 0) return TPC_SUCCESS;
  gemm_op_t op;
  op_init(&op, KIND_16BIT, cuda_dtype(dtype), cuda_dtype(dtype), m, n, k, w, w_ld, x, x_ld, y, y_ld);
  return gemm_run(handle, &op, stream, fn);
}

tpc_status_t tpc_gemm_strided_batched(tpc_gemm_handle_t handle, int64_t m, int64_t n, int64_t k, const void* x,
                                      int64_t x_ld, int64_t x_batch_stride, const void* w, int64_t w_ld,
                                      int64_t w_batch_stride, void* y, int64_t y_ld, int64_t y_batch_stride,
                                      int64_t batch, tpc_dtype_t dtype, cudaStream_t stream) {
  const char* fn = "tpc_gemm_strided_batched";
  TPC_CHECK(check_dtype16(fn, "dtype", dtype));
  TPC_CHECK(check_dims(fn, m, n, k));
  if (batch < 0 || batch > INT32_MAX)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: batch=%lld (must be 0..2^31-1)", fn, (long long)batch);
  if (x_batch_stride < 0 || w_batch_stride < 0 || y_batch_stride < 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "%s: x_batch_stride=%lld w_batch_stride=%lld y_batch_stride=%lld (must be >= 0)", fn,
                     (long long)x_batch_stride, (long long)w_batch_stride, (long long)y_batch_stride);
  const size_t es = tpc_dtype_size(dtype);
  const int64_t nb = batch > 0 ? batch : 1;
  /* one batch entry; the strides are checked below */
  TPC_CHECK(check_matrix(fn, "x", x, m, k, "x_ld", x_ld, es, batch > 0));
  TPC_CHECK(check_matrix(fn, "w", w, n, k, "w_ld", w_ld, es, m > 0 && batch > 0));
  TPC_CHECK(check_matrix(fn, "y", y, m, n, "y_ld", y_ld, es, batch > 0));
  if (x_batch_stride > INT64_MAX / 4 / nb || w_batch_stride > INT64_MAX / 4 / nb || y_batch_stride > INT64_MAX / 4 / nb)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: batch=%lld with these strides overflows", fn, (long long)batch);
  if (batch > 1 && m > 0 && y_batch_stride < (m - 1) * y_ld + n)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "%s: y_batch_stride=%lld makes the outputs overlap (needs >= (m-1)*y_ld + n = %lld)", fn,
                     (long long)y_batch_stride, (long long)((m - 1) * y_ld + n));
  TPC_CHECK(check_handle(fn, handle));
  if (m == 0 || batch == 0) return TPC_SUCCESS;
  gemm_op_t op;
  op_init(&op, KIND_16BIT, cuda_dtype(dtype), cuda_dtype(dtype), m, n, k, w, w_ld, x, x_ld, y, y_ld);
  op.key.batch = batch;
  if (batch > 1) {
    op.key.stride_a = w_batch_stride;
    op.key.stride_b = x_batch_stride;
    op.key.stride_d = y_batch_stride;
  }
  return gemm_run(handle, &op, stream, fn);
}

/* ---- merged linear ----------------------------------------------------------------------------------------- */

static tpc_status_t check_merged(const char* fn, tpc_merged_linear_t ml) {
  if (!ml) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: ml is NULL", fn);
  if (ml->magic != MERGED_MAGIC)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: ml=%p is not a live tpc_merged_linear_t", fn, (void*)ml);
  return TPC_SUCCESS;
}

static void merged_free(struct tpc_merged_linear* ml) {
  if (!ml) return;
  if (ml->weight) cudaFree(ml->weight);
  free(ml->offsets);
  free(ml->sizes);
  ml->magic = 0;
  free(ml);
}

tpc_status_t tpc_merged_linear_create(tpc_gemm_handle_t handle, const void* const* weights, const int64_t* n_sizes,
                                      int num, int64_t k, tpc_dtype_t dtype, cudaStream_t stream,
                                      tpc_merged_linear_t* out) {
  const char* fn = "tpc_merged_linear_create";
  if (!out) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
  *out = NULL;
  TPC_CHECK(check_dtype16(fn, "dtype", dtype));
  if (num < 1 || num > MERGED_MAX_NUM)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: num=%d (must be 1..%d)", fn, num, MERGED_MAX_NUM);
  if (!weights) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: weights is NULL", fn);
  if (!n_sizes) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: n_sizes is NULL", fn);
  if (k < 1 || k > INT32_MAX) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: k=%lld (must be 1..2^31-1)", fn, (long long)k);
  const size_t es = tpc_dtype_size(dtype);
  int64_t total = 0;
  for (int i = 0; i < num; i++) {
    if (!weights[i]) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: weights[%d] is NULL", fn, i);
    if (n_sizes[i] < 1 || n_sizes[i] > INT32_MAX)
      return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: n_sizes[%d]=%lld (must be 1..2^31-1)", fn, i,
                       (long long)n_sizes[i]);
    if ((uintptr_t)weights[i] % es != 0)
      return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: weights[%d]=%p is not aligned to its %zu-byte elements", fn, i,
                       weights[i], es);
    total += (n_sizes[i] + MERGED_ALIGN - 1) / MERGED_ALIGN * MERGED_ALIGN;
    if (total > INT32_MAX)
      return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: the merged output is wider than 2^31-1 columns", fn);
  }
  if (total > INT64_MAX / k / (int64_t)es)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: the merged weight of %lld x %lld elements is too large", fn,
                     (long long)total, (long long)k);
  TPC_CHECK(check_handle(fn, handle));
  enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaError_t err = cudaStreamIsCapturing(stream, &cap);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: stream=%p is not a valid stream (%s)", fn, (void*)stream,
                     cudaGetErrorString(err));
  }
  if (cap != cudaStreamCaptureStatusNone)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: stream=%p is capturing a graph; create merged linears before", fn,
                     (void*)stream);

  char why[WHY_LEN];
  tpc_status_t res = TPC_SUCCESS;
  struct tpc_merged_linear* ml = calloc(1, sizeof *ml);
  if (ml) {
    ml->offsets = calloc((size_t)num, sizeof *ml->offsets);
    ml->sizes = calloc((size_t)num, sizeof *ml->sizes);
  }
  if (!ml || !ml->offsets || !ml->sizes) {
    merged_free(ml);
    return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: out of host memory", fn);
  }
  ml->handle = handle;
  ml->dtype = dtype;
  ml->num = num;
  ml->k = k;
  ml->n_total = total;
  const size_t bytes = (size_t)total * (size_t)k * es;
  err = cudaMalloc(&ml->weight, bytes);
  if (err != cudaSuccess) {
    ml->weight = NULL;
    res = cuda_why(err, "cudaMalloc(merged weight)", why, sizeof why);
    goto fail;
  }
  int64_t off = 0;
  int padded = 0;
  for (int i = 0; i < num; i++) {
    ml->offsets[i] = off;
    ml->sizes[i] = n_sizes[i];
    padded |= n_sizes[i] % MERGED_ALIGN != 0;
    off += (n_sizes[i] + MERGED_ALIGN - 1) / MERGED_ALIGN * MERGED_ALIGN;
  }
  if (padded && (err = cudaMemsetAsync(ml->weight, 0, bytes, stream)) != cudaSuccess) {
    res = cuda_why(err, "cudaMemsetAsync(merged weight)", why, sizeof why);
    goto fail;
  }
  for (int i = 0; i < num; i++) {
    char* dst = (char*)ml->weight + (size_t)ml->offsets[i] * (size_t)k * es;
    err = cudaMemcpyAsync(dst, weights[i], (size_t)n_sizes[i] * (size_t)k * es, cudaMemcpyDefault, stream);
    if (err != cudaSuccess) {
      char call[64];
      snprintf(call, sizeof call, "cudaMemcpyAsync(weights[%d])", i);
      res = cuda_why(err, call, why, sizeof why);
      goto fail;
    }
  }
  err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) {
    res = cuda_why(err, "cudaStreamSynchronize", why, sizeof why);
    goto fail;
  }
  ml->magic = MERGED_MAGIC;
  *out = ml;
  return TPC_SUCCESS;
fail:
  if (ml->weight) cudaStreamSynchronize(stream); /* no copy may still write into the buffer being freed */
  merged_free(ml);
  return tpc_error(NULL, res, "%s: %s", fn, why);
}

tpc_status_t tpc_merged_linear_destroy(tpc_merged_linear_t ml) {
  const char* fn = "tpc_merged_linear_destroy";
  if (!ml) return TPC_SUCCESS;
  TPC_CHECK(check_merged(fn, ml));
  cudaError_t err = cudaDeviceSynchronize(); /* no GEMM still reads the weight */
  void* w = ml->weight;
  ml->weight = NULL;
  cudaError_t ferr = w ? cudaFree(w) : cudaSuccess;
  merged_free(ml);
  if (err == cudaSuccess) err = ferr;
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return tpc_error(NULL, TPC_ERR_CUDA, "%s: %s failed: %s", fn, ferr != cudaSuccess ? "cudaFree" : "cudaDeviceSynchronize",
                     cudaGetErrorString(err));
  }
  return TPC_SUCCESS;
}

tpc_status_t tpc_merged_linear_forward(tpc_merged_linear_t ml, const void* x, int64_t m, int64_t x_ld, void* y,
                                       int64_t y_ld, cudaStream_t stream) {
  const char* fn = "tpc_merged_linear_forward";
  if (m < 0) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: m=%lld (must be >= 0)", fn, (long long)m);
  if (m > INT32_MAX) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: m=%lld (must be < 2^31)", fn, (long long)m);
  if (m > 0 && !x) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: x is NULL", fn);
  if (m > 0 && !y) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: y is NULL", fn);
  TPC_CHECK(check_merged(fn, ml));
  const size_t es = tpc_dtype_size(ml->dtype);
  TPC_CHECK(check_matrix(fn, "x", x, m, ml->k, "x_ld", x_ld, es, 1));
  TPC_CHECK(check_matrix(fn, "y", y, m, ml->n_total, "y_ld", y_ld, es, 1));
  TPC_CHECK(check_handle(fn, ml->handle));
  if (m == 0) return TPC_SUCCESS;
  gemm_op_t op;
  op_init(&op, KIND_16BIT, cuda_dtype(ml->dtype), cuda_dtype(ml->dtype), m, ml->n_total, ml->k, ml->weight, ml->k, x,
          x_ld, y, y_ld);
  return gemm_run(ml->handle, &op, stream, fn);
}

tpc_status_t tpc_merged_linear_output(tpc_merged_linear_t ml, int i, int64_t* col_offset, int64_t* n) {
  const char* fn = "tpc_merged_linear_output";
  TPC_CHECK(check_merged(fn, ml));
  if (i < 0 || i >= ml->num)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: i=%d is not an output (0..%d)", fn, i, ml->num - 1);
  if (col_offset) *col_offset = ml->offsets[i];
  if (n) *n = ml->sizes[i];
  return TPC_SUCCESS;
}

tpc_status_t tpc_merged_linear_info(tpc_merged_linear_t ml, int* num, int64_t* n_total, int64_t* k,
                                    const void** weight) {
  TPC_CHECK(check_merged("tpc_merged_linear_info", ml));
  if (num) *num = ml->num;
  if (n_total) *n_total = ml->n_total;
  if (k) *k = ml->k;
  if (weight) *weight = ml->weight;
  return TPC_SUCCESS;
}

/* ---- FP8 ---------------------------------------------------------------------------------------------------- */

static int aligned16(const void* p) { return (uintptr_t)p % 16 == 0; }

/* Allocates the EPILOGUE scratch on first use (never while stream is capturing). Caller holds h->lock. */
static tpc_status_t ensure_scratch(tpc_gemm_handle_t h, cudaStream_t stream, char* why, size_t why_len) {
  if (h->scratch) return TPC_SUCCESS;
  enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaError_t err = cudaStreamIsCapturing(stream, &cap);
  if (err != cudaSuccess) return cuda_why(err, "cudaStreamIsCapturing", why, why_len);
  if (cap != cudaStreamCaptureStatusNone) {
    snprintf(why, why_len,
             "the FP8 epilogue path allocates its %zu-byte scratch on first use, which cannot happen while the stream "
             "is capturing: run this GEMM once before capture",
             (size_t)TPC_GEMM_DEFAULT_WORKSPACE);
    return TPC_ERR_INVALID_USAGE;
  }
  void* p = NULL;
  err = cudaMalloc(&p, TPC_GEMM_DEFAULT_WORKSPACE);
  if (err != cudaSuccess) return cuda_why(err, "cudaMalloc(FP8 epilogue scratch)", why, why_len);
  h->scratch = p;
  h->scratch_bytes = TPC_GEMM_DEFAULT_WORKSPACE;
  return TPC_SUCCESS;
}

typedef struct {
  int64_t m, n, k, x_ld, w_ld, y_ld;
  const void *xq, *wq;
  const float *x_scales, *w_scales;
  void* y;
  tpc_dtype_t out_dtype;
} fp8_call_t;

static tpc_status_t fp8_outer_locked(tpc_gemm_handle_t h, const fp8_call_t* c, cudaStream_t stream, char* why,
                                     size_t why_len) {
  gemm_op_t op;
  op_init(&op, KIND_FP8_OUTER, CUDA_R_8F_E4M3, cuda_dtype(c->out_dtype), c->m, c->n, c->k, c->wq, c->w_ld, c->xq,
          c->x_ld, c->y, c->y_ld);
  op.a_scale = c->w_scales; /* A = W: per row of op(A), i.e. per output channel */
  op.b_scale = c->x_scales; /* B = x: per column of B, i.e. per token */
  return gemm_run_locked(h, &op, stream, why, why_len);
}

static tpc_status_t fp8_epilogue_locked(tpc_gemm_handle_t h, const fp8_call_t* c, cudaStream_t stream, char* why,
                                        size_t why_len) {
  const int out = (int)c->out_dtype;
  if (c->out_dtype == TPC_FLOAT32) { /* accumulate into y, scale in place */
    gemm_op_t op;
    op_init(&op, KIND_FP8_UNIT, CUDA_R_8F_E4M3, CUDA_R_32F, c->m, c->n, c->k, c->wq, c->w_ld, c->xq, c->x_ld, c->y,
            c->y_ld);
    tpc_status_t st = gemm_run_locked(h, &op, stream, why, why_len);
    if (st != TPC_SUCCESS) return st;
    cudaError_t err = tpc_fp8_epilogue_launch((const float*)c->y, c->y_ld, c->x_scales, c->w_scales, c->y, c->y_ld,
                                              c->m, c->n, out, h->pdl, stream);
    return err == cudaSuccess ? TPC_SUCCESS : cuda_why(err, "FP8 epilogue kernel launch", why, why_len);
  }
  tpc_status_t st = ensure_scratch(h, stream, why, why_len);
  if (st != TPC_SUCCESS) return st;
  const int64_t acc_ld = (c->n + 3) / 4 * 4; /* 16-byte rows */
  const int64_t chunk = (int64_t)(h->scratch_bytes / sizeof(float)) / acc_ld;
  if (chunk < 1) {
    snprintf(why, why_len, "n=%lld is too wide for the %zu-byte FP8 epilogue scratch", (long long)c->n, h->scratch_bytes);
    return TPC_ERR_UNSUPPORTED;
  }
  const size_t y_es = tpc_dtype_size(c->out_dtype);
  for (int64_t r0 = 0; r0 < c->m; r0 += chunk) {
    const int64_t mc = c->m - r0 < chunk ? c->m - r0 : chunk;
    gemm_op_t op;
    op_init(&op, KIND_FP8_UNIT, CUDA_R_8F_E4M3, CUDA_R_32F, mc, c->n, c->k, c->wq, c->w_ld,
            (const char*)c->xq + r0 * c->x_ld, c->x_ld, h->scratch, acc_ld);
    st = gemm_run_locked(h, &op, stream, why, why_len);
    if (st != TPC_SUCCESS) return st;
    cudaError_t err = tpc_fp8_epilogue_launch(h->scratch, acc_ld, c->x_scales + r0, c->w_scales,
                                              (char*)c->y + (size_t)(r0 * c->y_ld) * y_es, c->y_ld, mc, c->n, out,
                                              h->pdl, stream);
    if (err != cudaSuccess) return cuda_why(err, "FP8 epilogue kernel launch", why, why_len);
  }
  return TPC_SUCCESS;
}

tpc_status_t tpc_gemm_fp8(tpc_gemm_handle_t handle, int64_t m, int64_t n, int64_t k, const void* xq, int64_t x_ld,
                          const float* x_scales, const void* wq, int64_t w_ld, const float* w_scales, void* y,
                          int64_t y_ld, tpc_dtype_t out_dtype, tpc_fp8_scaling_t scaling, cudaStream_t stream) {
  const char* fn = "tpc_gemm_fp8";
  if ((int)out_dtype < 0 || (int)out_dtype >= TPC_NUM_DTYPES)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: out_dtype=%d is not a tpc_dtype_t (0..%d)", fn, (int)out_dtype,
                     TPC_NUM_DTYPES - 1);
  if ((int)scaling < 0 || (int)scaling >= TPC_NUM_FP8_SCALINGS)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: scaling=%d is not a tpc_fp8_scaling_t (0..%d)", fn, (int)scaling,
                     TPC_NUM_FP8_SCALINGS - 1);
  TPC_CHECK(check_dims(fn, m, n, k));
  if (k % 16 != 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: k=%lld: FP8 GEMMs need k a multiple of 16", fn, (long long)k);
  if (x_ld % 16 != 0 || w_ld % 16 != 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: x_ld=%lld w_ld=%lld: FP8 GEMMs need multiples of 16", fn,
                     (long long)x_ld, (long long)w_ld);
  TPC_CHECK(check_matrix(fn, "xq", xq, m, k, "x_ld", x_ld, 1, 1));
  TPC_CHECK(check_matrix(fn, "wq", wq, n, k, "w_ld", w_ld, 1, m > 0));
  TPC_CHECK(check_matrix(fn, "y", y, m, n, "y_ld", y_ld, tpc_dtype_size(out_dtype), 1));
  if (m > 0 && !aligned16(xq))
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: xq=%p: FP8 GEMMs need 16-byte aligned operands", fn, xq);
  if (!aligned16(wq))
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: wq=%p: FP8 GEMMs need 16-byte aligned operands", fn, wq);
  if (m > 0 && !x_scales) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: x_scales is NULL", fn);
  if (m > 0 && !w_scales) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: w_scales is NULL", fn);
  if ((uintptr_t)x_scales % 4 != 0 || (uintptr_t)w_scales % 4 != 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: x_scales=%p w_scales=%p must be 4-byte aligned", fn,
                     (const void*)x_scales, (const void*)w_scales);
  const int scales16 = aligned16(x_scales) && aligned16(w_scales);
  if (scaling == TPC_FP8_SCALING_OUTER_VEC && !scales16)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "%s: x_scales=%p w_scales=%p: outer-vector scaling needs 16-byte aligned scale vectors", fn,
                     (const void*)x_scales, (const void*)w_scales);
  TPC_CHECK(check_handle(fn, handle));
  if (handle->cc_major * 10 + handle->cc_minor < 89)
    return tpc_error(NULL, TPC_ERR_UNSUPPORTED, "%s: FP8 GEMMs need compute capability 8.9 or later (device is %d.%d)", fn,
                     handle->cc_major, handle->cc_minor);
  if (m == 0) return TPC_SUCCESS;

  const fp8_call_t c = {m, n, k, x_ld, w_ld, y_ld, xq, wq, x_scales, w_scales, y, out_dtype};
  char why[WHY_LEN];
  tpc_status_t st = TPC_SUCCESS;
  pthread_mutex_lock(&handle->lock);
  if (scaling == TPC_FP8_SCALING_OUTER_VEC || (scaling == TPC_FP8_SCALING_AUTO && scales16)) {
    st = fp8_outer_locked(handle, &c, stream, why, sizeof why);
    if (st == TPC_ERR_UNSUPPORTED && scaling == TPC_FP8_SCALING_AUTO) {
      TPC_INFO(TPC_SUB_ALL, "%s: m=%lld n=%lld k=%lld: outer-vector scaling unavailable (%s); using the epilogue path",
               fn, (long long)m, (long long)n, (long long)k, why);
      st = fp8_epilogue_locked(handle, &c, stream, why, sizeof why);
    }
  } else {
    st = fp8_epilogue_locked(handle, &c, stream, why, sizeof why);
  }
  pthread_mutex_unlock(&handle->lock);
  if (st == TPC_SUCCESS) return st;
  return tpc_error(NULL, st, "%s: m=%lld n=%lld k=%lld: %s", fn, (long long)m, (long long)n, (long long)k, why);
}
