/* bench_common.c — the shared part of tpcomm-bench (see bench_common.h): errors, option parsing, data
 * types and random data, job setup and teardown, cross-rank helpers, timing, header, table, JSON.
 *
 * Relies on: tpcomm's public API only (no library internals); cross-rank helpers use tpc_all_reduce on
 * float32 (exact for the small integers and byte values they carry); NCCL only for its version and error
 * strings; MPI only when TPC_HAVE_MPI. The bf16/fp16 conversions and the xorshift generator are copies of
 * tests/common/testutil.c, so bench and tests draw the same numbers from the same seed. */
#define _GNU_SOURCE
#include "bench_common.h"

#include "half_ref.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#if TPC_HAVE_MPI
#include "tpcomm/tpcomm_mpi.h"
#endif

extern char** environ;

/* ---- errors --------------------------------------------------------------------------------------------- */

static char g_error[2048] = "no error";

bench_rc_t bench_fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_error, sizeof g_error, fmt, ap);
  va_end(ap);
  return BENCH_FAIL;
}

const char* bench_error_message(void) { return g_error; }

bench_rc_t bench_cuda_fail(cudaError_t err, const char* call, const char* file, int line) {
  (void)cudaGetLastError(); /* clear a non-sticky error so later calls report their own */
  return bench_fail("%s failed: %s (%s) at %s:%d", call, cudaGetErrorString(err), cudaGetErrorName(err), file,
                    line);
}

bench_rc_t bench_tpc_fail(const bench_ctx_t* ctx, tpc_status_t st, const char* call, const char* file, int line) {
  const char* detail = tpc_get_last_error(ctx ? ctx->comm : NULL);
  return bench_fail("%s failed: %s: %s (%s:%d)", call, tpc_status_string(st), detail ? detail : "", file, line);
}

bench_rc_t bench_tpc_rc(const bench_ctx_t* ctx, tpc_status_t st, const char* call, const char* file, int line) {
  if (st == TPC_SUCCESS) return BENCH_OK;
  if (st == TPC_ERR_UNSUPPORTED) return BENCH_NA;
  return bench_tpc_fail(ctx, st, call, file, line);
}

bench_rc_t bench_nccl_fail(int nccl_result, const char* call, const char* file, int line) {
  const char* detail = ncclGetLastError(NULL);
  return bench_fail("%s failed: %s%s%s (%s:%d)", call, ncclGetErrorString((ncclResult_t)nccl_result),
                    detail && *detail ? ": " : "", detail ? detail : "", file, line);
}

/* ---- command line ------------------------------------------------------------------------------------------ */

static int g_argc;
static char** g_argv;

void bench_set_command_line(int argc, char** argv) {
  g_argc = argc;
  g_argv = argv;
}

void bench_getopt_reset(void) {
  optind = 0; /* glibc: 0 also resets getopt's internal state */
  opterr = 0;
}

int bench_usage_error(const char* cmd, const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s %s: %s\n", BENCH_PROGRAM, cmd, msg);
  fprintf(stderr, "Try '%s %s --help'.\n", BENCH_PROGRAM, cmd);
  return BENCH_EXIT_USAGE;
}

int bench_parse_options(const char* cmd, int argc, char** argv, const char* optstring, const struct option* longs,
                        void (*usage)(FILE*), bench_apply_fn apply, void* opts) {
  int c;
  while ((c = getopt_long(argc, argv, optstring, longs, NULL)) != -1) {
    if (c == 'h') {
      usage(stdout);
      return BENCH_EXIT_OK;
    }
    if (c == ':') return bench_usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
    if (c == '?') {
      if (optopt) return bench_usage_error(cmd, "unknown option '-%c'", optopt);
      return bench_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
    }
    if (apply(c, argc, argv, opts) != 0) return BENCH_EXIT_USAGE;
  }
  if (optind < argc) return bench_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  return BENCH_CONTINUE;
}

int bench_is_number(const char* s) {
  if (!s || !*s) return 0;
  for (; *s; s++)
    if (!isdigit((unsigned char)*s)) return 0;
  return 1;
}

/* The multiplier of a byte-count suffix ("", K, M, G, T, each optionally followed by B or iB), 0 if bad. */
static unsigned long long bytes_suffix_multiplier(const char* suffix) {
  static const char units[] = "KMGT";
  if (*suffix == 0) return 1;
  const char* u = strchr(units, toupper((unsigned char)*suffix));
  if (!u) return 0;
  const char* rest = suffix + 1;
  if (*rest && strcasecmp(rest, "B") != 0 && strcasecmp(rest, "iB") != 0) return 0;
  return 1ull << (10 * (unsigned)(u - units + 1));
}

/* Prints "invalid value '<val>' for <opt>: <why>" and returns -1, for the parsers below. */
static int bad_value(const char* cmd, const char* opt, const char* val, const char* why) {
  bench_usage_error(cmd, "invalid value '%s' for %s: %s", val ? val : "", opt, why);
  return -1;
}

int bench_parse_bytes(const char* cmd, const char* opt, const char* val, size_t* out) {
  const char* hint = "expected a byte count like 8, 64K, 1M or 1G";
  if (!val || !isdigit((unsigned char)val[0])) return bad_value(cmd, opt, val, hint);
  errno = 0;
  char* end = NULL;
  unsigned long long n = strtoull(val, &end, 10);
  unsigned long long mult = bytes_suffix_multiplier(end);
  if (errno != 0 || mult == 0) return bad_value(cmd, opt, val, hint);
  if (n > (unsigned long long)SIZE_MAX / mult) return bad_value(cmd, opt, val, "too large");
  *out = (size_t)(n * mult);
  return 0;
}

