/* test_api.c — the public API on bad input (no GPU needed): every bad call returns a tpc_ status and a
 * message naming the argument and value; misuse after destroy; abort; and the timeout bookkeeping that
 * turns a kernel's status word into TPC_ERR_TIMEOUT naming the peer. Communicators here are assembled
 * in memory (internal headers) so that no GPU is needed. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "tpc_criterion.h"

#include "comm.h"
#include "ipc.h"
#include "tpcomm/tpcomm.h"

static struct tpc_comm* fake_comm(void) {
  struct tpc_comm* c = calloc(1, sizeof *c);
  c->magic = TPC_COMM_MAGIC;
  c->nranks = 2;
  c->rank = 0;
  c->timeout_ms = 1234;
  return c;
}

Test(api, init_rank_bad_arguments) {
  tpc_unique_id_t id;
  memset(&id, 0, sizeof id);
  tpc_comm_t comm;
  ASSERT_ERR(tpc_comm_init_rank(NULL, 2, id, 0, NULL), TPC_ERR_INVALID_ARGUMENT, "comm");
  ASSERT_ERR(tpc_comm_init_rank(&comm, 0, id, 0, NULL), TPC_ERR_INVALID_ARGUMENT, "nranks=0");
  ASSERT_ERR(tpc_comm_init_rank(&comm, 4, id, 5, NULL), TPC_ERR_INVALID_ARGUMENT, "rank=5");
  ASSERT_ERR(tpc_comm_init_rank(&comm, 4, id, -1, NULL), TPC_ERR_INVALID_ARGUMENT, "rank=-1");
  tpc_config_t cfg = TPC_CONFIG_INITIALIZER;
  cfg.magic = 7;
  ASSERT_ERR(tpc_comm_init_rank(&comm, 2, id, 0, &cfg), TPC_ERR_INVALID_ARGUMENT, "config->magic=0x7");
  tpc_status_t s = tpc_comm_init_rank(&comm, 2, id, 0, NULL); /* an all-zero id is not an id */
  cr_assert_neq(s, TPC_SUCCESS);
  cr_assert_null(comm);
}

Test(api, init_allgather_and_env_bad_arguments) {
  tpc_comm_t comm;
  ASSERT_ERR(tpc_comm_init_allgather(&comm, 2, 0, NULL, NULL, NULL), TPC_ERR_INVALID_ARGUMENT, "allgather");
  ASSERT_ERR(tpc_comm_init_allgather(&comm, 2, 2, NULL, NULL, NULL), TPC_ERR_INVALID_ARGUMENT, "rank=2");
  unsetenv("TPCOMM_RANK");
  ASSERT_ERR(tpc_comm_init_env(&comm, NULL), TPC_ERR_INVALID_USAGE, "TPCOMM_RANK is not set");
  setenv("TPCOMM_RANK", "one", 1);
  ASSERT_ERR(tpc_comm_init_env(&comm, NULL), TPC_ERR_INVALID_ARGUMENT, "TPCOMM_RANK='one'");
  unsetenv("TPCOMM_RANK");
  ASSERT_ERR(tpc_comm_init_env(NULL, NULL), TPC_ERR_INVALID_ARGUMENT, "comm");
}

Test(api, malformed_timeout_env_rejected) {
  tpc_unique_id_t id;
  cr_assert_eq(tpc_get_unique_id(&id), TPC_SUCCESS);
  tpc_comm_t comm;
  setenv("TPCOMM_TIMEOUT_MS", "soon", 1);
  ASSERT_ERR(tpc_comm_init_rank(&comm, 1, id, 0, NULL), TPC_ERR_INVALID_ARGUMENT, "TPCOMM_TIMEOUT_MS='soon'");
  unsetenv("TPCOMM_TIMEOUT_MS");
  tpc_config_t cfg = TPC_CONFIG_INITIALIZER;
  cfg.timeout_ms = 0;
  ASSERT_ERR(tpc_comm_init_rank(&comm, 1, id, 0, &cfg), TPC_ERR_INVALID_ARGUMENT, "timeout_ms=0");
}

