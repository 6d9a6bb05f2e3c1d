/* allreduce.h — C interface between comm/ and the custom all-reduce kernels (kernels/allreduce.cu).
 *
 * comm/ipc.c owns the IPC arena and fills tpc_ar_args_t once per communicator; comm/allreduce.c calls
 * tpc_ar_launch() per operation. The arena layout (per rank, one cudaMalloc shared with CUDA IPC):
 *   [0, TPC_AR_HEADER_BYTES)  header (magic words read by the IPC trial)
 *   sems     uint32 [TPC_AR_MAX_BLOCKS][TPC_AR_MAX_RANKS]   two-shot semaphores, sems[b][src] written by src
 *   push     2 slots x (nranks-1) peers x push_slot_bytes    one-shot Lamport slots (all bytes 0xFF = empty)
 *   pull     pull_bytes                                        two-shot buffer
 *   norm     2 slots x norm_max_tokens x nranks x 8 B          fused TP QK-norm partial sums (0xFF = empty;
 *                                                              a slot is [token][source][value], tp_qknorm.cu)
 * Local (not shared) state, one cudaMalloc: per-block epochs and semaphore bases, and a failure flag.
 * The status word the host reads (timeouts) lives in mapped pinned host memory. */
#ifndef TPCOMM_KERNELS_ALLREDUCE_H
#define TPCOMM_KERNELS_ALLREDUCE_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TPC_AR_MAX_RANKS 8
#define TPC_AR_MAX_BLOCKS 256
#define TPC_AR_HEADER_BYTES 4096
#define TPC_QK_MAX_BLOCKS 1024 /* grid of the fused TP QK-norm kernel at most (its epochs) */
#define TPC_AR_SEM_BYTES (TPC_AR_MAX_BLOCKS * TPC_AR_MAX_RANKS * 4)

/* Written by kernels on failure, read by the host (mapped pinned memory). */
typedef struct {
  volatile uint32_t abort_flag; /* host -> device: stop waiting */
  volatile uint32_t error;      /* device -> host: TPC_AR_ERR_* (first failure wins) */
  volatile uint32_t peer;       /* the peer waited for */
  volatile uint32_t block;      /* the block that waited */
  volatile uint32_t algo;       /* 1 = one-shot, 2 = two-shot */
  volatile uint32_t pad[3];
} tpc_ar_status_t;

enum { TPC_AR_OK = 0, TPC_AR_ERR_TIMEOUT = 1, TPC_AR_ERR_ABORTED = 2 };

/* Local per-communicator device state (not shared). */
typedef struct {
  uint32_t epoch[TPC_AR_MAX_BLOCKS];    /* one-shot: calls made by block b */
  uint32_t sem_base[TPC_AR_MAX_BLOCKS]; /* two-shot: barriers passed by block b */
  uint32_t norm_epoch[TPC_QK_MAX_BLOCKS]; /* fused TP QK-norm: calls made (all entries equal between calls) */
  uint32_t failed;                      /* a block of this rank gave up: the others stop waiting */
} tpc_ar_local_t;

typedef struct {
  void* push[TPC_AR_MAX_RANKS];     /* push region of each rank (own included), mapped in this process */
  void* pull[TPC_AR_MAX_RANKS];     /* pull buffer of each rank */
  uint32_t* sems[TPC_AR_MAX_RANKS]; /* semaphore array of each rank */
  void* norm[TPC_AR_MAX_RANKS];     /* QK-norm partial-sum slots of each rank */
  tpc_ar_local_t* local;
  tpc_ar_status_t* status; /* device pointer to the mapped host status */
  uint64_t push_slot_bytes;
  uint64_t pull_bytes;
  uint64_t norm_max_tokens; /* tokens one fused QK-norm call can exchange */
  uint64_t timeout_ns;
  int rank, nranks;
  int blocks;      /* fixed grid (epochs are per block) */
  int max_threads; /* threads per block at most */
  int sm_count;    /* SMs of this rank's GPU */
  int device;      /* this rank's CUDA device (current during every launch) */
} tpc_ar_args_t;

/* algo: 1 = one-shot push, 2 = two-shot pull. dtype: 0 bf16, 1 fp16, 2 fp32. Returns the launch error. */
cudaError_t tpc_ar_launch(int algo, const tpc_ar_args_t* args, const void* in, void* out, size_t count,
                          int dtype, int pdl, cudaStream_t stream);

/* Fills `bytes` at dst with 0xFF (the empty pattern) — a plain memset, named for what it means. */
cudaError_t tpc_ar_clear_push(void* dst, size_t bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
