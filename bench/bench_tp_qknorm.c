/* bench_tp_qknorm.c — `tpcomm-bench tp_qknorm`: the fused tensor-parallel QK-RMSNorm against the unfused
 * path (partial-sum kernel, all-reduce of [tokens][2] floats, apply kernel) with NCCL and with our
 * all-reduce, and the automatic choice, in one run. Columns: q_dim, k_dim (global), world, tokens, then
 * microseconds per call of each path, the path auto took, and the speedup of auto over the NCCL-based
 * unfused path. Each (shape, tokens, path) is checked once against the CPU reference
 * (tests/ref/tp_qknorm_ref.h) before it is timed; #wrong counts elements outside the bf16 tolerance.
 * Relies on bench_common.c for the job, timing (eager or inside a CUDA graph) and output. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "tp_qknorm_ref.h"

#define QK_CMD "tp_qknorm"
#define QK_MAX_SHAPES 8

typedef struct {
  int graph, iters, warmup, check, reps;
  long max_tokens;
  tpc_dtype_t dtype;
  const char* json_path;
  int nshapes;                    /* 0: the default shapes */
  int64_t shapes[QK_MAX_SHAPES][2]; /* global q/k dims from -s */
} qk_opts_t;

enum { P_FUSED, P_UNFUSED_NCCL, P_UNFUSED_OURS, P_AUTO, NPATHS };
static const char* k_path_col[NPATHS] = {"fused", "unf-nccl", "unf-ours", "auto"};
static const tpc_qknorm_path_t k_path[NPATHS] = {TPC_QKNORM_FUSED, TPC_QKNORM_UNFUSED_NCCL, TPC_QKNORM_UNFUSED,
                                                 TPC_QKNORM_AUTO};

typedef struct {
  bench_ctx_t* ctx;
  const qk_opts_t* o;
  int64_t qd, kd, tokens; /* local dims */
  void *q, *k, *wq, *wk;
  uint16_t *hq, *hk, *tmp;
  tpc_qknorm_path_t path;
  uint64_t seed;
} qk_call_t;

void bench_tp_qknorm_usage(FILE* f) {
  fprintf(f,
          "Usage: %s tp_qknorm [options]\n"
          "  Tensor-parallel QK-RMSNorm: fused vs partial-sums + all-reduce (NCCL or ours) + apply.\n"
          "  Shapes (global q/k dims): 6144/1024 (MiniMax-M2) and 4096/1024, split over the ranks.\n"
          "  -s, --shape Q:K      global q and k dims instead (multiples of 8; repeat for more, at most 8);\n"
          "                       a shape whose dims / ranks are not multiples of 8 is skipped with a note\n"
          "  -t, --max-tokens N   largest token count (default 16384; counts are 1, 2, 4, ... N)\n"
          "  -G, --graph          time inside a CUDA graph (the decode case)\n"
          "  -n, --iters N        calls timed (default 100)\n"
          "  -w, --warmup_iters N warm-up calls (default 10)\n"
          "  -c, --check 0|1      check every result against the CPU reference (default 1)\n"
          "  -d, --datatype T     bfloat16 (default) or half\n"
          "  -J, --json FILE      write the rows as JSON\n",
          BENCH_PROGRAM);
}

/* -s Q:K: two dims, each a positive multiple of 8 up to 2^20 */
static int parse_shape(const char* val, qk_opts_t* o) {
  static const char* why = "expected Q:K, two multiples of 8 from 8 to 1048576 (global q and k dims)";
  if (o->nshapes == QK_MAX_SHAPES)
    return bench_usage_error(QK_CMD, "too many -s/--shape options at '%s': at most %d", val, QK_MAX_SHAPES);
  const char* colon = val ? strchr(val, ':') : NULL;
  char q[24], k[24];
  if (!colon || colon == val || (size_t)(colon - val) >= sizeof q || strlen(colon + 1) >= sizeof k)
    return bench_usage_error(QK_CMD, "invalid value '%s' for -s/--shape: %s", val ? val : "(null)", why);
  memcpy(q, val, (size_t)(colon - val));
  q[colon - val] = 0;
  strcpy(k, colon + 1);
  long qd, kd;
  if (bench_parse_long(QK_CMD, "-s/--shape (q dim)", q, 8, 1 << 20, &qd) ||
      bench_parse_long(QK_CMD, "-s/--shape (k dim)", k, 8, 1 << 20, &kd))
    return -1;
  if (qd % 8 || kd % 8) return bench_usage_error(QK_CMD, "invalid value '%s' for -s/--shape: %s", val, why);
  o->shapes[o->nshapes][0] = qd;
  o->shapes[o->nshapes][1] = kd;
  o->nshapes++;
  return 0;
}

