/* allreduce.c — tpc_all_reduce: argument validation, the algorithm choice, ordering of calls made from
 * several streams, and dispatch to the custom kernels (kernels/allreduce.cu), NCCL or a local copy.
 *
 * Choice (tpc_allreduce_choose, pure): world size 1 -> local copy; a forced algorithm (per call, else
 * TPCOMM_ALLREDUCE_ALGO) if it can serve the message; otherwise, on the custom transport, one-shot up to
 * the one-shot limit, two-shot up to TPCOMM_MAX_BYTES, and NCCL above; on the NCCL transport, NCCL.
 * Streams: the protocol allows one operation in flight per communicator, so a call on a stream other
 * than the previous call's first waits for that call (an event), in eager mode and within one capture;
 * the stream's capture state is read once per call (tpc_check_stream) and serves the checks, the choice
 * and the ordering. tpc_all_reduce_enqueue (choice + launch, nothing checked) also serves tp_qknorm.c.
 * Relies on: every rank making the same calls in the same order with the same count and dtype. */
#include <stdint.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "checks.h"
#include "comm.h"
#include "ipc.h"

/* Bytes the custom kernels move for count elements: whole 16-byte vectors. */
static size_t vector_bytes(size_t count, tpc_dtype_t dtype) {
  const size_t per = 16 / tpc_dtype_size(dtype);
  return (count + per - 1) / per * 16;
}

tpc_algo_t tpc_allreduce_choose(const struct tpc_comm* c, size_t count, tpc_dtype_t dtype, int graph, tpc_algo_t forced,
                                const char** why) {
  (void)graph; /* the measured tables agree for eager and graph so far (docs/benchmarks.md) */
  const size_t bytes = vector_bytes(count, dtype);
  const int custom = c->transport == TPC_TRANSPORT_CUSTOM && c->arena != NULL;
  const int fits_push = custom && bytes <= c->arena->args.push_slot_bytes;
  const int fits_pull = custom && bytes <= c->arena->args.pull_bytes;
  *why = NULL;
  if (c->nranks == 1) return TPC_ALGO_LOCAL;
  if (forced == TPC_ALGO_AUTO) forced = (tpc_algo_t)c->forced_algo;
  switch (forced) {
    case TPC_ALGO_ONESHOT:
      if (fits_push) return TPC_ALGO_ONESHOT;
      *why = custom ? "the message exceeds the one-shot slot (TPCOMM_PUSH_MAX_BYTES)" : c->transport_reason;
      return TPC_NUM_ALGOS;
    case TPC_ALGO_TWOSHOT:
      if (fits_pull) return TPC_ALGO_TWOSHOT;
      *why = custom ? "the message exceeds the two-shot buffer (TPCOMM_MAX_BYTES)" : c->transport_reason;
      return TPC_NUM_ALGOS;
    case TPC_ALGO_NCCL:
      if (c->nccl) return TPC_ALGO_NCCL;
      *why = c->nccl_reason[0] ? c->nccl_reason : "no NCCL communicator";
      return TPC_NUM_ALGOS;
    default: break;
  }
  if (fits_push && bytes <= (size_t)c->oneshot_max_bytes) return TPC_ALGO_ONESHOT;
  if (fits_pull) return TPC_ALGO_TWOSHOT;
  if (c->nccl) return TPC_ALGO_NCCL;
  if (fits_push) return TPC_ALGO_ONESHOT;
  *why = custom ? "the message exceeds TPCOMM_MAX_BYTES and there is no NCCL communicator" : c->transport_reason;
  return TPC_NUM_ALGOS;
}

tpc_status_t tpc_comm_allreduce_algo(tpc_comm_t comm, size_t count, tpc_dtype_t dtype, int graph, tpc_algo_t* algo) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_comm_allreduce_algo"));
  if (!algo) return tpc_error(comm, TPC_ERR_INVALID_ARGUMENT, "tpc_comm_allreduce_algo: algo is NULL");
  if ((unsigned)dtype >= TPC_NUM_DTYPES)
    return tpc_error(comm, TPC_ERR_INVALID_ARGUMENT, "tpc_comm_allreduce_algo: dtype=%d is not a tpc_dtype_t (0..%d)",
                     (int)dtype, TPC_NUM_DTYPES - 1);
  const char* why;
  tpc_algo_t a = tpc_allreduce_choose(comm, count, dtype, graph, TPC_ALGO_AUTO, &why);
  if (a == TPC_NUM_ALGOS)
    return tpc_error(comm, TPC_ERR_UNSUPPORTED, "no algorithm can serve %zu elements: %s", count, why);
  *algo = a;
  return TPC_SUCCESS;
}

