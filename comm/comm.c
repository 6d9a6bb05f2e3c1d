/* comm.c — communicator lifecycle: the three bootstraps (unique id, caller all-gather, environment),
 * the common build (peer info -> topology probe -> IPC arena and trial -> transport decision -> NCCL),
 * the device choice of launched ranks (tpc_select_device, also used by tpcomm_mpi.c), queries, async
 * errors, abort and destroy.
 *
 * Relies on: every rank making the same sequence of bootstrap all-gathers, and every decision being
 * computed from all-gathered data only, so all ranks reach the same transport without extra agreement.
 * A destroyed communicator's struct is kept as a tombstone (magic = TPC_COMM_DEAD) so that a later call
 * with the stale handle is reported as misuse instead of reading freed memory. */
#include "comm.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "checks.h"
#include "ipc.h"
#include "param.h"

char* tpc_comm_error_buffer(struct tpc_comm* comm, size_t* len) {
  if (!comm || (comm->magic != TPC_COMM_MAGIC && comm->magic != TPC_COMM_DEAD)) return NULL;
  *len = sizeof comm->last_error;
  return comm->last_error;
}

const char* tpc_get_last_error(const struct tpc_comm* comm) {
  if (comm && comm->magic == TPC_COMM_MAGIC && strcmp(comm->last_error, "") != 0) return comm->last_error;
  return tpc_thread_last_error();
}

tpc_status_t tpc_comm_check(const struct tpc_comm* comm, const char* fn) {
  if (!comm) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: comm is NULL", fn);
  if (comm->magic == TPC_COMM_DEAD)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: comm %p was destroyed", fn, (const void*)comm);
  if (comm->magic != TPC_COMM_MAGIC)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: comm %p is not a tpcomm communicator", fn, (const void*)comm);
  return TPC_SUCCESS;
}

/* ---- configuration ------------------------------------------------------------------------------ */

/* A config field is read only if the caller's struct (size) contains it. */
#define CFG_FIELD(cfg, field) \
  ((cfg) && (cfg)->size >= offsetof(tpc_config_t, field) + sizeof((cfg)->field) ? (int64_t)(cfg)->field : TPC_CONFIG_UNDEF)

static tpc_status_t check_config(const tpc_config_t* cfg, const char* fn) {
  if (!cfg) return TPC_SUCCESS;
  if (cfg->magic != TPC_CONFIG_MAGIC)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "%s: config->magic=0x%x is not TPC_CONFIG_MAGIC (initialize it with TPC_CONFIG_INITIALIZER)", fn,
                     cfg->magic);
  if (cfg->size < offsetof(tpc_config_t, timeout_ms) || cfg->size > 1u << 16)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: config->size=%zu is not a tpc_config_t size", fn, cfg->size);
  if (cfg->version > TPC_VERSION_CODE)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: config->version=%u is newer than this library (%d)", fn,
                     cfg->version, TPC_VERSION_CODE);
  return TPC_SUCCESS;
}

static tpc_status_t resolve_timeout(const tpc_config_t* cfg, int* timeout_ms) {
  int64_t v;
  TPC_CHECK(tpc_param_resolve(TPC_P_TIMEOUT_MS, CFG_FIELD(cfg, timeout_ms), &v));
  if (v < 1 || v > 24LL * 3600 * 1000)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "timeout_ms=%lld is outside 1..86400000", (long long)v);
  *timeout_ms = (int)v;
  return TPC_SUCCESS;
}

/* Defaults by world size (measured on 2 x H200; docs/benchmarks.md). At 2 ranks the one-shot beats the
 * two-shot at every size up to 64 MiB (64 MiB: 197-202 against 227 us), so its slot covers the custom limit
 * (TPCOMM_MAX_BYTES, at most 64 MiB: 2 x 64 MiB of arena per GPU by default). */
static int64_t default_push_slot(int n, int64_t max_bytes) {
  if (n <= 2) return max_bytes < 4096 ? 4096 : max_bytes > (64 << 20) ? (64 << 20) : max_bytes;
  return n <= 4 ? (1 << 20) : (512 << 10);
}
static int64_t default_oneshot_max(int n) { return n <= 2 ? (64 << 20) : n <= 4 ? (256 << 10) : (128 << 10); }

