/* bench_kernels_gemm.c — `tpcomm-bench kernels-gemm`: the single-GPU kernels of include/tpcomm/gemm.h
 * against their memory floors and against plain cuBLASLt, on one GPU:
 *   copy     the device-to-device copy bandwidth (bytes read + written), the floor of everything below
 *   quant    per-token FP8 quantization (AUTO path, and the static-scale variant) for 16x4096,
 *            1024x1368, 4096x4096, 65536x4096 bf16: time vs floor = (2*rows*hidden + rows*hidden +
 *            4*rows) bytes / copy bandwidth
 *   gemm     the six projections of one layer sharing a 2304-wide input (n = 1024, 1024, 1024, 8, 128,
 *            128) at m = 1, 16, 128, 4096, 8192: six separate tpc_gemm calls vs one merged linear (default
 *            handle: cuBLASLt's heuristic algorithm; and a handle autotuned over 16 candidates + split-K
 *            variants) vs a plain cuBLASLt matmul of the merged shape (n = 3336) written here directly; time,
 *            TFLOP/s, floor
 *   batched  two [m,128] x [128,1024] products: one tpc_gemm_strided_batched vs two tpc_gemm calls
 *   square   an 8192^3 bf16 GEMM through tpc_gemm (heuristic, and autotuned) and through plain cuBLASLt:
 *            TFLOP/s
 *   fp8      tpc_gemm_fp8 at the merged shape (m = 16, 4096, 8192) and 8192^3, outer-vector vs epilogue
 *            scaling (n/a where cuBLASLt refuses outer-vector scaling)
 * Every measurement runs eagerly (warm-up + `iters` calls) and inside a CUDA graph (`iters` calls captured,
 * replayed `reps` times), each timed as 3 back-to-back blocks whose median is reported (bench_common.h). Each shape is checked once before timing (quantization bit for bit
 * against tests/ref/quant_ref.c on sampled rows; GEMMs against an fp64 CPU product on sampled rows).
 * With --l2 cold (default) the inputs that would fit in L2 are rotated over enough copies (> 2x the L2
 * size) that every call reads them from DRAM, as the floors assume; --l2 warm uses one copy.
 * Ends with the H200 targets and whether this run met them.
 *
 * Relies on: bench_common (job, timing, table, JSON), the public tpcomm GEMM API, cuBLASLt directly for the
 * plain baseline (same TN form, fp32 compute, top heuristic, 32 MiB workspace), tests/ref for the checks
 * (compiled in here, see the includes).
 * Single process, one GPU (world size 1). */
#define _GNU_SOURCE
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "bench_common.h"
#include "gemm_ref.h"
#include "quant_ref.h"
#include "tpcomm/gemm.h"

#define KG_CMD "kernels-gemm"
#define KG_K 2304
#define KG_NUM_PROJ 6
#define KG_N_MERGED 3336
#define KG_SQUARE 8192
#define KG_MAX_ROT 64
#define KG_CHECK_ROWS 8 /* GEMM rows checked against the CPU per shape */

static const int64_t k_proj_n[KG_NUM_PROJ] = {1024, 1024, 1024, 8, 128, 128};
static const int64_t k_gemm_m[] = {1, 16, 128, 4096, 8192};
static const int64_t k_quant_shapes[][2] = {{16, 4096}, {1024, 1368}, {4096, 4096}, {65536, 4096}};
static const int64_t k_fp8_m[] = {16, 4096, 8192};
enum { NUM_GEMM_M = sizeof k_gemm_m / sizeof k_gemm_m[0], NUM_QUANT = 4, NUM_FP8_M = 3 };

enum { SEC_QUANT, SEC_GEMM, SEC_BATCHED, SEC_SQUARE, SEC_FP8, NUM_SECS };
static const char* const k_sec_names[NUM_SECS] = {"quant", "gemm", "batched", "square", "fp8"};

typedef struct {
  long iters, warmup, graph_reps, check;
  int cold;
  unsigned sections;
  const char* json_path;
} kg_opts_t;

typedef struct {
  double eager, graph; /* us per call */
  int na;
} kg_time_t;

/* What the targets summary needs. */
typedef struct {
  double quant_graph[NUM_QUANT];
  double merged_graph[NUM_GEMM_M], sep_graph[NUM_GEMM_M], sep_eager[NUM_GEMM_M], merged_eager[NUM_GEMM_M],
      plain_graph[NUM_GEMM_M], tuned_graph[NUM_GEMM_M];
  double weight_floor_us;
  double square_tflops, square_tuned_tflops;
  int have_quant, have_gemm, have_square;
} kg_summary_t;

typedef struct {
  cublasLtHandle_t lt;
  void* ws;
  size_t ws_bytes;
} lt_ctx_t;

typedef struct {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, d;
  cublasLtMatmulAlgo_t algo;
} lt_plan_t;

typedef struct {
  const kg_opts_t* o;
  bench_ctx_t* ctx;
  tpc_gemm_handle_t h;
  tpc_gemm_handle_t h_tuned; /* tpc_gemm_handle_set_autotune(16) */
  lt_ctx_t lt;
  double copy_gbs;
  size_t l2_bytes;
  bench_json_t json;
  uint64_t wrong_total;
  kg_summary_t sum;
} kg_t;

/* ---- options ------------------------------------------------------------------------------------------------ */

void bench_kernels_gemm_usage(FILE* f) {
  fprintf(f,
          "Usage: %s " KG_CMD " [options]\n\n"
          "Per-token FP8 quantization and cuBLASLt GEMMs (plain, merged, batched, FP8) on one GPU, against the\n"
          "memory floor (bytes / measured copy bandwidth) and a plain cuBLASLt matmul, eagerly and in CUDA\n"
          "graphs. Run it alone (one process, device 0).\n\n"
          "  -n, --iters N          calls per measurement (eager: timed calls; graph: calls captured) (default 50)\n"
          "  -w, --warmup_iters N   untimed eager calls first (default 10)\n"
          "  -r, --graph_reps N     timed replays of each graph (default 5)\n"
          "  -c, --check 0|1        check every shape once before timing (default 1)\n"
          "      --l2 cold|warm     cold: rotate inputs over copies larger than 2x L2 so each call reads DRAM\n"
          "                         (default); warm: one copy, L2-resident where it fits\n"
          "      --only LIST        comma list of quant,gemm,batched,square,fp8 (default all)\n"
          "  -J, --json FILE        also write every result to FILE as a JSON array\n"
          "  -h, --help             this help\n\n"
          "Times are microseconds per call. floor = bytes moved / copy bandwidth (quant: 3*rows*hidden +\n"
          "4*rows bytes; GEMM: weights + x + y). TFLOP/s = 2*m*n*k / time with the useful n (3336 for the\n"
          "merged shape). #wrong: elements off the CPU reference (quantization: bit-exact codes and scales).\n\n"
          "Exit status: 0 done and right (or no GPU), 1 wrong results, 2 bad command line, 3 a failure.\n",
          BENCH_PROGRAM);
}

enum { OPT_L2 = 256, OPT_ONLY = 257 };
/* bench_apply_fn: one option; 0 on success, non-zero (message printed) on a bad value. */
static int apply_option(int c, int argc, char** argv, void* opts) {
  kg_opts_t* o = opts;
  switch (c) {
    case 'n': return bench_parse_long(KG_CMD, "-n/--iters", optarg, 1, 100000, &o->iters);
    case 'w': return bench_parse_long(KG_CMD, "-w/--warmup_iters", optarg, 0, 100000, &o->warmup);
    case 'r': return bench_parse_long(KG_CMD, "-r/--graph_reps", optarg, 1, 100000, &o->graph_reps);
    case 'c': return bench_parse_long(KG_CMD, "-c/--check", optarg, 0, 1, &o->check);
    case 'J': return bench_parse_path(KG_CMD, "-J/--json", optarg, &o->json_path);
    case OPT_L2:
      if (strcmp(optarg, "cold") == 0) o->cold = 1;
      else if (strcmp(optarg, "warm") == 0) o->cold = 0;
      else return bench_usage_error(KG_CMD, "invalid value '%s' for --l2: expected cold or warm", optarg);
      return 0;
    case OPT_ONLY: return bench_parse_name_list(KG_CMD, "--only", optarg, k_sec_names, NUM_SECS, "section", &o->sections);
    default: return -1;
  }
}