/* ---- validation --------------------------------------------------------------------------------- */

tpc_status_t tpc_check_device_buffer(struct tpc_comm* c, const void* p, const char* fn, const char* name) {
  struct cudaPointerAttributes attr;
  cudaError_t e = cudaPointerGetAttributes(&attr, p);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: %s=%p is not a CUDA pointer (%s)", fn, name, p,
                     cudaGetErrorString(e));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: %s=%p is %s memory, not device memory", fn, name, p,
                     attr.type == cudaMemoryTypeHost ? "pinned host" : "unregistered host");
  if (attr.device != c->device)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: %s=%p is on device %d but the communicator is on %d", fn, name,
                     p, attr.device, c->device);
  return TPC_SUCCESS;
}

tpc_status_t tpc_check_stream(struct tpc_comm* c, cudaStream_t stream, const char* fn, tpc_capture_t* cap) {
  enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  unsigned long long id = 0;
  cudaError_t e = cudaStreamGetCaptureInfo(stream, &cs, &id, NULL, NULL, NULL, NULL);
  if (e == cudaSuccess && cs == cudaStreamCaptureStatusInvalidated)
    return tpc_error(c, TPC_ERR_INVALID_USAGE, "stream=%p has an invalidated capture", (void*)stream);
  cap->capturing = e == cudaSuccess && cs == cudaStreamCaptureStatusActive;
  cap->id = cap->capturing ? id : 0;
  if (cap->capturing) return TPC_SUCCESS; /* CUDA refuses the device query then */
  int sdev = -1;
  if (e == cudaSuccess) e = cudaStreamGetDevice(stream, &sdev);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: stream=%p is not a valid stream (%s)", fn, (void*)stream,
                     cudaGetErrorString(e));
  }
  if (sdev != c->device)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "%s: stream=%p belongs to device %d but the communicator is on device %d",
                     fn, (void*)stream, sdev, c->device);
  return TPC_SUCCESS;
}

/* Checks that need no CUDA call. */
static tpc_status_t check_args(struct tpc_comm* c, const void* sendbuf, void* recvbuf, size_t count, tpc_dtype_t dtype,
                               tpc_redop_t op, tpc_algo_t algo) {
  if ((unsigned)dtype >= TPC_NUM_DTYPES)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "tpc_all_reduce: dtype=%d is not a tpc_dtype_t (0..%d)", (int)dtype,
                     TPC_NUM_DTYPES - 1);
  if ((unsigned)op >= TPC_NUM_REDOPS)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "tpc_all_reduce: op=%d is not a tpc_redop_t (only TPC_SUM=0)", (int)op);
  if ((unsigned)algo >= TPC_NUM_ALGOS || algo == TPC_ALGO_LOCAL)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT,
                     "tpc_all_reduce: algo=%d is not auto/oneshot/twoshot/nccl (0..3)", (int)algo);
  if (count == 0) return TPC_SUCCESS;
  if (count > SIZE_MAX / 16)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "tpc_all_reduce: count=%zu is too large", count);
  if (!sendbuf) return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "tpc_all_reduce: sendbuf is NULL (count=%zu)", count);
  if (!recvbuf) return tpc_error(c, TPC_ERR_INVALID_ARGUMENT, "tpc_all_reduce: recvbuf is NULL (count=%zu)", count);
  const size_t bytes = count * tpc_dtype_size(dtype);
  const uintptr_t s = (uintptr_t)sendbuf, r = (uintptr_t)recvbuf;
  if (s != r && s < r + bytes && r < s + bytes)
    return tpc_error(c, TPC_ERR_INVALID_ARGUMENT,
                     "tpc_all_reduce: sendbuf=%p and recvbuf=%p overlap without being equal (%zu bytes)", sendbuf,
                     recvbuf, bytes);
  return TPC_SUCCESS;
}

/* Checks that ask CUDA: the buffers are device memory of the communicator's GPU, and so is the stream
 * (whose capture state lands in *cap). */
static tpc_status_t check_placement(struct tpc_comm* c, const void* sendbuf, void* recvbuf, cudaStream_t stream,
                                    tpc_capture_t* cap) {
  TPC_CHECK(tpc_check_device_buffer(c, sendbuf, "tpc_all_reduce", "sendbuf"));
  TPC_CHECK(tpc_check_device_buffer(c, recvbuf, "tpc_all_reduce", "recvbuf"));
  return tpc_check_stream(c, stream, "tpc_all_reduce", cap);
}

/* ---- ordering across streams -------------------------------------------------------------------- */