static tpc_status_t resolve_params(struct tpc_comm* c, const tpc_config_t* cfg) {
  int64_t v;
  TPC_CHECK(resolve_timeout(cfg, &c->timeout_ms));
  TPC_CHECK(tpc_param_resolve(TPC_P_MAX_BYTES, CFG_FIELD(cfg, max_bytes), &c->max_bytes));
  TPC_CHECK(tpc_param_resolve(TPC_P_ALLREDUCE_ALGO, CFG_FIELD(cfg, allreduce_algo), &v));
  c->forced_algo = (int)v;
  if (c->forced_algo == TPC_ALGO_LOCAL)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "allreduce_algo=%d (local) cannot be forced", c->forced_algo);
  TPC_CHECK(tpc_param_resolve(TPC_P_P2P_DISABLE, CFG_FIELD(cfg, p2p_disable), &v));
  c->p2p_disable = (int)v;
  TPC_CHECK(tpc_param_resolve(TPC_P_ALLOW_SHARED_GPU, CFG_FIELD(cfg, allow_shared_gpu), &v));
  c->allow_shared_gpu = (int)v;
  TPC_CHECK(tpc_param_resolve(TPC_P_NCCL, CFG_FIELD(cfg, nccl), &v));
  c->use_nccl = (int)v;
  TPC_CHECK(tpc_param_resolve(TPC_P_PDL, TPC_CONFIG_UNDEF, &v));
  c->pdl = (int)v;
  TPC_CHECK(tpc_param_resolve(TPC_P_PUSH_MAX_BYTES, TPC_CONFIG_UNDEF, &c->push_max_bytes));
  if (c->push_max_bytes < 0) c->push_max_bytes = default_push_slot(c->nranks, c->max_bytes);
  TPC_CHECK(tpc_param_resolve(TPC_P_ONESHOT_MAX_BYTES, TPC_CONFIG_UNDEF, &c->oneshot_max_bytes));
  if (c->oneshot_max_bytes < 0) c->oneshot_max_bytes = default_oneshot_max(c->nranks);
  if (c->oneshot_max_bytes > c->push_max_bytes) c->oneshot_max_bytes = c->push_max_bytes;
  TPC_CHECK(tpc_param_resolve(TPC_P_NUM_BLOCKS, TPC_CONFIG_UNDEF, &v));
  if (v > TPC_AR_MAX_BLOCKS)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "TPCOMM_NUM_BLOCKS=%lld exceeds %d", (long long)v, TPC_AR_MAX_BLOCKS);
  c->num_blocks = (int)v;
  TPC_CHECK(tpc_param_resolve(TPC_P_QKNORM_MAX_TOKENS, TPC_CONFIG_UNDEF, &c->qknorm_max_tokens));
  TPC_CHECK(tpc_param_resolve(TPC_P_QKNORM_FUSED_MAX_TOKENS, TPC_CONFIG_UNDEF, &c->qknorm_fused_max_tokens));
  if (c->qknorm_max_tokens < 1 || c->qknorm_max_tokens > (1 << 24))
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "TPCOMM_QKNORM_MAX_TOKENS=%lld is outside 1..16M",
                     (long long)c->qknorm_max_tokens);
  TPC_CHECK(tpc_param_resolve(TPC_P_NVLINK_REQUIRED, TPC_CONFIG_UNDEF, &v));
  c->nvlink_required = (int)v;
  if (c->max_bytes < 16 || c->max_bytes > (1LL << 34))
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "max_bytes=%lld is outside 16..16G", (long long)c->max_bytes);
  if (c->push_max_bytes < 16 || c->push_max_bytes > (1LL << 31))
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "TPCOMM_PUSH_MAX_BYTES=%lld is outside 16..2G",
                     (long long)c->push_max_bytes);
  return TPC_SUCCESS;
}

/* ---- the common build --------------------------------------------------------------------------- */

/* The number of visible GPUs; TPC_ERR_NO_DEVICE (with CUDA's reason) when there is none. fn prefixes the
 * message when not NULL. */
