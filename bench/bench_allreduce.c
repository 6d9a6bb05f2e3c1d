/* bench_allreduce.c — `tpcomm-bench allreduce`: all-reduce (sum) time and bus bandwidth over a range of
 * sizes for several implementations side by side, in one process per GPU and over the same buffers:
 *   auto       tpc_all_reduce (the library chooses; the chosen algorithm is shown)
 *   oneshot    tpc_all_reduce_algo(TPC_ALGO_ONESHOT)     } "n/a" where the library answers
 *   twoshot    tpc_all_reduce_algo(TPC_ALGO_TWOSHOT)     } TPC_ERR_UNSUPPORTED (probed eagerly,
 *   nccl       tpc_all_reduce_algo(TPC_ALGO_NCCL)        } and by a trial capture in graph mode)
 *   ncclsymm   ncclAllReduce on ncclMemAlloc buffers registered as NCCL_WIN_COLL_SYMMETRIC windows
 *   nccldirect ncclAllReduce on the same cudaMalloc buffers as tpcomm's columns
 * The two direct NCCL columns use the ncclComm_t of the tpcomm communicator (tpc_comm_nccl) and are left
 * out when it has none. Per size and implementation: one checked call (fresh random inputs from a seed of
 * (size, implementation, rank), CPU reference over every rank's regenerated inputs), then timing (eager:
 * warm-up + 3 blocks of `iters` calls; graph: `iters` calls in one graph, 3 blocks of replays; the median
 * block, bench_common.h), per-rank times
 * averaged over ranks as nccl-tests does.
 *
 * Relies on: bench_common (setup, timing, cross-rank helpers, output); every rank taking the same path
 * through the same sizes and implementations, so each collective call (ours, NCCL's, the helpers') lines
 * up; the library deciding TPC_ERR_UNSUPPORTED identically on every rank (checked: ranks that disagree
 * stop the run). */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "bench_common.h"

#define AR_CMD "allreduce"
#define AR_PROGRESS_BYTES ((size_t)16 << 20) /* progress lines on stderr from this size */
#define AR_GRAPH_REPS_DEFAULT 5
#define AR_POISON_BYTE 0x7F /* bf16 0x7F7F = 3.4e38, fp16 0x7F7F = NaN, fp32 0x7F7F7F7F = 3.4e38 */

#if defined(NCCL_VERSION_CODE) && NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
#define AR_HAVE_NCCL_SYMM 1
#else
#define AR_HAVE_NCCL_SYMM 0
#endif

typedef enum { AR_AUTO, AR_ONESHOT, AR_TWOSHOT, AR_NCCL, AR_NCCLSYMM, AR_NCCLDIRECT, AR_NUM_IMPLS } ar_impl_t;
static const char* const k_impl_names[AR_NUM_IMPLS] = {"auto", "oneshot", "twoshot", "nccl", "ncclsymm", "nccldirect"};
/* the algorithm each column pins in tpc_all_reduce_algo (the NCCL columns do not call tpcomm) */
static const tpc_algo_t k_impl_algo[AR_NUM_IMPLS] = {TPC_ALGO_AUTO, TPC_ALGO_ONESHOT, TPC_ALGO_TWOSHOT,
                                                     TPC_ALGO_NCCL, TPC_ALGO_NCCL,    TPC_ALGO_NCCL};
/* candidates for the speedup column's "best NCCL" */
static const ar_impl_t k_nccl_impls[] = {AR_NCCLDIRECT, AR_NCCLSYMM, AR_NCCL};

typedef struct {
  size_t minbytes, maxbytes;
  long stepfactor, iters, warmup, check, graph_reps; /* graph_reps 0 = eager */
  int inplace;
  tpc_dtype_t dtype;
  unsigned impls; /* bit i: ar_impl_t i selected */
  const char* json_path;
} ar_opts_t;

/* One implementation at one size: what a row shows. */
typedef struct {
  int ran, na; /* ran: column shown; na: unsupported at this size */
  tpc_algo_t algo; /* auto: the algorithm the library chose */
  double us, algbw, busbw;
  int checked;
  uint64_t wrong; /* summed over ranks */
} ar_result_t;

/* The run: options, job, buffers, output, totals. */
typedef struct {
  const ar_opts_t* o;
  bench_ctx_t* ctx;
  size_t esize, max_count, max_bytes;
  int shown[AR_NUM_IMPLS];
  const char* left_out[AR_NUM_IMPLS]; /* why a selected implementation has no column */
  void *d_send, *d_recv; /* cudaMalloc: tpcomm's columns and nccldirect (d_send NULL in place) */
  void *s_send, *s_recv; /* ncclMemAlloc: ncclsymm (s_send NULL in place) */
#if AR_HAVE_NCCL_SYMM
  ncclWindow_t s_send_win, s_recv_win;
#endif
  float* h_ref;  /* CPU reference, max_count floats (check only) */
  void* h_data;  /* host staging in dtype, max_bytes (check only) */
  bench_table_t table;
  bench_json_t json;
  double busbw_sum[AR_NUM_IMPLS];
  int busbw_rows[AR_NUM_IMPLS];
  uint64_t wrong_total;
} ar_bench_t;

