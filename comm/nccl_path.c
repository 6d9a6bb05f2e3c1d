/* nccl_path.c — the NCCL fallback: an NCCL communicator over the same ranks, made from an NCCL unique id
 * that rank 0 shares through tpcomm's bootstrap, and a 1:1 forward of tpc_all_reduce to ncclAllReduce.
 * Relies on: one GPU per rank (NCCL refuses two ranks on one device; comm.c skips NCCL then). */
#include <stdlib.h>
#include <string.h>

#include <nccl.h>

#include "checks.h"
#include "comm.h"

static tpc_status_t nccl_error(struct tpc_comm* comm, ncclResult_t r, const char* call) {
  const char* last = comm->nccl ? ncclGetLastError((ncclComm_t)comm->nccl) : ncclGetLastError(NULL);
  return tpc_error(comm, TPC_ERR_NCCL, "%s failed: %s%s%s", call, ncclGetErrorString(r), last && *last ? ": " : "",
                   last ? last : "");
}

tpc_status_t tpc_nccl_init(struct tpc_comm* comm, tpc_bootstrap_t* bs) {
  ncclUniqueId mine;
  memset(&mine, 0, sizeof mine);
  ncclResult_t r = ncclSuccess;
  int ok = 1;
  if (comm->rank == 0) {
    r = ncclGetUniqueId(&mine);
    ok = r == ncclSuccess;
  }
  struct {
    int32_t ok;
    ncclUniqueId id;
  } rec = {ok, mine}, *recs = calloc((size_t)comm->nranks, sizeof rec);
  if (!recs) return tpc_error(comm, TPC_ERR_SYSTEM, "out of host memory");
  tpc_status_t st = tpc_bootstrap_allgather(bs, &rec, recs, sizeof rec);
  if (st != TPC_SUCCESS) {
    free(recs);
    return st;
  }
  if (!recs[0].ok) {
    free(recs);
    return comm->rank == 0 ? nccl_error(comm, r, "ncclGetUniqueId")
                           : tpc_error(comm, TPC_ERR_NCCL, "rank 0 could not make an NCCL unique id");
  }
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 1;
  ncclComm_t nc = NULL;
  r = ncclCommInitRankConfig(&nc, comm->nranks, recs[0].id, comm->rank, &cfg);
  free(recs);
  if (r != ncclSuccess) return nccl_error(comm, r, "ncclCommInitRankConfig");
  comm->nccl = nc;
  int v = 0;
  ncclGetVersion(&v);
  TPC_INFO(TPC_SUB_INIT, "NCCL %d communicator ready", v);
  return TPC_SUCCESS;
}

static ncclDataType_t nccl_dtype(tpc_dtype_t d) {
  return d == TPC_BFLOAT16 ? ncclBfloat16 : d == TPC_FLOAT16 ? ncclFloat16 : ncclFloat32;
}

tpc_status_t tpc_nccl_all_reduce(struct tpc_comm* comm, const void* sendbuf, void* recvbuf, size_t count,
                                 tpc_dtype_t dtype, cudaStream_t stream) {
  ncclResult_t r = ncclAllReduce(sendbuf, recvbuf, count, nccl_dtype(dtype), ncclSum, (ncclComm_t)comm->nccl, stream);
  if (r != ncclSuccess) return nccl_error(comm, r, "ncclAllReduce");
  return TPC_SUCCESS;
}

tpc_status_t tpc_nccl_async_error(struct tpc_comm* comm) {
  if (!comm->nccl) return TPC_SUCCESS;
  ncclResult_t async = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError((ncclComm_t)comm->nccl, &async);
  if (r != ncclSuccess) return nccl_error(comm, r, "ncclCommGetAsyncError");
  if (async != ncclSuccess && async != ncclInProgress) return nccl_error(comm, async, "NCCL (asynchronous)");
  return TPC_SUCCESS;
}

void tpc_nccl_abort(struct tpc_comm* comm) {
  if (comm->nccl) ncclCommAbort((ncclComm_t)comm->nccl);
  comm->nccl = NULL;
}

void tpc_nccl_destroy(struct tpc_comm* comm) {
  if (comm->nccl) {
    ncclCommFinalize((ncclComm_t)comm->nccl);
    ncclCommDestroy((ncclComm_t)comm->nccl);
  }
  comm->nccl = NULL;
}