int bench_parse_long(const char* cmd, const char* opt, const char* val, long min, long max, long* out) {
  char why[96];
  snprintf(why, sizeof why, "expected an integer from %ld to %ld", min, max);
  if (!val || !*val || isspace((unsigned char)val[0])) return bad_value(cmd, opt, val, why);
  errno = 0;
  char* end = NULL;
  long v = strtol(val, &end, 10);
  if (*end != 0 || errno != 0 || v < min || v > max) return bad_value(cmd, opt, val, why);
  *out = v;
  return 0;
}

int bench_parse_dtype(const char* cmd, const char* opt, const char* val, tpc_dtype_t* out) {
  static const struct {
    const char* name;
    tpc_dtype_t dtype;
  } names[] = {{"bfloat16", TPC_BFLOAT16}, {"bf16", TPC_BFLOAT16}, {"half", TPC_FLOAT16},
               {"fp16", TPC_FLOAT16},      {"float16", TPC_FLOAT16}, {"float", TPC_FLOAT32},
               {"fp32", TPC_FLOAT32},      {"float32", TPC_FLOAT32}};
  for (size_t i = 0; val && i < sizeof names / sizeof names[0]; i++) {
    if (strcasecmp(val, names[i].name) == 0) {
      *out = names[i].dtype;
      return 0;
    }
  }
  return bad_value(cmd, opt, val, "expected bfloat16 (bf16), half (fp16) or float (fp32)");
}

int bench_parse_path(const char* cmd, const char* opt, const char* val, const char** out) {
  if (!val || !*val) return bad_value(cmd, opt, val, "expected a file name");
  *out = val;
  return 0;
}

int bench_parse_name_list(const char* cmd, const char* opt, const char* val, const char* const* names, int n,
                          const char* what, unsigned* out) {
  char expected[256] = "", buf[256];
  for (int i = 0; i < n; i++)
    snprintf(expected + strlen(expected), sizeof expected - strlen(expected), "%s%s", i ? "," : "", names[i]);
  if (!val || strlen(val) >= sizeof buf) return bad_value(cmd, opt, val, "too long");
  strcpy(buf, val);
  *out = 0;
  char* save = NULL;
  for (char* tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    int found = -1;
    for (int i = 0; i < n; i++)
      if (strcmp(tok, names[i]) == 0) found = i;
    if (strcmp(tok, "all") == 0) *out |= (1u << n) - 1;
    else if (found >= 0) *out |= 1u << found;
    else
      return bench_usage_error(cmd, "invalid value '%s' for %s: unknown %s '%s' (expected a comma list of %s or all)",
                               val, opt, what, tok, expected);
  }
  if (*out == 0) return bench_usage_error(cmd, "invalid value '%s' for %s: no %s named", val, opt, what);
  return 0;
}

const char* bench_format_bytes(size_t bytes, char* buf, size_t len) {
  static const char units[] = " KMGT";
  int u = 0;
  while (u < 4 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    u++;
  }
  if (u == 0) snprintf(buf, len, "%zu", bytes);
  else snprintf(buf, len, "%zu%c", bytes, units[u]);
  return buf;
}

/* ---- data types and host data ------------------------------------------------------------------------------ */

const char* bench_dtype_name(tpc_dtype_t dtype) {
  switch (dtype) {
    case TPC_BFLOAT16: return "bfloat16";
    case TPC_FLOAT16: return "half";
    case TPC_FLOAT32: return "float";
    default: return "invalid";
  }
}

size_t bench_dtype_size(tpc_dtype_t dtype) { return dtype == TPC_FLOAT32 ? 4 : 2; }

double bench_dtype_eps(tpc_dtype_t dtype) {
  switch (dtype) {
    case TPC_BFLOAT16: return 1.0 / 256.0;  /* 2^-8 */
    case TPC_FLOAT16: return 1.0 / 2048.0;  /* 2^-11 */
    default: return 1e-6;
  }
}

uint16_t bench_f32_to_bf16(float f) { return href_f32_to_bf16(f); }

float bench_bf16_to_f32(uint16_t h) { return href_bf16_to_f32(h); }

uint16_t bench_f32_to_f16(float f) { return href_f32_to_f16(f); }

float bench_f16_to_f32(uint16_t h) { return href_f16_to_f32(h); }

float bench_round_to_dtype(float x, tpc_dtype_t dtype) {
  switch (dtype) {
    case TPC_BFLOAT16: return bench_bf16_to_f32(bench_f32_to_bf16(x));
    case TPC_FLOAT16: return bench_f16_to_f32(bench_f32_to_f16(x));
    default: return x;
  }
}

float bench_load_elem(const void* data, size_t i, tpc_dtype_t dtype) {
  switch (dtype) {
    case TPC_BFLOAT16: return bench_bf16_to_f32(((const uint16_t*)data)[i]);
    case TPC_FLOAT16: return bench_f16_to_f32(((const uint16_t*)data)[i]);
    default: return ((const float*)data)[i];
  }
}

void bench_store_elem(void* data, size_t i, tpc_dtype_t dtype, float x) {
  switch (dtype) {
    case TPC_BFLOAT16: ((uint16_t*)data)[i] = bench_f32_to_bf16(x); break;
    case TPC_FLOAT16: ((uint16_t*)data)[i] = bench_f32_to_f16(x); break;
    default: ((float*)data)[i] = x; break;
  }
}

void bench_rng_init(bench_rng_t* rng, uint64_t seed) {
  rng->s = seed * 0x9E3779B97F4A7C15ull + 1; /* as tpc_test_fill_random */
  if (rng->s == 0) rng->s = 1;               /* xorshift never leaves 0 */
}

static uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t bench_seed(uint64_t a, uint64_t b, uint64_t c) {
  return splitmix64(splitmix64(splitmix64(a) ^ b) ^ c);
}