/* The arguments of one timed call. */
typedef struct {
  ar_bench_t* b;
  ar_impl_t impl;
  const void* send;
  void* recv;
  size_t count;
} ar_call_t;

/* ---- options ---------------------------------------------------------------------------------------------- */

void bench_allreduce_usage(FILE* f) {
  fprintf(f,
          "Usage: %s " AR_CMD " [options]\n\n"
          "All-reduce (sum) time and bus bandwidth over a range of sizes, tpcomm next to NCCL, printed like\n"
          "nccl-tests' all_reduce_perf. Start one process per GPU with tpcomm-run or mpirun, or run it alone\n"
          "(one rank on device 0: only auto and nccl apply).\n\n"
          "  -b, --minbytes N       smallest message in bytes (default 8; K, M, G suffixes)\n"
          "  -e, --maxbytes N       largest message in bytes (default 64M)\n"
          "  -f, --stepfactor N     multiply the size by N at each step (default 2)\n"
          "  -n, --iters N          timed calls per size and implementation (default 50)\n"
          "  -w, --warmup_iters N   untimed calls before the timed ones, eager mode (default 10)\n"
          "  -c, --check 0|1        check each implementation's result at each size (default 1)\n"
          "  -d, --datatype T       bfloat16|half|float, also bf16|fp16|fp32 (default bfloat16)\n"
          "  -G, --graph [N]        time inside one CUDA graph: `iters` calls captured, one warm-up replay,\n"
          "                         3 blocks of N timed replays, the median block (default N %d; -G 0 = eager)\n"
          "      --inplace          sendbuf == recvbuf (default out of place)\n"
          "      --impl LIST        comma list of auto,oneshot,twoshot,nccl,ncclsymm,nccldirect or all\n"
          "                         (default all)\n"
          "  -J, --json FILE        also write every result to FILE as a JSON array\n"
          "  -h, --help             this help\n\n"
          "Columns, per implementation: time (us, per call, averaged over ranks), busbw (GB/s, algbw *\n"
          "2(n-1)/n as nccl-tests), #wrong (elements off the CPU reference, summed over ranks; '-' with -c 0),\n"
          "and for auto the algorithm chosen; 'n/a' where the algorithm does not serve that size.\n"
          "speedup = the best NCCL time (nccldirect, ncclsymm, nccl) / the auto time.\n"
          "auto = tpc_all_reduce; oneshot/twoshot/nccl = tpc_all_reduce_algo with that algorithm;\n"
          "nccldirect = ncclAllReduce on cudaMalloc buffers; ncclsymm = ncclAllReduce on ncclMemAlloc\n"
          "buffers registered as symmetric windows (NCCL >= 2.27).\n\n"
          "Exit status: 0 done and right, 1 some results wrong, 2 bad command line, 3 a failure.\n",
          BENCH_PROGRAM, AR_GRAPH_REPS_DEFAULT);
}

static void set_default_opts(ar_opts_t* o) {
  memset(o, 0, sizeof *o);
  o->minbytes = 8;
  o->maxbytes = (size_t)64 << 20;
  o->stepfactor = 2;
  o->iters = 50;
  o->warmup = 10;
  o->check = 1;
  o->graph_reps = 0;
  o->dtype = TPC_BFLOAT16;
  o->impls = (1u << AR_NUM_IMPLS) - 1;
}

/* -G takes an optional count: "-G", "-G5", "-G 5", "--graph", "--graph=5", "--graph 5". */
static int parse_graph_arg(int argc, char** argv, ar_opts_t* o) {
  const char* val = optarg;
  if (!val && optind < argc && bench_is_number(argv[optind])) val = argv[optind++];
  if (!val) {
    o->graph_reps = AR_GRAPH_REPS_DEFAULT;
    return 0;
  }
  return bench_parse_long(AR_CMD, "-G/--graph", val, 0, 100000, &o->graph_reps);
}

enum { OPT_INPLACE = 256, OPT_IMPL = 257 };