tpc_status_t tpc_order_before(struct tpc_comm* c, cudaStream_t stream, const tpc_capture_t* cap) {
  /* wait for the previous call only where CUDA allows it: both eager, or both in the same capture */
  if (c->have_last && c->last_stream != (void*)stream && c->last_capture_id == cap->id)
    TPC_CUDA_CHECK_COMM(c, cudaStreamWaitEvent(stream, (cudaEvent_t)c->order_event, 0));
  return TPC_SUCCESS;
}

tpc_status_t tpc_order_after(struct tpc_comm* c, cudaStream_t stream, const tpc_capture_t* cap) {
  TPC_CUDA_CHECK_COMM(c, cudaEventRecord((cudaEvent_t)c->order_event, stream));
  c->have_last = 1;
  c->last_stream = (void*)stream;
  c->last_capture_id = cap->id;
  return TPC_SUCCESS;
}

/* ---- dispatch ----------------------------------------------------------------------------------- */

tpc_status_t tpc_all_reduce_enqueue(struct tpc_comm* c, const void* sendbuf, void* recvbuf, size_t count,
                                    tpc_dtype_t dtype, tpc_algo_t algo, int graph, cudaStream_t stream) {
  const char* why = NULL;
  const tpc_algo_t a = tpc_allreduce_choose(c, count, dtype, graph, algo, &why);
  switch (a) {
    case TPC_ALGO_LOCAL:
      if (sendbuf != recvbuf)
        TPC_CUDA_CHECK_COMM(c, cudaMemcpyAsync(recvbuf, sendbuf, count * tpc_dtype_size(dtype), cudaMemcpyDeviceToDevice,
                                               stream));
      break;
    case TPC_ALGO_ONESHOT:
    case TPC_ALGO_TWOSHOT: {
      const int pdl = c->pdl;
      cudaError_t e = tpc_ar_launch(a == TPC_ALGO_ONESHOT ? 1 : 2, &c->arena->args, sendbuf, recvbuf, count, (int)dtype,
                                    pdl, stream);
      if (e != cudaSuccess)
        return tpc_error(c, TPC_ERR_CUDA, "tpc_all_reduce: %s kernel launch failed: %s", tpc_algo_name(a),
                         cudaGetErrorString(e));
      break;
    }
    case TPC_ALGO_NCCL: TPC_CHECK(tpc_nccl_all_reduce(c, sendbuf, recvbuf, count, dtype, stream)); break;
    default:
      return tpc_error(c, TPC_ERR_UNSUPPORTED, "tpc_all_reduce: %s cannot serve count=%zu (%s)",
                       algo == TPC_ALGO_AUTO ? "no algorithm" : tpc_algo_name(algo), count, why ? why : "?");
  }
  TPC_TRACE(TPC_SUB_COLL, "all_reduce count=%zu dtype=%d algo=%s stream=%p%s", count, (int)dtype, tpc_algo_name(a),
            (void*)stream, graph ? " (capture)" : "");
  return TPC_SUCCESS;
}

tpc_status_t tpc_all_reduce_algo(const void* sendbuf, void* recvbuf, size_t count, tpc_dtype_t dtype, tpc_redop_t op,
                                 tpc_algo_t algo, tpc_comm_t comm, cudaStream_t stream) {
  TPC_CHECK(tpc_comm_check(comm, "tpc_all_reduce"));
  if (comm->aborted) return tpc_error(comm, TPC_ERR_ABORTED, "tpc_all_reduce: the communicator was aborted");
  TPC_CHECK(check_args(comm, sendbuf, recvbuf, count, dtype, op, algo));
  if (count == 0) return TPC_SUCCESS;
  TPC_CHECK(tpc_comm_device_error(comm));
  int prev = -1;
  TPC_CUDA_CHECK_COMM(comm, cudaGetDevice(&prev));
  if (prev != comm->device) TPC_CUDA_CHECK_COMM(comm, cudaSetDevice(comm->device));
  tpc_capture_t cap;
  tpc_status_t st = check_placement(comm, sendbuf, recvbuf, stream, &cap);
  if (st == TPC_SUCCESS) st = tpc_order_before(comm, stream, &cap);
  if (st == TPC_SUCCESS) st = tpc_all_reduce_enqueue(comm, sendbuf, recvbuf, count, dtype, algo, cap.capturing, stream);
  if (st == TPC_SUCCESS) st = tpc_order_after(comm, stream, &cap);
  if (prev != comm->device) cudaSetDevice(prev);
  return st;
}

tpc_status_t tpc_all_reduce(const void* sendbuf, void* recvbuf, size_t count, tpc_dtype_t dtype, tpc_redop_t op,
                            tpc_comm_t comm, cudaStream_t stream) {
  return tpc_all_reduce_algo(sendbuf, recvbuf, count, dtype, op, TPC_ALGO_AUTO, comm, stream);
}