/* ---- the job ---------------------------------------------------------------------------------------------- */

static double wall_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* This process's rank as the launcher's environment says (-1 when it says nothing usable). */
static int env_rank(void) {
  const char* names[] = {"TPCOMM_RANK", "OMPI_COMM_WORLD_RANK"};
  for (int i = 0; i < 2; i++) {
    const char* v = getenv(names[i]);
    if (v && bench_is_number(v)) return atoi(v);
  }
  return -1;
}

/* BENCH_OK when CUDA sees a GPU; else prints the one "no CUDA GPU" line (rank 0) and says BENCH_NO_GPU. */
static int check_gpu_visible(void) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaSuccess && n > 0) return BENCH_OK;
  const char* why = cudaGetErrorString(err != cudaSuccess ? err : cudaErrorNoDevice);
  (void)cudaGetLastError();
  if (env_rank() <= 0) fprintf(stderr, "%s: no CUDA GPU is visible (%s); nothing to benchmark\n", BENCH_PROGRAM, why);
  return BENCH_NO_GPU;
}

static bench_rc_t init_comm_single(bench_ctx_t* ctx, tpc_comm_t* comm) {
  tpc_unique_id_t id;
  ctx->launch = BENCH_LAUNCH_SINGLE;
  BENCH_CHECK_CUDA(cudaSetDevice(0));
  BENCH_CHECK_TPC(ctx, tpc_get_unique_id(&id));
  BENCH_CHECK_TPC(ctx, tpc_comm_init_rank(comm, 1, id, 0, NULL));
  return BENCH_OK;
}

static bench_rc_t init_comm_mpi(bench_ctx_t* ctx, tpc_comm_t* comm) {
#if TPC_HAVE_MPI
  int initialized = 0;
  ctx->launch = BENCH_LAUNCH_MPI;
  MPI_Initialized(&initialized);
  if (!initialized) {
    if (MPI_Init(NULL, NULL) != MPI_SUCCESS) return bench_fail("MPI_Init failed");
    ctx->mpi_initialized = 1;
  }
  BENCH_CHECK_TPC(ctx, tpc_comm_init_mpi(comm, MPI_COMM_WORLD, NULL));
  return BENCH_OK;
#else
  const char* size = getenv("OMPI_COMM_WORLD_SIZE");
  if (size && bench_is_number(size) && atoi(size) > 1)
    return bench_fail("started by mpirun with %s ranks, but this tpcomm-bench was built without MPI; "
                      "rebuild with MPI or start it with tpcomm-run",
                      size);
  return init_comm_single(ctx, comm);
#endif
}

/* Creates the communicator the way the launcher asks for, then reads rank, size, device, NCCL comm. */
static bench_rc_t init_comm(bench_ctx_t* ctx) {
  tpc_comm_t comm = NULL;
  if (getenv("TPCOMM_RANK")) {
    ctx->launch = BENCH_LAUNCH_TPCOMM_RUN;
    BENCH_CHECK_TPC(ctx, tpc_comm_init_env(&comm, NULL));
  } else if (getenv("OMPI_COMM_WORLD_RANK")) {
    BENCH_CHECK(init_comm_mpi(ctx, &comm));
  } else {
    BENCH_CHECK(init_comm_single(ctx, &comm));
  }
  ctx->comm = comm;
  BENCH_CHECK_TPC(ctx, tpc_comm_rank(comm, &ctx->rank));
  BENCH_CHECK_TPC(ctx, tpc_comm_size(comm, &ctx->nranks));
  BENCH_CHECK_TPC(ctx, tpc_comm_device(comm, &ctx->device));
  BENCH_CHECK_CUDA(cudaSetDevice(ctx->device));
  ctx->nccl = NULL;
  BENCH_CHECK_TPC(ctx, tpc_comm_nccl(comm, &ctx->nccl));
  return BENCH_OK;
}