static tpc_status_t gpu_count(const char* fn, int* count) {
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(count);
  if (e != cudaSuccess || *count == 0) {
    cudaGetLastError();
    return tpc_error(NULL, TPC_ERR_NO_DEVICE, "%s%sno CUDA GPU is visible (%s)", fn ? fn : "", fn ? ": " : "",
                     e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount returned 0");
  }
  return TPC_SUCCESS;
}

static tpc_status_t check_device(int* device) {
  int count;
  TPC_CHECK(gpu_count(NULL, &count));
  TPC_CUDA_CHECK(cudaGetDevice(device));
  return TPC_SUCCESS;
}

tpc_status_t tpc_select_device(const char* fn, int64_t local_rank, int* device) {
  int count;
  TPC_CHECK(gpu_count(fn, &count));
  int64_t dev;
  TPC_CHECK(tpc_param_resolve(TPC_P_DEVICE, TPC_CONFIG_UNDEF, &dev));
  if (dev < 0) dev = local_rank % count;
  if (dev >= count)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: TPCOMM_DEVICE=%lld but only %d CUDA device(s) are visible",
                     fn, (long long)dev, count);
  TPC_CUDA_CHECK(cudaSetDevice((int)dev));
  if (device) *device = (int)dev;
  return TPC_SUCCESS;
}

static int ranks_on_my_gpu(const struct tpc_comm* c) {
  int k = 0;
  for (int i = 0; i < c->nranks; i++)
    k += c->peers[i].host_hash == c->peers[c->rank].host_hash && !strcmp(c->peers[i].bus_id, c->peers[c->rank].bus_id);
  return k;
}

/* Topology probe + IPC trial + decision. Sets c->transport, c->transport_reason and c->arena. */
static tpc_status_t choose_transport(struct tpc_comm* c, tpc_bootstrap_t* bs) {
  const int n = c->nranks;
  tpc_status_t st = TPC_SUCCESS;
  uint8_t* row = calloc(3 * (size_t)n, 1);
  uint8_t* p2p = calloc((size_t)n * n, 1);
  uint8_t* nvl = calloc((size_t)n * n, 1);
  uint8_t* ipc = calloc((size_t)n * n, 1);
  uint8_t* rows = calloc(3 * (size_t)n * n, 1);
  if (!row || !p2p || !nvl || !ipc || !rows) {
    st = tpc_error(c, TPC_ERR_SYSTEM, "out of host memory for %d x %d topology matrices", n, n);
    goto out;
  }
  tpc_topo_input_t in = {n, c->peers, p2p, nvl, NULL, c->p2p_disable, c->nvlink_required, c->allow_shared_gpu};
  tpc_topo_decision_t d;
  if (n > 1 && !c->p2p_disable && n <= TPC_MAX_CUSTOM_RANKS) {
    TPC_CHECK_GOTO(tpc_topo_probe_row(c, row, row + n), st, out);
    TPC_CHECK_GOTO(tpc_bootstrap_allgather(bs, row, rows, 2 * (size_t)n), st, out);
    for (int i = 0; i < n; i++) {
      memcpy(p2p + (size_t)i * n, rows + (size_t)i * 2 * n, n);
      memcpy(nvl + (size_t)i * n, rows + (size_t)i * 2 * n + n, n);
    }
  }
  tpc_topo_decide(&in, &d);
  if (d.transport == TPC_TRANSPORT_CUSTOM) {
    TPC_CHECK_GOTO(tpc_arena_create(c, bs, &c->arena, row), st, out);
    TPC_CHECK_GOTO(tpc_bootstrap_allgather(bs, row, ipc, (size_t)n), st, out);
    in.ipc = ipc;
    tpc_topo_decide(&in, &d);
    if (d.transport != TPC_TRANSPORT_CUSTOM) {
      tpc_arena_destroy(c->arena);
      c->arena = NULL;
    }
  }
  c->transport = d.transport;
  snprintf(c->transport_reason, sizeof c->transport_reason, "%s", d.reason);
  if (c->arena) {
    int share = ranks_on_my_gpu(c);
    int blocks = c->num_blocks > 0 ? c->num_blocks : c->sm_count / (share > 0 ? share : 1);
    if (blocks > TPC_AR_MAX_BLOCKS) blocks = TPC_AR_MAX_BLOCKS;
    if (blocks < 1) blocks = 1;
    c->arena->args.blocks = blocks;
    c->arena->args.sm_count = c->sm_count;
    c->arena->args.device = c->device;
  }
out:
  free(row);
  free(p2p);
  free(nvl);
  free(ipc);
  free(rows);
  return st;
}

