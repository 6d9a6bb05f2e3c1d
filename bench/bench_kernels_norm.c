/* bench_kernels_norm.c — `tpcomm-bench kernels-norm`: the single-GPU norm kernels of tpcomm/kernels.h
 * (per-head QK-RMSNorm, QK-RMSNorm across heads, RMSNorm, fused add + RMSNorm) against the memory floor.
 *
 * First the copy bandwidth of the GPU is measured (bench_copy_bandwidth: cudaMemcpy device to device of up
 * to 1 GiB, bytes read + written, like anchors/anchor_kernels_compiled.py). Then per kernel and shape: one
 * checked call (sampled rows against the fp64 CPU reference of tests/ref/norm_ref.c), the time per call eagerly (CUDA events around
 * `iters` back-to-back calls after a warm-up) and inside a CUDA graph (`graph_calls` calls captured in one
 * graph and replayed; the decode case), each the median of 3 back-to-back timed blocks (bench_common.h), the bytes the call must move (read + written, weights included), the
 * floor = bytes / copy bandwidth, and floor / time in percent. Calls rotate over enough buffer sets that the
 * sets together exceed twice the L2 cache (at most 64 sets), so mid-size inputs come from DRAM as in a
 * model; the tiny decode shapes stay L2-resident, as they would right after the producing GEMM.
 *
 * The PyTorch equivalents are run separately (anchors/anchor_kernels_compiled.py for the QK shapes); the
 * JSON records carry every shape parameter so the two can be joined.
 *
 * Relies on: bench_common (job setup, timing, table, JSON); tests/ref/norm_ref.c (linked into tpcomm-bench,
 * shared with tests/norms). The kernels are single-GPU: under a launcher every rank runs the same shapes on its own GPU and rank 0
 * prints. */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "bench_common.h"
#include "norm_ref.h" /* the CPU references shared with tests/norms */
#include "tpcomm/kernels.h"

#define KN_CMD "kernels-norm"
#define KN_MAX_SETS 64
#define KN_PATTERN ((size_t)1 << 22) /* random elements tiled over every input */
#define KN_CHECK_ROWS 64             /* rows (tokens) checked per shape, spread over the tensor */
#define KN_EPS 1e-6f

typedef enum { KN_PER_HEAD, KN_ACROSS, KN_RMSNORM, KN_FUSED, KN_NUM_KINDS } kn_kind_t;
static const char* const k_kind_names[KN_NUM_KINDS] = {"per_head", "across_heads", "rmsnorm", "fused_add"};

/* One shape. per_head: a = q_heads, b = kv_heads, d = head_dim; across: a = q_hidden, b = k_hidden;
 * rmsnorm, fused: a = hidden. rows = tokens. Targets (H200, bf16; 0 = none): max_us on the graph time,
 * min_pct on the graph time's % of floor. */
typedef struct {
  kn_kind_t kind;
  int64_t rows, a, b;
  int d;
  double max_us, min_pct;
} kn_shape_t;

static const kn_shape_t k_shapes[] = {
    {KN_PER_HEAD, 1, 64, 8, 128, 1.0, 0},      {KN_PER_HEAD, 1, 4, 1, 128, 1.0, 0},
    {KN_PER_HEAD, 1024, 64, 8, 128, 0, 0},     {KN_PER_HEAD, 8192, 64, 8, 128, 74.0, 0},
    {KN_PER_HEAD, 1024, 64, 8, 64, 0, 0},      {KN_PER_HEAD, 1024, 64, 8, 256, 0, 0},
    {KN_ACROSS, 1, 8192, 8192, 0, 0, 0},       {KN_ACROSS, 256, 1024, 1024, 0, 0, 0},
    {KN_ACROSS, 2048, 8192, 8192, 0, 34.0, 0}, {KN_RMSNORM, 1, 4096, 0, 0, 0, 0},
    {KN_RMSNORM, 1024, 4096, 0, 0, 0, 90},     {KN_RMSNORM, 8192, 8192, 0, 0, 0, 90},
    {KN_RMSNORM, 4096, 16384, 0, 0, 0, 90},    {KN_RMSNORM, 16384, 16384, 0, 0, 0, 90},
    {KN_FUSED, 1, 4096, 0, 0, 0, 0},           {KN_FUSED, 1024, 4096, 0, 0, 0, 90},
    {KN_FUSED, 8192, 8192, 0, 0, 0, 90},       {KN_FUSED, 4096, 16384, 0, 0, 0, 90},
    {KN_FUSED, 16384, 16384, 0, 0, 0, 90},
};
enum { KN_NUM_SHAPES = sizeof k_shapes / sizeof k_shapes[0] };