static bench_rc_t init_stream(bench_ctx_t* ctx) {
  BENCH_CHECK_CUDA(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
  for (int i = 0; i <= BENCH_TIMING_BLOCKS; i++) BENCH_CHECK_CUDA(cudaEventCreate(&ctx->ev[i]));
  ctx->scratch_count = 4096;
  BENCH_CHECK_CUDA(cudaMalloc((void**)&ctx->d_scratch, ctx->scratch_count * sizeof(float)));
  return BENCH_OK;
}

int bench_ctx_init(bench_ctx_t* ctx) {
  memset(ctx, 0, sizeof *ctx);
  ctx->nranks = 1;
  ctx->rank = env_rank() > 0 ? env_rank() : 0; /* for messages until the communicator says */
  ctx->t_start = wall_seconds();
  if (check_gpu_visible() == BENCH_NO_GPU) return BENCH_NO_GPU;
  BENCH_CHECK(init_comm(ctx));
  BENCH_CHECK(init_stream(ctx));
  return bench_barrier(ctx); /* the communicator works and every rank is set up */
}

void bench_keep_first(bench_rc_t* first, bench_rc_t rc) {
  if (*first == BENCH_OK && rc != BENCH_OK) *first = rc;
}

static bench_rc_t cuda_cleanup(cudaError_t err, const char* call) {
  return err == cudaSuccess ? BENCH_OK : bench_cuda_fail(err, call, __FILE__, __LINE__);
}

bench_rc_t bench_ctx_finish(bench_ctx_t* ctx) {
  bench_rc_t rc = BENCH_OK;
  if (ctx->stream) bench_keep_first(&rc, cuda_cleanup(cudaStreamSynchronize(ctx->stream), "cudaStreamSynchronize"));
  if (ctx->d_scratch) bench_keep_first(&rc, cuda_cleanup(cudaFree(ctx->d_scratch), "cudaFree(scratch)"));
  for (int i = 0; i <= BENCH_TIMING_BLOCKS; i++) {
    if (ctx->ev[i]) bench_keep_first(&rc, cuda_cleanup(cudaEventDestroy(ctx->ev[i]), "cudaEventDestroy"));
    ctx->ev[i] = NULL;
  }
  if (ctx->stream) bench_keep_first(&rc, cuda_cleanup(cudaStreamDestroy(ctx->stream), "cudaStreamDestroy"));
  ctx->d_scratch = NULL;
  ctx->stream = NULL;
  if (ctx->comm) {
    tpc_status_t st = tpc_comm_destroy(ctx->comm);
    if (st != TPC_SUCCESS) bench_keep_first(&rc, bench_tpc_fail(NULL, st, "tpc_comm_destroy", __FILE__, __LINE__));
    ctx->comm = NULL;
  }
#if TPC_HAVE_MPI
  if (ctx->mpi_initialized) MPI_Finalize();
  ctx->mpi_initialized = 0;
#endif
  return rc;
}

int bench_ctx_fail(bench_ctx_t* ctx) {
  fprintf(stderr, "%s: rank %d: %s\n", BENCH_PROGRAM, ctx->rank, bench_error_message());
  fflush(stderr);
  if (ctx->comm) tpc_comm_abort(ctx->comm); /* stops device waits: nothing of ours keeps peers hanging */
#if TPC_HAVE_MPI
  if (ctx->mpi_initialized) {
    int world = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world > 1) MPI_Abort(MPI_COMM_WORLD, BENCH_EXIT_FAIL); /* does not return */
    MPI_Finalize();
    ctx->mpi_initialized = 0;
  }
#endif
  /* With peers, destroy could wait on work they will never match; exit frees everything anyway. */
  if (ctx->comm && ctx->nranks == 1) tpc_comm_destroy(ctx->comm);
  ctx->comm = NULL;
  return BENCH_EXIT_FAIL;
}

int bench_start(const char* cmd, bench_ctx_t* ctx, bench_json_t* json, const char* json_path) {
  memset(json, 0, sizeof *json);
  int st = bench_ctx_init(ctx);
  if (st == BENCH_NO_GPU) return BENCH_EXIT_OK;
  if (st != BENCH_OK) return bench_ctx_fail(ctx);
  if (bench_json_open(ctx, json, json_path) == BENCH_OK) return BENCH_CONTINUE;
  if (!json->open_failed) return bench_ctx_fail(ctx);
  /* every rank agreed that rank 0 cannot write the file: a bad command line, clean teardown */
  if (ctx->rank == 0) bench_usage_error(cmd, "%s", bench_error_message());
  if (bench_ctx_finish(ctx) != BENCH_OK) return bench_ctx_fail(ctx);
  return BENCH_EXIT_USAGE;
}

int bench_finish(bench_ctx_t* ctx, bench_json_t* json, bench_rc_t rc, bench_rc_t (*cleanup)(void* arg), void* arg,
                 uint64_t wrong) {
  if (rc == BENCH_OK) rc = bench_json_close(json);
  if (rc == BENCH_OK && cleanup) rc = cleanup(arg);
  if (rc == BENCH_OK) rc = bench_ctx_finish(ctx);
  if (rc != BENCH_OK) return bench_ctx_fail(ctx);
  return wrong > 0 ? BENCH_EXIT_WRONG : BENCH_EXIT_OK;
}

/* ---- cross-rank helpers ------------------------------------------------------------------------------------ */

bench_rc_t bench_sum_floats(bench_ctx_t* ctx, float* vals, size_t n) {
  for (size_t off = 0; off < n; off += ctx->scratch_count) {
    size_t m = n - off < ctx->scratch_count ? n - off : ctx->scratch_count;
    BENCH_CHECK_CUDA(cudaMemcpyAsync(ctx->d_scratch, vals + off, m * sizeof(float), cudaMemcpyHostToDevice, ctx->stream));
    BENCH_CHECK_TPC(ctx, tpc_all_reduce(ctx->d_scratch, ctx->d_scratch, m, TPC_FLOAT32, TPC_SUM, ctx->comm, ctx->stream));
    BENCH_CHECK_CUDA(cudaMemcpyAsync(vals + off, ctx->d_scratch, m * sizeof(float), cudaMemcpyDeviceToHost, ctx->stream));
    BENCH_CHECK_CUDA(cudaStreamSynchronize(ctx->stream));
  }
  return BENCH_OK;
}

bench_rc_t bench_barrier(bench_ctx_t* ctx) {
  float one = 1.0f;
  BENCH_CHECK(bench_sum_floats(ctx, &one, 1));
  if (one != (float)ctx->nranks) return bench_fail("barrier: %g ranks answered, expected %d", one, ctx->nranks);
  return BENCH_OK;
}

bench_rc_t bench_sum_count(bench_ctx_t* ctx, uint64_t* count) {
  /* two float32 parts, each sum exact below 2^24: low 16 bits (up to 256 ranks), the rest */
  float parts[2] = {(float)(*count >> 16), (float)(*count & 0xffffu)};
  BENCH_CHECK(bench_sum_floats(ctx, parts, 2));
  *count = ((uint64_t)parts[0] << 16) + (uint64_t)parts[1];
  return BENCH_OK;
}

bench_rc_t bench_average(bench_ctx_t* ctx, double value, double* avg) {
  float v = (float)value;
  BENCH_CHECK(bench_sum_floats(ctx, &v, 1));
  *avg = (double)v / ctx->nranks;
  return BENCH_OK;
}

bench_rc_t bench_count_ranks(bench_ctx_t* ctx, int flag, int* how_many) {
  float v = flag ? 1.0f : 0.0f;
  BENCH_CHECK(bench_sum_floats(ctx, &v, 1));
  *how_many = (int)v;
  return BENCH_OK;
}