/* bench_apply_fn: one option; 0 on success, non-zero (message printed) on a bad value. */
static int apply_option(int c, int argc, char** argv, void* opts) {
  ar_opts_t* o = opts;
  switch (c) {
    case 'b': return bench_parse_bytes(AR_CMD, "-b/--minbytes", optarg, &o->minbytes);
    case 'e': return bench_parse_bytes(AR_CMD, "-e/--maxbytes", optarg, &o->maxbytes);
    case 'f': return bench_parse_long(AR_CMD, "-f/--stepfactor", optarg, 2, 1024, &o->stepfactor);
    case 'n': return bench_parse_long(AR_CMD, "-n/--iters", optarg, 1, 1000000, &o->iters);
    case 'w': return bench_parse_long(AR_CMD, "-w/--warmup_iters", optarg, 0, 1000000, &o->warmup);
    case 'c': return bench_parse_long(AR_CMD, "-c/--check", optarg, 0, 1, &o->check);
    case 'd': return bench_parse_dtype(AR_CMD, "-d/--datatype", optarg, &o->dtype);
    case 'G': return parse_graph_arg(argc, argv, o);
    case 'J': return bench_parse_path(AR_CMD, "-J/--json", optarg, &o->json_path);
    case OPT_INPLACE: o->inplace = 1; return 0;
    case OPT_IMPL:
      return bench_parse_name_list(AR_CMD, "--impl", optarg, k_impl_names, AR_NUM_IMPLS, "implementation", &o->impls);
    default: return -1;
  }
}

/* Checks the options against each other; non-zero (message printed) when they do not fit. */
static int validate_opts(const ar_opts_t* o) {
  char a[32], b[32];
  size_t esize = bench_dtype_size(o->dtype);
  if (o->minbytes < esize)
    return bench_usage_error(AR_CMD, "invalid value '%s' for -b/--minbytes: smaller than one %s element (%zu bytes)",
                             bench_format_bytes(o->minbytes, a, sizeof a), bench_dtype_name(o->dtype), esize);
  if (o->maxbytes < o->minbytes)
    return bench_usage_error(AR_CMD, "invalid value '%s' for -e/--maxbytes: smaller than -b/--minbytes %s",
                             bench_format_bytes(o->maxbytes, a, sizeof a), bench_format_bytes(o->minbytes, b, sizeof b));
  return 0;
}