static tpc_status_t comm_build(tpc_comm_t* out, int nranks, int rank, int device, tpc_bootstrap_t* bs,
                               const tpc_config_t* cfg) {
  tpc_status_t st;
  struct tpc_comm* c = calloc(1, sizeof *c);
  if (!c) return tpc_error(NULL, TPC_ERR_SYSTEM, "out of host memory for the communicator");
  c->magic = TPC_COMM_MAGIC;
  c->rank = rank;
  c->nranks = nranks;
  c->device = device;
  tpc_log_set_rank(rank);
  TPC_CHECK_GOTO(resolve_params(c, cfg), st, fail);

  c->peers = calloc((size_t)nranks, sizeof *c->peers);
  if (!c->peers) {
    st = tpc_error(NULL, TPC_ERR_SYSTEM, "out of host memory for %d peer records", nranks);
    goto fail;
  }
  tpc_peer_info_t mine;
  TPC_CHECK_GOTO(tpc_topo_local_info(device, &mine), st, fail);
  c->sm_count = mine.sm_count;
  TPC_CHECK_GOTO(tpc_bootstrap_allgather(bs, &mine, c->peers, sizeof mine), st, fail);
  for (int i = 0; i < nranks; i++) {
    c->peers[i].hostname[sizeof c->peers[i].hostname - 1] = 0;
    c->peers[i].bus_id[sizeof c->peers[i].bus_id - 1] = 0;
  }

  int a, b;
  const int shared = tpc_topo_find_shared_gpu(c->peers, nranks, &a, &b);
  if (shared && !c->allow_shared_gpu) {
    st = tpc_error(NULL, TPC_ERR_INVALID_USAGE,
                   "ranks %d and %d share GPU %s; several ranks per GPU are for tests only "
                   "(TPCOMM_ALLOW_SHARED_GPU=1, under CUDA MPS)",
                   a, b, c->peers[a].bus_id);
    goto fail;
  }
  /* With several ranks on one GPU a dependent kernel launched early (PDL) can hold the SMs a peer's
   * kernel needs to start, and that peer is what our kernel waits for: no PDL then. PDL needs sm_90. */
  if (shared || mine.cc_major < 9) c->pdl = 0;
  TPC_CHECK_GOTO(choose_transport(c, bs), st, fail);

  if (nranks > 1 && c->use_nccl && !shared) {
    TPC_CHECK_GOTO(tpc_nccl_init(c, bs), st, fail);
  } else if (nranks > 1) {
    snprintf(c->nccl_reason, sizeof c->nccl_reason, "%s",
             shared ? "NCCL refuses several ranks on one GPU" : "TPCOMM_NCCL=0");
    if (c->transport == TPC_TRANSPORT_NCCL)
      TPC_WARN("transport is NCCL (%s) but there is no NCCL communicator (%s): every all-reduce will fail",
               c->transport_reason, c->nccl_reason);
  }
  TPC_CUDA_CHECK_GOTO(c, cudaMalloc((void**)&c->qk_scratch, (size_t)c->qknorm_max_tokens * 2 * sizeof(float)), st,
                      fail);
  cudaEvent_t ev;
  TPC_CUDA_CHECK_GOTO(c, cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), st, fail);
  c->order_event = ev;
  TPC_INFO(TPC_SUB_INIT, "rank %d/%d on GPU %d (%s): %s%s", rank, nranks, device, mine.bus_id, c->transport_reason,
           c->nccl ? ", NCCL ready" : "");
  *out = c;
  return TPC_SUCCESS;
fail:
  if (c->qk_scratch) cudaFree(c->qk_scratch);
  tpc_arena_destroy(c->arena);
  tpc_nccl_destroy(c);
  free(c->peers);
  free(c);
  return st;
}