typedef struct {
  long iters, warmup, graph_calls, graph_reps, check;
  tpc_dtype_t dtype;
  unsigned kinds; /* bit i: kn_kind_t i selected */
  const char* json_path;
} kn_opts_t;

/* The buffers of one shape: nsets sets of two tensors (a, b) and the weights. */
typedef struct {
  const kn_shape_t* s;
  int64_t na, nb;   /* elements of tensor a and b of one set */
  int64_t nwa, nwb; /* weight elements (nwb 0: one weight) */
  size_t bytes;     /* moved by one call */
  int nsets, next;
  void* a[KN_MAX_SETS];
  void* b[KN_MAX_SETS];
  void *wa, *wb;
  tpc_dtype_t dtype;
  bench_ctx_t* ctx;
} kn_bufs_t;

typedef struct {
  const kn_opts_t* o;
  bench_ctx_t* ctx;
  double copy_gbs; /* bytes read + written per second / 1e9 */
  size_t l2_bytes;
  uint16_t* pattern;  /* host copy of the random pattern */
  void* d_pattern;    /* device copy */
  uint16_t* h_weight; /* host weights (largest shape) */
  bench_table_t table;
  bench_json_t json;
  uint64_t wrong_total;
  int misses, skipped;
} kn_bench_t;

/* ---- options ---------------------------------------------------------------------------------------------- */

void bench_kernels_norm_usage(FILE* f) {
  fprintf(f,
          "Usage: %s " KN_CMD
          " [options]\n\n"
          "The single-GPU norm kernels (per-head QK-RMSNorm, QK-RMSNorm across heads, RMSNorm, fused add +\n"
          "RMSNorm) at fixed shapes, timed eagerly and inside a CUDA graph, against the memory floor: bytes\n"
          "moved / the device-to-device copy bandwidth measured in the same run. Runs on device 0 (under a\n"
          "launcher every rank runs on its own GPU and rank 0 prints).\n\n"
          "  -n, --iters N          timed eager calls per shape (default 200)\n"
          "  -w, --warmup_iters N   untimed eager calls first (default 20)\n"
          "  -g, --graph_calls N    calls captured in one CUDA graph (default 100)\n"
          "  -r, --graph_reps N     timed replays of that graph (default 5)\n"
          "  -c, --check 0|1        check one call per shape against the CPU reference (default 1)\n"
          "  -d, --datatype T       bfloat16|half, also bf16|fp16 (default bfloat16)\n"
          "  -k, --kernel LIST      comma list of per_head,across_heads,rmsnorm,fused_add or all (default all)\n"
          "  -J, --json FILE        also write every result to FILE as a JSON array\n"
          "  -h, --help             this help\n\n"
          "Columns: bytes moved per call (MB, read + written), buffer sets rotated (L2 'cold' when they exceed\n"
          "twice the L2 cache), eager and graph time per call (us), floor (us), floor / time (%%), the graph\n"
          "time's bandwidth (GB/s), #wrong (checked elements off the reference), and the H200 target of the\n"
          "shape where the issue sets one (graph time).\n\n"
          "Exit status: 0 done and right, 1 some results wrong, 2 bad command line, 3 a failure.\n",
          BENCH_PROGRAM);
}

static void set_default_opts(kn_opts_t* o) {
  memset(o, 0, sizeof *o);
  o->iters = 200;
  o->warmup = 20;
  o->graph_calls = 100;
  o->graph_reps = 5;
  o->check = 1;
  o->dtype = TPC_BFLOAT16;
  o->kinds = (1u << KN_NUM_KINDS) - 1;
}

/* bench_apply_fn: one option; 0 on success, non-zero (message printed) on a bad value. */
static int apply_option(int c, int argc, char** argv, void* opts) {
  kn_opts_t* o = opts;
  switch (c) {
    case 'n': return bench_parse_long(KN_CMD, "-n/--iters", optarg, 1, 1000000, &o->iters);
    case 'w': return bench_parse_long(KN_CMD, "-w/--warmup_iters", optarg, 0, 1000000, &o->warmup);
    case 'g': return bench_parse_long(KN_CMD, "-g/--graph_calls", optarg, 1, 10000, &o->graph_calls);
    case 'r': return bench_parse_long(KN_CMD, "-r/--graph_reps", optarg, 1, 100000, &o->graph_reps);
    case 'c': return bench_parse_long(KN_CMD, "-c/--check", optarg, 0, 1, &o->check);
    case 'd':
      if (bench_parse_dtype(KN_CMD, "-d/--datatype", optarg, &o->dtype) != 0) return -1;
      if (o->dtype == TPC_FLOAT32)
        return bench_usage_error(KN_CMD, "invalid value '%s' for -d/--datatype: the norm kernels take bfloat16 or half",
                                 optarg);
      return 0;
    case 'k': return bench_parse_name_list(KN_CMD, "-k/--kernel", optarg, k_kind_names, KN_NUM_KINDS, "kernel", &o->kinds);
    case 'J': return bench_parse_path(KN_CMD, "-J/--json", optarg, &o->json_path);
    default: return -1;
  }
}