Test(api, all_reduce_bad_arguments) {
  struct tpc_comm* c = fake_comm();
  char buf[64] = {0};
  ASSERT_ERR(tpc_all_reduce(buf, buf, 4, TPC_BFLOAT16, TPC_SUM, NULL, 0), TPC_ERR_INVALID_ARGUMENT, "comm is NULL");
  ASSERT_ERR(tpc_all_reduce(buf, buf, 4, (tpc_dtype_t)9, TPC_SUM, c, 0), TPC_ERR_INVALID_ARGUMENT, "dtype=9");
  ASSERT_ERR(tpc_all_reduce(buf, buf, 4, TPC_FLOAT32, (tpc_redop_t)3, c, 0), TPC_ERR_INVALID_ARGUMENT, "op=3");
  ASSERT_ERR(tpc_all_reduce_algo(buf, buf, 4, TPC_FLOAT32, TPC_SUM, (tpc_algo_t)7, c, 0), TPC_ERR_INVALID_ARGUMENT,
             "algo=7");
  ASSERT_ERR(tpc_all_reduce(NULL, buf, 4, TPC_FLOAT32, TPC_SUM, c, 0), TPC_ERR_INVALID_ARGUMENT, "sendbuf is NULL");
  ASSERT_ERR(tpc_all_reduce(buf, NULL, 4, TPC_FLOAT32, TPC_SUM, c, 0), TPC_ERR_INVALID_ARGUMENT, "recvbuf is NULL");
  ASSERT_ERR(tpc_all_reduce(buf, buf + 2, 4, TPC_FLOAT32, TPC_SUM, c, 0), TPC_ERR_INVALID_ARGUMENT, "overlap");
  ASSERT_ERR(tpc_all_reduce(buf, buf, (size_t)-1, TPC_FLOAT32, TPC_SUM, c, 0), TPC_ERR_INVALID_ARGUMENT, "too large");
  cr_assert_eq(tpc_all_reduce(NULL, NULL, 0, TPC_BFLOAT16, TPC_SUM, c, 0), TPC_SUCCESS, "count 0 is a no-op");
  /* the message is also kept on the communicator */
  tpc_all_reduce(buf, buf, 4, (tpc_dtype_t)9, TPC_SUM, c, 0);
  cr_assert(strstr(tpc_get_last_error(c), "dtype=9"));
  free(c);
}

Test(api, queries_validate_outputs) {
  struct tpc_comm* c = fake_comm();
  int r = -1;
  cr_assert_eq(tpc_comm_rank(c, &r), TPC_SUCCESS);
  cr_assert_eq(r, 0);
  cr_assert_eq(tpc_comm_size(c, &r), TPC_SUCCESS);
  cr_assert_eq(r, 2);
  ASSERT_ERR(tpc_comm_rank(c, NULL), TPC_ERR_INVALID_ARGUMENT, "rank is NULL");
  ASSERT_ERR(tpc_comm_size(NULL, &r), TPC_ERR_INVALID_ARGUMENT, "comm is NULL");
  ASSERT_ERR(tpc_comm_transport(c, NULL, NULL), TPC_ERR_INVALID_ARGUMENT, "transport is NULL");
  ASSERT_ERR(tpc_comm_get_async_error(c, NULL), TPC_ERR_INVALID_ARGUMENT, "async_error is NULL");
  tpc_algo_t a;
  ASSERT_ERR(tpc_comm_allreduce_algo(c, 10, (tpc_dtype_t)5, 0, &a), TPC_ERR_INVALID_ARGUMENT, "dtype=5");
  free(c);
}

Test(api, misuse_after_destroy) {
  struct tpc_comm* c = fake_comm();
  cr_assert_eq(tpc_comm_destroy(c), TPC_SUCCESS);
  char buf[16] = {0};
  ASSERT_ERR(tpc_all_reduce(buf, buf, 4, TPC_FLOAT32, TPC_SUM, c, 0), TPC_ERR_INVALID_USAGE, "was destroyed");
  ASSERT_ERR(tpc_comm_destroy(c), TPC_ERR_INVALID_USAGE, "was destroyed");
  int r;
  ASSERT_ERR(tpc_comm_rank(c, &r), TPC_ERR_INVALID_USAGE, "was destroyed");
  struct tpc_comm junk;
  memset(&junk, 0x5a, sizeof junk);
  ASSERT_ERR(tpc_comm_rank(&junk, &r), TPC_ERR_INVALID_USAGE, "not a tpcomm communicator");
  free(c);
}

