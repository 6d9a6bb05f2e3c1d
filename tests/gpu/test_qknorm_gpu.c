/* test_qknorm_gpu.c — drives tests/gpu/qk_worker.c (tpc_tp_qk_rmsnorm against a CPU reference, every
 * path, eager and graph) through tpcomm-run: 2 ranks on 2 GPUs, world size 1, and 4/8 ranks sharing the
 * GPUs (only with TPCOMM_TEST_SHARED=1, under CUDA MPS). Skips with the reason where the machine lacks
 * what a case needs. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static void need_gpus(int n) {
  const char* why = "";
  int have = tpc_test_gpu_count(&why);
  if (have == 0) cr_skip_test("no CUDA GPU on this machine (%s): GPU test skipped", why);
  if (have < n) cr_skip_test("needs %d GPUs, this machine has %d", n, have);
}

static void need_shared(void) {
  need_gpus(1);
  const char* s = getenv("TPCOMM_TEST_SHARED");
  if (!s || strcmp(s, "1") != 0)
    cr_skip_test("several ranks per GPU need CUDA MPS: start it (.devdeps/mps.sh start) and set TPCOMM_TEST_SHARED=1");
}

static void launch(int nranks, const char* extra, const char* args, char* const env[], int timeout_s) {
  int clean = 0;
  int rc = tpc_test_launch_workers(TPC_TEST_LAUNCHER, TPC_TEST_BIN_DIR, nranks, extra, "tpc_qk_worker", args, env,
                                   timeout_s, &clean);
  cr_assert_eq(rc, 0, "tpc_qk_worker on %d ranks exited with %d", nranks, rc);
  cr_assert(clean, "not every rank reported '0 failed'");
}

Test(qknorm_gpu, two_ranks, .timeout = 600) {
  need_gpus(2);
  launch(2, "", "", NULL, 580);
}

/* A small exchange (TPCOMM_QKNORM_MAX_TOKENS=200): 133 tokens x 7 warps no longer fit one entry per warp, so the
 * fused kernel takes one entry per token (the group's sum after a named barrier), a path the default capacity
 * reaches only above ~4700 tokens; 1000 tokens exceed the exchange, so fused is refused and the unfused path runs
 * in chunks of 200 tokens. 1 and 5 tokens keep one entry per warp. */
static char* small_exchange_env[] = {"TPCOMM_QKNORM_MAX_TOKENS=200", NULL};

Test(qknorm_gpu, two_ranks_small_exchange, .timeout = 600) {
  need_gpus(2);
  launch(2, "", "--quick", small_exchange_env, 580);
}

Test(qknorm_gpu, world_size_one, .timeout = 300) {
  need_gpus(1);
  launch(1, "", "--quick", NULL, 280);
}

Test(qknorm_gpu, four_ranks_sharing_gpus, .timeout = 600) {
  need_shared();
  launch(4, "--allow-shared-gpu", "--quick", NULL, 580);
}

Test(qknorm_gpu, four_ranks_sharing_gpus_small_exchange, .timeout = 600) {
  need_shared();
  launch(4, "--allow-shared-gpu", "--quick", small_exchange_env, 580);
}

Test(qknorm_gpu, eight_ranks_sharing_gpus, .timeout = 600) {
  need_shared();
  launch(8, "--allow-shared-gpu", "--quick", NULL, 580);
}
