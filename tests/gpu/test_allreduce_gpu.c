/* test_allreduce_gpu.c — drives tests/gpu/ar_worker.c through tpcomm-run (and mpirun): the custom and
 * NCCL all-reduce correctness matrix on 2 GPUs (also with 8 MiB one-shot slots, and with a 2-block grid
 * that puts the streaming one-shot on small sizes), world size 1, graph replays, two streams, the missing-rank
 * timeout, and 4/8 ranks sharing 2 GPUs (only with TPCOMM_TEST_SHARED=1, i.e. under CUDA MPS). Every case
 * skips with the reason where the machine lacks what it needs. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

static const char* g_why = "";

static void need_gpus(int n) {
  int have = tpc_test_gpu_count(&g_why);
  if (have == 0) cr_skip_test("no CUDA GPU on this machine (%s): GPU test skipped", g_why);
  if (have < n) cr_skip_test("needs %d GPUs, this machine has %d", n, have);
}

/* Runs `tpcomm-run -n N [extra] ar_worker args...`; asserts exit 0 and a clean report from every rank. */
static void launch(int nranks, const char* launcher_extra, const char* worker_args, char* const env[], int timeout_s) {
  int clean = 0;
  int rc = tpc_test_launch_workers(TPC_TEST_LAUNCHER, TPC_TEST_BIN_DIR, nranks, launcher_extra, "tpc_ar_worker",
                                   worker_args, env, timeout_s, &clean);
  cr_assert_eq(rc, 0, "tpc_ar_worker %s on %d ranks exited with %d", worker_args, nranks, rc);
  cr_assert(clean, "not every rank reported '0 failed'");
}

Test(allreduce_gpu, two_ranks_matrix, .timeout = 900) {
  need_gpus(2);
  launch(2, "", "matrix", NULL, 880);
}

Test(allreduce_gpu, world_size_one) {
  need_gpus(1);
  launch(1, "", "basic", NULL, 120);
}

Test(allreduce_gpu, two_ranks_nccl_path) {
  need_gpus(2);
  launch(2, "", "basic", NULL, 120);
}

Test(allreduce_gpu, two_ranks_forced_nccl_env) {
  need_gpus(2);
  char* env[] = {"TPCOMM_P2P_DISABLE=1", NULL};
  launch(2, "", "basic", env, 120);
}

Test(allreduce_gpu, graph_10000_replays) {
  need_gpus(2);
  launch(2, "", "replay 10000", NULL, 300);
}

Test(allreduce_gpu, two_streams_one_comm) {
  need_gpus(2);
  launch(2, "", "streams", NULL, 120);
}

/* The default two-rank slot is 64 MiB (one-shot, streaming form, up to 64 MiB, in two_ranks_matrix); here 8 MiB
 * slots: forced one-shots above 8 MiB are refused and auto hands them to the two-shot. */
Test(allreduce_gpu, oneshot_small_slots_matrix, .timeout = 600) {
  need_gpus(2);
  char* env[] = {"TPCOMM_PUSH_MAX_BYTES=8M", NULL};
  launch(2, "", "matrix", env, 580);
}

/* Two blocks a rank: a thread's group of vectors is small, so the streaming one-shot runs from ~64 KiB up,
 * odd tails and graph replays included. */
Test(allreduce_gpu, oneshot_stream_small_grid, .timeout = 600) {
  need_gpus(2);
  char* env[] = {"TPCOMM_NUM_BLOCKS=2", NULL};
  launch(2, "", "matrix --quick", env, 580);
}

Test(allreduce_gpu, oneshot_stream_small_grid_graph_replays, .timeout = 300) {
  need_gpus(2);
  char* env[] = {"TPCOMM_NUM_BLOCKS=2", NULL};
  launch(2, "", "replay 2000", env, 280);
}

Test(allreduce_gpu, missing_rank_times_out) {
  need_gpus(2);
  char* env[] = {"TPCOMM_TIMEOUT_MS=2000", NULL};
  time_t t0 = time(NULL);
  launch(2, "", "timeout", env, 120);
  cr_assert_lt(time(NULL) - t0, 60, "the timeout took too long");
}

static void need_shared(void) {
  need_gpus(1);
  const char* s = getenv("TPCOMM_TEST_SHARED");
  if (!s || strcmp(s, "1") != 0)
    cr_skip_test("several ranks per GPU need CUDA MPS: start it (.devdeps/mps.sh start) and set TPCOMM_TEST_SHARED=1");
}

Test(allreduce_gpu, four_ranks_sharing_gpus, .timeout = 900) {
  need_shared();
  launch(4, "--allow-shared-gpu", "matrix --quick", NULL, 880);
}

Test(allreduce_gpu, eight_ranks_sharing_gpus, .timeout = 900) {
  need_shared();
  launch(8, "--allow-shared-gpu", "matrix --quick", NULL, 880);
}

Test(allreduce_gpu, four_ranks_graph_replays, .timeout = 300) {
  need_shared();
  launch(4, "--allow-shared-gpu", "replay 2000", NULL, 280);
}

Test(allreduce_gpu, mpirun_two_ranks) {
  need_gpus(2);
  if (!TPC_HAVE_MPI) cr_skip_test("built without MPI");
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s -np 2 --oversubscribe --mca btl self,vader %s/tpc_ar_worker basic", TPC_MPIRUN,
           TPC_TEST_BIN_DIR);
  char* argv[] = {"sh", "-c", cmd, NULL};
  char* env[] = {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1", NULL};
  char* out = NULL;
  int rc = tpc_test_run(argv, env, &out, 180);
  fprintf(stderr, "$ %s\n%s\n", cmd, out ? out : "");
  cr_assert_eq(rc, 0);
  cr_assert(strstr(out, "rank 0: ") && strstr(out, "rank 1: ") && !strstr(out, "FAIL"));
  free(out);
}
