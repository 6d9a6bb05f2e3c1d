/* param.c — the table of tunables (see param.h) and their parsing. Every environment variable tpcomm
 * reads is in tpc_params[]; docs/env.md mirrors it and tests/comm/test_param.c checks both agree. */
#include "param.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "debug.h"

const tpc_param_desc_t tpc_params[TPC_NUM_PARAMS] = {
    [TPC_P_TIMEOUT_MS] = {"TPCOMM_TIMEOUT_MS", TPC_PARAM_INT, "10000",
                          "Milliseconds to wait for a peer: at bootstrap (a rank that never arrives) and in every "
                          "device-side wait of the custom kernels. Expiry is TPC_ERR_TIMEOUT, never a hang."},
    [TPC_P_MAX_BYTES] = {"TPCOMM_MAX_BYTES", TPC_PARAM_BYTES, "64M",
                         "Largest all-reduce (bytes) served by the custom kernels; larger ones go to NCCL. Sizes the "
                         "two-shot buffer of the IPC arena."},
    [TPC_P_ALLREDUCE_ALGO] = {"TPCOMM_ALLREDUCE_ALGO", TPC_PARAM_ALGO, "auto",
                              "auto, oneshot, twoshot or nccl: force one all-reduce algorithm for every call."},
    [TPC_P_P2P_DISABLE] = {"TPCOMM_P2P_DISABLE", TPC_PARAM_BOOL, "0",
                           "1: never use the custom kernels; everything goes through NCCL."},
    [TPC_P_ALLOW_SHARED_GPU] = {"TPCOMM_ALLOW_SHARED_GPU", TPC_PARAM_BOOL, "0",
                                "1: allow several ranks on one GPU (tests only: run under CUDA MPS). NCCL refuses "
                                "such jobs, so messages above the custom limit then fail with TPC_ERR_UNSUPPORTED."},
    [TPC_P_NCCL] = {"TPCOMM_NCCL", TPC_PARAM_BOOL, "1",
                    "0: do not create an NCCL communicator (saves its init time and memory); messages the custom "
                    "kernels cannot serve then fail with TPC_ERR_UNSUPPORTED."},
    [TPC_P_PUSH_MAX_BYTES] = {"TPCOMM_PUSH_MAX_BYTES", TPC_PARAM_BYTES, "",
                              "Size of each one-shot push slot (2 slots per peer are allocated); default by "
                              "world size (docs/architecture.md)."},
    [TPC_P_ONESHOT_MAX_BYTES] = {"TPCOMM_ONESHOT_MAX_BYTES", TPC_PARAM_BYTES, "",
                                 "Messages up to this size use one-shot under auto; default from the tuned table."},
    [TPC_P_NUM_BLOCKS] = {"TPCOMM_NUM_BLOCKS", TPC_PARAM_INT, "0",
                          "Blocks per custom all-reduce kernel (0: the tuned default)."},
    [TPC_P_PDL] = {"TPCOMM_PDL", TPC_PARAM_BOOL, "1",
                   "1: launch kernels with programmatic dependent launch on sm_90+ (overlap the previous kernel's "
                   "tail)."},
    [TPC_P_GEMM_AUTOTUNE] = {"TPCOMM_GEMM_AUTOTUNE", TPC_PARAM_INT, "0",
                             "GEMM handles created from now on autotune each cuBLASLt plan over this many heuristic "
                             "candidates plus split-K variants (0 or 1: off, at most 16; "
                             "tpc_gemm_handle_set_autotune). Tuning times the call's own operands at its first call "
                             "outside graph capture and blocks that call."},
    [TPC_P_QKNORM_MAX_TOKENS] = {"TPCOMM_QKNORM_MAX_TOKENS", TPC_PARAM_INT, "32768",
                                 "Tokens one TP QK-norm exchange covers: sizes the norm slots of the arena "
                                 "(2 x world x tokens x 8 bytes) and the unfused path's buffer; larger calls run in "
                                 "chunks (unfused)."},
    [TPC_P_QKNORM_FUSED_MAX_TOKENS] = {"TPCOMM_QKNORM_FUSED_MAX_TOKENS", TPC_PARAM_INT, "",
                                       "tpc_tp_qk_rmsnorm uses the fused kernel up to this many tokens, the unfused "
                                       "path (partial sums, all-reduce, apply) above. Default: 2048, inside a "
                                       "CUDA graph and eagerly (measured, docs/benchmarks.md)."},
    [TPC_P_NVLINK_REQUIRED] = {"TPCOMM_NVLINK_REQUIRED", TPC_PARAM_BOOL, "",
                               "1: require NVLink between every pair for the custom kernels; 0: P2P over PCIe is "
                               "enough. Default: required for more than 2 ranks."},
    [TPC_P_DEBUG] = {"TPCOMM_DEBUG", TPC_PARAM_STRING, "WARN", "NONE, WARN, INFO or TRACE: log level (WARN prints errors only)."},
    [TPC_P_DEBUG_SUBSYS] = {"TPCOMM_DEBUG_SUBSYS", TPC_PARAM_STRING, "ALL",
                            "Comma-separated INIT,BOOT,P2P,COLL,ENV,ALLOC: subsystems logged at INFO/TRACE."},
    [TPC_P_DEBUG_FILE] = {"TPCOMM_DEBUG_FILE", TPC_PARAM_STRING, "",
                          "Log to this file instead of stderr; %h becomes the host name, %p the pid."},
    [TPC_P_RANK] = {"TPCOMM_RANK", TPC_PARAM_INT, "", "Rank of this process (set by tpcomm-run)."},
    [TPC_P_WORLD_SIZE] = {"TPCOMM_WORLD_SIZE", TPC_PARAM_INT, "", "Number of ranks (set by tpcomm-run)."},
    [TPC_P_LOCAL_RANK] = {"TPCOMM_LOCAL_RANK", TPC_PARAM_INT, "", "Rank among this host's ranks (set by tpcomm-run)."},
    [TPC_P_UNIQUE_ID] = {"TPCOMM_UNIQUE_ID", TPC_PARAM_STRING, "",
                         "The job's unique id in hex (set by tpcomm-run; a secret)."},
    [TPC_P_DEVICE] = {"TPCOMM_DEVICE", TPC_PARAM_INT, "",
                      "CUDA device index for tpc_comm_init_env/tpc_comm_init_mpi (set by tpcomm-run)."},
};