bench_rc_t bench_all_gather(bench_ctx_t* ctx, const void* mine, void* all, size_t bytes) {
  size_t n = bytes * (size_t)ctx->nranks;
  float* v = calloc(n ? n : 1, sizeof(float));
  if (!v) return bench_fail("out of host memory (%zu floats for an all-gather)", n);
  const unsigned char* src = mine;
  for (size_t i = 0; i < bytes; i++) v[(size_t)ctx->rank * bytes + i] = (float)src[i];
  bench_rc_t rc = bench_sum_floats(ctx, v, n);
  unsigned char* dst = all;
  for (size_t i = 0; rc == BENCH_OK && i < n; i++) dst[i] = (unsigned char)v[i];
  free(v);
  return rc;
}

/* ---- timing ----------------------------------------------------------------------------------------------- */

bench_rc_t bench_graph_capture(bench_ctx_t* ctx, bench_op_t op, int calls, cudaGraphExec_t* exec) {
  cudaGraph_t graph = NULL;
  BENCH_CHECK_CUDA(cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal));
  bench_rc_t rc = BENCH_OK;
  for (int i = 0; i < calls && rc == BENCH_OK; i++) rc = op.fn(op.arg, ctx->stream);
  cudaError_t err = cudaStreamEndCapture(ctx->stream, &graph); /* always: the stream leaves capture mode */
  if (rc != BENCH_OK || err != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    return rc != BENCH_OK ? rc : bench_cuda_fail(err, "cudaStreamEndCapture", __FILE__, __LINE__);
  }
  err = cudaGraphInstantiate(exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) return bench_cuda_fail(err, "cudaGraphInstantiate", __FILE__, __LINE__);
  return BENCH_OK;
}

bench_rc_t bench_run_once(bench_ctx_t* ctx, bench_op_t op, int graph) {
  if (!graph) {
    BENCH_CHECK(op.fn(op.arg, ctx->stream));
    BENCH_CHECK_CUDA(cudaStreamSynchronize(ctx->stream));
    return BENCH_OK;
  }
  cudaGraphExec_t exec;
  BENCH_CHECK(bench_graph_capture(ctx, op, 1, &exec));
  cudaError_t err = cudaGraphLaunch(exec, ctx->stream);
  if (err == cudaSuccess) err = cudaStreamSynchronize(ctx->stream);
  cudaGraphExecDestroy(exec);
  return err == cudaSuccess ? BENCH_OK : bench_cuda_fail(err, "cudaGraphLaunch/cudaStreamSynchronize", __FILE__, __LINE__);
}

/* Milliseconds between events ev[0] and ev[1], after waiting for ev[1]. */
static bench_rc_t elapsed_ms(bench_ctx_t* ctx, float* ms) {
  BENCH_CHECK_CUDA(cudaEventSynchronize(ctx->ev[1]));
  BENCH_CHECK_CUDA(cudaEventElapsedTime(ms, ctx->ev[0], ctx->ev[1]));
  return BENCH_OK;
}

/* The median of the BENCH_TIMING_BLOCKS blocks between ev[0] .. ev[BENCH_TIMING_BLOCKS], after waiting for
 * the last. */
static bench_rc_t median_block_ms(bench_ctx_t* ctx, float* ms) {
  float t[BENCH_TIMING_BLOCKS];
  BENCH_CHECK_CUDA(cudaEventSynchronize(ctx->ev[BENCH_TIMING_BLOCKS]));
  for (int b = 0; b < BENCH_TIMING_BLOCKS; b++) {
    BENCH_CHECK_CUDA(cudaEventElapsedTime(&t[b], ctx->ev[b], ctx->ev[b + 1]));
    for (int i = b; i > 0 && t[i] < t[i - 1]; i--) { /* insertion sort */
      const float x = t[i];
      t[i] = t[i - 1];
      t[i - 1] = x;
    }
  }
  *ms = t[BENCH_TIMING_BLOCKS / 2];
  return BENCH_OK;
}

bench_rc_t bench_time_eager(bench_ctx_t* ctx, bench_op_t op, int warmup, int iters, double* us) {
  float ms = 0;
  BENCH_CHECK(bench_barrier(ctx));
  for (int i = 0; i < warmup; i++) BENCH_CHECK(op.fn(op.arg, ctx->stream));
  BENCH_CHECK_CUDA(cudaEventRecord(ctx->ev[0], ctx->stream));
  for (int b = 0; b < BENCH_TIMING_BLOCKS; b++) {
    for (int i = 0; i < iters; i++) BENCH_CHECK(op.fn(op.arg, ctx->stream));
    BENCH_CHECK_CUDA(cudaEventRecord(ctx->ev[b + 1], ctx->stream));
  }
  BENCH_CHECK(median_block_ms(ctx, &ms));
  *us = (double)ms * 1e3 / iters;
  return BENCH_OK;
}

/* Barrier, one warm-up replay, then BENCH_TIMING_BLOCKS blocks of `reps` replays of exec; *ms = the median
 * block. The warm-up is not waited for: the first event fires when it completes on the GPU, and for a
 * collective that is when every rank is already running its replays in step, so the ranks' host-side launch
 * skew (processes leave the barrier at different times) stays out of the timed span. */
static bench_rc_t replay_timed(bench_ctx_t* ctx, cudaGraphExec_t exec, int reps, float* ms) {
  BENCH_CHECK(bench_barrier(ctx));
  BENCH_CHECK_CUDA(cudaGraphLaunch(exec, ctx->stream));
  BENCH_CHECK_CUDA(cudaEventRecord(ctx->ev[0], ctx->stream));
  for (int b = 0; b < BENCH_TIMING_BLOCKS; b++) {
    for (int r = 0; r < reps; r++) BENCH_CHECK_CUDA(cudaGraphLaunch(exec, ctx->stream));
    BENCH_CHECK_CUDA(cudaEventRecord(ctx->ev[b + 1], ctx->stream));
  }
  return median_block_ms(ctx, ms);
}

