/* topo.h — what each rank learns about its peers, and the pure decision that turns the probed
 * per-pair matrices into a transport (custom IPC kernels, NCCL, or local) with a reason.
 *
 * The probe (topo.c) fills the matrices: same host (host hash), same device (bus id), P2P access
 * (cudaDeviceCanAccessPeer), NVLink (NVML, loaded at run time: nvml.c) and a real CUDA IPC trial. Each
 * rank fills its own row; rows are all-gathered so every rank decides on identical data and the
 * decision is the same everywhere. tpc_topo_decide() has no side effects and is unit-tested on the CPU
 * with synthetic matrices. */
#ifndef TPCOMM_TOPO_H
#define TPCOMM_TOPO_H

#include <stdint.h>

#include "tpcomm/tpcomm.h"

#define TPC_MAX_CUSTOM_RANKS 8

typedef struct {
  uint64_t host_hash; /* hostname + boot id */
  char hostname[64];
  int32_t pid;
  int32_t device;     /* CUDA ordinal in that process */
  char bus_id[32];    /* "0000:18:00.0" */
  int32_t numa_node;
  int32_t cc_major, cc_minor;
  int32_t sm_count;
  int32_t pad;
} tpc_peer_info_t;

typedef enum { TPC_TRI_UNKNOWN = 0, TPC_TRI_NO = 1, TPC_TRI_YES = 2 } tpc_tri_t;

typedef struct {
  int nranks;
  const tpc_peer_info_t* peers; /* nranks entries */
  /* [i * nranks + j]: as seen from rank i towards rank j (diagonal ignored) */
  const uint8_t* p2p;    /* tpc_tri_t: cudaDeviceCanAccessPeer (YES for two ranks on one device) */
  const uint8_t* nvlink; /* tpc_tri_t: NVML NVLink P2P status (UNKNOWN without NVML) */
  const uint8_t* ipc;    /* tpc_tri_t: IPC trial; UNKNOWN = not run yet */
  int p2p_disable;       /* TPCOMM_P2P_DISABLE */
  int nvlink_required;   /* 1, 0, or -1 = required when nranks > 2 */
  int allow_shared_gpu;
} tpc_topo_input_t;

typedef struct {
  tpc_transport_t transport;
  char reason[256];
} tpc_topo_decision_t;

/* Decides; every "no" gives its reason ("nccl: rank 1 has no P2P access to rank 3"). */
void tpc_topo_decide(const tpc_topo_input_t* in, tpc_topo_decision_t* out);

/* Two ranks on one GPU are "same device". Returns the first such pair in *a,*b, or 0 if none. */
int tpc_topo_find_shared_gpu(const tpc_peer_info_t* peers, int nranks, int* a, int* b);

/* Probe helpers used by comm.c (need CUDA). */
struct tpc_comm;
tpc_status_t tpc_topo_local_info(int device, tpc_peer_info_t* info);
/* Fills row `rank` of p2p and nvlink for this process. */
tpc_status_t tpc_topo_probe_row(struct tpc_comm* comm, uint8_t* p2p_row, uint8_t* nvlink_row);

/* NVML loaded with dlopen (nvml.c). Returns TPC_TRI_* for NVLink between two PCI bus ids; *why gets a
 * reason when UNKNOWN (library missing, call failed). */
tpc_tri_t tpc_nvml_nvlink(const char* bus_a, const char* bus_b, const char** why);

#endif