/* bench_apply_fn: one option; 0 on success, non-zero (message printed) on a bad value. */
static int apply_option(int c, int argc, char** argv, void* opts) {
  qk_opts_t* o = opts;
  long v;
  switch (c) {
    case 't': return bench_parse_long(QK_CMD, "-t/--max-tokens", optarg, 1, 1 << 20, &o->max_tokens);
    case 'G': o->graph = 1; return 0;
    case 'n':
      if (bench_parse_long(QK_CMD, "-n/--iters", optarg, 1, 100000, &v)) return -1;
      o->iters = (int)v;
      return 0;
    case 'w':
      if (bench_parse_long(QK_CMD, "-w/--warmup_iters", optarg, 0, 100000, &v)) return -1;
      o->warmup = (int)v;
      return 0;
    case 'c':
      if (bench_parse_long(QK_CMD, "-c/--check", optarg, 0, 1, &v)) return -1;
      o->check = (int)v;
      return 0;
    case 'd':
      if (bench_parse_dtype(QK_CMD, "-d/--datatype", optarg, &o->dtype)) return -1;
      if (o->dtype == TPC_FLOAT32)
        return bench_usage_error(QK_CMD, "invalid value '%s' for -d/--datatype: expected bfloat16 or half", optarg);
      return 0;
    case 'J': return bench_parse_path(QK_CMD, "-J/--json", optarg, &o->json_path);
    case 's': return parse_shape(optarg, o);
    default: return -1;
  }
}

/* BENCH_CONTINUE, or the exit code after -h or a bad command line. */
static int parse_opts(int argc, char** argv, qk_opts_t* o) {
  static const struct option longs[] = {{"max-tokens", 1, 0, 't'}, {"graph", 0, 0, 'G'}, {"iters", 1, 0, 'n'},
                                        {"warmup_iters", 1, 0, 'w'}, {"check", 1, 0, 'c'}, {"datatype", 1, 0, 'd'},
                                        {"json", 1, 0, 'J'},         {"shape", 1, 0, 's'}, {"help", 0, 0, 'h'},
                                        {0, 0, 0, 0}};
  *o = (qk_opts_t){0, 100, 10, 1, 5, 16384, TPC_BFLOAT16, NULL, 0, {{0}}};
  return bench_parse_options(QK_CMD, argc, argv, ":t:Gn:w:c:d:J:s:h", longs, bench_tp_qknorm_usage, apply_option, o);
}

static bench_rc_t enqueue(void* arg, cudaStream_t stream) {
  qk_call_t* c = arg;
  tpc_status_t st = tpc_tp_qk_rmsnorm_path(c->ctx->comm, c->q, c->k, c->wq, c->wk, c->tokens, c->qd, c->kd, c->qd,
                                           c->kd, 1e-6f, c->o->dtype, c->path, stream);
  return bench_tpc_rc(c->ctx, st, "tpc_tp_qk_rmsnorm_path", __FILE__, __LINE__);
}

static bench_rc_t upload(qk_call_t* c) {
  const int bf16 = c->o->dtype == TPC_BFLOAT16;
  for (int64_t t = 0; t < c->tokens; t++) {
    qkref_row(c->seed, c->ctx->rank, 0, t, c->qd, bf16, c->hq + t * c->qd);
    qkref_row(c->seed, c->ctx->rank, 1, t, c->kd, bf16, c->hk + t * c->kd);
  }
  BENCH_CHECK_CUDA(cudaMemcpyAsync(c->q, c->hq, (size_t)c->tokens * c->qd * 2, cudaMemcpyHostToDevice, c->ctx->stream));
  BENCH_CHECK_CUDA(cudaMemcpyAsync(c->k, c->hk, (size_t)c->tokens * c->kd * 2, cudaMemcpyHostToDevice, c->ctx->stream));
  BENCH_CHECK_CUDA(cudaStreamSynchronize(c->ctx->stream));
  return BENCH_OK;
}