bench_rc_t bench_time_graph(bench_ctx_t* ctx, bench_op_t op, int iters, int reps, double* us) {
  cudaGraphExec_t exec;
  float ms = 0;
  BENCH_CHECK(bench_graph_capture(ctx, op, iters, &exec));
  bench_rc_t rc = replay_timed(ctx, exec, reps, &ms);
  cudaError_t err = cudaGraphExecDestroy(exec);
  BENCH_CHECK(rc);
  BENCH_CHECK_CUDA(err);
  *us = (double)ms * 1e3 / ((double)iters * reps);
  return BENCH_OK;
}

/* ---- single-GPU kernel benchmarks --------------------------------------------------------------------------- */

/* Times `reps` copies src -> dst after 3 untimed ones; *ms for all reps. */
static bench_rc_t time_copies(bench_ctx_t* ctx, void* dst, void* src, size_t bytes, int reps, float* ms) {
  BENCH_CHECK_CUDA(cudaMemsetAsync(src, 1, bytes, ctx->stream));
  for (int i = 0; i < 3; i++) BENCH_CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx->stream));
  BENCH_CHECK_CUDA(cudaEventRecord(ctx->ev[0], ctx->stream));
  for (int i = 0; i < reps; i++) BENCH_CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx->stream));
  BENCH_CHECK_CUDA(cudaEventRecord(ctx->ev[1], ctx->stream));
  return elapsed_ms(ctx, ms);
}

cudaError_t bench_h2d(void* dst, const void* src, size_t bytes) {
  const cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  return err != cudaSuccess ? err : cudaDeviceSynchronize();
}

bench_rc_t bench_copy_bandwidth(bench_ctx_t* ctx, double* gbs) {
  const int reps = 20;
  size_t free_b = 0, total_b = 0;
  BENCH_CHECK_CUDA(cudaMemGetInfo(&free_b, &total_b));
  size_t bytes = (size_t)1 << 30;
  while (bytes > ((size_t)1 << 24) && 2 * bytes + ((size_t)1 << 30) > free_b) bytes /= 2;
  void *src = NULL, *dst = NULL;
  float ms = 0;
  bench_rc_t rc = BENCH_OK;
  BENCH_TRY_CUDA(rc, cudaMalloc(&src, bytes));
  BENCH_TRY_CUDA(rc, cudaMalloc(&dst, bytes));
  if (rc == BENCH_OK) rc = time_copies(ctx, dst, src, bytes, reps, &ms);
  if (src) bench_keep_first(&rc, cuda_cleanup(cudaFree(src), "cudaFree(copy source)"));
  if (dst) bench_keep_first(&rc, cuda_cleanup(cudaFree(dst), "cudaFree(copy destination)"));
  BENCH_CHECK(rc);
  if (ms <= 0) return bench_fail("copy bandwidth: the timed copies took %g ms", (double)ms);
  *gbs = 2.0 * (double)bytes * reps / ((double)ms * 1e-3) / 1e9;
  char sz[32];
  bench_printf(bench_out(ctx), "# copy bandwidth: %.0f GB/s (cudaMemcpy device to device of %s, bytes read + written)\n",
               *gbs, bench_format_bytes(bytes, sz, sizeof sz));
  return BENCH_OK;
}

bench_rc_t bench_l2_bytes(const bench_ctx_t* ctx, size_t* bytes) {
  int l2 = 0;
  BENCH_CHECK_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, ctx->device));
  *bytes = (size_t)l2;
  return BENCH_OK;
}

int bench_rotation_sets(size_t l2_bytes, size_t set_bytes, int max_sets, size_t budget_bytes) {
  if (set_bytes == 0) return 1;
  size_t n = (2 * l2_bytes + set_bytes - 1) / set_bytes;
  if (n > (size_t)max_sets) n = (size_t)max_sets;
  if (n > budget_bytes / set_bytes) n = budget_bytes / set_bytes;
  return n < 1 ? 1 : (int)n;
}

/* ---- output: plain lines and the job header ----------------------------------------------------------------- */

FILE* bench_out(const bench_ctx_t* ctx) { return ctx->rank == 0 ? stdout : NULL; }

void bench_printf(FILE* f, const char* fmt, ...) {
  if (!f) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fflush(f);
}

void bench_progress(const bench_ctx_t* ctx, const char* fmt, ...) {
  if (ctx->rank != 0) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[%7.1f s] ", wall_seconds() - ctx->t_start);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fflush(stderr);
}

/* What each rank tells rank 0 for the header. Plain bytes: it travels through bench_all_gather. */
typedef struct {
  int32_t pid, device;
  char host[64];
  char name[256]; /* as cudaDeviceProp.name */
  char bus_id[32];
} rank_info_t;

static bench_rc_t fill_rank_info(const bench_ctx_t* ctx, rank_info_t* info) {
  struct cudaDeviceProp prop;
  memset(info, 0, sizeof *info);
  info->pid = (int32_t)getpid();
  info->device = ctx->device;
  if (gethostname(info->host, sizeof info->host - 1) != 0) snprintf(info->host, sizeof info->host, "?");
  BENCH_CHECK_CUDA(cudaGetDeviceProperties(&prop, ctx->device));
  snprintf(info->name, sizeof info->name, "%s", prop.name);
  BENCH_CHECK_CUDA(cudaDeviceGetPCIBusId(info->bus_id, (int)sizeof info->bus_id, ctx->device));
  return BENCH_OK;
}

