/* topo.c — the topology probe (what this rank can see of each peer) and the pure decision that turns
 * the all-gathered matrices into a transport with a reason (topo.h). Every "no" is logged at INFO(P2P).
 * Relies on: peers[] identical on every rank (all-gathered), so tpc_topo_decide gives the same answer on
 * every rank. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "checks.h"
#include "comm.h"
#include "topo.h"

static uint64_t fnv1a(uint64_t h, const char* s) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

tpc_status_t tpc_topo_local_info(int device, tpc_peer_info_t* info) {
  memset(info, 0, sizeof *info);
  gethostname(info->hostname, sizeof info->hostname - 1);
  char boot[64] = "";
  FILE* f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f) {
    if (!fgets(boot, sizeof boot, f)) boot[0] = 0;
    fclose(f);
  }
  info->host_hash = fnv1a(fnv1a(0xcbf29ce484222325ull, info->hostname), boot);
  info->pid = (int32_t)getpid();
  info->device = device;
  TPC_CUDA_CHECK(cudaDeviceGetPCIBusId(info->bus_id, sizeof info->bus_id, device));
  for (char* c = info->bus_id; *c; c++)
    if (*c >= 'A' && *c <= 'F') *c = (char)(*c - 'A' + 'a');
  struct cudaDeviceProp prop;
  TPC_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  info->cc_major = prop.major;
  info->cc_minor = prop.minor;
  info->sm_count = prop.multiProcessorCount;
  int node = -1;
  if (tpc_gpu_numa_node(device, &node) != TPC_SUCCESS) node = -1;
  info->numa_node = node;
  return TPC_SUCCESS;
}

tpc_status_t tpc_topo_probe_row(struct tpc_comm* comm, uint8_t* p2p_row, uint8_t* nvlink_row) {
  const tpc_peer_info_t* me = &comm->peers[comm->rank];
  for (int j = 0; j < comm->nranks; j++) {
    const tpc_peer_info_t* peer = &comm->peers[j];
    p2p_row[j] = nvlink_row[j] = TPC_TRI_UNKNOWN;
    if (j == comm->rank || peer->host_hash != me->host_hash) continue;
    if (!strcmp(peer->bus_id, me->bus_id)) { /* two ranks on one GPU (tests) */
      p2p_row[j] = nvlink_row[j] = TPC_TRI_YES;
      continue;
    }
    int dev = -1, can = 0;
    if (cudaDeviceGetByPCIBusId(&dev, peer->bus_id) != cudaSuccess) {
      cudaGetLastError();
      TPC_INFO(TPC_SUB_P2P, "peer %d (GPU %s) is not visible in this process (CUDA_VISIBLE_DEVICES?)", j,
               peer->bus_id);
      p2p_row[j] = TPC_TRI_NO;
    } else {
      TPC_CUDA_CHECK_COMM(comm, cudaDeviceCanAccessPeer(&can, comm->device, dev));
      p2p_row[j] = can ? TPC_TRI_YES : TPC_TRI_NO;
      if (!can) TPC_INFO(TPC_SUB_P2P, "cudaDeviceCanAccessPeer: no P2P from GPU %s to peer %d (GPU %s)", me->bus_id, j,
                         peer->bus_id);
    }
    const char* why = NULL;
    nvlink_row[j] = (uint8_t)tpc_nvml_nvlink(me->bus_id, peer->bus_id, &why);
    if (nvlink_row[j] != TPC_TRI_YES)
      TPC_INFO(TPC_SUB_P2P, "no NVLink known to peer %d (GPU %s): %s", j, peer->bus_id, why ? why : "?");
  }
  return TPC_SUCCESS;
}

int tpc_topo_find_shared_gpu(const tpc_peer_info_t* peers, int nranks, int* a, int* b) {
  for (int i = 0; i < nranks; i++)
    for (int j = i + 1; j < nranks; j++)
      if (peers[i].host_hash == peers[j].host_hash && !strcmp(peers[i].bus_id, peers[j].bus_id)) {
        *a = i;
        *b = j;
        return 1;
      }
  return 0;
}

static const char* tri_name(uint8_t t) { return t == TPC_TRI_YES ? "yes" : t == TPC_TRI_NO ? "no" : "unknown"; }

void tpc_topo_decide(const tpc_topo_input_t* in, tpc_topo_decision_t* out) {
  const int n = in->nranks;
  out->transport = TPC_TRANSPORT_NCCL;
  if (n == 1) {
    out->transport = TPC_TRANSPORT_LOCAL;
    snprintf(out->reason, sizeof out->reason, "local: world size 1");
    return;
  }
  if (in->p2p_disable) {
    snprintf(out->reason, sizeof out->reason, "nccl: TPCOMM_P2P_DISABLE=1");
    return;
  }
  if (n > TPC_MAX_CUSTOM_RANKS) {
    snprintf(out->reason, sizeof out->reason, "nccl: %d ranks; the custom kernels serve at most %d", n,
             TPC_MAX_CUSTOM_RANKS);
    return;
  }
  int hosts = 1;
  for (int i = 1; i < n; i++) {
    int seen = 0;
    for (int j = 0; j < i; j++) seen |= in->peers[j].host_hash == in->peers[i].host_hash;
    hosts += !seen;
  }
  if (hosts > 1) {
    for (int i = 1; i < n; i++)
      if (in->peers[i].host_hash != in->peers[0].host_hash) {
        snprintf(out->reason, sizeof out->reason, "nccl: ranks span %d hosts (rank 0 on %s, rank %d on %s)", hosts,
                 in->peers[0].hostname, i, in->peers[i].hostname);
        return;
      }
  }
  const int need_nvlink = in->nvlink_required >= 0 ? in->nvlink_required : (n > 2);
  int shared = 0, nvlink_all = 1;
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < n; j++) {
      if (i == j) continue;
      const size_t k = (size_t)i * n + j;
      const int same_gpu = !strcmp(in->peers[i].bus_id, in->peers[j].bus_id);
      shared |= same_gpu;
      if (in->p2p[k] != TPC_TRI_YES) {
        snprintf(out->reason, sizeof out->reason, "nccl: rank %d (GPU %s) has no P2P access to rank %d (GPU %s)", i,
                 in->peers[i].bus_id, j, in->peers[j].bus_id);
        return;
      }
      if (!same_gpu && in->nvlink[k] != TPC_TRI_YES) {
        nvlink_all = 0;
        if (need_nvlink) {
          snprintf(out->reason, sizeof out->reason,
                   "nccl: rank %d and rank %d are not linked by NVLink (NVML: %s) and %d ranks need NVLink", i, j,
                   tri_name(in->nvlink[k]), n);
          return;
        }
      }
      if (in->ipc && in->ipc[k] == TPC_TRI_NO) {
        snprintf(out->reason, sizeof out->reason, "nccl: CUDA IPC trial from rank %d to rank %d failed", i, j);
        return;
      }
    }
  }
  if (shared && !in->allow_shared_gpu) {
    snprintf(out->reason, sizeof out->reason, "nccl: several ranks share a GPU (TPCOMM_ALLOW_SHARED_GPU=0)");
    return;
  }
  out->transport = TPC_TRANSPORT_CUSTOM;
  if (shared)
    snprintf(out->reason, sizeof out->reason, "custom: %d ranks, some sharing a GPU (tests only)", n);
  else if (nvlink_all)
    snprintf(out->reason, sizeof out->reason, "custom: all %d peers NVLink", n);
  else
    snprintf(out->reason, sizeof out->reason, "custom: %d ranks, P2P without NVLink", n);
}