Test(api, timeout_bookkeeping_names_peer_and_block) {
  struct tpc_comm* c = fake_comm();
  struct tpc_arena ar;
  memset(&ar, 0, sizeof ar);
  tpc_ar_status_t st;
  memset(&st, 0, sizeof st);
  ar.host_status = &st;
  c->arena = &ar;
  tpc_status_t async = TPC_ERR_INTERNAL;
  cr_assert_eq(tpc_comm_get_async_error(c, &async), TPC_SUCCESS);
  cr_assert_eq(async, TPC_SUCCESS);
  /* what a kernel writes when peer 1 never arrives */
  st.peer = 1;
  st.block = 3;
  st.algo = 2;
  st.error = TPC_AR_ERR_TIMEOUT;
  cr_assert_eq(tpc_comm_get_async_error(c, &async), TPC_SUCCESS);
  cr_assert_eq(async, TPC_ERR_TIMEOUT);
  const char* msg = tpc_get_last_error(c);
  cr_assert(strstr(msg, "peer 1") && strstr(msg, "1234 ms") && strstr(msg, "two-shot") && strstr(msg, "block 3"), "%s",
            msg);
  char buf[16] = {0};
  ASSERT_ERR(tpc_all_reduce(buf, buf, 4, TPC_FLOAT32, TPC_SUM, c, 0), TPC_ERR_TIMEOUT, "peer 1");
  c->arena = NULL;
  free(c);
}

Test(api, abort_stops_device_waits_and_later_calls) {
  struct tpc_comm* c = fake_comm();
  struct tpc_arena ar;
  memset(&ar, 0, sizeof ar);
  tpc_ar_status_t st;
  memset(&st, 0, sizeof st);
  ar.host_status = &st;
  c->arena = &ar;
  cr_assert_eq(tpc_comm_abort(c), TPC_SUCCESS);
  cr_assert_eq(st.abort_flag, 1u, "kernels poll this word and stop waiting");
  char buf[16] = {0};
  ASSERT_ERR(tpc_all_reduce(buf, buf, 4, TPC_FLOAT32, TPC_SUM, c, 0), TPC_ERR_ABORTED, "aborted");
  tpc_status_t async;
  cr_assert_eq(tpc_comm_get_async_error(c, &async), TPC_SUCCESS);
  cr_assert_eq(async, TPC_ERR_ABORTED);
  st.error = TPC_AR_ERR_ABORTED;
  cr_assert_eq(tpc_comm_get_async_error(c, &async), TPC_SUCCESS);
  cr_assert_eq(async, TPC_ERR_ABORTED);
  c->arena = NULL;
  free(c);
}

Test(api, last_error_without_comm_is_thread_local) {
  tpc_comm_rank(NULL, NULL);
  cr_assert(strstr(tpc_get_last_error(NULL), "comm is NULL"));
  cr_assert(strstr(tpc_get_last_error(NULL), "invalid argument"), "the status is part of the message");
}

