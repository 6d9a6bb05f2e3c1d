/* qk_worker.c — one rank of the GPU tests of tpc_tp_qk_rmsnorm, started by tpcomm-run from
 * test_qknorm_gpu.c. For q/k shapes (global dims split over the ranks), token counts from 1 to past the
 * exchange capacity, bf16 and fp16, eager and graph, and every path (fused, unfused with our all-reduce,
 * unfused with NCCL, auto; at world size 1 "fused" is the across-heads kernel): fresh inputs with strided
 * rows whose padding must stay untouched, results against a double-precision CPU reference of the
 * full-vector norm, and the paths against each other.
 * argv: [--quick]. Prints "rank R: N passed, M failed" (testutil's worker report); exits non-zero on
 * failure. */
#define _GNU_SOURCE
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tp_qknorm_ref.h"
#include "tpcomm/tpcomm.h"

static int g_rank, g_size;
static cudaStream_t g_stream;



#define PAD 0x5a5au

typedef struct {
  int64_t qd, kd, qs, ks, tokens;
  int bf16;
  uint64_t seed;
} shape_t;

/* Host image of this rank's q and k (rows with padding) for a shape. */
static void build_host(const shape_t* s, uint16_t* hq, uint16_t* hk) {
  for (int64_t t = 0; t < s->tokens; t++) {
    qkref_row(s->seed, g_rank, 0, t, s->qd, s->bf16, hq + t * s->qs);
    for (int64_t j = s->qd; j < s->qs; j++) hq[t * s->qs + j] = PAD;
    qkref_row(s->seed, g_rank, 1, t, s->kd, s->bf16, hk + t * s->ks);
    for (int64_t j = s->kd; j < s->ks; j++) hk[t * s->ks + j] = PAD;
  }
}

static tpc_status_t run(tpc_comm_t comm, const shape_t* s, void* q, void* k, void* wq, void* wk,
                        tpc_qknorm_path_t path, int graph) {
  const tpc_dtype_t d = s->bf16 ? TPC_BFLOAT16 : TPC_FLOAT16;
  if (!graph) {
    tpc_status_t st = tpc_tp_qk_rmsnorm_path(comm, q, k, wq, wk, s->tokens, s->qd, s->kd, s->qs, s->ks, 1e-6f, d, path,
                                             g_stream);
    TPC_TEST_CK(cudaStreamSynchronize(g_stream));
    return st;
  }
  cudaGraph_t g;
  cudaGraphExec_t ge;
  TPC_TEST_CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal));
  tpc_status_t st =
      tpc_tp_qk_rmsnorm_path(comm, q, k, wq, wk, s->tokens, s->qd, s->kd, s->qs, s->ks, 1e-6f, d, path, g_stream);
  TPC_TEST_CK(cudaStreamEndCapture(g_stream, &g));
  if (st == TPC_SUCCESS) {
    TPC_TEST_CK(cudaGraphInstantiate(&ge, g, 0));
    TPC_TEST_CK(cudaGraphLaunch(ge, g_stream));
    TPC_TEST_CK(cudaStreamSynchronize(g_stream));
    TPC_TEST_CK(cudaGraphExecDestroy(ge));
  }
  TPC_TEST_CK(cudaGraphDestroy(g));
  return st;
}

static const char* path_name(tpc_qknorm_path_t p) {
  static const char* n[] = {"auto", "fused", "unfused", "unfused-nccl"};
  return n[p];
}