/* BENCH_CONTINUE, or the exit code after -h or a bad command line. */
static int parse_opts(int argc, char** argv, kg_opts_t* o) {
  static const struct option long_opts[] = {
      {"iters", required_argument, NULL, 'n'},      {"warmup_iters", required_argument, NULL, 'w'},
      {"graph_reps", required_argument, NULL, 'r'}, {"check", required_argument, NULL, 'c'},
      {"l2", required_argument, NULL, OPT_L2},      {"only", required_argument, NULL, OPT_ONLY},
      {"json", required_argument, NULL, 'J'},       {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  memset(o, 0, sizeof *o);
  o->iters = 50;
  o->warmup = 10;
  o->graph_reps = 5;
  o->check = 1;
  o->cold = 1;
  o->sections = (1u << NUM_SECS) - 1;
  return bench_parse_options(KG_CMD, argc, argv, ":n:w:r:c:J:h", long_opts, bench_kernels_gemm_usage, apply_option, o);
}

/* ---- small helpers ------------------------------------------------------------------------------------------- */

#define BENCH_CHECK_LT(call)                                                                             \
  do {                                                                                                   \
    cublasStatus_t lt_st_ = (call);                                                                      \
    if (lt_st_ != CUBLAS_STATUS_SUCCESS)                                                                 \
      return bench_fail("%s failed: %s (%s:%d)", #call, cublasLtGetStatusString(lt_st_), __FILE__, __LINE__); \
  } while (0)

static bench_rc_t dalloc(void** p, size_t bytes) {
  *p = NULL;
  BENCH_CHECK_CUDA(cudaMalloc(p, bytes ? bytes : 16));
  return BENCH_OK;
}

/* Frees p (NULL: nothing) and records a failure in *rc (the first one is kept). */
static void dfree(bench_rc_t* rc, void* p) {
  if (!p) return;
  cudaError_t e = cudaFree(p);
  if (e != cudaSuccess) bench_keep_first(rc, bench_cuda_fail(e, "cudaFree", __FILE__, __LINE__));
}

/* Host bf16 random values (magnitude 2^((r % 13) - 6) by row r when rowscale), never 0; f (may be NULL)
 * receives the exact values. */
static void fill_bf16(uint16_t* h, float* f, int64_t rows, int64_t cols, int rowscale, uint64_t seed) {
  bench_rng_t rng;
  bench_rng_init(&rng, seed);
  for (int64_t r = 0; r < rows; r++) {
    const float mag = rowscale ? ldexpf(1.0f, (int)(r % 13) - 6) : 1.0f;
    for (int64_t i = 0; i < cols; i++) {
      float v = bench_rng_next(&rng);
      if (v == 0.0f) v = 0.5f;
      const uint16_t b = bench_f32_to_bf16(v * mag);
      h[r * cols + i] = b;
      if (f) f[r * cols + i] = bench_bf16_to_f32(b);
    }
  }
}

/* How many copies of a buffer set of `bytes` the cold-L2 rotation uses. */
static int rotation(const kg_t* b, size_t bytes) {
  return b->o->cold ? bench_rotation_sets(b->l2_bytes, bytes, KG_MAX_ROT, (size_t)4 << 30) : 1;
}

/* Up to max row indices spread over [0, rows), the first and last included. */
static int sample_rows(int64_t rows, int64_t* out, int max) {
  if (rows <= max) {
    for (int64_t i = 0; i < rows; i++) out[i] = i;
    return (int)rows;
  }
  for (int i = 0; i < max; i++) out[i] = (int64_t)((double)i * (double)(rows - 1) / (double)(max - 1));
  return max;
}

static bench_rc_t time_op(kg_t* b, bench_op_t op, kg_time_t* t) {
  memset(t, 0, sizeof *t);
  bench_rc_t rc = bench_time_eager(b->ctx, op, (int)b->o->warmup, (int)b->o->iters, &t->eager);
  if (rc == BENCH_OK) rc = bench_time_graph(b->ctx, op, (int)b->o->iters, (int)b->o->graph_reps, &t->graph);
  if (rc == BENCH_NA) {
    t->na = 1;
    return BENCH_OK;
  }
  return rc;
}

static void time_cell(bench_table_t* t, double us, int na) {
  if (na) bench_table_cell(t, "n/a");
  else if (us < 100) bench_table_cell(t, "%.2f", us);
  else if (us < 10000) bench_table_cell(t, "%.1f", us);
  else bench_table_cell(t, "%.0f", us);
}

static double tflops(double m, double n, double k, double us) { return us > 0 ? 2.0 * m * n * k / (us * 1e-6) / 1e12 : 0; }

/* ---- plain cuBLASLt (the baseline) --------------------------------------------------------------------------- */

static bench_rc_t lt_init(lt_ctx_t* lt) {
  BENCH_CHECK_LT(cublasLtCreate(&lt->lt));
  lt->ws_bytes = TPC_GEMM_DEFAULT_WORKSPACE;
  return dalloc(&lt->ws, lt->ws_bytes);
}

/* Records a failed cuBLASLt status of teardown in *rc (the first failure is kept). */
static void lt_keep(bench_rc_t* rc, cublasStatus_t st, const char* call) {
  if (st != CUBLAS_STATUS_SUCCESS)
    bench_keep_first(rc, bench_fail("%s failed: %s (%s:%d)", call, cublasLtGetStatusString(st), __FILE__, __LINE__));
}

static bench_rc_t lt_fini(lt_ctx_t* lt) {
  bench_rc_t rc = BENCH_OK;
  dfree(&rc, lt->ws);
  if (lt->lt) lt_keep(&rc, cublasLtDestroy(lt->lt), "cublasLtDestroy");
  memset(lt, 0, sizeof *lt);
  return rc;
}

static bench_rc_t lt_plan_free(lt_plan_t* p) {
  bench_rc_t rc = BENCH_OK;
  if (p->a) lt_keep(&rc, cublasLtMatrixLayoutDestroy(p->a), "cublasLtMatrixLayoutDestroy");
  if (p->b) lt_keep(&rc, cublasLtMatrixLayoutDestroy(p->b), "cublasLtMatrixLayoutDestroy");
  if (p->d) lt_keep(&rc, cublasLtMatrixLayoutDestroy(p->d), "cublasLtMatrixLayoutDestroy");
  if (p->desc) lt_keep(&rc, cublasLtMatmulDescDestroy(p->desc), "cublasLtMatmulDescDestroy");
  memset(p, 0, sizeof *p);
  return rc;
}

/* y[m,n] = x[m,k] . W[n,k]^T as one TN matmul, the top heuristic within the workspace (BENCH_NA: none). */
static bench_rc_t lt_plan_init(lt_ctx_t* lt, lt_plan_t* p, int64_t m, int64_t n, int64_t k, int64_t w_ld, int64_t x_ld,
                               int64_t y_ld, cudaDataType_t ab, cudaDataType_t d) {
  memset(p, 0, sizeof *p);
  const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
  BENCH_CHECK_LT(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  BENCH_CHECK_LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
  BENCH_CHECK_LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn));
  BENCH_CHECK_LT(cublasLtMatrixLayoutCreate(&p->a, ab, (uint64_t)k, (uint64_t)n, w_ld));
  BENCH_CHECK_LT(cublasLtMatrixLayoutCreate(&p->b, ab, (uint64_t)k, (uint64_t)m, x_ld));
  BENCH_CHECK_LT(cublasLtMatrixLayoutCreate(&p->d, d, (uint64_t)n, (uint64_t)m, y_ld));
  cublasLtMatmulPreference_t pref;
  BENCH_CHECK_LT(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = lt->ws_bytes;
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  cublasLtMatmulHeuristicResult_t res;
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(lt->lt, p->desc, p->a, p->b, p->d, p->d, pref, 1, &res, &found);
  const cublasStatus_t dst = cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS) st = dst;
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_SUCCESS && found == 0)) return BENCH_NA;
  BENCH_CHECK_LT(st);
  p->algo = res.algo;
  return BENCH_OK;
}

static bench_rc_t lt_run(lt_ctx_t* lt, lt_plan_t* p, const void* w, const void* x, void* y, cudaStream_t stream) {
  const float alpha = 1.0f, beta = 0.0f;
  BENCH_CHECK_LT(cublasLtMatmul(lt->lt, p->desc, &alpha, w, p->a, x, p->b, &beta, y, p->d, y, p->d, &p->algo, lt->ws,
                                lt->ws_bytes, stream));
  return BENCH_OK;
}

/* ---- copy bandwidth ------------------------------------------------------------------------------------------- */

static bench_rc_t measure_copy(kg_t* b) {
  BENCH_CHECK(bench_copy_bandwidth(b->ctx, &b->copy_gbs));
  bench_json_begin(&b->json);
  bench_json_str(&b->json, "section", "copy");
  bench_json_num(&b->json, "copy_gbs", b->copy_gbs);
  bench_json_end(&b->json);
  return BENCH_OK;
}

static double floor_us(const kg_t* b, double bytes) { return bytes / (b->copy_gbs * 1e9) * 1e6; }

/* ---- quant ------------------------------------------------------------------------------------------------------ */

typedef struct {
  kg_t* b;
  int64_t rows, hidden;
  int R, static_mode;
  unsigned next;
  void* x[KG_MAX_ROT];
  void* q[KG_MAX_ROT];
  float* s[KG_MAX_ROT];
  float* d_scale;
} quant_call_t;

static bench_rc_t enqueue_quant(void* arg, cudaStream_t stream) {
  quant_call_t* c = arg;
  const int r = (int)(c->next++ % (unsigned)c->R);
  tpc_status_t st = c->static_mode
                        ? tpc_quant_fp8_static(c->q[r], c->x[r], c->d_scale, c->rows, c->hidden, c->hidden, c->hidden,
                                               TPC_BFLOAT16, stream)
                        : tpc_quant_fp8_per_token(c->q[r], c->s[r], c->x[r], c->rows, c->hidden, c->hidden, c->hidden,
                                                  TPC_BFLOAT16, stream);
  return bench_tpc_rc(c->b->ctx, st, c->static_mode ? "tpc_quant_fp8_static" : "tpc_quant_fp8_per_token", __FILE__,
                      __LINE__);
}

