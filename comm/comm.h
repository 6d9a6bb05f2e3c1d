/* comm.h — the communicator's internal state and the pieces of the library that build it.
 *
 * A call flows: tpc_all_reduce (allreduce.c: validate, choose) -> custom kernels (kernels/allreduce.cu via
 * ipc.c's arena) or NCCL (nccl_path.c) or a local copy. The communicator is built by comm.c: bootstrap
 * (bootstrap.c) -> peer info all-gather -> topology probe (topo.c, nvml.c) -> arena (ipc.c) -> NCCL.
 * Internal to the library. */
#ifndef TPCOMM_COMM_H
#define TPCOMM_COMM_H

#include <stdint.h>

#include "bootstrap.h"
#include "debug.h"
#include "topo.h"
#include "tpcomm/tpcomm.h"

#define TPC_COMM_MAGIC 0x436f6d6du /* live */
#define TPC_COMM_DEAD 0xdeadc0deu  /* destroyed: the struct stays as a tombstone so misuse is detected */

struct tpc_arena; /* ipc.c */

struct tpc_comm {
  uint32_t magic;
  int rank, nranks, device;
  char last_error[TPC_ERRMSG_LEN];

  /* resolved configuration (param.h) */
  int timeout_ms;
  int64_t max_bytes;
  int forced_algo;  /* tpc_algo_t, AUTO = choose */
  int p2p_disable, allow_shared_gpu, use_nccl;
  int pdl; /* launch with PDL: TPCOMM_PDL, and 0 when ranks share a GPU or the GPU is older than sm_90 */
  int64_t push_max_bytes, oneshot_max_bytes;
  int num_blocks;
  int64_t qknorm_max_tokens;  /* fused TP QK-norm: tokens per exchange */
  int64_t qknorm_fused_max_tokens; /* auto uses the fused kernel up to this many tokens */
  float* qk_scratch;          /* [qknorm_max_tokens][2] partial sums of the unfused path */
  int nvlink_required; /* -1 = by world size */

  tpc_transport_t transport;
  char transport_reason[256];
  tpc_peer_info_t* peers; /* nranks entries, identical on every rank */
  int sm_count;

  void* nccl; /* ncclComm_t, or NULL */
  char nccl_reason[160];
  struct tpc_arena* arena; /* custom path state, or NULL */

  /* serialization of calls made from several streams (allreduce.c) */
  void* order_event; /* cudaEvent_t */
  void* last_stream;
  unsigned long long last_capture_id;
  int have_last;

  int aborted;
  tpc_status_t async_error;
};

/* Sets the CUDA device of a rank started by a launcher (tpc_comm_init_env, tpc_comm_init_mpi): TPCOMM_DEVICE
 * if set, else local_rank modulo the number of visible GPUs; *device (may be NULL) gets it. fn names the
 * caller in messages. TPC_ERR_NO_DEVICE without a GPU. */
tpc_status_t tpc_select_device(const char* fn, int64_t local_rank, int* device);

/* Validates a handle: TPC_ERR_INVALID_ARGUMENT for NULL, TPC_ERR_INVALID_USAGE for destroyed or foreign. */
tpc_status_t tpc_comm_check(const struct tpc_comm* comm, const char* fn);

/* NCCL path (nccl_path.c) */
tpc_status_t tpc_nccl_init(struct tpc_comm* comm, tpc_bootstrap_t* bs);
tpc_status_t tpc_nccl_all_reduce(struct tpc_comm* comm, const void* sendbuf, void* recvbuf, size_t count,
                                 tpc_dtype_t dtype, cudaStream_t stream);
tpc_status_t tpc_nccl_async_error(struct tpc_comm* comm);
void tpc_nccl_abort(struct tpc_comm* comm);
void tpc_nccl_destroy(struct tpc_comm* comm);

/* The error a custom kernel recorded (timeout, abort), as a status with a message; TPC_SUCCESS if none. */
tpc_status_t tpc_comm_device_error(struct tpc_comm* comm);

/* The algorithm for one call (allreduce.c); TPC_NUM_ALGOS when none can serve it (*why says why). Pure. */
tpc_algo_t tpc_allreduce_choose(const struct tpc_comm* comm, size_t count, tpc_dtype_t dtype, int graph,
                                tpc_algo_t forced, const char** why);

/* A stream's capture state, read once per call (tpc_check_stream) and used by the ordering below. */
typedef struct {
  int capturing;         /* an active capture */
  unsigned long long id; /* its id; 0 when not capturing */
} tpc_capture_t;

/* Shared by the collectives (allreduce.c): placement checks naming fn and the argument, and the ordering
 * of calls made from several streams (one operation in flight per communicator). tpc_check_stream also
 * reads the stream's capture state into *cap (an invalidated capture is TPC_ERR_INVALID_USAGE). */
tpc_status_t tpc_check_device_buffer(struct tpc_comm* comm, const void* p, const char* fn, const char* name);
tpc_status_t tpc_check_stream(struct tpc_comm* comm, cudaStream_t stream, const char* fn, tpc_capture_t* cap);
tpc_status_t tpc_order_before(struct tpc_comm* comm, cudaStream_t stream, const tpc_capture_t* cap);
tpc_status_t tpc_order_after(struct tpc_comm* comm, cudaStream_t stream, const tpc_capture_t* cap);

/* One all-reduce enqueued on stream, nothing checked or ordered: for callers that validated their
 * arguments, set the device and called tpc_order_before themselves (tp_qknorm.c). algo: TPC_ALGO_AUTO or
 * a forced one; graph: the stream is capturing. */
tpc_status_t tpc_all_reduce_enqueue(struct tpc_comm* comm, const void* sendbuf, void* recvbuf, size_t count,
                                    tpc_dtype_t dtype, tpc_algo_t algo, int graph, cudaStream_t stream);

/* element size of a valid dtype */
static inline size_t tpc_dtype_size(tpc_dtype_t d) { return d == TPC_FLOAT32 ? 4 : 2; }

#endif
