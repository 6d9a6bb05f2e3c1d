/* comm.c — communicator lifecycle (placeholder while the foundation is built). */
#include "comm.h"

#include <stdio.h>

char* tpc_comm_error_buffer(struct tpc_comm* comm, size_t* len) {
  if (!comm || comm->magic != TPC_COMM_MAGIC) return NULL;
  *len = sizeof comm->last_error;
  return comm->last_error;
}

const char* tpc_get_last_error(const struct tpc_comm* comm) {
  if (comm && comm->magic == TPC_COMM_MAGIC) return comm->last_error;
  return tpc_thread_last_error();
}