static void test_shape(tpc_comm_t comm, const shape_t* s, int fused_ok, int nccl_ok) {
  const size_t qbytes = (size_t)s->tokens * s->qs * 2, kbytes = (size_t)s->tokens * s->ks * 2;
  uint16_t *hq = malloc(qbytes), *hk = malloc(kbytes), *oq = malloc(qbytes), *ok = malloc(kbytes);
  uint16_t *firstq = malloc(qbytes), *firstk = malloc(kbytes);
  uint16_t* tmp = malloc(sizeof(uint16_t) * 2 * (size_t)(s->qd > s->kd ? s->qd : s->kd));
  uint16_t *hwq = malloc(s->qd * 2), *hwk = malloc(s->kd * 2);
  void *q, *k, *wq, *wk;
  TPC_TEST_CK(cudaMalloc(&q, qbytes));
  TPC_TEST_CK(cudaMalloc(&k, kbytes));
  TPC_TEST_CK(cudaMalloc(&wq, s->qd * 2));
  TPC_TEST_CK(cudaMalloc(&wk, s->kd * 2));
  qkref_weight(s->seed, g_rank, 2, s->qd, s->bf16, hwq);
  qkref_weight(s->seed, g_rank, 3, s->kd, s->bf16, hwk);
  TPC_TEST_CK(cudaMemcpyAsync(wq, hwq, s->qd * 2, cudaMemcpyHostToDevice, g_stream));
  TPC_TEST_CK(cudaMemcpyAsync(wk, hwk, s->kd * 2, cudaMemcpyHostToDevice, g_stream));
  build_host(s, hq, hk);
  int have_first = 0;
  const tpc_qknorm_path_t paths[] = {TPC_QKNORM_FUSED, TPC_QKNORM_UNFUSED, TPC_QKNORM_UNFUSED_NCCL, TPC_QKNORM_AUTO};
  for (int pi = 0; pi < 4; pi++) {
    if (paths[pi] == TPC_QKNORM_FUSED && !fused_ok) continue;
    if (paths[pi] == TPC_QKNORM_UNFUSED_NCCL && !nccl_ok) continue;
    for (int graph = 0; graph < 2; graph++) {
      TPC_TEST_CK(cudaMemcpyAsync(q, hq, qbytes, cudaMemcpyHostToDevice, g_stream));
      TPC_TEST_CK(cudaMemcpyAsync(k, hk, kbytes, cudaMemcpyHostToDevice, g_stream));
      TPC_TEST_CK(cudaStreamSynchronize(g_stream));
      tpc_status_t st = run(comm, s, q, k, wq, wk, paths[pi], graph);
      if (st == TPC_ERR_UNSUPPORTED && paths[pi] == TPC_QKNORM_FUSED) continue; /* tokens above the capacity */
      if (st != TPC_SUCCESS) {
        tpc_test_report(0, "%s tokens=%lld: %s", path_name(paths[pi]), (long long)s->tokens, tpc_get_last_error(comm));
        continue;
      }
      TPC_TEST_CK(cudaMemcpyAsync(oq, q, qbytes, cudaMemcpyDeviceToHost, g_stream));
      TPC_TEST_CK(cudaMemcpyAsync(ok, k, kbytes, cudaMemcpyDeviceToHost, g_stream));
      TPC_TEST_CK(cudaStreamSynchronize(g_stream));
      int64_t wrong = 0, pad_bad = 0, vs_first = 0;
      double worst = 0;
      for (int64_t t = 0; t < s->tokens; t++) {
        wrong += qkref_check_row(s->seed, g_rank, g_size, 0, t, s->qd, 1e-6f, s->bf16, oq + t * s->qs, tmp, &worst);
        wrong += qkref_check_row(s->seed, g_rank, g_size, 1, t, s->kd, 1e-6f, s->bf16, ok + t * s->ks, tmp, &worst);
        for (int64_t j = s->qd; j < s->qs; j++) pad_bad += oq[t * s->qs + j] != PAD;
        for (int64_t j = s->kd; j < s->ks; j++) pad_bad += ok[t * s->ks + j] != PAD;
      }
      if (have_first) { /* paths agree within one rounding step of the dtype */
        const double rel = s->bf16 ? 1.0 / 128 : 1.0 / 1024;
        for (size_t i = 0; i < qbytes / 2; i++) {
          double a = qkref_h2f(oq[i], s->bf16), b = qkref_h2f(firstq[i], s->bf16);
          vs_first += !(fabs(a - b) <= rel * fabs(b) + 1e-3);
        }
        for (size_t i = 0; i < kbytes / 2; i++) {
          double a = qkref_h2f(ok[i], s->bf16), b = qkref_h2f(firstk[i], s->bf16);
          vs_first += !(fabs(a - b) <= rel * fabs(b) + 1e-3);
        }
      } else {
        memcpy(firstq, oq, qbytes);
        memcpy(firstk, ok, kbytes);
        have_first = 1;
      }
      tpc_test_report(wrong == 0 && pad_bad == 0 && vs_first == 0,
             "%s %s %s q=%lld k=%lld tokens=%lld: %lld wrong (worst error %g), %lld padding elements written, "
             "%lld differ from the first path",
             path_name(paths[pi]), s->bf16 ? "bf16" : "fp16", graph ? "graph" : "eager", (long long)s->qd,
             (long long)s->kd, (long long)s->tokens, (long long)wrong, worst, (long long)pad_bad, (long long)vs_first);
    }
  }
  TPC_TEST_CK(cudaFree(q));
  TPC_TEST_CK(cudaFree(k));
  TPC_TEST_CK(cudaFree(wq));
  TPC_TEST_CK(cudaFree(wk));
  free(hq), free(hk), free(oq), free(ok), free(firstq), free(firstk), free(tmp), free(hwq), free(hwk);
}