static void print_command_line(FILE* f) {
  bench_printf(f, "#");
  for (int i = 0; i < g_argc; i++) {
    const char* a = g_argv[i];
    int quote = strpbrk(a, " \t\"'$") != NULL || *a == 0;
    bench_printf(f, quote ? " '%s'" : " %s", a);
  }
  bench_printf(f, "\n");
}

static void print_date_host(FILE* f, const rank_info_t* r0) {
  char date[64];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
  bench_printf(f, "# date: %s\n# host: %s\n", date, r0->host);
}

static void print_ranks(FILE* f, const bench_ctx_t* ctx, const rank_info_t* infos) {
  static const char* launch_names[] = {"a single process", "tpcomm-run", "mpirun"};
  int same = 1;
  bench_printf(f, "# nranks: %d (started by %s)\n", ctx->nranks, launch_names[ctx->launch]);
  for (int r = 0; r < ctx->nranks; r++) {
    const rank_info_t* i = &infos[r];
    bench_printf(f, "#   rank %2d: pid %d on %s, device %d [%s] %s\n", r, i->pid, i->host, i->device, i->bus_id, i->name);
    if (strcmp(i->name, infos[0].name) != 0) same = 0;
  }
  if (same) bench_printf(f, "# devices: %d x %s\n", ctx->nranks, infos[0].name);
  else bench_printf(f, "# devices: mixed (see the rank lines)\n");
}

static void print_versions(FILE* f, const bench_ctx_t* ctx) {
  static const char* transport_names[] = {"local", "custom", "nccl"};
  int v = 0;
  tpc_transport_t transport = TPC_TRANSPORT_LOCAL;
  const char* reason = NULL;
  if (ncclGetVersion(&v) == ncclSuccess)
    bench_printf(f, "# nccl: %d.%d.%d (built with %d.%d.%d), tpcomm communicator %s\n", v / 10000, v / 100 % 100,
                 v % 100, NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH, ctx->nccl ? "has one" : "has none");
  else bench_printf(f, "# nccl: version unknown (ncclGetVersion failed)\n");
  if (tpc_comm_transport(ctx->comm, &transport, &reason) == TPC_SUCCESS && transport >= 0 && transport <= 2)
    bench_printf(f, "# tpcomm: %d.%d.%d, transport %s (%s)\n", TPC_VERSION_MAJOR, TPC_VERSION_MINOR, TPC_VERSION_PATCH,
                 transport_names[transport], reason ? reason : "no reason given");
  else bench_printf(f, "# tpcomm: %d.%d.%d, transport unknown (%s)\n", TPC_VERSION_MAJOR, TPC_VERSION_MINOR,
                    TPC_VERSION_PATCH, tpc_get_last_error(ctx->comm));
}

/* TPCOMM_* (but never TPCOMM_UNIQUE_ID, a secret), NCCL_* and CUDA_VISIBLE_DEVICES of rank 0. */
static void print_settings(FILE* f) {
  int any = 0;
  for (char** e = environ; e && *e; e++) {
    const char* s = *e;
    int wanted = strncmp(s, "TPCOMM_", 7) == 0 || strncmp(s, "NCCL_", 5) == 0 ||
                 strncmp(s, "CUDA_VISIBLE_DEVICES=", 21) == 0;
    if (!wanted || strncmp(s, "TPCOMM_UNIQUE_ID=", 17) == 0) continue;
    bench_printf(f, "%s %s", any ? "" : "# env:", s);
    any = 1;
  }
  if (any) bench_printf(f, "\n");
}

bench_rc_t bench_print_job_header(bench_ctx_t* ctx) {
  rank_info_t mine;
  BENCH_CHECK(fill_rank_info(ctx, &mine));
  rank_info_t* all = calloc((size_t)ctx->nranks, sizeof *all);
  if (!all) return bench_fail("out of host memory");
  bench_rc_t rc = bench_all_gather(ctx, &mine, all, sizeof mine);
  if (rc == BENCH_OK) {
    FILE* f = bench_out(ctx);
    for (int r = 0; r < ctx->nranks; r++) { /* a rank's strings end inside their fields, whatever it sent */
      all[r].host[sizeof all[r].host - 1] = all[r].name[sizeof all[r].name - 1] = 0;
      all[r].bus_id[sizeof all[r].bus_id - 1] = 0;
    }
    print_command_line(f);
    print_date_host(f, &all[0]);
    print_ranks(f, ctx, all);
    print_versions(f, ctx);
    print_settings(f);
  }
  free(all);
  return rc;
}

/* ---- output: table ------------------------------------------------------------------------------------------ */

static void table_row_reset(bench_table_t* t) {
  t->row[0] = ' ';
  t->row[1] = 0;
  t->row_len = 1;
  t->next_cell = 0;
}

void bench_table_init(bench_table_t* t) {
  memset(t, 0, sizeof *t);
  t->cur_group = -1;
  table_row_reset(t);
}

void bench_table_group(bench_table_t* t, const char* title) {
  if (!title) {
    t->cur_group = -1;
    return;
  }
  if (t->ngroups >= BENCH_TABLE_MAX_COLS) return;
  t->groups[t->ngroups] = title;
  t->cur_group = t->ngroups++;
}

void bench_table_col(bench_table_t* t, const char* name, const char* unit, int width) {
  if (t->ncols >= BENCH_TABLE_MAX_COLS) return;
  bench_col_t* c = &t->cols[t->ncols++];
  c->name = name;
  c->unit = unit ? unit : "";
  c->width = width;
  c->group = t->cur_group;
}

/* Prints line without its trailing blanks. */
static void print_trimmed(FILE* f, char* line) {
  size_t n = strlen(line);
  while (n > 0 && line[n - 1] == ' ') line[--n] = 0;
  bench_printf(f, "%s\n", line);
}

