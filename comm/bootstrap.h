/* bootstrap.h — how ranks find each other and exchange small fixed-size records before any GPU
 * communication exists.
 *
 * Two transports behind one all-gather:
 *  - socket: the unique id holds a Unix-socket path inside a private 0700 directory and a random 128-bit
 *    secret. Rank 0 listens there; every other rank connects (retrying until the timeout). All-gathers
 *    go through rank 0 as a star. Every record carries magic, version, secret, rank, sequence number and
 *    length, and every one is checked; a missing rank, a dead peer or a silent peer is TPC_ERR_TIMEOUT or
 *    TPC_ERR_BOOTSTRAP, never a hang.
 *  - callback: the caller's all-gather (an inference server's own process group).
 * Internal to the library (tests use it through tests/ with the internal include path). */
#ifndef TPCOMM_BOOTSTRAP_H
#define TPCOMM_BOOTSTRAP_H

#include <stddef.h>
#include <stdint.h>

#include "tpcomm/tpcomm.h"

#define TPC_UID_MAGIC 0x54504355u /* "TPCU" */
#define TPC_UID_VERSION 1u
#define TPC_UID_PATH_MAX 104

/* The layout of tpc_unique_id_t.internal (fits in TPC_UNIQUE_ID_BYTES). */
typedef struct {
  uint32_t magic;
  uint32_t version;
  uint8_t secret[16];
  char path[TPC_UID_PATH_MAX]; /* Unix socket path, NUL-terminated */
} tpc_uid_layout_t;

typedef struct tpc_bootstrap tpc_bootstrap_t;

/* Makes a fresh id: mkdtemp("$TMPDIR/tpcomm-XXXXXX") with mode 0700, path "<dir>/s", secret from
 * getrandom(). */
tpc_status_t tpc_bootstrap_create_id(tpc_unique_id_t* id);

/* Validates an id (magic, version, NUL-terminated path) before use. */
tpc_status_t tpc_bootstrap_check_id(const tpc_unique_id_t* id);

/* Connects the job: rank 0 binds and listens on the id's path, accepts nranks-1 connections each
 * introducing itself with a checked hello record, then removes the socket file and directory; other
 * ranks connect. Everything within timeout_ms, else TPC_ERR_TIMEOUT naming the missing ranks. */
tpc_status_t tpc_bootstrap_init_socket(tpc_bootstrap_t** bs, const tpc_unique_id_t* id, int rank, int nranks,
                                       int timeout_ms);

/* Wraps a caller-supplied all-gather. */
tpc_status_t tpc_bootstrap_init_callback(tpc_bootstrap_t** bs, int rank, int nranks, tpc_allgather_fn fn,
                                         void* user);

/* recv[i*bytes .. (i+1)*bytes) = rank i's send. Collective; every rank passes the same bytes (a mismatch
 * is TPC_ERR_BOOTSTRAP). Bounded by the timeout given at init (socket transport). */
tpc_status_t tpc_bootstrap_allgather(tpc_bootstrap_t* bs, const void* send, void* recv, size_t bytes);

/* An all-gather of nothing: returns when every rank has called it. */
tpc_status_t tpc_bootstrap_barrier(tpc_bootstrap_t* bs);

int tpc_bootstrap_rank(const tpc_bootstrap_t* bs);
int tpc_bootstrap_size(const tpc_bootstrap_t* bs);

/* Closes the sockets. NULL is fine. */
void tpc_bootstrap_destroy(tpc_bootstrap_t* bs);

#endif