static tpc_status_t check_init_args(tpc_comm_t* comm, int nranks, int rank, const char* fn) {
  if (!comm) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: comm (output pointer) is NULL", fn);
  *comm = NULL;
  if (nranks < 1 || nranks > 4096)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: nranks=%d is outside 1..4096", fn, nranks);
  if (rank < 0 || rank >= nranks)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: rank=%d is outside 0..%d", fn, rank, nranks - 1);
  return TPC_SUCCESS;
}

tpc_status_t tpc_comm_init_rank(tpc_comm_t* comm, int nranks, tpc_unique_id_t id, int rank, const tpc_config_t* config) {
  static const char fn[] = "tpc_comm_init_rank";
  TPC_CHECK(check_init_args(comm, nranks, rank, fn));
  TPC_CHECK(check_config(config, fn));
  TPC_CHECK(tpc_bootstrap_check_id(&id));
  int timeout_ms = 0, device = 0;
  TPC_CHECK(resolve_timeout(config, &timeout_ms));
  TPC_CHECK(check_device(&device));
  tpc_bootstrap_t* bs = NULL;
  TPC_CHECK(tpc_bootstrap_init_socket(&bs, &id, rank, nranks, timeout_ms));
  tpc_status_t st = comm_build(comm, nranks, rank, device, bs, config);
  tpc_bootstrap_destroy(bs);
  return st;
}

tpc_status_t tpc_comm_init_allgather(tpc_comm_t* comm, int nranks, int rank, tpc_allgather_fn allgather, void* user,
                                     const tpc_config_t* config) {
  static const char fn[] = "tpc_comm_init_allgather";
  TPC_CHECK(check_init_args(comm, nranks, rank, fn));
  if (!allgather) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: allgather callback is NULL", fn);
  TPC_CHECK(check_config(config, fn));
  int device;
  TPC_CHECK(check_device(&device));
  tpc_bootstrap_t* bs = NULL;
  TPC_CHECK(tpc_bootstrap_init_callback(&bs, rank, nranks, allgather, user));
  tpc_status_t st = comm_build(comm, nranks, rank, device, bs, config);
  tpc_bootstrap_destroy(bs);
  return st;
}

/* An integer from the environment that must be present. */
static tpc_status_t env_int(tpc_param_id_t id, int64_t* v) {
  TPC_CHECK(tpc_param_resolve(id, TPC_CONFIG_UNDEF, v));
  if (*v < 0)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE,
                     "%s is not set (start the program with tpcomm-run, or use tpc_comm_init_rank)", tpc_params[id].env);
  return TPC_SUCCESS;
}

tpc_status_t tpc_comm_init_env(tpc_comm_t* comm, const tpc_config_t* config) {
  static const char fn[] = "tpc_comm_init_env";
  if (!comm) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: comm (output pointer) is NULL", fn);
  int64_t rank, size, local;
  TPC_CHECK(env_int(TPC_P_RANK, &rank));
  TPC_CHECK(env_int(TPC_P_WORLD_SIZE, &size));
  TPC_CHECK(env_int(TPC_P_LOCAL_RANK, &local));
  const char* hex = getenv("TPCOMM_UNIQUE_ID");
  if (!hex || !*hex)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: TPCOMM_UNIQUE_ID is not set (start the program with tpcomm-run)", fn);
  tpc_unique_id_t id;
  TPC_CHECK(tpc_unique_id_from_string(hex, &id));
  TPC_CHECK(tpc_select_device(fn, local, NULL));
  return tpc_comm_init_rank(comm, (int)size, id, (int)rank, config);
}

/* ---- queries, errors, teardown ------------------------------------------------------------------ */

tpc_status_t tpc_comm_rank(tpc_comm_t comm, int* rank) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_comm_rank"));
  if (!rank) return tpc_error(comm, TPC_ERR_INVALID_ARGUMENT, "tpc_comm_rank: rank is NULL");
  *rank = comm->rank;
  return TPC_SUCCESS;
}

tpc_status_t tpc_comm_size(tpc_comm_t comm, int* size) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_comm_size"));
  if (!size) return tpc_error(comm, TPC_ERR_INVALID_ARGUMENT, "tpc_comm_size: size is NULL");
  *size = comm->nranks;
  return TPC_SUCCESS;
}

