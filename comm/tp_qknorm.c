/* tp_qknorm.c — tpc_tp_qk_rmsnorm: validation, the choice between the fused kernel and the unfused path,
 * and their launch (kernels/tp_qknorm.cu).
 *   fused:    custom transport, tokens <= TPCOMM_QKNORM_MAX_TOKENS (the norm slots of the arena); auto uses
 *             it up to TPCOMM_QKNORM_FUSED_MAX_TOKENS
 *   unfused:  partial kernel -> all-reduce (auto or nccl; allreduce.c's tpc_all_reduce_enqueue) of
 *             [tokens][2] floats in comm->qk_scratch -> apply kernel, in chunks of TPCOMM_QKNORM_MAX_TOKENS tokens; world size 1 skips the
 *             all-reduce.
 *   local:    world size 1 (nothing to exchange): the fused path is one single-GPU kernel,
 *             tpc_qk_rmsnorm_across_heads (kernels/norm.cu), at any token count.
 * Relies on: allreduce.c's placement checks, stream ordering (one operation in flight) and all-reduce
 * dispatch. */
#include <math.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "checks.h"
#include "comm.h"
#include "ipc.h"
#include "tp_qknorm.h"
#include "tpcomm/kernels.h"

static const char k_fn[] = "tpc_tp_qk_rmsnorm";

static tpc_status_t check_dim(struct tpc_comm* c, const char* name, int64_t v) {
  if (v <= 0 || v % 8 != 0)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT,
                     "%s: %s=%lld is not a positive multiple of 8 (rows are read in 16-byte vectors of 8 elements)",
                     k_fn, name, (long long)v);
  return TPC_SUCCESS;
}

static tpc_status_t check_aligned(struct tpc_comm* c, const char* name, const void* p) {
  if (!p) return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: %s is NULL", k_fn, name);
  if ((uintptr_t)p % 16 != 0)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: %s=%p is not 16-byte aligned", k_fn, name, p);
  return TPC_SUCCESS;
}

/* Everything that needs no CUDA call. */
static tpc_status_t check_args(struct tpc_comm* c, void* q, void* k, const void* wq, const void* wk, int64_t tokens,
                               int64_t qd, int64_t kd, int64_t qs, int64_t ks, float eps, tpc_dtype_t dtype,
                               tpc_qknorm_path_t path) {
  if ((unsigned)path >= TPC_NUM_QKNORM_PATHS)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: path=%d is not a tpc_qknorm_path_t (0..%d)", k_fn, (int)path,
                     TPC_NUM_QKNORM_PATHS - 1);
  if ((unsigned)dtype >= TPC_NUM_DTYPES)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: dtype=%d is not a tpc_dtype_t (0..%d)", k_fn, (int)dtype,
                     TPC_NUM_DTYPES - 1);
  if (dtype == TPC_FLOAT32)
    return tpc_error(c, TPC_ERR_UNSUPPORTED, "%s: dtype=TPC_FLOAT32 is not supported (bf16 and fp16 only)", k_fn);
  if (tokens < 0) return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: num_tokens=%lld is negative", k_fn, (long long)tokens);
  if (!(eps >= 0.0f) || !isfinite(eps))
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: eps=%g must be finite and >= 0", k_fn, (double)eps);
  TPC_CHECK(check_dim(c, "q_dim_local", qd));
  TPC_CHECK(check_dim(c, "k_dim_local", kd));
  if (qs < qd || qs % 8 != 0)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: q_stride=%lld must be a multiple of 8 and >= q_dim_local=%lld",
                     k_fn, (long long)qs, (long long)qd);
  if (ks < kd || ks % 8 != 0)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: k_stride=%lld must be a multiple of 8 and >= k_dim_local=%lld",
                     k_fn, (long long)ks, (long long)kd);
  if ((qd + kd) / 8 > TPC_QK_MAX_VECS)
    return tpc_error(c, TPC_ERR_UNSUPPORTED, "%s: q_dim_local + k_dim_local = %lld exceeds %d", k_fn, (long long)(qd + kd),
                     TPC_QK_MAX_VECS * 8);
  TPC_CHECK(check_aligned(c, "q", q));
  TPC_CHECK(check_aligned(c, "k", k));
  TPC_CHECK(check_aligned(c, "q_weight", wq));
  TPC_CHECK(check_aligned(c, "k_weight", wk));
  if (q == k) return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: q and k are the same buffer (%p)", k_fn, q);
  return TPC_SUCCESS;
}