/* Runs the per-token quantization once on copy 0 and compares sampled rows with the reference, bit for bit. */
static bench_rc_t check_quant(kg_t* b, quant_call_t* c, const uint16_t* hx, uint64_t* wrong) {
  *wrong = 0;
  const int64_t hid = c->hidden;
  int64_t rows_idx[256];
  const int n = sample_rows(c->rows, rows_idx, 256);
  uint8_t* got = malloc((size_t)hid);
  uint8_t* ref = malloc((size_t)hid);
  if (!got || !ref) {
    free(got);
    free(ref);
    return bench_fail("out of host memory");
  }
  bench_rc_t rc = BENCH_OK;
  c->next = 0;
  BENCH_TRY_CUDA(rc, cudaMemsetAsync(c->q[0], 0xA5, (size_t)(c->rows * hid), b->ctx->stream));
  if (rc == BENCH_OK) rc = enqueue_quant(c, b->ctx->stream);
  BENCH_TRY_CUDA(rc, cudaStreamSynchronize(b->ctx->stream));
  for (int i = 0; rc == BENCH_OK && i < n; i++) {
    const int64_t r = rows_idx[i];
    float s_got = 0, s_ref = 0;
    BENCH_TRY_CUDA(rc, cudaMemcpy(got, (const uint8_t*)c->q[0] + r * hid, (size_t)hid, cudaMemcpyDeviceToHost));
    BENCH_TRY_CUDA(rc, cudaMemcpy(&s_got, c->s[0] + r, 4, cudaMemcpyDeviceToHost));
    if (rc != BENCH_OK) break;
    tpc_ref_quant_fp8_per_token(hx + r * hid, 0, 1, hid, hid, ref, hid, &s_ref);
    for (int64_t j = 0; j < hid; j++) *wrong += !tpc_ref_e4m3_same(got[j], ref[j]);
    *wrong += memcmp(&s_got, &s_ref, 4) != 0;
  }
  free(got);
  free(ref);
  return rc;
}

static bench_rc_t run_quant(kg_t* b) {
  bench_ctx_t* ctx = b->ctx;
  FILE* out = bench_out(ctx);
  bench_table_t t;
  bench_table_init(&t);
  bench_table_col(&t, "rows", "", 7);
  bench_table_col(&t, "hidden", "", 7);
  bench_table_col(&t, "path", "", 8);
  bench_table_col(&t, "copies", "", 6);
  bench_table_group(&t, "per-token");
  bench_table_col(&t, "eager", "(us)", 8);
  bench_table_col(&t, "graph", "(us)", 8);
  bench_table_col(&t, "GB/s", "(graph)", 8);
  bench_table_col(&t, "graph/", "floor", 7);
  bench_table_group(&t, "static");
  bench_table_col(&t, "eager", "(us)", 8);
  bench_table_col(&t, "graph", "(us)", 8);
  bench_table_group(&t, NULL);
  bench_table_col(&t, "floor", "(us)", 8);
  bench_table_col(&t, "#wrong", "", 6);
  bench_printf(out, "\n# quant: per-token FP8 (e4m3) quantization of bf16 rows, floor = (3*rows*hidden + 4*rows) "
                    "bytes / copy bandwidth\n");
  bench_table_print_header(&t, out);
  for (int s = 0; s < NUM_QUANT; s++) {
    const int64_t rows = k_quant_shapes[s][0], hid = k_quant_shapes[s][1];
    const double bytes = 3.0 * rows * hid + 4.0 * rows;
    quant_call_t c;
    memset(&c, 0, sizeof c);
    c.b = b;
    c.rows = rows;
    c.hidden = hid;
    c.R = rotation(b, (size_t)bytes);
    bench_progress(ctx, "quant %lldx%lld (%d copies)", (long long)rows, (long long)hid, c.R);
    uint16_t* hx = malloc((size_t)(rows * hid) * 2);
    if (!hx) return bench_fail("out of host memory (%lld bytes)", (long long)(rows * hid * 2));
    fill_bf16(hx, NULL, rows, hid, 1, bench_seed((uint64_t)rows, (uint64_t)hid, 1));
    bench_rc_t rc = dalloc((void**)&c.d_scale, 4);
    const float static_scale = 1.0f / 64.0f;
    BENCH_TRY_CUDA(rc, bench_h2d(c.d_scale, &static_scale, 4));
    for (int r = 0; rc == BENCH_OK && r < c.R; r++) {
      rc = dalloc(&c.x[r], (size_t)(rows * hid) * 2);
      if (rc == BENCH_OK) rc = dalloc(&c.q[r], (size_t)(rows * hid));
      if (rc == BENCH_OK) rc = dalloc((void**)&c.s[r], (size_t)rows * 4);
      BENCH_TRY_CUDA(rc, bench_h2d(c.x[r], hx, (size_t)(rows * hid) * 2));
    }
    uint64_t wrong = 0;
    if (rc == BENCH_OK && b->o->check) rc = check_quant(b, &c, hx, &wrong);
    free(hx);
    tpc_quant_path_t path = TPC_QUANT_PATH_AUTO;
    if (rc == BENCH_OK) rc = bench_tpc_rc(ctx, tpc_quant_fp8_per_token_path(rows, hid, TPC_BFLOAT16, &path),
                                          "tpc_quant_fp8_per_token_path", __FILE__, __LINE__);
    kg_time_t tp = {0, 0, 0}, ts = {0, 0, 0};
    bench_op_t op = {enqueue_quant, &c};
    if (rc == BENCH_OK) rc = time_op(b, op, &tp);
    c.static_mode = 1;
    if (rc == BENCH_OK) rc = time_op(b, op, &ts);
    for (int r = 0; r < c.R; r++) {
      dfree(&rc, c.x[r]);
      dfree(&rc, c.q[r]);
      dfree(&rc, c.s[r]);
    }
    dfree(&rc, c.d_scale);
    BENCH_CHECK(rc);
    const double fl = floor_us(b, bytes);
    bench_table_cell(&t, "%lld", (long long)rows);
    bench_table_cell(&t, "%lld", (long long)hid);
    bench_table_cell(&t, "%s", tpc_quant_path_name(path));
    bench_table_cell(&t, "%d", c.R);
    time_cell(&t, tp.eager, tp.na);
    time_cell(&t, tp.graph, tp.na);
    bench_table_cell(&t, "%.0f", tp.graph > 0 ? bytes / (tp.graph * 1e3) : 0);
    bench_table_cell(&t, "%.2f", tp.graph > 0 ? tp.graph / fl : 0);
    time_cell(&t, ts.eager, ts.na);
    time_cell(&t, ts.graph, ts.na);
    time_cell(&t, fl, 0);
    if (b->o->check) bench_table_cell(&t, "%llu", (unsigned long long)wrong);
    else bench_table_cell(&t, "-");
    bench_table_end_row(&t, out);
    b->wrong_total += wrong;
    b->sum.quant_graph[s] = tp.graph;
    bench_json_begin(&b->json);
    bench_json_str(&b->json, "section", "quant");
    bench_json_int(&b->json, "rows", rows);
    bench_json_int(&b->json, "hidden", hid);
    bench_json_str(&b->json, "path", tpc_quant_path_name(path));
    bench_json_int(&b->json, "copies", c.R);
    bench_json_num(&b->json, "per_token_eager_us", tp.eager);
    bench_json_num(&b->json, "per_token_graph_us", tp.graph);
    bench_json_num(&b->json, "static_eager_us", ts.eager);
    bench_json_num(&b->json, "static_graph_us", ts.graph);
    bench_json_num(&b->json, "floor_us", fl);
    if (b->o->check) bench_json_int(&b->json, "wrong", (long long)wrong);
    else bench_json_null(&b->json, "wrong");
    bench_json_end(&b->json);
  }
  b->sum.have_quant = 1;
  return BENCH_OK;
}

/* ---- GEMM: six projections, merged, plain ---------------------------------------------------------------------- */

typedef struct {
  int R;
  void* w[KG_MAX_ROT][KG_NUM_PROJ]; /* separate weights, copy r */
  tpc_merged_linear_t ml[KG_MAX_ROT];
  const void* wm[KG_MAX_ROT]; /* merged weight of copy r */
  int64_t off[KG_NUM_PROJ];
  void* x; /* [8192, 2304] */
  void* y; /* [8192, 3336] */
  float* hw[KG_NUM_PROJ]; /* host values of copy 0's weights */
  float* hxf;             /* host values of x */
} gemm_bufs_t;

typedef enum { IMPL_SEPARATE, IMPL_MERGED, IMPL_TUNED, IMPL_PLAIN, NUM_IMPLS } gemm_impl_t;

typedef struct {
  kg_t* b;
  gemm_bufs_t* g;
  gemm_impl_t impl;
  int64_t m;
  lt_plan_t* plan;
  unsigned next;
} gemm_call_t;