/* The group-title line: each title centred over the columns of its group. */
static void print_group_line(const bench_table_t* t, FILE* f) {
  char line[4096];
  size_t pos = 1, len = 1;
  memset(line, ' ', sizeof line);
  line[0] = '#';
  for (int g = 0; g < t->ngroups; g++) {
    size_t start = 0, end = 0;
    pos = 1;
    for (int c = 0; c < t->ncols; c++) {
      size_t w = 1 + (size_t)t->cols[c].width;
      if (t->cols[c].group == g) {
        if (end == 0) start = pos + 1;
        end = pos + w;
      }
      pos += w;
    }
    size_t tl = strlen(t->groups[g]);
    if (end == 0 || end > sizeof line - 1) continue;
    size_t at = (end - start > tl) ? start + (end - start - tl) / 2 : start;
    if (at + tl >= sizeof line) continue;
    memcpy(line + at, t->groups[g], tl);
    if (at + tl > len) len = at + tl;
  }
  line[len] = 0;
  print_trimmed(f, line);
}

void bench_table_print_header(const bench_table_t* t, FILE* f) {
  char names[4096] = "#", units[4096] = "#";
  size_t nl = 1, ul = 1;
  if (!f) return;
  if (t->ngroups > 0) print_group_line(t, f);
  for (int c = 0; c < t->ncols; c++) {
    if (nl < sizeof names) nl += (size_t)snprintf(names + nl, sizeof names - nl, " %*s", t->cols[c].width, t->cols[c].name);
    if (ul < sizeof units) ul += (size_t)snprintf(units + ul, sizeof units - ul, " %*s", t->cols[c].width, t->cols[c].unit);
  }
  print_trimmed(f, names);
  print_trimmed(f, units);
}

void bench_table_cell(bench_table_t* t, const char* fmt, ...) {
  char cell[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cell, sizeof cell, fmt, ap);
  va_end(ap);
  int width = t->next_cell < t->ncols ? t->cols[t->next_cell].width : 0;
  if (t->row_len < sizeof t->row)
    t->row_len += (size_t)snprintf(t->row + t->row_len, sizeof t->row - t->row_len, " %*s", width, cell);
  if (t->row_len >= sizeof t->row) t->row_len = sizeof t->row - 1;
  t->next_cell++;
}

void bench_table_end_row(bench_table_t* t, FILE* f) {
  while (t->next_cell < t->ncols) bench_table_cell(t, "%s", "");
  if (f) print_trimmed(f, t->row);
  table_row_reset(t);
}

/* ---- output: JSON ------------------------------------------------------------------------------------------- */

bench_rc_t bench_json_open(bench_ctx_t* ctx, bench_json_t* j, const char* path) {
  memset(j, 0, sizeof *j);
  j->path = path;
  int failed = 0, err = 0;
  if (path && ctx->rank == 0) {
    j->f = fopen(path, "w");
    if (!j->f) err = errno;
    else if (fputs("[\n", j->f) == EOF) err = errno ? errno : EIO;
    failed = err != 0;
  }
  int nfailed = 0;
  BENCH_CHECK(bench_count_ranks(ctx, failed, &nfailed));
  if (nfailed == 0) return BENCH_OK;
  if (j->f) fclose(j->f);
  j->f = NULL;
  j->open_failed = 1;
  return bench_fail("cannot write the --json file '%s'%s%s", path ? path : "", err ? ": " : "",
                    err ? strerror(err) : " (rank 0 could not open it)");
}

static void json_key(bench_json_t* j, const char* key) {
  fprintf(j->f, "%s\"%s\": ", j->nfields++ ? ", " : "", key);
}

void bench_json_begin(bench_json_t* j) {
  if (!j->f) return;
  fprintf(j->f, "%s  {", j->nrecords ? ",\n" : "");
  j->nfields = 0;
}

void bench_json_str(bench_json_t* j, const char* key, const char* val) {
  if (!j->f) return;
  json_key(j, key);
  fputc('"', j->f);
  for (const unsigned char* p = (const unsigned char*)val; p && *p; p++) {
    if (*p == '"' || *p == '\\') fprintf(j->f, "\\%c", *p);
    else if (*p < 0x20) fprintf(j->f, "\\u%04x", *p);
    else fputc(*p, j->f);
  }
  fputc('"', j->f);
}

void bench_json_int(bench_json_t* j, const char* key, long long val) {
  if (!j->f) return;
  json_key(j, key);
  fprintf(j->f, "%lld", val);
}

void bench_json_num(bench_json_t* j, const char* key, double val) {
  if (!j->f) return;
  json_key(j, key);
  if (isfinite(val)) fprintf(j->f, "%.6g", val);
  else fputs("null", j->f);
}

void bench_json_bool(bench_json_t* j, const char* key, int val) {
  if (!j->f) return;
  json_key(j, key);
  fputs(val ? "true" : "false", j->f);
}

void bench_json_null(bench_json_t* j, const char* key) {
  if (!j->f) return;
  json_key(j, key);
  fputs("null", j->f);
}

void bench_json_end(bench_json_t* j) {
  if (!j->f) return;
  fputc('}', j->f);
  j->nrecords++;
}

bench_rc_t bench_json_close(bench_json_t* j) {
  if (!j->f) return BENCH_OK;
  int bad = fputs(j->nrecords ? "\n]\n" : "]\n", j->f) == EOF;
  bad |= ferror(j->f) != 0;
  bad |= fclose(j->f) != 0;
  j->f = NULL;
  return bad ? bench_fail("writing the --json file '%s' failed: %s", j->path, strerror(errno)) : BENCH_OK;
}