static tpc_status_t launch_error(struct tpc_comm* c, cudaError_t e, const char* what) {
  if (e == cudaSuccess) e = cudaGetLastError();
  if (e == cudaSuccess) return TPC_SUCCESS;
  return tpc_error(c, TPC_ERR_CUDA, "%s: %s kernel launch failed: %s", k_fn, what, cudaGetErrorString(e));
}

static tpc_status_t run_fused(struct tpc_comm* c, const tpc_qk_problem_t* p, const tpc_capture_t* cap,
                              cudaStream_t stream, int pdl) {
  TPC_CHECK(tpc_order_before(c, stream, cap));
  TPC_CHECK(launch_error(c, tpc_qk_launch_fused(&c->arena->args, p, pdl, stream), "fused"));
  return tpc_order_after(c, stream, cap);
}

/* World size 1: the local rows are the whole vectors, so the across-heads norm computes the same function in
 * one kernel with no exchange and no shared buffer (no ordering against the communicator's other calls). */
static tpc_status_t run_local(struct tpc_comm* c, const tpc_qk_problem_t* p, int64_t qd, int64_t kd, tpc_dtype_t dtype,
                              cudaStream_t stream) {
  const tpc_status_t st = tpc_qk_rmsnorm_across_heads(p->q, p->k, p->q_weight, p->k_weight, p->tokens, qd, kd,
                                                      p->q_stride, p->k_stride, p->eps, dtype, stream);
  if (st != TPC_SUCCESS) return tpc_error(c, st, "%s (world size 1): %s", k_fn, tpc_thread_last_error());
  return TPC_SUCCESS;
}

/* The all-reduce of each chunk is enqueued directly (tpc_all_reduce_enqueue): its arguments (the
 * communicator's scratch buffer, the stream) were checked once, and the whole call is ordered once. */
static tpc_status_t run_unfused(struct tpc_comm* c, tpc_qk_problem_t p, tpc_algo_t algo, const tpc_capture_t* cap,
                                cudaStream_t stream, int pdl) {
  TPC_CHECK(tpc_order_before(c, stream, cap)); /* the scratch buffer is shared */
  const size_t esize = 2;
  const int64_t total = p.tokens;
  for (int64_t t0 = 0; t0 < total; t0 += c->qknorm_max_tokens) {
    tpc_qk_problem_t chunk = p;
    chunk.tokens = total - t0 < c->qknorm_max_tokens ? total - t0 : c->qknorm_max_tokens;
    chunk.q = (char*)p.q + (size_t)t0 * (size_t)p.q_stride * esize;
    chunk.k = (char*)p.k + (size_t)t0 * (size_t)p.k_stride * esize;
    TPC_CHECK(launch_error(c, tpc_qk_launch_partial(&chunk, c->qk_scratch, pdl, stream), "partial-sum"));
    if (c->nranks > 1)
      TPC_CHECK(tpc_all_reduce_enqueue(c, c->qk_scratch, c->qk_scratch, (size_t)chunk.tokens * 2, TPC_FLOAT32, algo,
                                       cap->capturing, stream));
    TPC_CHECK(launch_error(c, tpc_qk_launch_apply(&chunk, c->qk_scratch, pdl, stream), "apply"));
  }
  return tpc_order_after(c, stream, cap);
}

/* auto: fused where the arena can exchange the tokens and measurements say it wins (docs/benchmarks.md,
 * 2 x H200): up to 1024 tokens, inside a CUDA graph and eagerly alike. At 2048 tokens the fused kernel won for
 * q/k 6144/1024 (graph 12.32 against 12.65 us) but lost for 4096/1024 (11.16 against 10.91), and from 4096 the
 * unfused path's wider grids win for both; 1024 keeps auto never slower than the best unfused path in every
 * measured row. `graph` is kept for tables that may differ by mode; TPCOMM_QKNORM_FUSED_MAX_TOKENS sets the
 * limit. World size 1 always takes the one-kernel path (run_local). */
static tpc_qknorm_path_t auto_path(const struct tpc_comm* c, int64_t tokens, int graph) {
  if (c->nranks == 1) return TPC_QKNORM_FUSED; /* one kernel, any token count (run_local) */
  const int custom = c->transport == TPC_TRANSPORT_CUSTOM && c->arena != NULL;
  const int64_t limit = c->qknorm_fused_max_tokens >= 0 ? c->qknorm_fused_max_tokens : 1024;
  (void)graph;
  return custom && tokens <= c->qknorm_max_tokens && tokens <= limit ? TPC_QKNORM_FUSED : TPC_QKNORM_UNFUSED;
}