/* One checked call: returns BENCH_NA when the path cannot serve it; *wrong = elements off, all ranks. */
static bench_rc_t check(qk_call_t* c, uint64_t* wrong) {
  BENCH_CHECK(upload(c));
  bench_op_t op = {enqueue, c};
  bench_rc_t rc = bench_run_once(c->ctx, op, c->o->graph);
  if (rc != BENCH_OK) return rc;
  const int bf16 = c->o->dtype == TPC_BFLOAT16;
  BENCH_CHECK_CUDA(cudaMemcpyAsync(c->hq, c->q, (size_t)c->tokens * c->qd * 2, cudaMemcpyDeviceToHost, c->ctx->stream));
  BENCH_CHECK_CUDA(cudaMemcpyAsync(c->hk, c->k, (size_t)c->tokens * c->kd * 2, cudaMemcpyDeviceToHost, c->ctx->stream));
  BENCH_CHECK_CUDA(cudaStreamSynchronize(c->ctx->stream));
  uint64_t w = 0;
  for (int64_t t = 0; t < c->tokens; t++) {
    w += (uint64_t)qkref_check_row(c->seed, c->ctx->rank, c->ctx->nranks, 0, t, c->qd, 1e-6f, bf16, c->hq + t * c->qd,
                                   c->tmp, NULL);
    w += (uint64_t)qkref_check_row(c->seed, c->ctx->rank, c->ctx->nranks, 1, t, c->kd, 1e-6f, bf16, c->hk + t * c->kd,
                                   c->tmp, NULL);
  }
  BENCH_CHECK(bench_sum_count(c->ctx, &w));
  *wrong = w;
  return BENCH_OK;
}

static bench_rc_t measure(qk_call_t* c, double* us, uint64_t* wrong) {
  *wrong = 0;
  bench_op_t op = {enqueue, c};
  /* probe: every rank reaches the same verdict (same dims, transport and limits) */
  bench_rc_t rc = bench_run_once(c->ctx, op, 0);
  if (rc != BENCH_OK) return rc;
  if (c->o->check) BENCH_CHECK(check(c, wrong));
  BENCH_CHECK(bench_barrier(c->ctx));
  double mine;
  if (c->o->graph) BENCH_CHECK(bench_time_graph(c->ctx, op, c->o->iters, c->o->reps, &mine));
  else BENCH_CHECK(bench_time_eager(c->ctx, op, c->o->warmup, c->o->iters, &mine));
  return bench_average(c->ctx, mine, us);
}

static bench_rc_t run_shape(bench_ctx_t* ctx, const qk_opts_t* o, int64_t qg, int64_t kg, bench_table_t* tab,
                            bench_json_t* js, uint64_t* wrong_total) {
  FILE* out = bench_out(ctx);
  qk_call_t c = {ctx, o, qg / ctx->nranks, kg / ctx->nranks, 0, 0, 0, 0, 0, 0, 0, 0, TPC_QKNORM_AUTO, 0};
  if (c.qd % 8 || c.kd % 8) {
    bench_printf(out, "# q %lld / k %lld over %d ranks: local dims not multiples of 8, skipped\n", (long long)qg,
                 (long long)kg, ctx->nranks);
    return BENCH_OK;
  }
  const size_t qb = (size_t)o->max_tokens * c.qd * 2, kb = (size_t)o->max_tokens * c.kd * 2;
  BENCH_CHECK_CUDA(cudaMalloc(&c.q, qb));
  BENCH_CHECK_CUDA(cudaMalloc(&c.k, kb));
  BENCH_CHECK_CUDA(cudaMalloc(&c.wq, c.qd * 2));
  BENCH_CHECK_CUDA(cudaMalloc(&c.wk, c.kd * 2));
  c.hq = malloc(qb);
  c.hk = malloc(kb);
  c.tmp = malloc(4 * (size_t)(c.qd > c.kd ? c.qd : c.kd));
  if (!c.hq || !c.hk || !c.tmp) return bench_fail("out of host memory");
  c.seed = bench_seed((uint64_t)qg, (uint64_t)kg, 7);
  const int bf16 = o->dtype == TPC_BFLOAT16;
  qkref_weight(c.seed, ctx->rank, 2, c.qd, bf16, c.hq);
  qkref_weight(c.seed, ctx->rank, 3, c.kd, bf16, c.hk);
  BENCH_CHECK_CUDA(bench_h2d(c.wq, c.hq, c.qd * 2));
  BENCH_CHECK_CUDA(bench_h2d(c.wk, c.hk, c.kd * 2));
  for (int64_t tokens = 1; tokens <= o->max_tokens; tokens *= 2) {
    c.tokens = tokens;
    double us[NPATHS];
    uint64_t wrong = 0;
    for (int p = 0; p < NPATHS; p++) {
      uint64_t w = 0;
      c.path = k_path[p];
      bench_rc_t rc = measure(&c, &us[p], &w);
      if (rc == BENCH_NA) us[p] = -1;
      else if (rc != BENCH_OK) return rc;
      wrong += w;
    }
    *wrong_total += wrong;
    tpc_qknorm_path_t chosen = TPC_QKNORM_UNFUSED;
    BENCH_CHECK_TPC(ctx, tpc_tp_qk_rmsnorm_choice(ctx->comm, tokens, o->graph, &chosen));
    const char* auto_path = chosen == TPC_QKNORM_FUSED ? "fused" : "unfused";
    bench_table_cell(tab, "%lld", (long long)qg);
    bench_table_cell(tab, "%lld", (long long)kg);
    bench_table_cell(tab, "%d", ctx->nranks);
    bench_table_cell(tab, "%lld", (long long)tokens);
    for (int p = 0; p < NPATHS; p++) {
      if (us[p] < 0) bench_table_cell(tab, "n/a");
      else bench_table_cell(tab, "%.2f", us[p]);
    }
    bench_table_cell(tab, "%s", auto_path);
    double best_unfused = us[P_UNFUSED_NCCL] > 0 ? us[P_UNFUSED_NCCL] : us[P_UNFUSED_OURS];
    if (best_unfused > 0 && us[P_AUTO] > 0) bench_table_cell(tab, "%.2fx", best_unfused / us[P_AUTO]);
    else bench_table_cell(tab, "-");
    bench_table_cell(tab, "%llu", (unsigned long long)wrong);
    bench_table_end_row(tab, out);
    bench_json_begin(js);
    bench_json_int(js, "q_dim", qg);
    bench_json_int(js, "k_dim", kg);
    bench_json_int(js, "world", ctx->nranks);
    bench_json_int(js, "tokens", tokens);
    bench_json_str(js, "mode", o->graph ? "graph" : "eager");
    bench_json_str(js, "auto_path", auto_path);
    for (int p = 0; p < NPATHS; p++) {
      if (us[p] < 0) bench_json_null(js, k_path_col[p]);
      else bench_json_num(js, k_path_col[p], us[p]);
    }
    bench_json_int(js, "wrong", (long long)wrong);
    bench_json_end(js);
  }
  BENCH_CHECK_CUDA(cudaFree(c.q));
  BENCH_CHECK_CUDA(cudaFree(c.k));
  BENCH_CHECK_CUDA(cudaFree(c.wq));
  BENCH_CHECK_CUDA(cudaFree(c.wk));
  free(c.hq), free(c.hk), free(c.tmp);
  return BENCH_OK;
}