static bench_rc_t enqueue_gemm(void* arg, cudaStream_t stream) {
  gemm_call_t* c = arg;
  gemm_bufs_t* g = c->g;
  const int r = (int)(c->next++ % (unsigned)g->R);
  bench_ctx_t* ctx = c->b->ctx;
  switch (c->impl) {
    case IMPL_SEPARATE:
      for (int i = 0; i < KG_NUM_PROJ; i++) {
        tpc_status_t st = tpc_gemm(c->b->h, c->m, k_proj_n[i], KG_K, g->x, KG_K, g->w[r][i], KG_K,
                                   (uint16_t*)g->y + g->off[i], KG_N_MERGED, TPC_BFLOAT16, stream);
        BENCH_CHECK(bench_tpc_rc(ctx, st, "tpc_gemm", __FILE__, __LINE__));
      }
      return BENCH_OK;
    case IMPL_MERGED:
      return bench_tpc_rc(ctx, tpc_merged_linear_forward(g->ml[r], g->x, c->m, KG_K, g->y, KG_N_MERGED, stream),
                          "tpc_merged_linear_forward", __FILE__, __LINE__);
    case IMPL_TUNED: /* the merged weight through the autotuning handle: the same GEMM as the merged forward */
      return bench_tpc_rc(ctx,
                          tpc_gemm(c->b->h_tuned, c->m, KG_N_MERGED, KG_K, g->x, KG_K, g->wm[r], KG_K, g->y, KG_N_MERGED,
                                   TPC_BFLOAT16, stream),
                          "tpc_gemm (autotuned)", __FILE__, __LINE__);
    default: return lt_run(&c->b->lt, c->plan, g->wm[r], g->x, g->y, stream);
  }
}

/* One call, then sampled rows of y (all 3336 columns) against the CPU; weights of copy 0. */
static bench_rc_t check_gemm(kg_t* b, gemm_call_t* c, uint64_t* wrong) {
  gemm_bufs_t* g = c->g;
  int64_t rows[KG_CHECK_ROWS];
  const int n = sample_rows(c->m, rows, KG_CHECK_ROWS);
  BENCH_CHECK_CUDA(cudaMemsetAsync(g->y, 0xff, (size_t)(c->m * KG_N_MERGED) * 2, b->ctx->stream));
  c->next = 0; /* copy 0 */
  BENCH_CHECK(enqueue_gemm(c, b->ctx->stream));
  BENCH_CHECK_CUDA(cudaStreamSynchronize(b->ctx->stream));
  uint16_t yh[KG_N_MERGED];
  float yf[KG_N_MERGED];
  double ref[1024], refabs[1024];
  *wrong = 0;
  for (int i = 0; i < n; i++) {
    BENCH_CHECK_CUDA(cudaMemcpy(yh, (const uint16_t*)g->y + rows[i] * KG_N_MERGED, sizeof yh, cudaMemcpyDeviceToHost));
    for (int j = 0; j < KG_N_MERGED; j++) yf[j] = bench_bf16_to_f32(yh[j]);
    for (int p = 0; p < KG_NUM_PROJ; p++) {
      tpc_ref_gemm(g->hxf + rows[i] * KG_K, KG_K, g->hw[p], KG_K, ref, refabs, k_proj_n[p], 1, k_proj_n[p], KG_K);
      *wrong += (uint64_t)tpc_ref_count_wrong(yf + g->off[p], KG_N_MERGED, ref, refabs, k_proj_n[p], 1, k_proj_n[p],
                                              1.01 / 256.0, 1e-4, NULL);
    }
  }
  return BENCH_OK;
}

static bench_rc_t gemm_bufs_init(kg_t* b, gemm_bufs_t* g) {
  memset(g, 0, sizeof *g);
  const size_t wbytes = (size_t)KG_N_MERGED * KG_K * 2;
  g->R = rotation(b, wbytes);
  int64_t off = 0;
  for (int p = 0; p < KG_NUM_PROJ; p++) {
    g->off[p] = off;
    off += k_proj_n[p];
  }
  uint16_t* hw = malloc((size_t)1024 * KG_K * 2);
  if (!hw) return bench_fail("out of host memory");
  bench_rc_t rc = BENCH_OK;
  for (int r = 0; rc == BENCH_OK && r < g->R; r++) {
    for (int p = 0; rc == BENCH_OK && p < KG_NUM_PROJ; p++) {
      if (r == 0) {
        g->hw[p] = malloc((size_t)k_proj_n[p] * KG_K * 4);
        if (!g->hw[p]) rc = bench_fail("out of host memory");
      }
      if (rc != BENCH_OK) break;
      /* copy r draws its own values (copy 0's are the checked ones) */
      fill_bf16(hw, r == 0 ? g->hw[p] : NULL, k_proj_n[p], KG_K, 0, bench_seed(7, (uint64_t)r, (uint64_t)p));
      rc = dalloc(&g->w[r][p], (size_t)k_proj_n[p] * KG_K * 2);
      BENCH_TRY_CUDA(rc, bench_h2d(g->w[r][p], hw, (size_t)k_proj_n[p] * KG_K * 2));
    }
    if (rc != BENCH_OK) break;
    rc = bench_tpc_rc(b->ctx,
                      tpc_merged_linear_create(b->h, (const void* const*)g->w[r], k_proj_n, KG_NUM_PROJ, KG_K,
                                               TPC_BFLOAT16, b->ctx->stream, &g->ml[r]),
                      "tpc_merged_linear_create", __FILE__, __LINE__);
    int64_t n_total = 0;
    if (rc == BENCH_OK)
      rc = bench_tpc_rc(b->ctx, tpc_merged_linear_info(g->ml[r], NULL, &n_total, NULL, &g->wm[r]), "tpc_merged_linear_info",
                        __FILE__, __LINE__);
    if (rc == BENCH_OK && n_total != KG_N_MERGED) rc = bench_fail("merged width %lld, expected %d", (long long)n_total, KG_N_MERGED);
    for (int p = 0; rc == BENCH_OK && p < KG_NUM_PROJ; p++) {
      int64_t o = -1;
      rc = bench_tpc_rc(b->ctx, tpc_merged_linear_output(g->ml[r], p, &o, NULL), "tpc_merged_linear_output", __FILE__, __LINE__);
      if (rc == BENCH_OK && o != g->off[p]) rc = bench_fail("merged output %d at column %lld, expected %lld", p, (long long)o, (long long)g->off[p]);
    }
  }
  free(hw);
  BENCH_CHECK(rc);
  const int64_t mmax = k_gemm_m[NUM_GEMM_M - 1];
  uint16_t* hx = malloc((size_t)(mmax * KG_K) * 2);
  g->hxf = malloc((size_t)(mmax * KG_K) * 4);
  if (!hx || !g->hxf) {
    free(hx);
    return bench_fail("out of host memory");
  }
  fill_bf16(hx, g->hxf, mmax, KG_K, 0, bench_seed(8, 0, 0));
  rc = dalloc(&g->x, (size_t)(mmax * KG_K) * 2);
  BENCH_TRY_CUDA(rc, bench_h2d(g->x, hx, (size_t)(mmax * KG_K) * 2));
  free(hx);
  if (rc == BENCH_OK) rc = dalloc(&g->y, (size_t)(mmax * KG_N_MERGED) * 2);
  return rc;
}

static bench_rc_t gemm_bufs_free(kg_t* b, gemm_bufs_t* g) {
  bench_rc_t rc = BENCH_OK;
  for (int r = 0; r < g->R; r++) {
    if (g->ml[r]) {
      tpc_status_t st = tpc_merged_linear_destroy(g->ml[r]);
      if (st != TPC_SUCCESS)
        bench_keep_first(&rc, bench_tpc_fail(b->ctx, st, "tpc_merged_linear_destroy", __FILE__, __LINE__));
    }
    for (int p = 0; p < KG_NUM_PROJ; p++) dfree(&rc, g->w[r][p]);
  }
  for (int p = 0; p < KG_NUM_PROJ; p++) free(g->hw[p]);
  free(g->hxf);
  dfree(&rc, g->x);
  dfree(&rc, g->y);
  memset(g, 0, sizeof *g);
  return rc;
}

