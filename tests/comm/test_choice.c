/* test_choice.c — the all-reduce algorithm choice (tpc_allreduce_choose) and its limits, on a
 * communicator assembled in memory (no GPU): one-shot up to its limit, two-shot up to TPCOMM_MAX_BYTES,
 * NCCL above; forced algorithms honoured or refused with a reason; NCCL transport; world size 1. */
#include <criterion/criterion.h>
#include <string.h>

#include "comm.h"
#include "ipc.h"

static struct tpc_comm g_comm;
static struct tpc_arena g_arena;

static void make(int nranks, tpc_transport_t t, int has_nccl) {
  memset(&g_comm, 0, sizeof g_comm);
  memset(&g_arena, 0, sizeof g_arena);
  g_comm.magic = TPC_COMM_MAGIC;
  g_comm.nranks = nranks;
  g_comm.transport = t;
  g_comm.arena = t == TPC_TRANSPORT_CUSTOM ? &g_arena : NULL;
  g_arena.args.push_slot_bytes = 1 << 20;
  g_arena.args.pull_bytes = 64 << 20;
  g_comm.oneshot_max_bytes = 256 << 10;
  g_comm.nccl = has_nccl ? (void*)&g_comm : NULL; /* only tested for NULL */
  strcpy(g_comm.transport_reason, t == TPC_TRANSPORT_NCCL ? "nccl: rank 1 has no P2P access to rank 0" : "custom");
}

static tpc_algo_t choose(size_t count, tpc_dtype_t d, tpc_algo_t forced, const char** why) {
  return tpc_allreduce_choose(&g_comm, count, d, 0, forced, why);
}

Test(choice, by_size) {
  const char* why;
  make(4, TPC_TRANSPORT_CUSTOM, 1);
  cr_assert_eq(choose(1, TPC_BFLOAT16, TPC_ALGO_AUTO, &why), TPC_ALGO_ONESHOT);
  cr_assert_eq(choose(128 << 10, TPC_BFLOAT16, TPC_ALGO_AUTO, &why), TPC_ALGO_ONESHOT, "256 KiB is the limit");
  cr_assert_eq(choose((128 << 10) + 1, TPC_BFLOAT16, TPC_ALGO_AUTO, &why), TPC_ALGO_TWOSHOT);
  cr_assert_eq(choose(16 << 20, TPC_FLOAT32, TPC_ALGO_AUTO, &why), TPC_ALGO_TWOSHOT, "64 MiB fits");
  cr_assert_eq(choose((16 << 20) + 1, TPC_FLOAT32, TPC_ALGO_AUTO, &why), TPC_ALGO_NCCL, "above the limit");
}

Test(choice, tails_round_up_to_vectors) {
  const char* why;
  make(2, TPC_TRANSPORT_CUSTOM, 0);
  g_comm.oneshot_max_bytes = 16;
  cr_assert_eq(choose(8, TPC_BFLOAT16, TPC_ALGO_AUTO, &why), TPC_ALGO_ONESHOT);
  cr_assert_eq(choose(9, TPC_BFLOAT16, TPC_ALGO_AUTO, &why), TPC_ALGO_TWOSHOT, "9 bf16 take two vectors");
}

Test(choice, forced_algorithms) {
  const char* why;
  make(2, TPC_TRANSPORT_CUSTOM, 1);
  cr_assert_eq(choose(100, TPC_BFLOAT16, TPC_ALGO_TWOSHOT, &why), TPC_ALGO_TWOSHOT);
  cr_assert_eq(choose(100, TPC_BFLOAT16, TPC_ALGO_NCCL, &why), TPC_ALGO_NCCL);
  cr_assert_eq(choose(1 << 20, TPC_BFLOAT16, TPC_ALGO_ONESHOT, &why), TPC_NUM_ALGOS, "2 MiB exceeds the slot");
  cr_assert(why && strstr(why, "one-shot slot"), "%s", why);
  g_comm.forced_algo = TPC_ALGO_TWOSHOT; /* TPCOMM_ALLREDUCE_ALGO */
  cr_assert_eq(choose(100, TPC_BFLOAT16, TPC_ALGO_AUTO, &why), TPC_ALGO_TWOSHOT);
  cr_assert_eq(choose(100, TPC_BFLOAT16, TPC_ALGO_ONESHOT, &why), TPC_ALGO_ONESHOT, "per call beats env");
}

Test(choice, nccl_transport) {
  const char* why;
  make(8, TPC_TRANSPORT_NCCL, 1);
  cr_assert_eq(choose(100, TPC_FLOAT16, TPC_ALGO_AUTO, &why), TPC_ALGO_NCCL);
  cr_assert_eq(choose(100, TPC_FLOAT16, TPC_ALGO_ONESHOT, &why), TPC_NUM_ALGOS);
  cr_assert(strstr(why, "no P2P access"), "the transport reason explains the refusal: %s", why);
}

Test(choice, no_nccl_above_limit) {
  const char* why;
  make(2, TPC_TRANSPORT_CUSTOM, 0);
  strcpy(g_comm.nccl_reason, "NCCL refuses several ranks on one GPU");
  cr_assert_eq(choose(64 << 20, TPC_FLOAT32, TPC_ALGO_AUTO, &why), TPC_NUM_ALGOS);
  cr_assert(strstr(why, "TPCOMM_MAX_BYTES"), "%s", why);
  cr_assert_eq(choose(10, TPC_FLOAT32, TPC_ALGO_NCCL, &why), TPC_NUM_ALGOS);
  cr_assert(strstr(why, "several ranks"), "%s", why);
}

Test(choice, world_size_one) {
  const char* why;
  make(1, TPC_TRANSPORT_LOCAL, 0);
  cr_assert_eq(choose(12345, TPC_BFLOAT16, TPC_ALGO_AUTO, &why), TPC_ALGO_LOCAL);
}