/* Everything between opening the JSON file and teardown. */
static bench_rc_t run(bench_ctx_t* ctx, const qk_opts_t* o, bench_json_t* js, uint64_t* wrong) {
  BENCH_CHECK(bench_print_job_header(ctx));
  FILE* out = bench_out(ctx);
  bench_printf(out, "# tp_qknorm: %s, eps 1e-6, in place, mode %s (%s); times in us per call, averaged over ranks\n",
               bench_dtype_name(o->dtype), o->graph ? "graph" : "eager",
               o->graph ? "calls captured in one CUDA graph" : "back-to-back launches");
  bench_printf(out, "# unf-nccl / unf-ours: partial sums, all-reduce of [tokens][2] floats (NCCL / tpcomm auto), apply;"
                    " speedup = unf-nccl / auto\n");
  bench_table_t tab;
  bench_table_init(&tab);
  bench_table_col(&tab, "q_dim", "", 6);
  bench_table_col(&tab, "k_dim", "", 6);
  bench_table_col(&tab, "world", "", 5);
  bench_table_col(&tab, "tokens", "", 7);
  for (int p = 0; p < NPATHS; p++) bench_table_col(&tab, k_path_col[p], "(us)", 9);
  bench_table_col(&tab, "auto=", "", 8);
  bench_table_col(&tab, "speedup", "", 8);
  bench_table_col(&tab, "#wrong", "", 7);
  bench_table_print_header(&tab, out);
  static const int64_t defaults[][2] = {{6144, 1024}, {4096, 1024}};
  const int64_t(*shapes)[2] = o->nshapes ? o->shapes : defaults;
  const int nshapes = o->nshapes ? o->nshapes : 2;
  for (int s = 0; s < nshapes; s++) BENCH_CHECK(run_shape(ctx, o, shapes[s][0], shapes[s][1], &tab, js, wrong));
  bench_printf(out, "# #wrong total: %llu\n", (unsigned long long)*wrong);
  return BENCH_OK;
}

int bench_tp_qknorm(int argc, char** argv) {
  qk_opts_t o;
  int ec = parse_opts(argc, argv, &o);
  if (ec != BENCH_CONTINUE) return ec;
  bench_ctx_t ctx;
  bench_json_t js;
  ec = bench_start(QK_CMD, &ctx, &js, o.json_path);
  if (ec != BENCH_CONTINUE) return ec;
  uint64_t wrong = 0;
  bench_rc_t rc = run(&ctx, &o, &js, &wrong);
  return bench_finish(&ctx, &js, rc, NULL, NULL, wrong);
}