static bench_rc_t run_gemm(kg_t* b) {
  bench_ctx_t* ctx = b->ctx;
  FILE* out = bench_out(ctx);
  gemm_bufs_t g;
  bench_progress(ctx, "gemm: weights and inputs");
  bench_rc_t rc = gemm_bufs_init(b, &g);
  if (rc != BENCH_OK) {
    gemm_bufs_free(b, &g);
    return rc;
  }
  const double wbytes = (double)KG_N_MERGED * KG_K * 2;
  b->sum.weight_floor_us = floor_us(b, wbytes);
  bench_table_t t;
  bench_table_init(&t);
  bench_table_col(&t, "m", "", 5);
  bench_table_group(&t, "6 separate");
  bench_table_col(&t, "eager", "(us)", 8);
  bench_table_col(&t, "graph", "(us)", 8);
  bench_table_group(&t, "merged");
  bench_table_col(&t, "eager", "(us)", 8);
  bench_table_col(&t, "graph", "(us)", 8);
  bench_table_col(&t, "TFLOP/s", "(graph)", 8);
  bench_table_group(&t, "merged, autotuned");
  bench_table_col(&t, "eager", "(us)", 8);
  bench_table_col(&t, "graph", "(us)", 8);
  bench_table_group(&t, "plain cuBLASLt");
  bench_table_col(&t, "eager", "(us)", 8);
  bench_table_col(&t, "graph", "(us)", 8);
  bench_table_group(&t, NULL);
  bench_table_col(&t, "sep/mrg", "(graph)", 8);
  bench_table_col(&t, "mrg/plain", "(graph)", 9);
  bench_table_col(&t, "floor", "(us)", 7);
  bench_table_col(&t, "mrg/floor", "(graph)", 9);
  bench_table_col(&t, "#wrong", "", 6);
  bench_printf(out,
               "\n# gemm: y = x . W^T, bf16, k = %d, n = 1024+1024+1024+8+128+128 = %d; weights rotated over %d copies; "
               "floor = (weights + x + y) bytes / copy bandwidth (weights alone: %.2f us)\n",
               KG_K, KG_N_MERGED, g.R, b->sum.weight_floor_us);
  bench_table_print_header(&t, out);
  for (int mi = 0; rc == BENCH_OK && mi < NUM_GEMM_M; mi++) {
    const int64_t m = k_gemm_m[mi];
    bench_progress(ctx, "gemm m=%lld", (long long)m);
    lt_plan_t plan;
    bench_rc_t prc = lt_plan_init(&b->lt, &plan, m, KG_N_MERGED, KG_K, KG_K, KG_K, KG_N_MERGED, CUDA_R_16BF, CUDA_R_16BF);
    if (prc == BENCH_FAIL) {
      rc = prc;
      bench_keep_first(&rc, lt_plan_free(&plan));
      break;
    }
    kg_time_t tm[NUM_IMPLS];
    uint64_t wrong = 0;
    for (int impl = 0; rc == BENCH_OK && impl < NUM_IMPLS; impl++) {
      gemm_call_t c = {b, &g, (gemm_impl_t)impl, m, &plan, 0};
      if (impl == IMPL_PLAIN && prc == BENCH_NA) {
        memset(&tm[impl], 0, sizeof tm[impl]);
        tm[impl].na = 1;
        continue;
      }
      uint64_t w = 0;
      if (b->o->check) rc = check_gemm(b, &c, &w);
      wrong += w;
      bench_op_t op = {enqueue_gemm, &c};
      if (rc == BENCH_OK) rc = time_op(b, op, &tm[impl]);
    }
    bench_keep_first(&rc, lt_plan_free(&plan));
    if (rc != BENCH_OK) break;
    const double bytes = wbytes + (double)m * KG_K * 2 + (double)m * KG_N_MERGED * 2;
    const double fl = floor_us(b, bytes);
    const kg_time_t *ts = &tm[IMPL_SEPARATE], *tmg = &tm[IMPL_MERGED], *ttu = &tm[IMPL_TUNED], *tpl = &tm[IMPL_PLAIN];
    bench_table_cell(&t, "%lld", (long long)m);
    time_cell(&t, ts->eager, ts->na);
    time_cell(&t, ts->graph, ts->na);
    time_cell(&t, tmg->eager, tmg->na);
    time_cell(&t, tmg->graph, tmg->na);
    bench_table_cell(&t, "%.1f", tflops((double)m, KG_N_MERGED, KG_K, tmg->graph));
    time_cell(&t, ttu->eager, ttu->na);
    time_cell(&t, ttu->graph, ttu->na);
    time_cell(&t, tpl->eager, tpl->na);
    time_cell(&t, tpl->graph, tpl->na);
    bench_table_cell(&t, "%.2f", tmg->graph > 0 ? ts->graph / tmg->graph : 0);
    if (tpl->na) bench_table_cell(&t, "n/a");
    else bench_table_cell(&t, "%.3f", tpl->graph > 0 ? tmg->graph / tpl->graph : 0);
    time_cell(&t, fl, 0);
    bench_table_cell(&t, "%.2f", tmg->graph / fl);
    if (b->o->check) bench_table_cell(&t, "%llu", (unsigned long long)wrong);
    else bench_table_cell(&t, "-");
    bench_table_end_row(&t, out);
    b->wrong_total += wrong;
    b->sum.sep_graph[mi] = ts->graph;
    b->sum.sep_eager[mi] = ts->eager;
    b->sum.merged_graph[mi] = tmg->graph;
    b->sum.merged_eager[mi] = tmg->eager;
    b->sum.plain_graph[mi] = tpl->na ? 0 : tpl->graph;
    b->sum.tuned_graph[mi] = ttu->na ? 0 : ttu->graph;
    static const char* impl_names[NUM_IMPLS] = {"separate", "merged", "merged_autotuned", "plain_cublaslt"};
    for (int impl = 0; impl < NUM_IMPLS; impl++) {
      if (tm[impl].na) continue;
      bench_json_begin(&b->json);
      bench_json_str(&b->json, "section", "gemm");
      bench_json_str(&b->json, "impl", impl_names[impl]);
      bench_json_int(&b->json, "m", m);
      bench_json_int(&b->json, "n", KG_N_MERGED);
      bench_json_int(&b->json, "k", KG_K);
      bench_json_int(&b->json, "weight_copies", g.R);
      bench_json_num(&b->json, "eager_us", tm[impl].eager);
      bench_json_num(&b->json, "graph_us", tm[impl].graph);
      bench_json_num(&b->json, "graph_tflops", tflops((double)m, KG_N_MERGED, KG_K, tm[impl].graph));
      bench_json_num(&b->json, "floor_us", fl);
      if (b->o->check) bench_json_int(&b->json, "wrong", (long long)wrong);
      else bench_json_null(&b->json, "wrong");
      bench_json_end(&b->json);
    }
  }
  bench_keep_first(&rc, gemm_bufs_free(b, &g));
  if (rc == BENCH_OK) b->sum.have_gemm = 1;
  return rc;
}

/* ---- batched pair ---------------------------------------------------------------------------------------------- */

typedef struct {
  kg_t* b;
  int64_t m;
  int batched;
  void *x, *w, *y; /* x [2][m][128], w [2][1024][128], y [2][m][1024] */
} pair_call_t;

static bench_rc_t enqueue_pair(void* arg, cudaStream_t stream) {
  pair_call_t* c = arg;
  const int64_t k = 128, n = 1024, m = c->m;
  if (c->batched)
    return bench_tpc_rc(c->b->ctx,
                        tpc_gemm_strided_batched(c->b->h, m, n, k, c->x, k, m * k, c->w, k, n * k, c->y, n, m * n, 2,
                                                 TPC_BFLOAT16, stream),
                        "tpc_gemm_strided_batched", __FILE__, __LINE__);
  for (int i = 0; i < 2; i++)
    BENCH_CHECK(bench_tpc_rc(c->b->ctx,
                             tpc_gemm(c->b->h, m, n, k, (const uint16_t*)c->x + i * m * k, k,
                                      (const uint16_t*)c->w + i * n * k, k, (uint16_t*)c->y + i * m * n, n, TPC_BFLOAT16,
                                      stream),
                             "tpc_gemm", __FILE__, __LINE__));
  return BENCH_OK;
}

static bench_rc_t check_pair(kg_t* b, pair_call_t* c, const float* hx, const float* hw, uint64_t* wrong) {
  const int64_t k = 128, n = 1024, m = c->m;
  BENCH_CHECK_CUDA(cudaMemsetAsync(c->y, 0xff, (size_t)(2 * m * n) * 2, b->ctx->stream));
  BENCH_CHECK(enqueue_pair(c, b->ctx->stream));
  BENCH_CHECK_CUDA(cudaStreamSynchronize(b->ctx->stream));
  int64_t rows[KG_CHECK_ROWS];
  const int nr = sample_rows(m, rows, KG_CHECK_ROWS);
  uint16_t yh[1024];
  float yf[1024];
  double ref[1024], refabs[1024];
  *wrong = 0;
  for (int bt = 0; bt < 2; bt++)
    for (int i = 0; i < nr; i++) {
      BENCH_CHECK_CUDA(cudaMemcpy(yh, (const uint16_t*)c->y + (bt * m + rows[i]) * n, sizeof yh, cudaMemcpyDeviceToHost));
      for (int j = 0; j < n; j++) yf[j] = bench_bf16_to_f32(yh[j]);
      tpc_ref_gemm(hx + (bt * m + rows[i]) * k, k, hw + bt * n * k, k, ref, refabs, n, 1, n, k);
      *wrong += (uint64_t)tpc_ref_count_wrong(yf, n, ref, refabs, n, 1, n, 1.01 / 256.0, 1e-4, NULL);
    }
  return BENCH_OK;
}