/* BENCH_CONTINUE, or the exit code after -h or a bad command line. */
static int parse_opts(int argc, char** argv, ar_opts_t* o) {
  static const struct option long_opts[] = {
      {"minbytes", required_argument, NULL, 'b'},  {"maxbytes", required_argument, NULL, 'e'},
      {"stepfactor", required_argument, NULL, 'f'}, {"iters", required_argument, NULL, 'n'},
      {"warmup_iters", required_argument, NULL, 'w'}, {"check", required_argument, NULL, 'c'},
      {"datatype", required_argument, NULL, 'd'},  {"graph", optional_argument, NULL, 'G'},
      {"inplace", no_argument, NULL, OPT_INPLACE}, {"impl", required_argument, NULL, OPT_IMPL},
      {"json", required_argument, NULL, 'J'},      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  set_default_opts(o);
  int rc = bench_parse_options(AR_CMD, argc, argv, ":b:e:f:n:w:c:d:G::J:h", long_opts, bench_allreduce_usage,
                               apply_option, o);
  if (rc != BENCH_CONTINUE) return rc;
  return validate_opts(o) == 0 ? BENCH_CONTINUE : BENCH_EXIT_USAGE;
}

/* ---- the calls being measured ----------------------------------------------------------------------------- */

static ncclDataType_t nccl_dtype(tpc_dtype_t dtype) {
  return dtype == TPC_BFLOAT16 ? ncclBfloat16 : dtype == TPC_FLOAT16 ? ncclFloat16 : ncclFloat32;
}

/* bench_enqueue_fn: one all-reduce of the call's implementation on stream. */
static bench_rc_t enqueue_allreduce(void* arg, cudaStream_t stream) {
  const ar_call_t* c = arg;
  bench_ctx_t* ctx = c->b->ctx;
  tpc_dtype_t dtype = c->b->o->dtype;
  switch (c->impl) {
    case AR_AUTO:
      return bench_tpc_rc(ctx, tpc_all_reduce(c->send, c->recv, c->count, dtype, TPC_SUM, ctx->comm, stream),
                          "tpc_all_reduce", __FILE__, __LINE__);
    case AR_ONESHOT:
    case AR_TWOSHOT:
    case AR_NCCL:
      return bench_tpc_rc(ctx,
                          tpc_all_reduce_algo(c->send, c->recv, c->count, dtype, TPC_SUM, k_impl_algo[c->impl],
                                              ctx->comm, stream),
                          k_impl_names[c->impl], __FILE__, __LINE__);
    case AR_NCCLSYMM:
    case AR_NCCLDIRECT:
      BENCH_CHECK_NCCL(ncclAllReduce(c->send, c->recv, c->count, nccl_dtype(dtype), ncclSum, (ncclComm_t)ctx->nccl,
                                     stream));
      return BENCH_OK;
    default: return bench_fail("internal: implementation %d", (int)c->impl);
  }
}

static ar_call_t make_call(ar_bench_t* b, ar_impl_t impl, size_t count) {
  ar_call_t c = {b, impl, NULL, NULL, count};
  int symm = impl == AR_NCCLSYMM;
  c.recv = symm ? b->s_recv : b->d_recv;
  c.send = b->o->inplace ? c.recv : (symm ? b->s_send : b->d_send);
  return c;
}

/* ---- buffers ---------------------------------------------------------------------------------------------- */

static bench_rc_t alloc_device_buffers(ar_bench_t* b) {
  BENCH_CHECK_CUDA(cudaMalloc(&b->d_recv, b->max_bytes));
  BENCH_CHECK_CUDA(cudaMemset(b->d_recv, 0, b->max_bytes));
  if (!b->o->inplace) {
    BENCH_CHECK_CUDA(cudaMalloc(&b->d_send, b->max_bytes));
    BENCH_CHECK_CUDA(cudaMemset(b->d_send, 0, b->max_bytes));
  }
  BENCH_CHECK_CUDA(cudaDeviceSynchronize()); /* legacy-stream memsets: done before any stream work */
  return BENCH_OK;
}

static bench_rc_t alloc_host_buffers(ar_bench_t* b) {
  if (!b->o->check) return BENCH_OK;
  b->h_ref = malloc(b->max_count * sizeof(float));
  b->h_data = malloc(b->max_bytes);
  if (!b->h_ref || !b->h_data) return bench_fail("out of host memory for the check (%zu bytes)", b->max_count * 4 + b->max_bytes);
  return BENCH_OK;
}

/* The buffers of tpcomm's columns and nccldirect, on every rank or on none. */
static bench_rc_t alloc_buffers(ar_bench_t* b) {
  bench_rc_t rc = alloc_device_buffers(b);
  if (rc == BENCH_OK) rc = alloc_host_buffers(b);
  int nfailed = 0;
  BENCH_CHECK(bench_count_ranks(b->ctx, rc != BENCH_OK, &nfailed));
  if (rc != BENCH_OK) return rc;
  if (nfailed) return bench_fail("%d rank(s) could not allocate their buffers", nfailed);
  return BENCH_OK;
}

#if AR_HAVE_NCCL_SYMM
static bench_rc_t alloc_symm_local(ar_bench_t* b) {
  BENCH_CHECK_NCCL(ncclMemAlloc(&b->s_recv, b->max_bytes));
  BENCH_CHECK_CUDA(cudaMemset(b->s_recv, 0, b->max_bytes));
  if (!b->o->inplace) {
    BENCH_CHECK_NCCL(ncclMemAlloc(&b->s_send, b->max_bytes));
    BENCH_CHECK_CUDA(cudaMemset(b->s_send, 0, b->max_bytes));
  }
  BENCH_CHECK_CUDA(cudaDeviceSynchronize());
  return BENCH_OK;
}

/* Collective: every rank registers the same windows in the same order (send, then recv). */
static bench_rc_t register_symm_windows(ar_bench_t* b) {
  ncclComm_t nc = (ncclComm_t)b->ctx->nccl;
  if (b->s_send) BENCH_CHECK_NCCL(ncclCommWindowRegister(nc, b->s_send, b->max_bytes, &b->s_send_win, NCCL_WIN_COLL_SYMMETRIC));
  BENCH_CHECK_NCCL(ncclCommWindowRegister(nc, b->s_recv, b->max_bytes, &b->s_recv_win, NCCL_WIN_COLL_SYMMETRIC));
  return BENCH_OK;
}
#endif

static bench_rc_t free_symm_local(ar_bench_t* b) {
  ncclResult_t rs = b->s_send ? ncclMemFree(b->s_send) : ncclSuccess;
  ncclResult_t rr = b->s_recv ? ncclMemFree(b->s_recv) : ncclSuccess;
  b->s_send = b->s_recv = NULL;
  if (rs != ncclSuccess) return bench_nccl_fail(rs, "ncclMemFree(send)", __FILE__, __LINE__);
  if (rr != ncclSuccess) return bench_nccl_fail(rr, "ncclMemFree(recv)", __FILE__, __LINE__);
  return BENCH_OK;
}

/* ncclsymm's buffers and windows. A local allocation failure anywhere drops the column (with a note);
 * a registration failure stops the run. */
static bench_rc_t setup_symm(ar_bench_t* b) {
#if AR_HAVE_NCCL_SYMM
  bench_rc_t rc = alloc_symm_local(b);
  if (rc != BENCH_OK) fprintf(stderr, "%s: rank %d: %s\n", BENCH_PROGRAM, b->ctx->rank, bench_error_message());
  int nfailed = 0;
  BENCH_CHECK(bench_count_ranks(b->ctx, rc != BENCH_OK, &nfailed));
  if (nfailed) {
    BENCH_CHECK(free_symm_local(b));
    b->shown[AR_NCCLSYMM] = 0;
    b->left_out[AR_NCCLSYMM] = "ncclMemAlloc failed on some rank; see stderr";
    return BENCH_OK;
  }
  return register_symm_windows(b);
#else
  b->shown[AR_NCCLSYMM] = 0;
  return BENCH_OK;
#endif
}

/* Collective: the same order on every rank (recv, then send). */
static bench_rc_t deregister_symm_windows(ar_bench_t* b) {
#if AR_HAVE_NCCL_SYMM
  ncclComm_t nc = (ncclComm_t)b->ctx->nccl;
  ncclWindow_t recv_win = b->s_recv_win, send_win = b->s_send_win;
  b->s_recv_win = b->s_send_win = NULL;
  if (recv_win) BENCH_CHECK_NCCL(ncclCommWindowDeregister(nc, recv_win));
  if (send_win) BENCH_CHECK_NCCL(ncclCommWindowDeregister(nc, send_win));
#endif
  (void)b;
  return BENCH_OK;
}

static bench_rc_t free_device(void** p) {
  cudaError_t err = *p ? cudaFree(*p) : cudaSuccess;
  *p = NULL;
  return err == cudaSuccess ? BENCH_OK : bench_cuda_fail(err, "cudaFree", __FILE__, __LINE__);
}

/* Normal teardown, after a run that succeeded on every rank (the cleanup of bench_finish). */
static bench_rc_t free_buffers(void* arg) {
  ar_bench_t* b = arg;
  bench_rc_t rc = deregister_symm_windows(b);
  bench_keep_first(&rc, free_symm_local(b));
  bench_keep_first(&rc, free_device(&b->d_send));
  bench_keep_first(&rc, free_device(&b->d_recv));
  free(b->h_ref);
  free(b->h_data);
  b->h_ref = NULL;
  b->h_data = NULL;
  return rc;
}

/* ---- correctness ------------------------------------------------------------------------------------------ */

static uint64_t input_seed(size_t bytes, ar_impl_t impl, int rank) { return bench_seed(bytes, (uint64_t)impl, (uint64_t)rank); }

/* h_data = this rank's inputs in dtype. */
static void make_input(ar_bench_t* b, size_t count, ar_impl_t impl) {
  bench_rng_t rng;
  bench_rng_init(&rng, input_seed(count * b->esize, impl, b->ctx->rank));
  for (size_t i = 0; i < count; i++) bench_store_elem(b->h_data, i, b->o->dtype, bench_rng_next(&rng));
}

/* h_ref = sum over ranks 0..n-1 (in that order, fp32) of every rank's inputs as rounded to dtype. */
static void make_reference(ar_bench_t* b, size_t count, ar_impl_t impl) {
  tpc_dtype_t dtype = b->o->dtype;
  memset(b->h_ref, 0, count * sizeof(float));
  for (int r = 0; r < b->ctx->nranks; r++) {
    bench_rng_t rng;
    bench_rng_init(&rng, input_seed(count * b->esize, impl, r));
    for (size_t i = 0; i < count; i++) b->h_ref[i] += bench_round_to_dtype(bench_rng_next(&rng), dtype);
  }
}

/* Elements of h_data (the output) off the reference rounded to dtype: |out-ref| > tol*(|ref|+1), or not
 * finite (NaN, the fp16 poison). tol = nranks * the type's round-off. */
static uint64_t count_wrong(const ar_bench_t* b, size_t count) {
  tpc_dtype_t dtype = b->o->dtype;
  double tol = b->ctx->nranks * bench_dtype_eps(dtype);
  uint64_t wrong = 0;
  for (size_t i = 0; i < count; i++) {
    double out = bench_load_elem(b->h_data, i, dtype);
    double ref = bench_round_to_dtype(b->h_ref[i], dtype);
    if (!isfinite(out) || fabs(out - ref) > tol * (fabs(ref) + 1.0)) wrong++;
  }
  return wrong;
}

/* Inputs into the send buffer (the recv buffer in place), poison into the recv buffer (out of place). */
static bench_rc_t upload_input(ar_bench_t* b, const ar_call_t* call) {
  bench_ctx_t* ctx = b->ctx;
  size_t bytes = call->count * b->esize;
  make_input(b, call->count, call->impl);
  BENCH_CHECK_CUDA(cudaMemcpyAsync((void*)call->send, b->h_data, bytes, cudaMemcpyHostToDevice, ctx->stream));
  if (!b->o->inplace) BENCH_CHECK_CUDA(cudaMemsetAsync(call->recv, AR_POISON_BYTE, bytes, ctx->stream));
  BENCH_CHECK_CUDA(cudaStreamSynchronize(ctx->stream));
  return BENCH_OK;
}

/* One call the way it is timed (eager, or a graph of one call replayed once); *wrong for this rank. */
static bench_rc_t check_once(ar_bench_t* b, ar_call_t* call, uint64_t* wrong) {
  bench_ctx_t* ctx = b->ctx;
  bench_op_t op = {enqueue_allreduce, call};
  BENCH_CHECK(upload_input(b, call));
  BENCH_CHECK(bench_run_once(ctx, op, b->o->graph_reps > 0));
  BENCH_CHECK_CUDA(cudaMemcpyAsync(b->h_data, call->recv, call->count * b->esize, cudaMemcpyDeviceToHost, ctx->stream));
  BENCH_CHECK_CUDA(cudaStreamSynchronize(ctx->stream));
  make_reference(b, call->count, call->impl);
  *wrong = count_wrong(b, call->count);
  return BENCH_OK;
}

/* ---- one implementation at one size ----------------------------------------------------------------------- */

/* Whether the implementation serves this call: one eager call and, in graph mode, a trial capture. Every
 * rank must get the same answer. */
static bench_rc_t probe(ar_bench_t* b, ar_call_t* call, int* na) {
  bench_ctx_t* ctx = b->ctx;
  bench_op_t op = {enqueue_allreduce, call};
  bench_rc_t rc = enqueue_allreduce(call, ctx->stream);
  if (rc == BENCH_OK) BENCH_CHECK_CUDA(cudaStreamSynchronize(ctx->stream));
  if (rc == BENCH_OK && b->o->graph_reps > 0) {
    cudaGraphExec_t exec;
    rc = bench_graph_capture(ctx, op, 1, &exec);
    if (rc == BENCH_OK) BENCH_CHECK_CUDA(cudaGraphExecDestroy(exec));
  }
  if (rc == BENCH_FAIL) return rc;
  int nna = 0;
  BENCH_CHECK(bench_count_ranks(ctx, rc == BENCH_NA, &nna));
  if (nna != 0 && nna != ctx->nranks)
    return bench_fail("%s at %zu bytes: %d of %d ranks say unsupported, the others ran it", k_impl_names[call->impl],
                      call->count * b->esize, nna, ctx->nranks);
  *na = nna > 0;
  return BENCH_OK;
}

/* BENCH_NA after a successful probe is a failure: the library changed its answer. */
static bench_rc_t no_late_na(bench_rc_t rc, const ar_call_t* call, size_t esize) {
  if (rc != BENCH_NA) return rc;
  return bench_fail("%s at %zu bytes: unsupported after the probe had succeeded", k_impl_names[call->impl],
                    call->count * esize);
}

static bench_rc_t time_call(ar_bench_t* b, ar_call_t* call, double* us) {
  bench_op_t op = {enqueue_allreduce, call};
  const ar_opts_t* o = b->o;
  if (o->graph_reps > 0) return bench_time_graph(b->ctx, op, (int)o->iters, (int)o->graph_reps, us);
  return bench_time_eager(b->ctx, op, (int)o->warmup, (int)o->iters, us);
}

static void set_bandwidth(ar_result_t* r, size_t bytes, int nranks) {
  r->algbw = r->us > 0 ? (double)bytes / r->us * 1e-3 : 0; /* bytes/us = MB/s; GB/s = * 1e-3 */
  r->busbw = r->algbw * (2.0 * (nranks - 1) / nranks);     /* nccl-tests: factor 0 for one rank */
}

static bench_rc_t measure(ar_bench_t* b, ar_impl_t impl, size_t count, ar_result_t* r) {
  bench_ctx_t* ctx = b->ctx;
  ar_call_t call = make_call(b, impl, count);
  uint64_t wrong = 0;
  double us = 0;
  r->ran = 1;
  BENCH_CHECK(probe(b, &call, &r->na));
  if (r->na) return BENCH_OK;
  if (impl == AR_AUTO)
    BENCH_CHECK_TPC(ctx, tpc_comm_allreduce_algo(ctx->comm, count, b->o->dtype, b->o->graph_reps > 0, &r->algo));
  else r->algo = k_impl_algo[impl];
  if (b->o->check) BENCH_CHECK(no_late_na(check_once(b, &call, &wrong), &call, b->esize));
  BENCH_CHECK(no_late_na(time_call(b, &call, &us), &call, b->esize));
  BENCH_CHECK(bench_average(ctx, us, &r->us));
  if (b->o->check) {
    BENCH_CHECK(bench_sum_count(ctx, &wrong));
    r->checked = 1;
    r->wrong = wrong;
  }
  set_bandwidth(r, count * b->esize, ctx->nranks);
  return BENCH_OK;
}

/* ---- output ----------------------------------------------------------------------------------------------- */

static void add_columns(ar_bench_t* b) {
  bench_table_t* t = &b->table;
  bench_table_init(t);
  bench_table_col(t, "size", "(B)", 12);
  bench_table_col(t, "count", "(elements)", 12);
  bench_table_col(t, "type", "", 8);
  for (int i = 0; i < AR_NUM_IMPLS; i++) {
    if (!b->shown[i]) continue;
    bench_table_group(t, k_impl_names[i]);
    bench_table_col(t, "time", "(us)", 9);
    bench_table_col(t, "busbw", "(GB/s)", 7);
    bench_table_col(t, "#wrong", "", 6);
    if (i == AR_AUTO) bench_table_col(t, "algo", "", 8);
  }
  bench_table_group(t, NULL);
  bench_table_col(t, "speedup", "(nccl/auto)", 11);
}

static void time_cell(bench_table_t* t, double us) {
  if (us < 1e4) bench_table_cell(t, "%.2f", us);
  else if (us < 1e5) bench_table_cell(t, "%.1f", us);
  else bench_table_cell(t, "%.0f", us);
}

static void result_cells(bench_table_t* t, const ar_result_t* r, int with_algo) {
  if (r->na) {
    for (int k = 0; k < 3 + with_algo; k++) bench_table_cell(t, "n/a");
    return;
  }
  time_cell(t, r->us);
  bench_table_cell(t, "%.2f", r->busbw);
  if (r->checked) bench_table_cell(t, "%llu", (unsigned long long)r->wrong);
  else bench_table_cell(t, "-");
  if (with_algo) bench_table_cell(t, "%s", tpc_algo_name(r->algo));
}

/* best NCCL time / auto time, or 0 when either is missing */
static double speedup(const ar_result_t* res) {
  double best = 0;
  for (size_t k = 0; k < sizeof k_nccl_impls / sizeof k_nccl_impls[0]; k++) {
    const ar_result_t* r = &res[k_nccl_impls[k]];
    if (r->ran && !r->na && r->us > 0 && (best == 0 || r->us < best)) best = r->us;
  }
  const ar_result_t* a = &res[AR_AUTO];
  return (best > 0 && a->ran && !a->na && a->us > 0) ? best / a->us : 0;
}

static void print_row(ar_bench_t* b, size_t count, const ar_result_t* res) {
  bench_table_t* t = &b->table;
  bench_table_cell(t, "%zu", count * b->esize);
  bench_table_cell(t, "%zu", count);
  bench_table_cell(t, "%s", bench_dtype_name(b->o->dtype));
  for (int i = 0; i < AR_NUM_IMPLS; i++)
    if (b->shown[i]) result_cells(t, &res[i], i == AR_AUTO);
  double s = speedup(res);
  if (s > 0) bench_table_cell(t, "%.2fx", s);
  else bench_table_cell(t, "-");
  bench_table_end_row(t, bench_out(b->ctx));
}

static void write_json(ar_bench_t* b, size_t count, const ar_result_t* res) {
  bench_json_t* j = &b->json;
  for (int i = 0; i < AR_NUM_IMPLS; i++) {
    const ar_result_t* r = &res[i];
    if (!r->ran || r->na) continue; /* n/a cells are not written */
    bench_json_begin(j);
    bench_json_int(j, "size", (long long)(count * b->esize));
    bench_json_int(j, "count", (long long)count);
    bench_json_str(j, "dtype", bench_dtype_name(b->o->dtype));
    bench_json_str(j, "impl", k_impl_names[i]);
    bench_json_str(j, "algo", tpc_algo_name(r->algo));
    bench_json_str(j, "mode", b->o->graph_reps > 0 ? "graph" : "eager");
    bench_json_bool(j, "inplace", b->o->inplace);
    bench_json_num(j, "time_us", r->us);
    bench_json_num(j, "algbw_gbs", r->algbw);
    bench_json_num(j, "busbw_gbs", r->busbw);
    if (r->checked) bench_json_int(j, "wrong", (long long)r->wrong);
    else bench_json_null(j, "wrong");
    bench_json_end(j);
  }
}

static void add_to_totals(ar_bench_t* b, const ar_result_t* res) {
  for (int i = 0; i < AR_NUM_IMPLS; i++) {
    if (!res[i].ran || res[i].na) continue;
    b->busbw_sum[i] += res[i].busbw;
    b->busbw_rows[i]++;
    b->wrong_total += res[i].wrong;
  }
}

static void print_run_header(ar_bench_t* b, FILE* f) {
  const ar_opts_t* o = b->o;
  char lo[32], hi[32];
  bench_printf(f, "# allreduce: %s sum, %s, ", bench_dtype_name(o->dtype), o->inplace ? "in place" : "out of place");
  if (o->graph_reps > 0)
    bench_printf(f,
                 "mode graph (%ld calls captured in one graph, 1 warm-up + %d blocks of %ld timed replays, "
                 "median block)\n",
                 o->iters, BENCH_TIMING_BLOCKS, o->graph_reps);
  else bench_printf(f, "mode eager (%ld warm-up + %d blocks of %ld timed calls, median block)\n", o->warmup,
                    BENCH_TIMING_BLOCKS, o->iters);
  bench_printf(f, "# sizes: %s to %s bytes, x%ld; check: ", bench_format_bytes(o->minbytes, lo, sizeof lo),
               bench_format_bytes(o->maxbytes, hi, sizeof hi), o->stepfactor);
  if (o->check)
    bench_printf(f, "on (|out-ref| <= %g * (|ref|+1), ref = fp32 sum in rank order)\n",
                 b->ctx->nranks * bench_dtype_eps(o->dtype));
  else bench_printf(f, "off\n");
  for (int i = 0; i < AR_NUM_IMPLS; i++)
    if (b->left_out[i]) bench_printf(f, "# %s: left out (%s)\n", k_impl_names[i], b->left_out[i]);
}

static void print_footer(ar_bench_t* b, FILE* f) {
  if (b->busbw_rows[AR_AUTO])
    bench_printf(f, "# Avg bus bandwidth (auto): %.3f GB/s\n", b->busbw_sum[AR_AUTO] / b->busbw_rows[AR_AUTO]);
  else bench_printf(f, "# Avg bus bandwidth (auto): n/a\n");
  for (int i = AR_AUTO + 1; i < AR_NUM_IMPLS; i++)
    if (b->busbw_rows[i])
      bench_printf(f, "# Avg bus bandwidth (%s): %.3f GB/s over %d sizes\n", k_impl_names[i],
                   b->busbw_sum[i] / b->busbw_rows[i], b->busbw_rows[i]);
  if (b->o->check) bench_printf(f, "# #wrong total: %llu\n", (unsigned long long)b->wrong_total);
  else bench_printf(f, "# #wrong total: not checked (-c 0)\n");
}

/* ---- the run ---------------------------------------------------------------------------------------------- */

static bench_rc_t run_size(ar_bench_t* b, size_t count) {
  ar_result_t res[AR_NUM_IMPLS];
  size_t bytes = count * b->esize;
  char sz[32];
  memset(res, 0, sizeof res);
  for (int i = 0; i < AR_NUM_IMPLS; i++) {
    if (!b->shown[i]) continue;
    if (bytes >= AR_PROGRESS_BYTES) bench_progress(b->ctx, "allreduce %s bytes: %s", bench_format_bytes(bytes, sz, sizeof sz), k_impl_names[i]);
    BENCH_CHECK(measure(b, (ar_impl_t)i, count, &res[i]));
  }
  print_row(b, count, res);
  write_json(b, count, res);
  add_to_totals(b, res);
  return BENCH_OK;
}

static bench_rc_t run_sizes(ar_bench_t* b) {
  const ar_opts_t* o = b->o;
  for (size_t bytes = o->minbytes; bytes <= o->maxbytes;) {
    BENCH_CHECK(run_size(b, bytes / b->esize));
    if (bytes > o->maxbytes / (size_t)o->stepfactor) break; /* the next step would pass maxbytes (or overflow) */
    bytes *= (size_t)o->stepfactor;
  }
  return BENCH_OK;
}

/* Leaves out a selected implementation, with the reason printed in the header. */
static void leave_out(ar_bench_t* b, ar_impl_t impl, const char* why) {
  if (!b->shown[impl]) return;
  b->shown[impl] = 0;
  b->left_out[impl] = why;
}

static void choose_columns(ar_bench_t* b) {
  for (int i = 0; i < AR_NUM_IMPLS; i++) b->shown[i] = (b->o->impls >> i) & 1u;
  if (!b->ctx->nccl) {
    leave_out(b, AR_NCCLDIRECT, "the tpcomm communicator has no NCCL communicator");
    leave_out(b, AR_NCCLSYMM, "the tpcomm communicator has no NCCL communicator");
  }
  if (!AR_HAVE_NCCL_SYMM) leave_out(b, AR_NCCLSYMM, "built with NCCL older than 2.27: no symmetric windows");
}

/* Everything between opening the JSON file and teardown; buffers are freed by free_buffers. */
static bench_rc_t run(ar_bench_t* b) {
  FILE* out = bench_out(b->ctx);
  choose_columns(b);
  BENCH_CHECK(bench_print_job_header(b->ctx));
  BENCH_CHECK(alloc_buffers(b));
  if (b->shown[AR_NCCLSYMM]) BENCH_CHECK(setup_symm(b));
  print_run_header(b, out);
  add_columns(b);
  bench_table_print_header(&b->table, out);
  BENCH_CHECK(run_sizes(b));
  print_footer(b, out);
  return BENCH_OK;
}

int bench_allreduce(int argc, char** argv) {
  ar_opts_t opts;
  int ec = parse_opts(argc, argv, &opts);
  if (ec != BENCH_CONTINUE) return ec;
  bench_ctx_t ctx;
  ar_bench_t b;
  memset(&b, 0, sizeof b);
  b.o = &opts;
  b.ctx = &ctx;
  b.esize = bench_dtype_size(opts.dtype);
  b.max_count = opts.maxbytes / b.esize;
  b.max_bytes = b.max_count * b.esize;
  ec = bench_start(AR_CMD, &ctx, &b.json, opts.json_path);
  if (ec != BENCH_CONTINUE) return ec;
  bench_rc_t rc = run(&b);
  return bench_finish(&ctx, &b.json, rc, free_buffers, &b, b.wrong_total);
}
