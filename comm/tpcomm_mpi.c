/* tpcomm_mpi.c — bootstrap under mpirun (tpcomm_mpi.h), built into libtpcomm_mpi so that libtpcomm itself
 * never links MPI.
 *
 * Relies on: an initialised MPI (checked, never initialised here) and the caller's communicator for
 * MPI_Bcast / MPI_Allreduce / MPI_Comm_split_type; Open MPI's OMPI_COMM_WORLD_LOCAL_RANK when the
 * communicator is MPI_COMM_WORLD; libtpcomm for the unique id (tpc_get_unique_id), the device
 * (tpc_select_device in comm.c, shared with tpc_comm_init_env: TPCOMM_DEVICE, else the local rank) and
 * tpc_comm_init_rank.
 *
 * These calls are collective, and a rank that fails on its own (bad argument, no GPU, rank 0 unable to
 * make the id) never leaves the others blocked in MPI: every rank still takes part in the same MPI calls,
 * and failures are agreed on (a status broadcast by rank 0, an MPI_MAX all-reduce of local statuses)
 * before anything that would wait on a missing rank. MPI return codes are checked (they only come back
 * when the communicator's error handler is MPI_ERRORS_RETURN; the default aborts the job); an MPI failure
 * is TPC_ERR_SYSTEM with MPI's error string. */
#include "tpcomm/tpcomm_mpi.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#include "bootstrap.h"
#include "checks.h"
#include "comm.h"
#include "debug.h"

static tpc_status_t mpi_failed(const char* fn, const char* call, int rc) {
  char s[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error code %d", rc);
  return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: %s failed: %s", fn, call, s);
}

#define MPI_TRY(fn, call)                                 \
  do {                                                    \
    int tpc_mpi_rc_ = (call);                             \
    if (tpc_mpi_rc_ != MPI_SUCCESS)                       \
      return mpi_failed((fn), #call, tpc_mpi_rc_);        \
  } while (0)

static tpc_status_t check_mpi(const char* fn, MPI_Comm comm) {
  int init = 0, fin = 0;
  MPI_TRY(fn, MPI_Initialized(&init));
  MPI_TRY(fn, MPI_Finalized(&fin));
  if (!init || fin)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE, "%s: MPI is %s", fn,
                     fin ? "already finalized" : "not initialized (call MPI_Init first)");
  if (comm == MPI_COMM_NULL) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: mpi_comm is MPI_COMM_NULL", fn);
  return TPC_SUCCESS;
}

tpc_status_t tpc_mpi_get_unique_id(MPI_Comm mpi_comm, tpc_unique_id_t* id) {
  static const char fn[] = "tpc_mpi_get_unique_id";
  TPC_CHECK(check_mpi(fn, mpi_comm));
  int rank = -1;
  MPI_TRY(fn, MPI_Comm_rank(mpi_comm, &rank));

  /* status first, so that the other ranks learn about a failure of rank 0 instead of using garbage */
  struct {
    int32_t status;
    char id[TPC_UNIQUE_ID_BYTES];
  } msg;
  memset(&msg, 0, sizeof msg);
  if (rank == 0) {
    tpc_unique_id_t made;
    tpc_status_t st = id ? tpc_get_unique_id(&made)
                         : tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: id is NULL on rank 0", fn);
    msg.status = (int32_t)st;
    if (st == TPC_SUCCESS) memcpy(msg.id, made.internal, sizeof msg.id);
  }
  MPI_TRY(fn, MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, 0, mpi_comm));
  if (msg.status != TPC_SUCCESS) {
    if (rank == 0) return (tpc_status_t)msg.status; /* already reported */
    tpc_status_t st = (msg.status > 0 && msg.status < TPC_NUM_STATUS) ? (tpc_status_t)msg.status : TPC_ERR_INTERNAL;
    return tpc_error(NULL, st, "%s: rank 0 of the MPI communicator could not create the unique id (%s); see its log",
                     fn, tpc_status_string(st));
  }
  if (!id) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: id is NULL on rank %d", fn, rank);
  tpc_unique_id_t got;
  memcpy(got.internal, msg.id, sizeof got.internal);
  TPC_CHECK(tpc_bootstrap_check_id(&got));
  *id = got;
  TPC_INFO(TPC_SUB_BOOT, "%s: MPI rank %d has the unique id", fn, rank);
  return TPC_SUCCESS;
}

