/* stubs_tmp.c — TEMPORARY: lets tpcomm-bench link while libtpcomm / libtpcomm_mpi are still being written.
 * DELETE THIS FILE once the library exports these functions.
 *
 * Each stub first looks for the real function in the libraries loaded after the executable
 * (dlsym(RTLD_NEXT)) and forwards to it, so keeping this file by mistake does not hide the real library.
 * Only when the library lacks the function does the stub print one warning and return
 * TPC_ERR_UNSUPPORTED. Relies on glibc >= 2.34 (dlsym in libc, no -ldl needed). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "tpcomm/tpcomm.h"
#if TPC_HAVE_MPI
#include "tpcomm/tpcomm_mpi.h"
#endif

/* The real function of that name in a later-loaded library, or NULL. */
static void* stub_lookup(const char* name) { return dlsym(RTLD_NEXT, name); }

static void stub_warn(const char* name) {
  fprintf(stderr, "tpcomm-bench: TEMPORARY STUB %s called (bench/stubs_tmp.c): the library does not export it yet\n",
          name);
}

#define TPC_STUB(name, params, args)                      \
  tpc_status_t name params {                              \
    typedef tpc_status_t(*real_fn_t) params;              \
    void* sym = stub_lookup(#name);                       \
    if (sym) {                                            \
      real_fn_t real;                                     \
      memcpy(&real, &sym, sizeof real);                   \
      return real args;                                   \
    }                                                     \
    stub_warn(#name);                                     \
    return TPC_ERR_UNSUPPORTED;                           \
  }

TPC_STUB(tpc_get_unique_id, (tpc_unique_id_t * id), (id))
TPC_STUB(tpc_comm_init_rank, (tpc_comm_t * comm, int nranks, tpc_unique_id_t id, int rank, const tpc_config_t* config),
         (comm, nranks, id, rank, config))
TPC_STUB(tpc_comm_init_env, (tpc_comm_t * comm, const tpc_config_t* config), (comm, config))
TPC_STUB(tpc_comm_destroy, (tpc_comm_t comm), (comm))
TPC_STUB(tpc_comm_abort, (tpc_comm_t comm), (comm))
TPC_STUB(tpc_comm_rank, (tpc_comm_t comm, int* rank), (comm, rank))
TPC_STUB(tpc_comm_size, (tpc_comm_t comm, int* size), (comm, size))
TPC_STUB(tpc_comm_device, (tpc_comm_t comm, int* device), (comm, device))
TPC_STUB(tpc_comm_transport, (tpc_comm_t comm, tpc_transport_t* transport, const char** reason),
         (comm, transport, reason))
TPC_STUB(tpc_comm_nccl, (tpc_comm_t comm, void** nccl_comm), (comm, nccl_comm))
TPC_STUB(tpc_comm_allreduce_algo, (tpc_comm_t comm, size_t count, tpc_dtype_t dtype, int graph, tpc_algo_t* algo),
         (comm, count, dtype, graph, algo))
TPC_STUB(tpc_all_reduce,
         (const void* sendbuf, void* recvbuf, size_t count, tpc_dtype_t dtype, tpc_redop_t op, tpc_comm_t comm,
          cudaStream_t stream),
         (sendbuf, recvbuf, count, dtype, op, comm, stream))
TPC_STUB(tpc_all_reduce_algo,
         (const void* sendbuf, void* recvbuf, size_t count, tpc_dtype_t dtype, tpc_redop_t op, tpc_algo_t algo,
          tpc_comm_t comm, cudaStream_t stream),
         (sendbuf, recvbuf, count, dtype, op, algo, comm, stream))
#if TPC_HAVE_MPI
TPC_STUB(tpc_comm_init_mpi, (tpc_comm_t * comm, MPI_Comm mpi_comm, const tpc_config_t* config),
         (comm, mpi_comm, config))
#endif
