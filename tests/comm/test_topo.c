/* test_topo.c — tpc_topo_decide on synthetic probe matrices: 8 GPUs all NVLink, PCIe only, mixed, two
 * hosts, one GPU with P2P off, shared GPUs, a failed IPC trial, overrides, world size 1 and > 8 ranks. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "topo.h"

#define N_MAX 16

typedef struct {
  int n;
  tpc_peer_info_t peers[N_MAX];
  uint8_t p2p[N_MAX * N_MAX], nvl[N_MAX * N_MAX], ipc[N_MAX * N_MAX];
  tpc_topo_input_t in;
  tpc_topo_decision_t out;
} fixture_t;

/* n ranks on one host, one GPU each, every pair P2P + NVLink + IPC ok */
static void setup(fixture_t* f, int n) {
  memset(f, 0, sizeof *f);
  f->n = n;
  for (int i = 0; i < n; i++) {
    f->peers[i].host_hash = 42;
    snprintf(f->peers[i].hostname, sizeof f->peers[i].hostname, "node0");
    snprintf(f->peers[i].bus_id, sizeof f->peers[i].bus_id, "0000:%02x:00.0", 0x10 + i);
  }
  memset(f->p2p, TPC_TRI_YES, sizeof f->p2p);
  memset(f->nvl, TPC_TRI_YES, sizeof f->nvl);
  memset(f->ipc, TPC_TRI_YES, sizeof f->ipc);
  tpc_topo_input_t in = {n, f->peers, f->p2p, f->nvl, f->ipc, 0, -1, 0};
  f->in = in;
}
static void set_pair(uint8_t* m, int n, int i, int j, uint8_t v) {
  m[i * n + j] = v;
  m[j * n + i] = v;
}
static void decide(fixture_t* f) { tpc_topo_decide(&f->in, &f->out); }

Test(topo, eight_gpus_full_nvlink) {
  fixture_t f;
  setup(&f, 8);
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_CUSTOM);
  cr_assert_str_eq(f.out.reason, "custom: all 8 peers NVLink");
}

Test(topo, pcie_only_two_ranks_allowed) {
  fixture_t f;
  setup(&f, 2);
  memset(f.nvl, TPC_TRI_NO, sizeof f.nvl);
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_CUSTOM, "%s", f.out.reason);
  cr_assert(strstr(f.out.reason, "without NVLink"));
}

Test(topo, pcie_only_four_ranks_needs_nvlink) {
  fixture_t f;
  setup(&f, 4);
  memset(f.nvl, TPC_TRI_NO, sizeof f.nvl);
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_NCCL);
  cr_assert(strstr(f.out.reason, "not linked by NVLink"), "%s", f.out.reason);
}

Test(topo, nvlink_unknown_without_nvml) {
  fixture_t f;
  setup(&f, 4);
  memset(f.nvl, TPC_TRI_UNKNOWN, sizeof f.nvl);
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_NCCL);
  cr_assert(strstr(f.out.reason, "NVML: unknown"), "%s", f.out.reason);
  f.in.nvlink_required = 0; /* TPCOMM_NVLINK_REQUIRED=0 trusts P2P */
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_CUSTOM);
}

Test(topo, mixed_one_pair_without_nvlink) {
  fixture_t f;
  setup(&f, 8);
  set_pair(f.nvl, 8, 2, 5, TPC_TRI_NO);
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_NCCL);
  cr_assert(strstr(f.out.reason, "rank 2 and rank 5"), "%s", f.out.reason);
}

Test(topo, two_hosts) {
  fixture_t f;
  setup(&f, 4);
  for (int i = 2; i < 4; i++) {
    f.peers[i].host_hash = 43;
    snprintf(f.peers[i].hostname, sizeof f.peers[i].hostname, "node1");
  }
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_NCCL);
  cr_assert_str_eq(f.out.reason, "nccl: ranks span 2 hosts (rank 0 on node0, rank 2 on node1)");
}

Test(topo, one_gpu_with_p2p_off) {
  fixture_t f;
  setup(&f, 8);
  for (int j = 0; j < 8; j++)
    if (j != 3) set_pair(f.p2p, 8, 3, j, TPC_TRI_NO);
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_NCCL);
  cr_assert(strstr(f.out.reason, "no P2P access") && strstr(f.out.reason, "rank 3"), "%s", f.out.reason);
}

Test(topo, ipc_trial_failed) {
  fixture_t f;
  setup(&f, 2);
  f.ipc[1 * 2 + 0] = TPC_TRI_NO;
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_NCCL);
  cr_assert_str_eq(f.out.reason, "nccl: CUDA IPC trial from rank 1 to rank 0 failed");
  f.in.ipc = NULL; /* before the trial: only the probe counts */
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_CUSTOM);
}

Test(topo, p2p_disabled_by_env) {
  fixture_t f;
  setup(&f, 2);
  f.in.p2p_disable = 1;
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_NCCL);
  cr_assert_str_eq(f.out.reason, "nccl: TPCOMM_P2P_DISABLE=1");
}

Test(topo, world_size_one_is_local) {
  fixture_t f;
  setup(&f, 1);
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_LOCAL);
}

Test(topo, more_than_eight_ranks) {
  fixture_t f;
  setup(&f, 16);
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_NCCL);
  cr_assert(strstr(f.out.reason, "at most 8"), "%s", f.out.reason);
}

Test(topo, shared_gpus) {
  fixture_t f;
  setup(&f, 4);
  for (int i = 0; i < 4; i++) snprintf(f.peers[i].bus_id, sizeof f.peers[i].bus_id, "0000:%02x:00.0", 0x10 + i % 2);
  int a = -1, b = -1;
  cr_assert(tpc_topo_find_shared_gpu(f.peers, 4, &a, &b));
  cr_assert_eq(a, 0);
  cr_assert_eq(b, 2);
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_NCCL, "shared GPUs need the explicit test option");
  f.in.allow_shared_gpu = 1;
  memset(f.nvl, TPC_TRI_NO, sizeof f.nvl); /* same-GPU pairs need no NVLink; different GPUs still do */
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++)
      if (i % 2 != j % 2) f.nvl[i * 4 + j] = TPC_TRI_YES;
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_CUSTOM, "%s", f.out.reason);
  cr_assert(strstr(f.out.reason, "sharing a GPU"));
  set_pair(f.nvl, 4, 0, 1, TPC_TRI_NO);
  decide(&f);
  cr_assert_eq(f.out.transport, TPC_TRANSPORT_NCCL);
}

Test(topo, no_shared_gpu_found) {
  fixture_t f;
  setup(&f, 8);
  int a = -1, b = -1;
  cr_assert_not(tpc_topo_find_shared_gpu(f.peers, 8, &a, &b));
}