tpc_status_t tpc_comm_device(tpc_comm_t comm, int* device) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_comm_device"));
  if (!device) return tpc_error(comm, TPC_ERR_INVALID_ARGUMENT, "tpc_comm_device: device is NULL");
  *device = comm->device;
  return TPC_SUCCESS;
}

tpc_status_t tpc_comm_transport(tpc_comm_t comm, tpc_transport_t* transport, const char** reason) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_comm_transport"));
  if (!transport) return tpc_error(comm, TPC_ERR_INVALID_ARGUMENT, "tpc_comm_transport: transport is NULL");
  *transport = comm->transport;
  if (reason) *reason = comm->transport_reason;
  return TPC_SUCCESS;
}

tpc_status_t tpc_comm_nccl(tpc_comm_t comm, void** nccl_comm) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_comm_nccl"));
  if (!nccl_comm) return tpc_error(comm, TPC_ERR_INVALID_ARGUMENT, "tpc_comm_nccl: nccl_comm is NULL");
  *nccl_comm = comm->nccl;
  return TPC_SUCCESS;
}

/* The error a kernel left in the mapped status word, as a status (and message on comm). */
tpc_status_t tpc_comm_device_error(struct tpc_comm* comm) {
  if (!comm->arena) return TPC_SUCCESS;
  const volatile tpc_ar_status_t* s = comm->arena->host_status;
  if (s->error == TPC_AR_OK) return TPC_SUCCESS;
  const char* algo = s->algo == 1 ? "one-shot all-reduce" : s->algo == 2 ? "two-shot all-reduce" : "fused TP QK-norm";
  if (s->error == TPC_AR_ERR_ABORTED)
    return tpc_error(comm, TPC_ERR_ABORTED, "the %s kernel stopped waiting for peer %u: communicator aborted",
                     algo, s->peer);
  return tpc_error(comm, TPC_ERR_TIMEOUT,
                   "peer %u did not answer within %d ms (%s, block %u of rank %d); the communicator is "
                   "unusable: abort or destroy it",
                   s->peer, comm->timeout_ms, algo, s->block, comm->rank);
}

tpc_status_t tpc_comm_get_async_error(tpc_comm_t comm, tpc_status_t* async_error) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_comm_get_async_error"));
  if (!async_error) return tpc_error(comm, TPC_ERR_INVALID_ARGUMENT, "tpc_comm_get_async_error: async_error is NULL");
  tpc_status_t s = tpc_comm_device_error(comm);
  if (s == TPC_SUCCESS) s = tpc_nccl_async_error(comm);
  if (s == TPC_SUCCESS && comm->aborted) s = TPC_ERR_ABORTED;
  *async_error = s;
  return TPC_SUCCESS;
}

tpc_status_t tpc_comm_abort(tpc_comm_t comm) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_comm_abort"));
  comm->aborted = 1;
  if (comm->arena) comm->arena->host_status->abort_flag = 1;
  tpc_nccl_abort(comm);
  TPC_INFO(TPC_SUB_INIT, "communicator aborted");
  return TPC_SUCCESS;
}

tpc_status_t tpc_comm_destroy(tpc_comm_t comm) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_comm_destroy"));
  int prev = -1;
  cudaGetDevice(&prev);
  if (prev != comm->device) cudaSetDevice(comm->device);
  if (comm->order_event) {
    /* wait for this rank's last eager operation; an event last recorded inside a stream capture cannot be
     * waited on (CUDA returns invalid argument, seen under compute-sanitizer): captured work runs when the
     * caller launches the graph, and the caller finishes those launches before destroying (docs/api.md) */
    if (comm->have_last && comm->last_capture_id == 0) cudaEventSynchronize((cudaEvent_t)comm->order_event);
    cudaEventDestroy((cudaEvent_t)comm->order_event);
  }
  tpc_arena_destroy(comm->arena);
  tpc_nccl_destroy(comm);
  if (comm->qk_scratch) cudaFree(comm->qk_scratch);
  free(comm->peers);
  cudaGetLastError();
  if (prev >= 0 && prev != comm->device) cudaSetDevice(prev);
  memset(comm, 0, sizeof *comm);
  comm->magic = TPC_COMM_DEAD; /* tombstone: the struct is never freed */
  return TPC_SUCCESS;
}