int main(int argc, char** argv) {
  const int quick = argc > 1 && !strcmp(argv[1], "--quick");
  tpc_comm_t comm;
  if (tpc_comm_init_env(&comm, NULL) != TPC_SUCCESS) {
    fprintf(stderr, "init: %s\n", tpc_get_last_error(NULL));
    return 4;
  }
  tpc_comm_rank(comm, &g_rank);
  tpc_test_worker_set_rank(g_rank);
  tpc_comm_size(comm, &g_size);
  TPC_TEST_CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  tpc_transport_t tr;
  const char* why;
  void* nccl = NULL;
  tpc_comm_transport(comm, &tr, &why);
  tpc_comm_nccl(comm, &nccl);
  if (g_rank == 0) printf("# %d ranks, transport: %s, nccl: %s\n", g_size, why, nccl ? "yes" : "no");
  const int64_t globals[][2] = {{6144, 1024}, {4096, 1024}, {1024, 256}};
  const int64_t tokens_full[] = {1, 5, 64, 133, 1000, 4100, 40000};
  const int64_t tokens_quick[] = {1, 5, 133, 1000};
  const int64_t* tokens = quick ? tokens_quick : tokens_full;
  const int ntok = quick ? 4 : 7;
  uint64_t seed = 11;
  for (int si = 0; si < 3; si++) {
    for (int ti = 0; ti < ntok; ti++) {
      for (int bf16 = 1; bf16 >= 0; bf16--) {
        if (!bf16 && (quick || si > 0 || tokens[ti] > 1000)) continue; /* fp16 on one shape */
        shape_t s = {globals[si][0] / g_size, globals[si][1] / g_size, 0, 0, tokens[ti], bf16, seed++};
        if (s.qd % 8 || s.kd % 8) continue;
        s.qs = s.qd + 64; /* strided rows (e.g. q is a view into a fused qkv tensor) */
        s.ks = s.kd + 8;
        test_shape(comm, &s, tr == TPC_TRANSPORT_CUSTOM || g_size == 1, nccl != NULL || g_size == 1);
      }
    }
  }
  if (g_size == 1) { /* nothing to exchange: auto takes the one-kernel path at every token count */
    tpc_qknorm_path_t chosen = TPC_QKNORM_UNFUSED;
    tpc_status_t st = tpc_tp_qk_rmsnorm_choice(comm, 40000, 1, &chosen);
    tpc_test_report(st == TPC_SUCCESS && chosen == TPC_QKNORM_FUSED, "world size 1, 40000 tokens: auto chose %s (%s)",
                    path_name(chosen), st == TPC_SUCCESS ? "ok" : tpc_get_last_error(comm));
  }
  /* bad input on a real communicator */
  void* buf;
  TPC_TEST_CK(cudaMalloc(&buf, 1 << 16));
  tpc_test_report(tpc_tp_qk_rmsnorm(comm, buf, buf, buf, buf, 4, 100, 8, 100, 8, 1e-6f, TPC_BFLOAT16, g_stream) ==
             TPC_ERR_INVALID_ARGUMENT && strstr(tpc_get_last_error(comm), "q_dim_local=100"),
         "q_dim_local=100 accepted or wrong message: %s", tpc_get_last_error(comm));
  tpc_test_report(tpc_tp_qk_rmsnorm(comm, buf, buf, NULL, buf, 4, 64, 8, 64, 8, 1e-6f, TPC_BFLOAT16, g_stream) ==
             TPC_ERR_INVALID_ARGUMENT && strstr(tpc_get_last_error(comm), "q_weight is NULL"),
         "NULL q_weight accepted: %s", tpc_get_last_error(comm));
  tpc_test_report(tpc_tp_qk_rmsnorm(comm, buf, buf, buf, buf, 4, 64, 8, 64, 8, 1e-6f, TPC_FLOAT32, g_stream) ==
             TPC_ERR_UNSUPPORTED,
         "fp32 accepted: %s", tpc_get_last_error(comm));
  TPC_TEST_CK(cudaFree(buf));
  const int status = tpc_test_worker_summary();
  tpc_comm_destroy(comm);
  return status;
}