static bench_rc_t run_batched(kg_t* b) {
  bench_ctx_t* ctx = b->ctx;
  FILE* out = bench_out(ctx);
  const int64_t k = 128, n = 1024, mmax = k_gemm_m[NUM_GEMM_M - 1];
  uint16_t* hx = malloc((size_t)(2 * mmax * k) * 2);
  uint16_t* hw = malloc((size_t)(2 * n * k) * 2);
  float* fx = malloc((size_t)(2 * mmax * k) * 4);
  float* fw = malloc((size_t)(2 * n * k) * 4);
  void *dx = NULL, *dw = NULL, *dy = NULL;
  bench_rc_t rc = (hx && hw && fx && fw) ? BENCH_OK : bench_fail("out of host memory");
  if (rc == BENCH_OK) {
    fill_bf16(hw, fw, 2 * n, k, 0, bench_seed(9, 1, 0));
    rc = dalloc(&dx, (size_t)(2 * mmax * k) * 2);
  }
  if (rc == BENCH_OK) rc = dalloc(&dw, (size_t)(2 * n * k) * 2);
  if (rc == BENCH_OK) rc = dalloc(&dy, (size_t)(2 * mmax * n) * 2);
  BENCH_TRY_CUDA(rc, bench_h2d(dw, hw, (size_t)(2 * n * k) * 2));
  bench_table_t t;
  bench_table_init(&t);
  bench_table_col(&t, "m", "", 5);
  bench_table_group(&t, "batched (1 call)");
  bench_table_col(&t, "eager", "(us)", 8);
  bench_table_col(&t, "graph", "(us)", 8);
  bench_table_col(&t, "TFLOP/s", "(graph)", 8);
  bench_table_group(&t, "2 x tpc_gemm");
  bench_table_col(&t, "eager", "(us)", 8);
  bench_table_col(&t, "graph", "(us)", 8);
  bench_table_group(&t, NULL);
  bench_table_col(&t, "#wrong", "", 6);
  bench_printf(out, "\n# batched: two [m,128] x [128,1024] bf16 products (strided batched, batch 2) vs two calls\n");
  bench_table_print_header(&t, out);
  for (int mi = 0; rc == BENCH_OK && mi < NUM_GEMM_M; mi++) {
    const int64_t m = k_gemm_m[mi];
    /* x for this m: [2][m][128] contiguous, fresh values */
    fill_bf16(hx, fx, 2 * m, k, 0, bench_seed(10, (uint64_t)m, 0));
    BENCH_TRY_CUDA(rc, bench_h2d(dx, hx, (size_t)(2 * m * k) * 2));
    if (rc != BENCH_OK) break;
    kg_time_t tm[2];
    uint64_t wrong = 0;
    for (int batched = 1; rc == BENCH_OK && batched >= 0; batched--) {
      pair_call_t c = {b, m, batched, dx, dw, dy};
      uint64_t w = 0;
      if (b->o->check) rc = check_pair(b, &c, fx, fw, &w);
      wrong += w;
      bench_op_t op = {enqueue_pair, &c};
      if (rc == BENCH_OK) rc = time_op(b, op, &tm[batched]);
    }
    if (rc != BENCH_OK) break;
    bench_table_cell(&t, "%lld", (long long)m);
    time_cell(&t, tm[1].eager, tm[1].na);
    time_cell(&t, tm[1].graph, tm[1].na);
    bench_table_cell(&t, "%.1f", tflops(2.0 * m, n, k, tm[1].graph));
    time_cell(&t, tm[0].eager, tm[0].na);
    time_cell(&t, tm[0].graph, tm[0].na);
    if (b->o->check) bench_table_cell(&t, "%llu", (unsigned long long)wrong);
    else bench_table_cell(&t, "-");
    bench_table_end_row(&t, out);
    b->wrong_total += wrong;
    for (int batched = 0; batched < 2; batched++) {
      bench_json_begin(&b->json);
      bench_json_str(&b->json, "section", "batched");
      bench_json_str(&b->json, "impl", batched ? "strided_batched" : "two_calls");
      bench_json_int(&b->json, "m", m);
      bench_json_num(&b->json, "eager_us", tm[batched].eager);
      bench_json_num(&b->json, "graph_us", tm[batched].graph);
      bench_json_num(&b->json, "graph_tflops", tflops(2.0 * m, n, k, tm[batched].graph));
      if (b->o->check) bench_json_int(&b->json, "wrong", (long long)wrong);
      else bench_json_null(&b->json, "wrong");
      bench_json_end(&b->json);
    }
  }
  free(hx);
  free(hw);
  free(fx);
  free(fw);
  dfree(&rc, dx);
  dfree(&rc, dw);
  dfree(&rc, dy);
  return rc;
}

/* ---- large square GEMM --------------------------------------------------------------------------------------------- */

enum { SQ_OURS, SQ_TUNED, SQ_PLAIN, NUM_SQ };
static const char* const k_sq_names[NUM_SQ] = {"tpc_gemm", "tpc_gemm autotuned", "plain cuBLASLt"};
static const char* const k_sq_json[NUM_SQ] = {"tpc_gemm", "tpc_gemm_autotuned", "plain_cublaslt"};

typedef struct {
  kg_t* b;
  int impl; /* SQ_* */
  lt_plan_t* plan;
  void *x, *w, *y;
} square_call_t;

static bench_rc_t enqueue_square(void* arg, cudaStream_t stream) {
  square_call_t* c = arg;
  const int64_t s = KG_SQUARE;
  if (c->impl == SQ_PLAIN) return lt_run(&c->b->lt, c->plan, c->w, c->x, c->y, stream);
  return bench_tpc_rc(c->b->ctx,
                      tpc_gemm(c->impl == SQ_TUNED ? c->b->h_tuned : c->b->h, s, s, s, c->x, s, c->w, s, c->y, s,
                               TPC_BFLOAT16, stream),
                      "tpc_gemm", __FILE__, __LINE__);
}

static bench_rc_t run_square(kg_t* b) {
  bench_ctx_t* ctx = b->ctx;
  FILE* out = bench_out(ctx);
  const int64_t s = KG_SQUARE;
  const size_t elems = (size_t)(s * s);
  uint16_t* h = malloc(elems * 2);
  float* fx = malloc((size_t)KG_CHECK_ROWS * s * 4);
  float* fw = malloc(elems * 4);
  void *dx = NULL, *dw = NULL, *dy = NULL;
  bench_rc_t rc = (h && fx && fw) ? BENCH_OK : bench_fail("out of host memory");
  bench_progress(ctx, "square %lld^3: inputs", (long long)s);
  if (rc == BENCH_OK) rc = dalloc(&dx, elems * 2);
  if (rc == BENCH_OK) rc = dalloc(&dw, elems * 2);
  if (rc == BENCH_OK) rc = dalloc(&dy, elems * 2);
  int64_t rows[KG_CHECK_ROWS];
  const int nr = sample_rows(s, rows, KG_CHECK_ROWS);
  if (rc == BENCH_OK) {
    fill_bf16(h, fw, s, s, 0, bench_seed(11, 1, 0));
    BENCH_TRY_CUDA(rc, bench_h2d(dw, h, elems * 2));
  }
  if (rc == BENCH_OK) {
    fill_bf16(h, NULL, s, s, 0, bench_seed(11, 2, 0));
    for (int i = 0; i < nr; i++)
      for (int64_t j = 0; j < s; j++) fx[i * s + j] = bench_bf16_to_f32(h[rows[i] * s + j]);
    BENCH_TRY_CUDA(rc, bench_h2d(dx, h, elems * 2));
  }
  lt_plan_t plan;
  memset(&plan, 0, sizeof plan);
  bench_rc_t prc = rc == BENCH_OK ? lt_plan_init(&b->lt, &plan, s, s, s, s, s, s, CUDA_R_16BF, CUDA_R_16BF) : rc;
  if (prc == BENCH_FAIL) rc = prc;
  kg_time_t tm[NUM_SQ];
  memset(tm, 0, sizeof tm);
  uint64_t wrong = 0;
  for (int impl = 0; rc == BENCH_OK && impl < NUM_SQ; impl++) {
    square_call_t c = {b, impl, &plan, dx, dw, dy};
    if (impl == SQ_PLAIN && prc == BENCH_NA) {
      tm[impl].na = 1;
      break;
    }
    if (b->o->check) {
      bench_progress(ctx, "square: check (%s)", k_sq_names[impl]);
      double* ref = malloc((size_t)s * 8);
      double* refabs = malloc((size_t)s * 8);
      uint16_t* yh = malloc((size_t)s * 2);
      float* yf = malloc((size_t)s * 4);
      if (!ref || !refabs || !yh || !yf) rc = bench_fail("out of host memory");
      BENCH_TRY_CUDA(rc, cudaMemsetAsync(dy, 0xff, elems * 2, ctx->stream));
      if (rc == BENCH_OK) rc = enqueue_square(&c, ctx->stream);
      BENCH_TRY_CUDA(rc, cudaStreamSynchronize(ctx->stream));
      for (int i = 0; rc == BENCH_OK && i < nr; i++) {
        BENCH_TRY_CUDA(rc, cudaMemcpy(yh, (const uint16_t*)dy + rows[i] * s, (size_t)s * 2, cudaMemcpyDeviceToHost));
        if (rc != BENCH_OK) break;
        for (int64_t j = 0; j < s; j++) yf[j] = bench_bf16_to_f32(yh[j]);
        tpc_ref_gemm(fx + i * s, s, fw, s, ref, refabs, s, 1, s, s);
        wrong += (uint64_t)tpc_ref_count_wrong(yf, s, ref, refabs, s, 1, s, 1.01 / 256.0, 1e-4, NULL);
      }
      free(ref);
      free(refabs);
      free(yh);
      free(yf);
    }
    bench_op_t op = {enqueue_square, &c};
    bench_progress(ctx, "square: timing (%s)", k_sq_names[impl]);
    if (rc == BENCH_OK) rc = time_op(b, op, &tm[impl]);
  }
  bench_keep_first(&rc, lt_plan_free(&plan));
  free(h);
  free(fx);
  free(fw);
  dfree(&rc, dx);
  dfree(&rc, dy);
  dfree(&rc, dw);
  BENCH_CHECK(rc);
  bench_printf(out, "\n# square: %lld^3 bf16 GEMM (fp32 accumulation); eager %s (the GPU's clock falls under sustained "
                    "load, so compare rows measured alike)\n", (long long)s, "first, then graph");
  for (int impl = 0; impl < NUM_SQ; impl++) {
    if (tm[impl].na) bench_printf(out, "#   %-19s n/a\n", k_sq_names[impl]);
    else
      bench_printf(out, "#   %-19s eager %9.1f us (%6.1f TFLOP/s)  graph %9.1f us  %6.1f TFLOP/s (graph)\n",
                   k_sq_names[impl], tm[impl].eager, tflops(s, s, s, tm[impl].eager), tm[impl].graph,
                   tflops(s, s, s, tm[impl].graph));
  }
  if (b->o->check) bench_printf(out, "#   #wrong (%d sampled rows, all): %llu\n", nr, (unsigned long long)wrong);
  b->wrong_total += wrong;
  b->sum.square_tflops = tflops(s, s, s, tm[SQ_OURS].graph);
  b->sum.square_tuned_tflops = tflops(s, s, s, tm[SQ_TUNED].graph);
  b->sum.have_square = 1;
  for (int impl = 0; impl < NUM_SQ; impl++) {
    if (tm[impl].na) continue;
    bench_json_begin(&b->json);
    bench_json_str(&b->json, "section", "square");
    bench_json_str(&b->json, "impl", k_sq_json[impl]);
    bench_json_int(&b->json, "m", s);
    bench_json_int(&b->json, "n", s);
    bench_json_int(&b->json, "k", s);
    bench_json_num(&b->json, "eager_us", tm[impl].eager);
    bench_json_num(&b->json, "graph_us", tm[impl].graph);
    bench_json_num(&b->json, "graph_tflops", tflops(s, s, s, tm[impl].graph));
    bench_json_end(&b->json);
  }
  return BENCH_OK;
}

