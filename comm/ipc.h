/* ipc.h — the IPC arena of a communicator: allocated by each rank, exported with legacy CUDA IPC
 * handles (cudaIpcGetMemHandle; docs/architecture.md says why not VMM), exchanged through the bootstrap,
 * opened by every peer and checked by reading back its header (the real IPC trial of the probe). */
#ifndef TPCOMM_IPC_H
#define TPCOMM_IPC_H

#include "allreduce.h"
#include "bootstrap.h"
#include "comm.h"

struct tpc_arena {
  char* base;        /* this rank's arena */
  size_t bytes;
  char* peer_base[TPC_AR_MAX_RANKS];
  int opened[TPC_AR_MAX_RANKS];
  tpc_ar_local_t* local;       /* device, not shared */
  tpc_ar_status_t* host_status; /* mapped pinned host memory */
  tpc_ar_args_t args;           /* what every kernel launch gets */
};

/* Collective. Allocates and exchanges the arena and fills ipc_row[j] (tpc_tri_t) with the outcome of
 * opening rank j's arena. On local failure the row says NO for every peer (so every rank falls back
 * together) and *arena stays NULL; only bootstrap failures are returned as errors. */
tpc_status_t tpc_arena_create(struct tpc_comm* comm, tpc_bootstrap_t* bs, struct tpc_arena** arena, uint8_t* ipc_row);
void tpc_arena_destroy(struct tpc_arena* arena);

#endif
