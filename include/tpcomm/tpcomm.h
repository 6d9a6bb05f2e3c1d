/* tpcomm.h — the public C API of tpcomm, a tensor-parallel communication runtime for one NVLink host.
 *
 * Shaped like NCCL's: an opaque communicator, a status enum with tpc_status_string(), a per-communicator
 * last-error message, a versioned config struct set by TPC_CONFIG_INITIALIZER, and stream-ordered calls
 * that return once their work is enqueued. Plain C11, usable from C and C++.
 *
 * Typical use (one process per GPU):
 *   rank 0: tpc_get_unique_id(&id); share id with every rank (any channel);
 *   all:    cudaSetDevice(dev); tpc_comm_init_rank(&comm, nranks, id, rank, NULL);
 *           tpc_all_reduce(buf, buf, count, TPC_BFLOAT16, TPC_SUM, comm, stream);
 *           tpc_comm_destroy(comm);
 * Processes started by tpcomm-run can call tpc_comm_init_env(); an inference server that already has a
 * process group passes its own all-gather to tpc_comm_init_allgather(). See docs/api.md. */
#ifndef TPCOMM_TPCOMM_H
#define TPCOMM_TPCOMM_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h> /* cudaStream_t */

#ifdef __cplusplus
extern "C" {
#endif

#define TPC_VERSION_MAJOR 0
#define TPC_VERSION_MINOR 1
#define TPC_VERSION_PATCH 0
#define TPC_VERSION_CODE (TPC_VERSION_MAJOR * 10000 + TPC_VERSION_MINOR * 100 + TPC_VERSION_PATCH)

struct tpc_comm;

/* Status of every call. TPC_SUCCESS is 0; everything else is an error, described in more detail by
 * tpc_get_last_error(). */
typedef enum {
  TPC_SUCCESS = 0,
  TPC_ERR_INVALID_ARGUMENT = 1, /* an argument is null, out of range or inconsistent */
  TPC_ERR_INVALID_USAGE = 2,    /* a call in the wrong state: destroyed communicator, wrong device... */
  TPC_ERR_CUDA = 3,             /* a CUDA runtime call failed */
  TPC_ERR_NCCL = 4,             /* an NCCL call failed */
  TPC_ERR_SYSTEM = 5,           /* an operating-system call failed (socket, fork, file...) */
  TPC_ERR_TIMEOUT = 6,          /* a peer did not arrive or answer within TPCOMM_TIMEOUT_MS */
  TPC_ERR_UNSUPPORTED = 7,      /* a valid request this build or machine cannot serve */
  TPC_ERR_INTERNAL = 8,         /* a bug in tpcomm */
  TPC_ERR_NO_DEVICE = 9,        /* no usable CUDA GPU */
  TPC_ERR_BOOTSTRAP = 10,       /* a malformed, truncated or unauthenticated bootstrap message */
  TPC_ERR_ABORTED = 11,         /* the communicator was aborted */
  TPC_NUM_STATUS = 12
} tpc_status_t;

/* A short, static description of a status ("invalid argument", ...). Never NULL. */
const char* tpc_status_string(tpc_status_t status);

/* The message of the last failed call: on comm if comm is not NULL and valid, otherwise the last failure
 * of any tpcomm call in this thread. The message names the argument and value ("count=..."). Never NULL;
 * valid until the next tpcomm call in this thread. */
typedef struct tpc_comm* tpc_comm_t;
const char* tpc_get_last_error(const struct tpc_comm* comm);

typedef enum { TPC_BFLOAT16 = 0, TPC_FLOAT16 = 1, TPC_FLOAT32 = 2, TPC_NUM_DTYPES = 3 } tpc_dtype_t;
typedef enum { TPC_SUM = 0, TPC_NUM_REDOPS = 1 } tpc_redop_t;

/* All-reduce algorithms. AUTO chooses by world size, bytes and graph capture (docs/architecture.md). */
typedef enum {
  TPC_ALGO_AUTO = 0,
  TPC_ALGO_ONESHOT = 1, /* one-shot push: every rank writes its input to every peer, reduces locally */
  TPC_ALGO_TWOSHOT = 2, /* two-shot pull: reduce-scatter + all-gather in one kernel */
  TPC_ALGO_NCCL = 3,    /* ncclAllReduce */
  TPC_ALGO_LOCAL = 4,   /* world size 1: a copy */
  TPC_NUM_ALGOS = 5
} tpc_algo_t;
const char* tpc_algo_name(tpc_algo_t algo);

typedef enum {
  TPC_TRANSPORT_LOCAL = 0,  /* world size 1 */
  TPC_TRANSPORT_CUSTOM = 1, /* our IPC kernels (NCCL still serves what they cannot) */
  TPC_TRANSPORT_NCCL = 2    /* everything through NCCL */
} tpc_transport_t;

/* The unique id: rendezvous address and a random 128-bit job secret. Made once by one process and given
 * to every rank. It is a secret: whoever holds it can join the job. */
#define TPC_UNIQUE_ID_BYTES 128
typedef struct {
  char internal[TPC_UNIQUE_ID_BYTES];
} tpc_unique_id_t;

/* Creates a rendezvous (a Unix socket path in a fresh 0700 directory) and a random secret. */
tpc_status_t tpc_get_unique_id(tpc_unique_id_t* id);
/* Text form for environment variables and command lines: 2*TPC_UNIQUE_ID_BYTES hex digits + NUL. */
#define TPC_UNIQUE_ID_STRLEN (2 * TPC_UNIQUE_ID_BYTES + 1)
tpc_status_t tpc_unique_id_to_string(const tpc_unique_id_t* id, char* buf, size_t buflen);
tpc_status_t tpc_unique_id_from_string(const char* str, tpc_unique_id_t* id);

/* Config: fields left at TPC_CONFIG_UNDEF take the environment variable, else the default
 * (docs/env.md). Fields are only ever added at the end; size/magic/version let old callers keep
 * working. Always start from TPC_CONFIG_INITIALIZER. */
#define TPC_CONFIG_UNDEF (-1)
#define TPC_CONFIG_MAGIC 0x74706331u /* "tpc1" */
typedef struct {
  size_t size;
  unsigned int magic;
  unsigned int version;
  int timeout_ms;         /* peer timeout, bootstrap and device waits (TPCOMM_TIMEOUT_MS) */
  long long max_bytes;    /* largest message for the custom kernels (TPCOMM_MAX_BYTES) */
  int allreduce_algo;     /* a tpc_algo_t that every call uses (TPCOMM_ALLREDUCE_ALGO) */
  int p2p_disable;        /* 1: never use the custom kernels (TPCOMM_P2P_DISABLE) */
  int allow_shared_gpu;   /* 1: allow several ranks per GPU, for tests (TPCOMM_ALLOW_SHARED_GPU) */
  int nccl;               /* 0: never create an NCCL communicator (TPCOMM_NCCL) */
} tpc_config_t;
#define TPC_CONFIG_INITIALIZER                                                                          \
  {                                                                                                     \
    sizeof(tpc_config_t), TPC_CONFIG_MAGIC, TPC_VERSION_CODE, TPC_CONFIG_UNDEF, TPC_CONFIG_UNDEF,      \
        TPC_CONFIG_UNDEF, TPC_CONFIG_UNDEF, TPC_CONFIG_UNDEF, TPC_CONFIG_UNDEF                          \
  }

/* Creates the communicator of this rank on the current CUDA device. Collective: every rank of the job
 * calls it with the same nranks and id. config may be NULL. A rank that does not arrive within
 * TPCOMM_TIMEOUT_MS makes every other rank return TPC_ERR_TIMEOUT. */
tpc_status_t tpc_comm_init_rank(tpc_comm_t* comm, int nranks, tpc_unique_id_t id, int rank,
                                const tpc_config_t* config);

/* A caller-supplied all-gather: recvbuf receives nranks blocks of `bytes`, block i from rank i; sendbuf
 * holds this rank's block. Returns 0 on success. Only used during tpc_comm_init_allgather. */
typedef int (*tpc_allgather_fn)(const void* sendbuf, void* recvbuf, size_t bytes, void* user);
tpc_status_t tpc_comm_init_allgather(tpc_comm_t* comm, int nranks, int rank, tpc_allgather_fn allgather,
                                     void* user, const tpc_config_t* config);

/* From the environment set by tpcomm-run: TPCOMM_RANK, TPCOMM_WORLD_SIZE, TPCOMM_LOCAL_RANK,
 * TPCOMM_UNIQUE_ID; selects the device TPCOMM_DEVICE (else local rank modulo the device count).
 * Under mpirun use tpc_comm_init_mpi() from tpcomm_mpi.h. */
tpc_status_t tpc_comm_init_env(tpc_comm_t* comm, const tpc_config_t* config);

/* Frees everything. Waits for this rank's enqueued work. The handle stays invalid afterwards: any later
 * call with it returns TPC_ERR_INVALID_USAGE. */
tpc_status_t tpc_comm_destroy(tpc_comm_t comm);
/* Stops device-side waits of this communicator (they return at their next poll) and aborts NCCL. The
 * communicator is unusable afterwards except for tpc_comm_destroy. */
tpc_status_t tpc_comm_abort(tpc_comm_t comm);
/* TPC_SUCCESS, or the error a kernel or NCCL reported asynchronously (e.g. TPC_ERR_TIMEOUT when a peer
 * never arrived; tpc_get_last_error(comm) then names the peer and block). */
tpc_status_t tpc_comm_get_async_error(tpc_comm_t comm, tpc_status_t* async_error);

tpc_status_t tpc_comm_rank(tpc_comm_t comm, int* rank);
tpc_status_t tpc_comm_size(tpc_comm_t comm, int* size);
tpc_status_t tpc_comm_device(tpc_comm_t comm, int* device);
/* The transport chosen at init and why ("custom: all 8 peers NVLink", "nccl: peer 3 has no P2P access").
 * reason may be NULL; it stays valid while comm lives. */
tpc_status_t tpc_comm_transport(tpc_comm_t comm, tpc_transport_t* transport, const char** reason);
/* The algorithm tpc_all_reduce would use for this message, eagerly (graph=0) or in capture (graph=1). */
/* The ncclComm_t this communicator created (NULL when it has none), for callers that want NCCL's other
 * collectives on the same ranks. Owned by comm: do not destroy it. */
tpc_status_t tpc_comm_nccl(tpc_comm_t comm, void** nccl_comm);
tpc_status_t tpc_comm_allreduce_algo(tpc_comm_t comm, size_t count, tpc_dtype_t dtype, int graph,
                                     tpc_algo_t* algo);

/* Sum of sendbuf over all ranks into recvbuf, count elements of dtype. In place when
 * sendbuf == recvbuf. count 0 is a no-op. Buffers may be any device memory of this rank's GPU (cudaMalloc,
 * VMM, offsets into a large allocation); no registration needed. Safe to capture in CUDA graphs.
 * Stream-ordered: returns once enqueued. Every rank calls with the same count and dtype, in the same
 * order relative to the communicator's other calls. */
tpc_status_t tpc_all_reduce(const void* sendbuf, void* recvbuf, size_t count, tpc_dtype_t dtype,
                            tpc_redop_t op, tpc_comm_t comm, cudaStream_t stream);
/* The same with the algorithm pinned for this call (TPC_ALGO_AUTO = choose). All ranks pass the same. */
tpc_status_t tpc_all_reduce_algo(const void* sendbuf, void* recvbuf, size_t count, tpc_dtype_t dtype,
                                 tpc_redop_t op, tpc_algo_t algo, tpc_comm_t comm, cudaStream_t stream);

/* Tensor-parallel QK-RMSNorm, in place on this rank's shards. Models such as MiniMax-M2 normalize q and k
 * over ALL heads while tensor parallelism splits the heads across ranks. Per token t:
 *   q[t] = q[t] * rsqrt(sum over all ranks of q[t]^2 / (q_dim_local * world) + eps) * q_weight
 * and the same for k (eps added to the mean), fp32 accumulation, every rank using identical statistics.
 * q: [num_tokens] rows of q_stride elements, the first q_dim_local of each row normalized; same for k.
 * Weights are this rank's shards (q_dim_local, k_dim_local elements). dtype: TPC_BFLOAT16 or TPC_FLOAT16.
 * Dims and strides must be multiples of 8 elements and q, k, weights 16-byte aligned (16-byte vectors);
 * q_dim_local + k_dim_local <= 32768. Collective: every rank calls with the same num_tokens and dims.
 * Safe in CUDA graphs; num_tokens 0 is a no-op. */
typedef enum {
  TPC_QKNORM_AUTO = 0,         /* fused where the custom transport allows it and it is faster */
  TPC_QKNORM_FUSED = 1,        /* one kernel: partial sums exchanged through the IPC buffers (world size 1: the
                                  across-heads norm, nothing to exchange, any num_tokens) */
  TPC_QKNORM_UNFUSED = 2,      /* partial-sum kernel, tpc_all_reduce (auto) of [tokens][2] floats, apply kernel */
  TPC_QKNORM_UNFUSED_NCCL = 3, /* the same with ncclAllReduce */
  TPC_NUM_QKNORM_PATHS = 4
} tpc_qknorm_path_t;
tpc_status_t tpc_tp_qk_rmsnorm(tpc_comm_t comm, void* q, void* k, const void* q_weight, const void* k_weight,
                               int64_t num_tokens, int64_t q_dim_local, int64_t k_dim_local, int64_t q_stride,
                               int64_t k_stride, float eps, tpc_dtype_t dtype, cudaStream_t stream);
/* The same with the path pinned (TPC_ERR_UNSUPPORTED when it cannot serve the call). */
tpc_status_t tpc_tp_qk_rmsnorm_path(tpc_comm_t comm, void* q, void* k, const void* q_weight, const void* k_weight,
                                    int64_t num_tokens, int64_t q_dim_local, int64_t k_dim_local, int64_t q_stride,
                                    int64_t k_stride, float eps, tpc_dtype_t dtype, tpc_qknorm_path_t path,
                                    cudaStream_t stream);

/* The path tpc_tp_qk_rmsnorm takes for num_tokens, eagerly (graph=0) or in a capture (graph=1). */
tpc_status_t tpc_tp_qk_rmsnorm_choice(tpc_comm_t comm, int64_t num_tokens, int graph, tpc_qknorm_path_t* path);

/* NUMA binding (what tpcomm-run --bind numa does; for ranks started by mpirun or a server).
 * tpc_gpu_numa_node: the NUMA node of CUDA device `device` from sysfs (-1 when the machine has none).
 * tpc_bind_numa_node: binds this process's CPUs and memory to node. tpc_bind_to_gpu does both. */
tpc_status_t tpc_gpu_numa_node(int device, int* node);
tpc_status_t tpc_bind_numa_node(int node);
tpc_status_t tpc_bind_to_gpu(int device);

#ifdef __cplusplus
}
#endif
#endif /* TPCOMM_TPCOMM_H */