/* ---- FP8 ---------------------------------------------------------------------------------------------------------- */

typedef struct {
  kg_t* b;
  int64_t m, n, k;
  tpc_fp8_scaling_t scaling;
  void *xq, *wq, *y;
  float *xs, *ws;
} fp8_call_t;

static bench_rc_t enqueue_fp8(void* arg, cudaStream_t stream) {
  fp8_call_t* c = arg;
  return bench_tpc_rc(c->b->ctx,
                      tpc_gemm_fp8(c->b->h, c->m, c->n, c->k, c->xq, c->k, c->xs, c->wq, c->k, c->ws, c->y, c->n,
                                   TPC_BFLOAT16, c->scaling, stream),
                      "tpc_gemm_fp8", __FILE__, __LINE__);
}

/* Quantizes random bf16 rows [rows, k] per row on the GPU into q/s (device); host copies of codes/scales. */
static bench_rc_t fp8_operand(kg_t* b, int64_t rows, int64_t k, uint64_t seed, void** q, float** s, uint8_t** hq,
                              float** hs) {
  const size_t n = (size_t)(rows * k);
  uint16_t* h = malloc(n * 2);
  *hq = malloc(n);
  *hs = malloc((size_t)rows * 4);
  void* dx = NULL;
  bench_rc_t rc = (h && *hq && *hs) ? BENCH_OK : bench_fail("out of host memory");
  if (rc == BENCH_OK) {
    fill_bf16(h, NULL, rows, k, 1, seed);
    rc = dalloc(&dx, n * 2);
  }
  if (rc == BENCH_OK) rc = dalloc(q, n);
  if (rc == BENCH_OK) rc = dalloc((void**)s, (size_t)rows * 4);
  BENCH_TRY_CUDA(rc, bench_h2d(dx, h, n * 2));
  if (rc == BENCH_OK)
    rc = bench_tpc_rc(b->ctx, tpc_quant_fp8_per_token(*q, *s, dx, rows, k, k, k, TPC_BFLOAT16, b->ctx->stream),
                      "tpc_quant_fp8_per_token", __FILE__, __LINE__);
  BENCH_TRY_CUDA(rc, cudaStreamSynchronize(b->ctx->stream));
  BENCH_TRY_CUDA(rc, cudaMemcpy(*hq, *q, n, cudaMemcpyDeviceToHost));
  BENCH_TRY_CUDA(rc, cudaMemcpy(*hs, *s, (size_t)rows * 4, cudaMemcpyDeviceToHost));
  free(h);
  dfree(&rc, dx);
  return rc;
}

/* One FP8 GEMM call and sampled rows against the dequantized product. BENCH_NA when refused. */
static bench_rc_t check_fp8(kg_t* b, fp8_call_t* c, const uint8_t* hxq, const float* hxs, const uint8_t* hwq,
                            const float* hws, uint64_t* wrong) {
  *wrong = 0;
  BENCH_CHECK_CUDA(cudaMemsetAsync(c->y, 0xff, (size_t)(c->m * c->n) * 2, b->ctx->stream));
  BENCH_CHECK(enqueue_fp8(c, b->ctx->stream));
  BENCH_CHECK_CUDA(cudaStreamSynchronize(b->ctx->stream));
  int64_t rows[4];
  const int nr = sample_rows(c->m, rows, 4);
  uint16_t* yh = malloc((size_t)c->n * 2);
  float* yf = malloc((size_t)c->n * 4);
  double* ref = malloc((size_t)c->n * 8);
  double* refabs = malloc((size_t)c->n * 8);
  bench_rc_t rc = (yh && yf && ref && refabs) ? BENCH_OK : bench_fail("out of host memory");
  for (int i = 0; rc == BENCH_OK && i < nr; i++) {
    BENCH_TRY_CUDA(rc, cudaMemcpy(yh, (const uint16_t*)c->y + rows[i] * c->n, (size_t)c->n * 2, cudaMemcpyDeviceToHost));
    if (rc != BENCH_OK) break;
    for (int64_t j = 0; j < c->n; j++) yf[j] = bench_bf16_to_f32(yh[j]);
    tpc_ref_gemm_fp8(hxq + rows[i] * c->k, c->k, hxs + rows[i], hwq, c->k, hws, ref, refabs, c->n, 1, c->n, c->k);
    *wrong += (uint64_t)tpc_ref_count_wrong(yf, c->n, ref, refabs, c->n, 1, c->n, 1.01 / 256.0, 1.0 / 1024.0, NULL);
  }
  free(yh);
  free(yf);
  free(ref);
  free(refabs);
  return rc;
}

