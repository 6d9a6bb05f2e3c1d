/* ipc.c — allocation, exchange and trial of the IPC arena (ipc.h). Layout: kernels/allreduce.h.
 * Relies on: one rank per process (a process cannot open its own IPC handle), and the bootstrap's
 * all-gather to ship the 64-byte handles. */
#include "ipc.h"

#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "checks.h"

#define ARENA_MAGIC 0x41435054u /* "TPCA" */

typedef struct {
  int32_t ok;
  int32_t rank;
  uint64_t bytes;
  cudaIpcMemHandle_t handle;
} arena_record_t;

typedef struct {
  uint32_t magic;
  int32_t rank;
  uint64_t bytes;
} arena_header_t;

/* Where each region of an arena starts (the same on every rank: nranks and the sizes are agreed). */
typedef struct {
  size_t push_off, push_bytes; /* one-shot slots: 2 x (nranks - 1) peers x push_slot */
  size_t pull_off;             /* two-shot buffer: pull bytes */
  size_t norm_off, norm_bytes; /* QK-norm slots: 2 x nranks x max tokens x 8 */
  size_t bytes;                /* the whole arena */
} arena_layout_t;

static arena_layout_t arena_layout(int nranks, size_t push_slot, size_t pull, uint64_t norm_max_tokens) {
  arena_layout_t l;
  l.push_off = TPC_AR_HEADER_BYTES + TPC_AR_SEM_BYTES;
  l.push_bytes = 2 * (size_t)(nranks - 1) * push_slot;
  l.pull_off = l.push_off + l.push_bytes;
  l.norm_off = l.pull_off + pull;
  l.norm_bytes = 2 * (size_t)nranks * (size_t)norm_max_tokens * 8;
  l.bytes = l.norm_off + l.norm_bytes;
  return l;
}

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Local allocation; returns non-success with a logged reason (not fatal for the job). */
static tpc_status_t arena_alloc(struct tpc_comm* comm, struct tpc_arena* ar, size_t push_slot, size_t pull) {
  const int n = comm->nranks;
  const arena_layout_t l = arena_layout(n, push_slot, pull, (uint64_t)comm->qknorm_max_tokens);
  ar->bytes = l.bytes;
  TPC_CUDA_CHECK_COMM(comm, cudaMalloc((void**)&ar->base, ar->bytes));
  TPC_CUDA_CHECK_COMM(comm, cudaMemset(ar->base, 0, l.push_off));
  TPC_CUDA_CHECK_COMM(comm, tpc_ar_clear_push(ar->base + l.push_off, l.push_bytes, 0));
  TPC_CUDA_CHECK_COMM(comm, tpc_ar_clear_push(ar->base + l.norm_off, l.norm_bytes, 0));
  arena_header_t hdr = {ARENA_MAGIC, comm->rank, ar->bytes};
  TPC_CUDA_CHECK_COMM(comm, cudaMemcpy(ar->base, &hdr, sizeof hdr, cudaMemcpyHostToDevice));
  TPC_CUDA_CHECK_COMM(comm, cudaMalloc((void**)&ar->local, sizeof(tpc_ar_local_t)));
  TPC_CUDA_CHECK_COMM(comm, cudaMemset(ar->local, 0, sizeof(tpc_ar_local_t)));
  TPC_CUDA_CHECK_COMM(comm, cudaHostAlloc((void**)&ar->host_status, sizeof(tpc_ar_status_t), cudaHostAllocMapped));
  memset((void*)ar->host_status, 0, sizeof(tpc_ar_status_t));
  void* dev_status = NULL;
  TPC_CUDA_CHECK_COMM(comm, cudaHostGetDevicePointer(&dev_status, (void*)ar->host_status, 0));
  TPC_CUDA_CHECK_COMM(comm, cudaDeviceSynchronize());

  tpc_ar_args_t* a = &ar->args;
  memset(a, 0, sizeof *a);
  a->local = ar->local;
  a->status = (tpc_ar_status_t*)dev_status;
  a->push_slot_bytes = push_slot;
  a->pull_bytes = pull;
  a->norm_max_tokens = (uint64_t)comm->qknorm_max_tokens;
  a->timeout_ns = (uint64_t)comm->timeout_ms * 1000000ull;
  a->rank = comm->rank;
  a->nranks = n;
  a->max_threads = 512;
  TPC_INFO(TPC_SUB_ALLOC, "arena %zu bytes: push 2 x %d x %zu, pull %zu, norm %zu", ar->bytes, n - 1, push_slot, pull,
           l.norm_bytes);
  return TPC_SUCCESS;
}