tpc_status_t tpc_tp_qk_rmsnorm_choice(tpc_comm_t comm, int64_t num_tokens, int graph, tpc_qknorm_path_t* path) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_tp_qk_rmsnorm_choice"));
  if (!path) return tpc_error(comm, TPC_ERR_INVALID_ARGUMENT, "tpc_tp_qk_rmsnorm_choice: path is NULL");
  *path = auto_path(comm, num_tokens, graph);
  return TPC_SUCCESS;
}

tpc_status_t tpc_tp_qk_rmsnorm_path(tpc_comm_t comm, void* q, void* k, const void* q_weight, const void* k_weight,
                                    int64_t num_tokens, int64_t q_dim_local, int64_t k_dim_local, int64_t q_stride,
                                    int64_t k_stride, float eps, tpc_dtype_t dtype, tpc_qknorm_path_t path,
                                    cudaStream_t stream) {
  TPC_CHECK(tpc_comm_check(comm, k_fn));
  if (comm->aborted) return tpc_error(comm, TPC_ERR_ABORTED, "%s: the communicator was aborted", k_fn);
  TPC_CHECK(check_args(comm, q, k, q_weight, k_weight, num_tokens, q_dim_local, k_dim_local, q_stride, k_stride, eps,
                       dtype, path));
  if (num_tokens == 0) return TPC_SUCCESS;
  TPC_CHECK(tpc_comm_device_error(comm));

  const int custom = comm->transport == TPC_TRANSPORT_CUSTOM && comm->arena != NULL;
  const int fits = num_tokens <= comm->qknorm_max_tokens;
  if (path == TPC_QKNORM_AUTO) path = auto_path(comm, num_tokens, 0); /* the same limit in a capture and eagerly */
  if (path == TPC_QKNORM_FUSED && comm->nranks > 1 && !(custom && fits))
    return tpc_error(comm, TPC_ERR_UNSUPPORTED, "%s: the fused path needs the custom transport (%s) and num_tokens=%lld "
                     "<= TPCOMM_QKNORM_MAX_TOKENS=%lld", k_fn, comm->transport_reason, (long long)num_tokens,
                     (long long)comm->qknorm_max_tokens);
  if (path == TPC_QKNORM_UNFUSED_NCCL && !comm->nccl && comm->nranks > 1)
    return tpc_error(comm, TPC_ERR_UNSUPPORTED, "%s: no NCCL communicator (%s)", k_fn, comm->nccl_reason);

  int prev = -1;
  TPC_CUDA_CHECK_COMM(comm, cudaGetDevice(&prev));
  if (prev != comm->device) TPC_CUDA_CHECK_COMM(comm, cudaSetDevice(comm->device));
  tpc_status_t st = TPC_SUCCESS;
  const char* names[] = {"q", "k", "q_weight", "k_weight"};
  const void* ptrs[] = {q, k, q_weight, k_weight};
  for (int i = 0; i < 4 && st == TPC_SUCCESS; i++) st = tpc_check_device_buffer(comm, ptrs[i], k_fn, names[i]);
  tpc_capture_t cap;
  if (st == TPC_SUCCESS) st = tpc_check_stream(comm, stream, k_fn, &cap);
  if (st == TPC_SUCCESS) {
    const tpc_qk_problem_t p = {q, k, q_weight, k_weight, num_tokens, (int)(q_dim_local / 8), (int)(k_dim_local / 8),
                                q_stride, k_stride, eps, (float)(q_dim_local * comm->nranks),
                                (float)(k_dim_local * comm->nranks), dtype == TPC_BFLOAT16 ? 0 : 1,
                                comm->device, comm->sm_count};
    const int pdl = comm->pdl;
    if (path == TPC_QKNORM_FUSED && comm->nranks == 1)
      st = run_local(comm, &p, q_dim_local, k_dim_local, dtype, stream);
    else if (path == TPC_QKNORM_FUSED) st = run_fused(comm, &p, &cap, stream, pdl);
    else st = run_unfused(comm, p, path == TPC_QKNORM_UNFUSED_NCCL ? TPC_ALGO_NCCL : TPC_ALGO_AUTO, &cap, stream, pdl);
  }
  if (prev != comm->device) cudaSetDevice(prev);
  return st;
}

tpc_status_t tpc_tp_qk_rmsnorm(tpc_comm_t comm, void* q, void* k, const void* q_weight, const void* k_weight,
                               int64_t num_tokens, int64_t q_dim_local, int64_t k_dim_local, int64_t q_stride,
                               int64_t k_stride, float eps, tpc_dtype_t dtype, cudaStream_t stream) {
  return tpc_tp_qk_rmsnorm_path(comm, q, k, q_weight, k_weight, num_tokens, q_dim_local, k_dim_local, q_stride,
                                k_stride, eps, dtype, TPC_QKNORM_AUTO, stream);
}