static bench_rc_t run_fp8(kg_t* b) {
  bench_ctx_t* ctx = b->ctx;
  FILE* out = bench_out(ctx);
  bench_table_t t;
  bench_table_init(&t);
  bench_table_col(&t, "m", "", 5);
  bench_table_col(&t, "n", "", 5);
  bench_table_col(&t, "k", "", 5);
  bench_table_group(&t, "outer-vector scales");
  bench_table_col(&t, "eager", "(us)", 8);
  bench_table_col(&t, "graph", "(us)", 8);
  bench_table_col(&t, "TFLOP/s", "(graph)", 8);
  bench_table_group(&t, "unit scales + epilogue");
  bench_table_col(&t, "eager", "(us)", 8);
  bench_table_col(&t, "graph", "(us)", 8);
  bench_table_col(&t, "TFLOP/s", "(graph)", 8);
  bench_table_group(&t, NULL);
  bench_table_col(&t, "#wrong", "", 6);
  bench_printf(out, "\n# fp8: tpc_gemm_fp8, e4m3 x e4m3 -> bf16, per-token x per-channel scales (inputs quantized by "
                    "tpc_quant_fp8_per_token)\n");
  bench_table_print_header(&t, out);
  const int64_t shapes[][3] = {{k_fp8_m[0], KG_N_MERGED, KG_K},
                               {k_fp8_m[1], KG_N_MERGED, KG_K},
                               {k_fp8_m[2], KG_N_MERGED, KG_K},
                               {KG_SQUARE, KG_SQUARE, KG_SQUARE}};
  bench_rc_t rc = BENCH_OK;
  for (int s = 0; rc == BENCH_OK && s < 4; s++) {
    const int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
    bench_progress(ctx, "fp8 %lldx%lldx%lld", (long long)m, (long long)n, (long long)k);
    fp8_call_t c;
    memset(&c, 0, sizeof c);
    c.b = b;
    c.m = m;
    c.n = n;
    c.k = k;
    uint8_t *hxq = NULL, *hwq = NULL;
    float *hxs = NULL, *hws = NULL;
    rc = fp8_operand(b, m, k, bench_seed(12, (uint64_t)m, (uint64_t)k), &c.xq, &c.xs, &hxq, &hxs);
    if (rc == BENCH_OK) rc = fp8_operand(b, n, k, bench_seed(13, (uint64_t)n, (uint64_t)k), &c.wq, &c.ws, &hwq, &hws);
    if (rc == BENCH_OK) rc = dalloc(&c.y, (size_t)(m * n) * 2);
    kg_time_t tm[2];
    memset(tm, 0, sizeof tm);
    uint64_t wrong = 0;
    const tpc_fp8_scaling_t sc[2] = {TPC_FP8_SCALING_OUTER_VEC, TPC_FP8_SCALING_EPILOGUE};
    for (int i = 0; rc == BENCH_OK && i < 2; i++) {
      c.scaling = sc[i];
      uint64_t w = 0;
      bench_rc_t crc = check_fp8(b, &c, hxq, hxs, hwq, hws, &w); /* also the probe: NA when refused */
      if (crc == BENCH_NA) {
        tm[i].na = 1;
        continue;
      }
      rc = crc;
      wrong += w;
      bench_op_t op = {enqueue_fp8, &c};
      if (rc == BENCH_OK) rc = time_op(b, op, &tm[i]);
    }
    free(hxq);
    free(hwq);
    free(hxs);
    free(hws);
    dfree(&rc, c.xq);
    dfree(&rc, c.wq);
    dfree(&rc, c.xs);
    dfree(&rc, c.ws);
    dfree(&rc, c.y);
    if (rc != BENCH_OK) break;
    bench_table_cell(&t, "%lld", (long long)m);
    bench_table_cell(&t, "%lld", (long long)n);
    bench_table_cell(&t, "%lld", (long long)k);
    for (int i = 0; i < 2; i++) {
      time_cell(&t, tm[i].eager, tm[i].na);
      time_cell(&t, tm[i].graph, tm[i].na);
      if (tm[i].na) bench_table_cell(&t, "n/a");
      else bench_table_cell(&t, "%.1f", tflops(m, n, k, tm[i].graph));
    }
    if (b->o->check) bench_table_cell(&t, "%llu", (unsigned long long)wrong);
    else bench_table_cell(&t, "-");
    bench_table_end_row(&t, out);
    b->wrong_total += wrong;
    static const char* names[2] = {"outer_vec", "epilogue"};
    for (int i = 0; i < 2; i++) {
      bench_json_begin(&b->json);
      bench_json_str(&b->json, "section", "fp8");
      bench_json_str(&b->json, "scaling", names[i]);
      bench_json_int(&b->json, "m", m);
      bench_json_int(&b->json, "n", n);
      bench_json_int(&b->json, "k", k);
      bench_json_bool(&b->json, "supported", !tm[i].na);
      if (tm[i].na) {
        bench_json_null(&b->json, "eager_us");
        bench_json_null(&b->json, "graph_us");
      } else {
        bench_json_num(&b->json, "eager_us", tm[i].eager);
        bench_json_num(&b->json, "graph_us", tm[i].graph);
        bench_json_num(&b->json, "graph_tflops", tflops(m, n, k, tm[i].graph));
      }
      bench_json_end(&b->json);
    }
  }
  return rc;
}

/* ---- targets ----------------------------------------------------------------------------------------------------- */

static void target_line(FILE* out, const char* what, double value, const char* unit, const char* cmp, double limit) {
  int ok = strcmp(cmp, "<=") == 0 ? value <= limit : value >= limit;
  bench_printf(out, "#   %-58s %9.2f %-8s (target %s %.2f) %s\n", what, value, unit, cmp, limit, value > 0 && ok ? "ok" : "MISS");
}

static void print_targets(kg_t* b) {
  FILE* out = bench_out(b->ctx);
  const kg_summary_t* s = &b->sum;
  bench_printf(out, "\n# targets of the issue (set for H200; this device: see the header)\n");
  if (s->have_quant) {
    target_line(out, "quant 65536x4096, graph", s->quant_graph[3], "us", "<=", 200.0);
    target_line(out, "quant 4096x4096, graph", s->quant_graph[2], "us", "<=", 14.0);
    target_line(out, "quant 1024x1368, graph", s->quant_graph[1], "us", "<=", 3.0);
  }
  if (s->have_gemm) {
    char what[128];
    for (int mi = 0; mi < NUM_GEMM_M; mi++) {
      const int64_t m = k_gemm_m[mi];
      if (m <= 16) {
        snprintf(what, sizeof what, "merged m=%lld, graph / weight-read floor (%.2f us)", (long long)m, s->weight_floor_us);
        target_line(out, what, s->merged_graph[mi] / s->weight_floor_us, "x", "<=", 1.2);
        if (s->tuned_graph[mi] > 0) {
          snprintf(what, sizeof what, "merged m=%lld, autotuned, graph / weight-read floor", (long long)m);
          target_line(out, what, s->tuned_graph[mi] / s->weight_floor_us, "x", "<=", 1.2);
        }
        snprintf(what, sizeof what, "merged m=%lld, separate/merged, graph", (long long)m);
        target_line(out, what, s->merged_graph[mi] > 0 ? s->sep_graph[mi] / s->merged_graph[mi] : 0, "x", ">=", 3.0);
        snprintf(what, sizeof what, "merged m=%lld, separate/merged, eager", (long long)m);
        target_line(out, what, s->merged_eager[mi] > 0 ? s->sep_eager[mi] / s->merged_eager[mi] : 0, "x", ">=", 3.0);
      }
      if (s->plain_graph[mi] > 0) {
        snprintf(what, sizeof what, "merged m=%lld, merged/plain cuBLASLt, graph", (long long)m);
        target_line(out, what, s->merged_graph[mi] / s->plain_graph[mi], "x", "<=", 1.05);
      }
    }
  }
  if (s->have_square) {
    target_line(out, "square 8192^3 bf16 through tpc_gemm, graph", s->square_tflops, "TFLOP/s", ">=", 700.0);
    target_line(out, "square 8192^3 bf16 through tpc_gemm autotuned, graph", s->square_tuned_tflops, "TFLOP/s", ">=", 700.0);
  }
}

/* ---- the run -------------------------------------------------------------------------------------------------------- */

static bench_rc_t run(kg_t* b) {
  bench_ctx_t* ctx = b->ctx;
  FILE* out = bench_out(ctx);
  if (ctx->nranks != 1)
    return bench_fail("%s runs on one GPU: start it alone, not with %d ranks", KG_CMD, ctx->nranks);
  BENCH_CHECK(bench_print_job_header(ctx));
  BENCH_CHECK(bench_l2_bytes(ctx, &b->l2_bytes));
  bench_printf(out, "# kernels-gemm: eager = %ld warm-up + %ld timed calls; graph = %ld calls captured, %ld timed replays; "
                    "L2 %d MiB, inputs %s; check %s\n",
               b->o->warmup, b->o->iters, b->o->iters, b->o->graph_reps, (int)(b->l2_bytes >> 20),
               b->o->cold ? "rotated over copies > 2x L2 (cold)" : "in one copy (warm)", b->o->check ? "on" : "off");
  BENCH_CHECK_TPC(ctx, tpc_gemm_handle_create(&b->h, 0));
  BENCH_CHECK_TPC(ctx, tpc_gemm_handle_create(&b->h_tuned, 0));
  BENCH_CHECK_TPC(ctx, tpc_gemm_handle_set_autotune(b->h_tuned, 16));
  BENCH_CHECK(lt_init(&b->lt));
  BENCH_CHECK(measure_copy(b));
  if (b->o->sections & (1u << SEC_QUANT)) BENCH_CHECK(run_quant(b));
  if (b->o->sections & (1u << SEC_GEMM)) BENCH_CHECK(run_gemm(b));
  if (b->o->sections & (1u << SEC_BATCHED)) BENCH_CHECK(run_batched(b));
  if (b->o->sections & (1u << SEC_SQUARE)) BENCH_CHECK(run_square(b));
  if (b->o->sections & (1u << SEC_FP8)) BENCH_CHECK(run_fp8(b));
  print_targets(b);
  if (b->o->check) bench_printf(out, "# #wrong total: %llu\n", (unsigned long long)b->wrong_total);
  else bench_printf(out, "# #wrong total: not checked (-c 0)\n");
  return BENCH_OK;
}

/* The cleanup of bench_finish: the cuBLASLt baseline and the two handles. */
static bench_rc_t free_handles(void* arg) {
  kg_t* b = arg;
  bench_rc_t rc = lt_fini(&b->lt);
  tpc_gemm_handle_t handles[2] = {b->h, b->h_tuned};
  b->h = b->h_tuned = NULL;
  for (int i = 0; i < 2; i++) {
    tpc_status_t hs = tpc_gemm_handle_destroy(handles[i]);
    if (hs != TPC_SUCCESS) bench_keep_first(&rc, bench_tpc_fail(b->ctx, hs, "tpc_gemm_handle_destroy", __FILE__, __LINE__));
  }
  return rc;
}

int bench_kernels_gemm(int argc, char** argv) {
  kg_opts_t opts;
  int ec = parse_opts(argc, argv, &opts);
  if (ec != BENCH_CONTINUE) return ec;
  bench_ctx_t ctx;
  kg_t b;
  memset(&b, 0, sizeof b);
  b.o = &opts;
  b.ctx = &ctx;
  ec = bench_start(KG_CMD, &ctx, &b.json, opts.json_path);
  if (ec != BENCH_CONTINUE) return ec;
  bench_rc_t rc = run(&b);
  return bench_finish(&ctx, &b.json, rc, free_handles, &b, b.wrong_total);
}