Test(api, tp_qknorm_bad_arguments) {
  struct tpc_comm* c = fake_comm();
  static _Alignas(16) char buf[4096];
  void* b = buf;
  ASSERT_ERR(tpc_tp_qk_rmsnorm(NULL, b, b, b, b, 4, 64, 8, 64, 8, 1e-6f, TPC_BFLOAT16, 0), TPC_ERR_INVALID_ARGUMENT,
             "comm is NULL");
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, b, b, b, b, 4, 100, 8, 104, 8, 1e-6f, TPC_BFLOAT16, 0), TPC_ERR_INVALID_ARGUMENT,
             "q_dim_local=100");
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, b, b, b, b, 4, 64, 0, 64, 8, 1e-6f, TPC_BFLOAT16, 0), TPC_ERR_INVALID_ARGUMENT,
             "k_dim_local=0");
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, b, b, b, b, 4, 64, 8, 32, 8, 1e-6f, TPC_BFLOAT16, 0), TPC_ERR_INVALID_ARGUMENT,
             "q_stride=32");
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, b, b, NULL, b, 4, 64, 8, 64, 8, 1e-6f, TPC_BFLOAT16, 0), TPC_ERR_INVALID_ARGUMENT,
             "q_weight is NULL");
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, buf + 2, b, b, b, 4, 64, 8, 64, 8, 1e-6f, TPC_BFLOAT16, 0), TPC_ERR_INVALID_ARGUMENT,
             "not 16-byte aligned");
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, b, b, b, b, 4, 64, 8, 64, 8, -1.0f, TPC_BFLOAT16, 0), TPC_ERR_INVALID_ARGUMENT,
             "eps=-1");
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, b, b, b, b, -3, 64, 8, 64, 8, 1e-6f, TPC_BFLOAT16, 0), TPC_ERR_INVALID_ARGUMENT,
             "num_tokens=-3");
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, b, b, b, b, 4, 64, 8, 64, 8, 1e-6f, TPC_FLOAT32, 0), TPC_ERR_UNSUPPORTED,
             "TPC_FLOAT32");
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, b, b, b, b, 4, 64, 8, 64, 8, 1e-6f, (tpc_dtype_t)7, 0), TPC_ERR_INVALID_ARGUMENT,
             "dtype=7");
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, b, b, b, b, 4, 32768, 8, 32768, 8, 1e-6f, TPC_BFLOAT16, 0), TPC_ERR_UNSUPPORTED,
             "exceeds 32768");
  ASSERT_ERR(tpc_tp_qk_rmsnorm_path(c, b, b, b, b, 4, 64, 8, 64, 8, 1e-6f, TPC_BFLOAT16, (tpc_qknorm_path_t)9, 0),
             TPC_ERR_INVALID_ARGUMENT, "path=9");
  cr_assert_eq(tpc_tp_qk_rmsnorm(c, NULL, NULL, NULL, NULL, 0, 64, 8, 64, 8, 1e-6f, TPC_BFLOAT16, 0),
               TPC_ERR_INVALID_ARGUMENT, "NULL q is rejected even with 0 tokens");
  void* k = buf + 2048;
  ASSERT_ERR(tpc_tp_qk_rmsnorm(c, b, b, b, b, 4, 64, 8, 64, 8, 1e-6f, TPC_BFLOAT16, 0), TPC_ERR_INVALID_ARGUMENT,
             "q and k are the same buffer");
  cr_assert_eq(tpc_tp_qk_rmsnorm(c, b, k, b, b, 0, 64, 8, 64, 8, 1e-6f, TPC_BFLOAT16, 0), TPC_SUCCESS,
               "0 tokens is a no-op");
  c->transport = TPC_TRANSPORT_NCCL;
  strcpy(c->transport_reason, "nccl: TPCOMM_P2P_DISABLE=1");
  c->qknorm_max_tokens = 100;
  ASSERT_ERR(tpc_tp_qk_rmsnorm_path(c, b, k, b, b, 4, 64, 8, 64, 8, 1e-6f, TPC_BFLOAT16, TPC_QKNORM_FUSED, 0),
             TPC_ERR_UNSUPPORTED, "custom transport");
  free(c);
}

/* auto's choice without a GPU: world size 1 always takes the one-kernel path (nothing to exchange); more ranks
 * without the custom transport (or above the exchange capacity) take the unfused path. */
Test(api, tp_qknorm_choice) {
  struct tpc_comm* c = fake_comm();
  c->qknorm_max_tokens = 4096;
  c->qknorm_fused_max_tokens = -1;
  c->transport = TPC_TRANSPORT_NCCL;
  tpc_qknorm_path_t p = TPC_QKNORM_AUTO;
  cr_assert_eq(tpc_tp_qk_rmsnorm_choice(c, 1, 1, &p), TPC_SUCCESS);
  cr_assert_eq(p, TPC_QKNORM_UNFUSED, "2 ranks over NCCL: unfused, got %d", (int)p);
  c->nranks = 1;
  c->transport = TPC_TRANSPORT_LOCAL;
  for (int64_t t = 1; t <= 65536; t *= 16) {
    p = TPC_QKNORM_AUTO;
    cr_assert_eq(tpc_tp_qk_rmsnorm_choice(c, t, t & 1, &p), TPC_SUCCESS);
    cr_assert_eq(p, TPC_QKNORM_FUSED, "world size 1, %lld tokens: the one-kernel path, got %d", (long long)t, (int)p);
  }
  ASSERT_ERR(tpc_tp_qk_rmsnorm_choice(c, 1, 1, NULL), TPC_ERR_INVALID_ARGUMENT, "path is NULL");
  free(c);
}