tpc_status_t tpc_mpi_local_rank(MPI_Comm mpi_comm, int* local_rank) {
  static const char fn[] = "tpc_mpi_local_rank";
  TPC_CHECK(check_mpi(fn, mpi_comm));
  int cmp = MPI_UNEQUAL, rank = -1, local = -1;
  MPI_TRY(fn, MPI_Comm_compare(mpi_comm, MPI_COMM_WORLD, &cmp));
  MPI_TRY(fn, MPI_Comm_rank(mpi_comm, &rank));
  const char* env = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  if (cmp == MPI_IDENT && env && *env) {
    /* the same on every rank of one mpirun: no rank takes the (collective) split path alone */
    char* end = NULL;
    errno = 0;
    long v = strtol(env, &end, 10);
    if (errno || end == env || *end || v < 0 || v > INT_MAX)
      return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                       "%s: OMPI_COMM_WORLD_LOCAL_RANK='%s' is not a non-negative integer", fn, env);
    local = (int)v;
    TPC_INFO(TPC_SUB_BOOT, "%s: rank %d has local rank %d (OMPI_COMM_WORLD_LOCAL_RANK)", fn, rank, local);
  } else {
    MPI_Comm node = MPI_COMM_NULL;
    MPI_TRY(fn, MPI_Comm_split_type(mpi_comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
    int rc = MPI_Comm_rank(node, &local);
    int rc2 = MPI_Comm_free(&node);
    if (rc != MPI_SUCCESS) return mpi_failed(fn, "MPI_Comm_rank(node communicator)", rc);
    if (rc2 != MPI_SUCCESS) return mpi_failed(fn, "MPI_Comm_free(node communicator)", rc2);
    TPC_INFO(TPC_SUB_BOOT, "%s: rank %d has local rank %d (MPI_COMM_TYPE_SHARED split)", fn, rank, local);
  }
  if (!local_rank) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: local_rank is NULL", fn);
  *local_rank = local;
  return TPC_SUCCESS;
}

tpc_status_t tpc_comm_init_mpi(tpc_comm_t* comm, MPI_Comm mpi_comm, const tpc_config_t* config) {
  static const char fn[] = "tpc_comm_init_mpi";
  TPC_CHECK(check_mpi(fn, mpi_comm));
  int rank = -1, size = 0;
  MPI_TRY(fn, MPI_Comm_rank(mpi_comm, &rank));
  MPI_TRY(fn, MPI_Comm_size(mpi_comm, &size));

  /* local work: every rank goes through the same MPI calls whatever fails */
  tpc_status_t st = TPC_SUCCESS;
  if (!comm) st = tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: comm is NULL on rank %d", fn, rank);
  else *comm = NULL;
  int local = -1, device = -1;
  tpc_status_t lst = tpc_mpi_local_rank(mpi_comm, &local); /* collective on the split path */
  if (st == TPC_SUCCESS) st = lst;
  if (st == TPC_SUCCESS) st = tpc_select_device(fn, local, &device);

  int mine = (int)st, worst = 0;
  MPI_TRY(fn, MPI_Allreduce(&mine, &worst, 1, MPI_INT, MPI_MAX, mpi_comm));
  if (worst != TPC_SUCCESS) {
    if (st != TPC_SUCCESS) return st;
    tpc_status_t w = (worst > 0 && worst < TPC_NUM_STATUS) ? (tpc_status_t)worst : TPC_ERR_INTERNAL;
    return tpc_error(NULL, w, "%s: another rank of the MPI communicator failed before the bootstrap (%s); see its log",
                     fn, tpc_status_string(w));
  }

  tpc_unique_id_t id;
  TPC_CHECK(tpc_mpi_get_unique_id(mpi_comm, &id));
  TPC_INFO(TPC_SUB_INIT, "%s: MPI rank %d of %d, local rank %d, device %d", fn, rank, size, local, device);
  return tpc_comm_init_rank(comm, size, id, rank, config);
}