static const char* k_algo_names[] = {"auto", "oneshot", "twoshot", "nccl", "local"};

const char* tpc_algo_name(tpc_algo_t algo) {
  return (algo >= 0 && algo < TPC_NUM_ALGOS) ? k_algo_names[algo] : "invalid";
}

int tpc_param_parse(tpc_param_type_t type, const char* text, int64_t* out) {
  if (!text || !*text) return -1;
  if (type == TPC_PARAM_ALGO) {
    for (int i = 0; i < TPC_NUM_ALGOS; i++)
      if (!strcasecmp(text, k_algo_names[i]) && i != TPC_ALGO_LOCAL) {
        *out = i;
        return 0;
      }
    return -1;
  }
  errno = 0;
  char* end = NULL;
  long long v = strtoll(text, &end, 10);
  if (errno || end == text) return -1;
  if (type == TPC_PARAM_BYTES) {
    int shift = 0;
    switch (toupper((unsigned char)*end)) {
      case 'K': shift = 10; end++; break;
      case 'M': shift = 20; end++; break;
      case 'G': shift = 30; end++; break;
      default: break;
    }
    if (shift && toupper((unsigned char)*end) == 'I') end++; /* KiB, MiB, GiB */
    if (toupper((unsigned char)*end) == 'B') end++;
    if (v < 0 || (shift && v > (INT64_MAX >> shift))) return -1;
    v <<= shift;
  }
  while (isspace((unsigned char)*end)) end++;
  if (*end) return -1;
  if (type == TPC_PARAM_BOOL && v != 0 && v != 1) return -1;
  if (v < 0) return -1;
  *out = v;
  return 0;
}

tpc_status_t tpc_param_resolve(tpc_param_id_t id, int64_t cfg, int64_t* out) {
  const tpc_param_desc_t* d = &tpc_params[id];
  if (cfg != TPC_CONFIG_UNDEF) {
    if (cfg < 0 || (d->type == TPC_PARAM_BOOL && cfg > 1) || (d->type == TPC_PARAM_ALGO && cfg >= TPC_NUM_ALGOS))
      return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "config field for %s has invalid value %lld", d->env,
                       (long long)cfg);
    *out = cfg;
    return TPC_SUCCESS;
  }
  const char* env = getenv(d->env);
  if (env && *env) {
    if (tpc_param_parse(d->type, env, out) != 0)
      return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "environment variable %s='%s' is not a valid %s", d->env, env,
                       d->type == TPC_PARAM_BYTES  ? "byte count (e.g. 64M)"
                       : d->type == TPC_PARAM_BOOL ? "boolean (0 or 1)"
                       : d->type == TPC_PARAM_ALGO ? "algorithm (auto|oneshot|twoshot|nccl)"
                                                   : "non-negative integer");
    TPC_INFO(TPC_SUB_ENV, "%s set by environment to %s", d->env, env);
    return TPC_SUCCESS;
  }
  if (!*d->def) {
    *out = -1; /* no default: caller decides */
    return TPC_SUCCESS;
  }
  if (tpc_param_parse(d->type, d->def, out) != 0)
    return tpc_error(NULL, TPC_ERR_INTERNAL, "default of %s ('%s') does not parse", d->env, d->def);
  return TPC_SUCCESS;
}