/* BENCH_CONTINUE, or the exit code after -h or a bad command line. */
static int parse_opts(int argc, char** argv, kn_opts_t* o) {
  static const struct option long_opts[] = {{"iters", required_argument, NULL, 'n'},
                                            {"warmup_iters", required_argument, NULL, 'w'},
                                            {"graph_calls", required_argument, NULL, 'g'},
                                            {"graph_reps", required_argument, NULL, 'r'},
                                            {"check", required_argument, NULL, 'c'},
                                            {"datatype", required_argument, NULL, 'd'},
                                            {"kernel", required_argument, NULL, 'k'},
                                            {"json", required_argument, NULL, 'J'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
  set_default_opts(o);
  return bench_parse_options(KN_CMD, argc, argv, ":n:w:g:r:c:d:k:J:h", long_opts, bench_kernels_norm_usage,
                             apply_option, o);
}

/* ---- shapes ----------------------------------------------------------------------------------------------- */

static void shape_sizes(const kn_shape_t* s, int64_t* na, int64_t* nb, int64_t* nwa, int64_t* nwb) {
  switch (s->kind) {
    case KN_PER_HEAD:
      *na = s->rows * s->a * s->d;
      *nb = s->rows * s->b * s->d;
      *nwa = *nwb = s->d;
      break;
    case KN_ACROSS:
      *na = s->rows * s->a;
      *nb = s->rows * s->b;
      *nwa = s->a;
      *nwb = s->b;
      break;
    default: /* rmsnorm: a = in, b = out; fused: a = x, b = residual */
      *na = *nb = s->rows * s->a;
      *nwa = s->a;
      *nwb = 0;
      break;
  }
}

/* Bytes one call must move: per-head, across and rmsnorm read and write each element once; fused reads x and
 * residual and writes both; the weights are read once. */
static size_t shape_bytes(const kn_shape_t* s, size_t esize) {
  int64_t na, nb, nwa, nwb;
  shape_sizes(s, &na, &nb, &nwa, &nwb);
  int64_t elems = s->kind == KN_RMSNORM ? 2 * na : 2 * (na + nb);
  return (size_t)(elems + nwa + nwb) * esize;
}

static void shape_name(const kn_shape_t* s, char* buf, size_t len) {
  switch (s->kind) {
    case KN_PER_HEAD:
      snprintf(buf, len, "%lldx(%lldq+%lldkv)x%d", (long long)s->rows, (long long)s->a, (long long)s->b, s->d);
      break;
    case KN_ACROSS: snprintf(buf, len, "%lldx(%lld+%lld)", (long long)s->rows, (long long)s->a, (long long)s->b); break;
    default: snprintf(buf, len, "%lldx%lld", (long long)s->rows, (long long)s->a); break;
  }
}

/* ---- buffers ---------------------------------------------------------------------------------------------- */

/* Fills n elements at dst by tiling the device pattern. */
static bench_rc_t tile_pattern(kn_bench_t* kb, void* dst, int64_t n, size_t esize) {
  for (int64_t off = 0; off < n; off += (int64_t)KN_PATTERN) {
    int64_t m = n - off < (int64_t)KN_PATTERN ? n - off : (int64_t)KN_PATTERN;
    BENCH_CHECK_CUDA(cudaMemcpyAsync((char*)dst + (size_t)off * esize, kb->d_pattern, (size_t)m * esize,
                                     cudaMemcpyDeviceToDevice, kb->ctx->stream));
  }
  return BENCH_OK;
}

static bench_rc_t free_bufs(kn_bufs_t* bb) {
  bench_rc_t rc = BENCH_OK;
  void** all[2] = {bb->a, bb->b};
  for (int t = 0; t < 2; t++)
    for (int i = 0; i < KN_MAX_SETS; i++)
      if (all[t][i]) {
        cudaError_t e = cudaFree(all[t][i]);
        if (e != cudaSuccess && rc == BENCH_OK) rc = bench_cuda_fail(e, "cudaFree", __FILE__, __LINE__);
        all[t][i] = NULL;
      }
  void** w[2] = {&bb->wa, &bb->wb};
  for (int t = 0; t < 2; t++)
    if (*w[t]) {
      cudaError_t e = cudaFree(*w[t]);
      if (e != cudaSuccess && rc == BENCH_OK) rc = bench_cuda_fail(e, "cudaFree", __FILE__, __LINE__);
      *w[t] = NULL;
    }
  return rc;
}

/* Sets nsets (enough to exceed 2x L2, as memory allows) and allocates and fills them. BENCH_NA when even one
 * set does not fit in device memory. */
static bench_rc_t alloc_bufs(kn_bench_t* kb, const kn_shape_t* s, kn_bufs_t* bb) {
  const size_t esize = bench_dtype_size(kb->o->dtype);
  memset(bb, 0, sizeof *bb);
  bb->s = s;
  bb->dtype = kb->o->dtype;
  bb->ctx = kb->ctx;
  shape_sizes(s, &bb->na, &bb->nb, &bb->nwa, &bb->nwb);
  bb->bytes = shape_bytes(s, esize);
  const size_t set_bytes = (size_t)(bb->na + bb->nb) * esize;
  size_t free_b = 0, total_b = 0;
  BENCH_CHECK_CUDA(cudaMemGetInfo(&free_b, &total_b));
  const size_t budget = free_b > ((size_t)1 << 30) ? free_b - ((size_t)1 << 30) : 0; /* keep 1 GiB spare */
  if (set_bytes > budget) return BENCH_NA;
  bb->nsets = bench_rotation_sets(kb->l2_bytes, set_bytes, KN_MAX_SETS, budget);
  for (int i = 0; i < bb->nsets; i++) {
    BENCH_CHECK_CUDA(cudaMalloc(&bb->a[i], (size_t)bb->na * esize));
    BENCH_CHECK_CUDA(cudaMalloc(&bb->b[i], (size_t)bb->nb * esize));
    BENCH_CHECK(tile_pattern(kb, bb->a[i], bb->na, esize));
    if (s->kind == KN_RMSNORM)
      BENCH_CHECK_CUDA(cudaMemsetAsync(bb->b[i], 0x7F, (size_t)bb->nb * esize, kb->ctx->stream));
    else
      BENCH_CHECK(tile_pattern(kb, bb->b[i], bb->nb, esize));
  }
  BENCH_CHECK_CUDA(cudaMalloc(&bb->wa, (size_t)bb->nwa * esize));
  BENCH_CHECK_CUDA(
      cudaMemcpyAsync(bb->wa, kb->h_weight, (size_t)bb->nwa * esize, cudaMemcpyHostToDevice, kb->ctx->stream));
  if (bb->nwb > 0) { /* k's weights: the same random values from another offset */
    BENCH_CHECK_CUDA(cudaMalloc(&bb->wb, (size_t)bb->nwb * esize));
    BENCH_CHECK_CUDA(
        cudaMemcpyAsync(bb->wb, kb->h_weight + 17, (size_t)bb->nwb * esize, cudaMemcpyHostToDevice, kb->ctx->stream));
  }
  BENCH_CHECK_CUDA(cudaStreamSynchronize(kb->ctx->stream));
  return BENCH_OK;
}

/* ---- the call --------------------------------------------------------------------------------------------- */

static tpc_status_t call_set(kn_bufs_t* bb, int i, cudaStream_t stream) {
  const kn_shape_t* s = bb->s;
  switch (s->kind) {
    case KN_PER_HEAD:
      return tpc_qk_rmsnorm_per_head(bb->a[i], bb->b[i], bb->wa, bb->wb, s->rows, (int)s->a, (int)s->b, s->d,
                                     s->a * s->d, s->b * s->d, KN_EPS, bb->dtype, stream);
    case KN_ACROSS:
      return tpc_qk_rmsnorm_across_heads(bb->a[i], bb->b[i], bb->wa, bb->wb, s->rows, s->a, s->b, s->a, s->b, KN_EPS,
                                         bb->dtype, stream);
    case KN_RMSNORM:
      return tpc_rmsnorm(bb->b[i], bb->a[i], bb->wa, s->rows, s->a, s->a, s->a, KN_EPS, bb->dtype, stream);
    default:
      return tpc_fused_add_rmsnorm(bb->a[i], bb->b[i], bb->wa, s->rows, s->a, s->a, s->a, KN_EPS, bb->dtype, stream);
  }
}

/* bench_enqueue_fn: one call on the next buffer set. */
static bench_rc_t enqueue_norm(void* arg, cudaStream_t stream) {
  kn_bufs_t* bb = arg;
  const int i = bb->next;
  bb->next = (bb->next + 1) % bb->nsets;
  return bench_tpc_rc(bb->ctx, call_set(bb, i, stream), k_kind_names[bb->s->kind], __FILE__, __LINE__);
}

/* ---- check ------------------------------------------------------------------------------------------------ */

/* Host copy of elements [first, first + n) of a tensor filled by tile_pattern. */
static void pattern_span(const kn_bench_t* kb, uint16_t* dst, int64_t first, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = kb->pattern[(size_t)(first + i) % KN_PATTERN];
}

/* Compares `n` elements got[] with ref[]; exact: bitwise against bits[]. */
static uint64_t count_off(const uint16_t* got, const double* ref, const uint16_t* bits, int64_t n, tpc_dtype_t dt) {
  uint64_t wrong = 0;
  for (int64_t i = 0; i < n; i++) wrong += bits ? got[i] != bits[i] : !tpc_ref_close(got[i], ref[i], dt);
  return wrong;
}

/* One eager call on set 0 (freshly filled), then rows spread over the tensors against the reference. */
static bench_rc_t check_once(kn_bench_t* kb, kn_bufs_t* bb, uint64_t* wrong) {
  const kn_shape_t* s = bb->s;
  const tpc_dtype_t dt = bb->dtype;
  const size_t esize = bench_dtype_size(dt);
  /* row widths of tensors a and b (one token) */
  const int64_t wa = bb->na / s->rows, wb = bb->nb / s->rows;
  const int64_t wmax = wa > wb ? wa : wb;
  uint16_t* in_a = malloc((size_t)wmax * 2);
  uint16_t* in_b = malloc((size_t)wmax * 2);
  uint16_t* got = malloc((size_t)wmax * 2);
  uint16_t* bits = malloc((size_t)wmax * 2);
  uint16_t* wts = malloc((size_t)(bb->nwa > bb->nwb ? bb->nwa : bb->nwb) * 2);
  double* ref = malloc((size_t)wmax * sizeof(double));
  bench_rc_t rc = BENCH_OK;
  if (!in_a || !in_b || !got || !bits || !wts || !ref) rc = bench_fail("out of host memory for the check");
  if (rc == BENCH_OK)
    rc = bench_tpc_rc(kb->ctx, call_set(bb, 0, kb->ctx->stream), k_kind_names[s->kind], __FILE__, __LINE__);
  if (rc == BENCH_OK) {
    cudaError_t e = cudaStreamSynchronize(kb->ctx->stream);
    if (e != cudaSuccess) rc = bench_cuda_fail(e, "cudaStreamSynchronize", __FILE__, __LINE__);
  }
  *wrong = 0;
  const int64_t nrows = s->rows < KN_CHECK_ROWS ? s->rows : KN_CHECK_ROWS;
  for (int64_t k = 0; rc == BENCH_OK && k < nrows; k++) {
    const int64_t r = nrows == 1 ? 0 : k * (s->rows - 1) / (nrows - 1);
    pattern_span(kb, in_a, r * wa, wa);
    cudaError_t e =
        cudaMemcpy(got, (const char*)bb->a[0] + (size_t)(r * wa) * esize, (size_t)wa * esize, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
      rc = bench_cuda_fail(e, "cudaMemcpy", __FILE__, __LINE__);
      break;
    }
    switch (s->kind) {
      case KN_PER_HEAD: /* q heads in a, kv heads in b */
        memcpy(wts, kb->h_weight, (size_t)s->d * 2);
        for (int64_t h = 0; h < s->a; h++) tpc_ref_rmsnorm_row(ref + h * s->d, in_a + h * s->d, wts, s->d, KN_EPS, dt);
        *wrong += count_off(got, ref, NULL, wa, dt);
        pattern_span(kb, in_b, r * wb, wb);
        memcpy(wts, kb->h_weight + 17, (size_t)s->d * 2);
        for (int64_t h = 0; h < s->b; h++) tpc_ref_rmsnorm_row(ref + h * s->d, in_b + h * s->d, wts, s->d, KN_EPS, dt);
        break;
      case KN_ACROSS:
        tpc_ref_rmsnorm_row(ref, in_a, kb->h_weight, wa, KN_EPS, dt);
        *wrong += count_off(got, ref, NULL, wa, dt);
        pattern_span(kb, in_b, r * wb, wb);
        tpc_ref_rmsnorm_row(ref, in_b, kb->h_weight + 17, wb, KN_EPS, dt);
        break;
      case KN_RMSNORM: /* a is the input: the output is in b */
        tpc_ref_rmsnorm_row(ref, in_a, kb->h_weight, wa, KN_EPS, dt);
        break;
      default: /* fused: x (a) normalized, residual (b) = round(x + residual) */
        pattern_span(kb, in_b, r * wb, wb);
        tpc_ref_fused_add_rmsnorm(ref, bits, in_a, in_b, kb->h_weight, 1, wa, wa, wb, KN_EPS, dt);
        *wrong += count_off(got, ref, NULL, wa, dt);
        break;
    }
    e = cudaMemcpy(got, (const char*)bb->b[0] + (size_t)(r * wb) * esize, (size_t)wb * esize, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
      rc = bench_cuda_fail(e, "cudaMemcpy", __FILE__, __LINE__);
      break;
    }
    *wrong += count_off(got, ref, s->kind == KN_FUSED ? bits : NULL, wb, dt);
  }
  free(in_a);
  free(in_b);
  free(got);
  free(bits);
  free(wts);
  free(ref);
  return rc;
}

/* ---- measurements ----------------------------------------------------------------------------------------- */

/* Random pattern tiled over every input, and the weights (host and device). */
static bench_rc_t make_data(kn_bench_t* kb) {
  const tpc_dtype_t dt = kb->o->dtype;
  const size_t esize = bench_dtype_size(dt);
  int64_t wmax = 0;
  for (int i = 0; i < KN_NUM_SHAPES; i++) {
    int64_t na, nb, nwa, nwb;
    shape_sizes(&k_shapes[i], &na, &nb, &nwa, &nwb);
    if (nwa > wmax) wmax = nwa;
    if (nwb > wmax) wmax = nwb;
  }
  kb->pattern = malloc(KN_PATTERN * 2);
  kb->h_weight = malloc((size_t)(wmax + 17) * 2);
  if (!kb->pattern || !kb->h_weight) return bench_fail("out of host memory for the input pattern");
  bench_rng_t rng;
  bench_rng_init(&rng, 20261121);
  for (size_t i = 0; i < KN_PATTERN; i++) { /* non-zero: |v| in [0.05, 1) */
    const float v = bench_rng_next(&rng), a = 0.05f + 0.95f * fabsf(v);
    kb->pattern[i] = tpc_ref_from_float(v < 0 ? -a : a, dt);
  }
  for (int64_t i = 0; i < wmax + 17; i++) { /* |w| in [0.5, 1.5) */
    const float v = bench_rng_next(&rng), a = 0.5f + fabsf(v);
    kb->h_weight[i] = tpc_ref_from_float(v < 0 ? -a : a, dt);
  }
  BENCH_CHECK_CUDA(cudaMalloc(&kb->d_pattern, KN_PATTERN * esize));
  BENCH_CHECK_CUDA(bench_h2d(kb->d_pattern, kb->pattern, KN_PATTERN * esize));
  return BENCH_OK;
}

typedef struct {
  int na; /* the shape did not fit in memory */
  int nsets, cold;
  double eager_us, graph_us, floor_us;
  uint64_t wrong;
  int checked;
  const char* target; /* "" when the shape has none */
  char target_buf[48];
} kn_result_t;

static void judge_target(const kn_shape_t* s, kn_result_t* r) {
  r->target = "";
  if (s->max_us > 0) {
    const int ok = r->graph_us <= s->max_us;
    snprintf(r->target_buf, sizeof r->target_buf, "<=%gus %s", s->max_us, ok ? "ok" : "MISS");
    r->target = r->target_buf;
  } else if (s->min_pct > 0) {
    const double pct = 100.0 * r->floor_us / r->graph_us;
    const int ok = pct >= s->min_pct;
    snprintf(r->target_buf, sizeof r->target_buf, ">=%g%% %s", s->min_pct, ok ? "ok" : "MISS");
    r->target = r->target_buf;
  }
}

static bench_rc_t measure_shape(kn_bench_t* kb, const kn_shape_t* s, kn_result_t* r) {
  kn_bufs_t bb;
  memset(r, 0, sizeof *r);
  bench_rc_t rc = alloc_bufs(kb, s, &bb);
  if (rc == BENCH_NA) {
    r->na = 1;
    kb->skipped++;
    return free_bufs(&bb);
  }
  if (rc == BENCH_OK && kb->o->check) {
    rc = check_once(kb, &bb, &r->wrong);
    r->checked = 1;
  }
  bench_op_t op = {enqueue_norm, &bb};
  if (rc == BENCH_OK) rc = bench_time_eager(kb->ctx, op, (int)kb->o->warmup, (int)kb->o->iters, &r->eager_us);
  if (rc == BENCH_OK) rc = bench_time_graph(kb->ctx, op, (int)kb->o->graph_calls, (int)kb->o->graph_reps, &r->graph_us);
  r->nsets = bb.nsets;
  r->cold =
      (double)bb.nsets * (double)(bb.na + bb.nb) * (double)bench_dtype_size(bb.dtype) >= 2.0 * (double)kb->l2_bytes;
  r->floor_us = (double)bb.bytes / (kb->copy_gbs * 1e3);
  if (rc == BENCH_NA)
    rc = bench_fail("%s: the library answered 'unsupported' for a shape it serves: %s", k_kind_names[s->kind],
                    tpc_get_last_error(NULL));
  bench_rc_t rc2 = free_bufs(&bb);
  if (rc == BENCH_OK) rc = rc2;
  if (rc == BENCH_OK) judge_target(s, r);
  return rc;
}

/* ---- output ----------------------------------------------------------------------------------------------- */

static void add_columns(kn_bench_t* kb) {
  bench_table_t* t = &kb->table;
  bench_table_init(t);
  bench_table_col(t, "kernel", "", 12);
  bench_table_col(t, "shape", "", 22);
  bench_table_col(t, "bytes", "(MB)", 9);
  bench_table_col(t, "sets", "", 4);
  bench_table_col(t, "L2", "", 4);
  bench_table_group(t, "eager");
  bench_table_col(t, "time", "(us)", 9);
  bench_table_col(t, "floor", "(%)", 6);
  bench_table_group(t, "graph");
  bench_table_col(t, "time", "(us)", 9);
  bench_table_col(t, "floor", "(%)", 6);
  bench_table_col(t, "bw", "(GB/s)", 7);
  bench_table_group(t, NULL);
  bench_table_col(t, "floor", "(us)", 9);
  bench_table_col(t, "#wrong", "", 6);
  bench_table_col(t, "target", "(H200)", 13);
}

static void time_cell(bench_table_t* t, double us) {
  if (us < 100)
    bench_table_cell(t, "%.2f", us);
  else if (us < 1e4)
    bench_table_cell(t, "%.1f", us);
  else
    bench_table_cell(t, "%.0f", us);
}

static void print_row(kn_bench_t* kb, const kn_shape_t* s, const kn_result_t* r) {
  bench_table_t* t = &kb->table;
  char name[64];
  shape_name(s, name, sizeof name);
  bench_table_cell(t, "%s", k_kind_names[s->kind]);
  bench_table_cell(t, "%s", name);
  bench_table_cell(t, "%.3f", (double)shape_bytes(s, bench_dtype_size(kb->o->dtype)) / 1e6);
  if (r->na) {
    bench_table_cell(t, "-");
    bench_table_cell(t, "-");
    for (int i = 0; i < 5; i++) bench_table_cell(t, "n/a");
    bench_table_cell(t, "-");
    bench_table_cell(t, "-");
    bench_table_cell(t, "no memory");
  } else {
    bench_table_cell(t, "%d", r->nsets);
    bench_table_cell(t, "%s", r->cold ? "cold" : "warm");
    time_cell(t, r->eager_us);
    bench_table_cell(t, "%.1f", 100.0 * r->floor_us / r->eager_us);
    time_cell(t, r->graph_us);
    bench_table_cell(t, "%.1f", 100.0 * r->floor_us / r->graph_us);
    bench_table_cell(t, "%.0f", (double)shape_bytes(s, bench_dtype_size(kb->o->dtype)) / (r->graph_us * 1e3));
    time_cell(t, r->floor_us);
    if (r->checked)
      bench_table_cell(t, "%llu", (unsigned long long)r->wrong);
    else
      bench_table_cell(t, "-");
    bench_table_cell(t, "%s", *r->target ? r->target : "-");
  }
  bench_table_end_row(t, bench_out(kb->ctx));
}

static void write_json(kn_bench_t* kb, const kn_shape_t* s, const kn_result_t* r) {
  bench_json_t* j = &kb->json;
  if (r->na) return;
  bench_json_begin(j);
  bench_json_str(j, "kernel", k_kind_names[s->kind]);
  bench_json_str(j, "dtype", bench_dtype_name(kb->o->dtype));
  bench_json_int(j, "tokens", (long long)s->rows);
  if (s->kind == KN_PER_HEAD) {
    bench_json_int(j, "q_heads", (long long)s->a);
    bench_json_int(j, "kv_heads", (long long)s->b);
    bench_json_int(j, "gqa", (long long)(s->a / s->b));
    bench_json_int(j, "head_dim", s->d);
  } else if (s->kind == KN_ACROSS) {
    bench_json_int(j, "q_hidden", (long long)s->a);
    bench_json_int(j, "k_hidden", (long long)s->b);
  } else {
    bench_json_int(j, "hidden", (long long)s->a);
  }
  bench_json_int(j, "bytes", (long long)shape_bytes(s, bench_dtype_size(kb->o->dtype)));
  bench_json_int(j, "sets", r->nsets);
  bench_json_bool(j, "l2_cold", r->cold);
  bench_json_num(j, "eager_us", r->eager_us);
  bench_json_num(j, "graph_us", r->graph_us);
  bench_json_num(j, "floor_us", r->floor_us);
  bench_json_num(j, "pct_floor_eager", 100.0 * r->floor_us / r->eager_us);
  bench_json_num(j, "pct_floor_graph", 100.0 * r->floor_us / r->graph_us);
  bench_json_num(j, "copy_gbs", kb->copy_gbs);
  if (r->checked)
    bench_json_int(j, "wrong", (long long)r->wrong);
  else
    bench_json_null(j, "wrong");
  if (*r->target)
    bench_json_str(j, "target", r->target);
  else
    bench_json_null(j, "target");
  bench_json_end(j);
}

static void print_run_header(kn_bench_t* kb, FILE* f) {
  const kn_opts_t* o = kb->o;
  bench_printf(f,
               "# kernels-norm: %s, eps %g; eager: %ld warm-up + %ld timed calls; graph: %ld calls captured, "
               "1 warm-up + %ld timed replays; each timed %d times back to back, the median reported\n",
               bench_dtype_name(o->dtype), (double)KN_EPS, o->warmup, o->iters, o->graph_calls, o->graph_reps,
               BENCH_TIMING_BLOCKS);
  bench_printf(f, "# L2 cache: %.0f MB; buffer sets rotate until they exceed twice that (at most %d sets)\n",
               (double)kb->l2_bytes / 1e6, KN_MAX_SETS);
  if (o->check)
    bench_printf(f,
                 "# check: one call per shape, %d rows (tokens) spread over the tensors, against an fp64 CPU "
                 "reference (|y-ref| <= %s)\n",
                 KN_CHECK_ROWS, o->dtype == TPC_BFLOAT16 ? "2^-7 |ref| + 1e-3" : "2^-9 |ref| + 1e-5");
  else
    bench_printf(f, "# check: off\n");
  bench_printf(f,
               "# floor = bytes moved / copy bandwidth; floor %% = floor / time; targets are the issue's, "
               "for H200 and bf16, on the graph time\n");
}

static void print_footer(kn_bench_t* kb, FILE* f) {
  if (kb->o->check)
    bench_printf(f, "# #wrong total: %llu\n", (unsigned long long)kb->wrong_total);
  else
    bench_printf(f, "# #wrong total: not checked (-c 0)\n");
  bench_printf(f, "# targets missed: %d%s\n", kb->misses,
               kb->o->dtype == TPC_BFLOAT16 ? "" : " (the targets are set for bfloat16)");
  if (kb->skipped) bench_printf(f, "# shapes skipped for lack of device memory: %d\n", kb->skipped);
}

/* ---- the run ---------------------------------------------------------------------------------------------- */

static bench_rc_t run_shapes(kn_bench_t* kb) {
  for (int i = 0; i < KN_NUM_SHAPES; i++) {
    const kn_shape_t* s = &k_shapes[i];
    if (!(kb->o->kinds & (1u << s->kind))) continue;
    char name[64];
    shape_name(s, name, sizeof name);
    bench_progress(kb->ctx, "%s %s", k_kind_names[s->kind], name);
    kn_result_t r;
    BENCH_CHECK(measure_shape(kb, s, &r));
    print_row(kb, s, &r);
    write_json(kb, s, &r);
    kb->wrong_total += r.wrong;
    if (strstr(r.target, "MISS")) kb->misses++;
  }
  return BENCH_OK;
}

static bench_rc_t run(kn_bench_t* kb) {
  FILE* out = bench_out(kb->ctx);
  BENCH_CHECK(bench_l2_bytes(kb->ctx, &kb->l2_bytes));
  BENCH_CHECK(bench_print_job_header(kb->ctx));
  BENCH_CHECK(bench_copy_bandwidth(kb->ctx, &kb->copy_gbs));
  BENCH_CHECK(make_data(kb));
  print_run_header(kb, out);
  add_columns(kb);
  bench_table_print_header(&kb->table, out);
  BENCH_CHECK(run_shapes(kb));
  print_footer(kb, out);
  return BENCH_OK;
}

/* The cleanup of bench_finish. */
static bench_rc_t free_data(void* arg) {
  kn_bench_t* kb = arg;
  free(kb->pattern);
  free(kb->h_weight);
  kb->pattern = kb->h_weight = NULL;
  if (kb->d_pattern) {
    cudaError_t e = cudaFree(kb->d_pattern);
    kb->d_pattern = NULL;
    if (e != cudaSuccess) return bench_cuda_fail(e, "cudaFree", __FILE__, __LINE__);
  }
  return BENCH_OK;
}

int bench_kernels_norm(int argc, char** argv) {
  kn_opts_t opts;
  int ec = parse_opts(argc, argv, &opts);
  if (ec != BENCH_CONTINUE) return ec;
  bench_ctx_t ctx;
  kn_bench_t kb;
  memset(&kb, 0, sizeof kb);
  kb.o = &opts;
  kb.ctx = &ctx;
  ec = bench_start(KN_CMD, &ctx, &kb.json, opts.json_path);
  if (ec != BENCH_CONTINUE) return ec;
  bench_rc_t rc = run(&kb);
  return bench_finish(&ctx, &kb.json, rc, free_data, &kb, kb.wrong_total);
}
