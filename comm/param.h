/* param.h — every tunable of tpcomm, declared once (param.c) with its environment name, default and
 * help; docs/env.md lists the same table (a test checks that they agree).
 *
 * Values resolve as: config field (when not TPC_CONFIG_UNDEF) > environment > default. A malformed
 * environment value is an error (TPC_ERR_INVALID_ARGUMENT naming the variable and the value), never
 * silently replaced by the default. */
#ifndef TPCOMM_PARAM_H
#define TPCOMM_PARAM_H

#include <stdint.h>

#include "tpcomm/tpcomm.h"

typedef enum { TPC_PARAM_INT, TPC_PARAM_BYTES, TPC_PARAM_BOOL, TPC_PARAM_ALGO, TPC_PARAM_STRING } tpc_param_type_t;

typedef enum {
  TPC_P_TIMEOUT_MS,
  TPC_P_MAX_BYTES,
  TPC_P_ALLREDUCE_ALGO,
  TPC_P_P2P_DISABLE,
  TPC_P_ALLOW_SHARED_GPU,
  TPC_P_NCCL,
  TPC_P_PUSH_MAX_BYTES,
  TPC_P_ONESHOT_MAX_BYTES,
  TPC_P_NUM_BLOCKS,
  TPC_P_PDL,
  TPC_P_GEMM_AUTOTUNE,
  TPC_P_QKNORM_MAX_TOKENS,
  TPC_P_QKNORM_FUSED_MAX_TOKENS,
  TPC_P_NVLINK_REQUIRED,
  TPC_P_DEBUG,
  TPC_P_DEBUG_SUBSYS,
  TPC_P_DEBUG_FILE,
  TPC_P_RANK,
  TPC_P_WORLD_SIZE,
  TPC_P_LOCAL_RANK,
  TPC_P_UNIQUE_ID,
  TPC_P_DEVICE,
  TPC_NUM_PARAMS
} tpc_param_id_t;

typedef struct {
  const char* env;      /* full variable name, e.g. "TPCOMM_TIMEOUT_MS" */
  tpc_param_type_t type;
  const char* def;      /* default, as text ("" = unset) */
  const char* help;
} tpc_param_desc_t;

extern const tpc_param_desc_t tpc_params[TPC_NUM_PARAMS];

/* Parses a value of the given type: integers (decimal), bytes (with optional K/M/G suffix, powers of 2),
 * bools (0/1), algorithms (auto|oneshot|twoshot|nccl). Returns 0 on success. */
int tpc_param_parse(tpc_param_type_t type, const char* text, int64_t* out);

/* Resolves param `id`: config value `cfg` if != TPC_CONFIG_UNDEF, else the environment, else the
 * default. Returns TPC_ERR_INVALID_ARGUMENT (with message) on a malformed or negative value. */
tpc_status_t tpc_param_resolve(tpc_param_id_t id, int64_t cfg, int64_t* out);

#endif