/* Peer p's regions, at the offsets of arena_layout (ar->args holds the sizes). */
static void set_peer_pointers(struct tpc_arena* ar, int p, char* base, int n) {
  const arena_layout_t l = arena_layout(n, ar->args.push_slot_bytes, ar->args.pull_bytes, ar->args.norm_max_tokens);
  ar->peer_base[p] = base;
  ar->args.sems[p] = (uint32_t*)(base + TPC_AR_HEADER_BYTES);
  ar->args.push[p] = base + l.push_off;
  ar->args.pull[p] = base + l.pull_off;
  ar->args.norm[p] = base + l.norm_off;
}

/* Opens peer p's arena and reads its header back: YES only when the bytes are what p wrote. */
static uint8_t open_peer(struct tpc_comm* comm, struct tpc_arena* ar, int p, const arena_record_t* rec) {
  if (!rec->ok) {
    TPC_INFO(TPC_SUB_P2P, "peer %d has no arena (its allocation failed)", p);
    return TPC_TRI_NO;
  }
  void* ptr = NULL;
  cudaError_t e = cudaIpcOpenMemHandle(&ptr, rec->handle, cudaIpcMemLazyEnablePeerAccess);
  if (e != cudaSuccess) {
    cudaGetLastError();
    TPC_INFO(TPC_SUB_P2P, "cudaIpcOpenMemHandle of peer %d failed: %s", p, cudaGetErrorString(e));
    return TPC_TRI_NO;
  }
  ar->opened[p] = 1;
  arena_header_t hdr;
  e = cudaMemcpy(&hdr, ptr, sizeof hdr, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess || hdr.magic != ARENA_MAGIC || hdr.rank != p || hdr.bytes != rec->bytes) {
    cudaGetLastError();
    TPC_INFO(TPC_SUB_P2P, "IPC trial with peer %d read wrong bytes (%s)", p,
             e != cudaSuccess ? cudaGetErrorString(e) : "header mismatch");
    return TPC_TRI_NO;
  }
  set_peer_pointers(ar, p, ptr, comm->nranks);
  return TPC_TRI_YES;
}

tpc_status_t tpc_arena_create(struct tpc_comm* comm, tpc_bootstrap_t* bs, struct tpc_arena** arena, uint8_t* ipc_row) {
  const int n = comm->nranks;
  *arena = NULL;
  struct tpc_arena* ar = calloc(1, sizeof *ar);
  arena_record_t mine = {0, comm->rank, 0, {{0}}};
  const size_t push_slot = align_up((size_t)comm->push_max_bytes, 4096);
  const size_t pull = align_up((size_t)comm->max_bytes, 4096);
  if (ar && arena_alloc(comm, ar, push_slot, pull) == TPC_SUCCESS &&
      cudaIpcGetMemHandle(&mine.handle, ar->base) == cudaSuccess) {
    mine.ok = 1;
    mine.bytes = ar->bytes;
  } else {
    cudaGetLastError();
    TPC_WARN("rank %d could not set up its IPC arena (%s); all ranks fall back to NCCL", comm->rank,
             tpc_get_last_error(comm));
  }
  arena_record_t* all = calloc((size_t)n, sizeof *all);
  if (!all) {
    tpc_arena_destroy(ar);
    return tpc_error(comm, TPC_ERR_SYSTEM, "out of host memory for %d arena records", n);
  }
  tpc_status_t st = tpc_bootstrap_allgather(bs, &mine, all, sizeof mine);
  if (st != TPC_SUCCESS) {
    free(all);
    tpc_arena_destroy(ar);
    return st;
  }
  for (int p = 0; p < n; p++) {
    if (p == comm->rank) {
      ipc_row[p] = mine.ok ? TPC_TRI_YES : TPC_TRI_NO;
      if (mine.ok) set_peer_pointers(ar, p, ar->base, n);
      continue;
    }
    ipc_row[p] = mine.ok ? open_peer(comm, ar, p, &all[p]) : TPC_TRI_NO;
  }
  free(all);
  if (!mine.ok) {
    tpc_arena_destroy(ar);
    return TPC_SUCCESS;
  }
  *arena = ar;
  return TPC_SUCCESS;
}

void tpc_arena_destroy(struct tpc_arena* ar) {
  if (!ar) return;
  for (int p = 0; p < TPC_AR_MAX_RANKS; p++)
    if (ar->opened[p]) cudaIpcCloseMemHandle(ar->peer_base[p]);
  if (ar->base) cudaFree(ar->base);
  if (ar->local) cudaFree(ar->local);
  if (ar->host_status) cudaFreeHost((void*)ar->host_status);
  cudaGetLastError();
  free(ar);
}
