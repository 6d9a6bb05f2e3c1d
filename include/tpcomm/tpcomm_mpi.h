/* tpcomm_mpi.h — bootstrap under mpirun (Open MPI), in the separate library libtpcomm_mpi so that
 * libtpcomm itself never links MPI. Link with -ltpcomm_mpi -ltpcomm and your MPI. */
#ifndef TPCOMM_TPCOMM_MPI_H
#define TPCOMM_TPCOMM_MPI_H

#include <mpi.h>

#include "tpcomm/tpcomm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rank 0 of mpi_comm makes a unique id and MPI_Bcast()s it; every rank gets it. Collective. */
tpc_status_t tpc_mpi_get_unique_id(MPI_Comm mpi_comm, tpc_unique_id_t* id);

/* The local rank of this process among the ranks of mpi_comm on its host (from Open MPI's
 * OMPI_COMM_WORLD_LOCAL_RANK when mpi_comm is MPI_COMM_WORLD, else by splitting on the host). */
tpc_status_t tpc_mpi_local_rank(MPI_Comm mpi_comm, int* local_rank);

/* A communicator over the ranks of mpi_comm: selects the device TPCOMM_DEVICE (else local rank modulo the
 * device count), makes and broadcasts the unique id, and calls tpc_comm_init_rank. Collective. */
tpc_status_t tpc_comm_init_mpi(tpc_comm_t* comm, MPI_Comm mpi_comm, const tpc_config_t* config);

#ifdef __cplusplus
}
#endif
#endif
