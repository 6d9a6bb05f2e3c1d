/* test_param.c — parsing and resolution of tunables (config > environment > default), malformed values
 * rejected with the variable and value named, every tunable documented in docs/env.md, status strings. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "debug.h"
#include "param.h"

Test(param, parse_ints_bytes_bools_algos) {
  int64_t v;
  cr_assert_eq(tpc_param_parse(TPC_PARAM_INT, "1234", &v), 0);
  cr_assert_eq(v, 1234);
  cr_assert_eq(tpc_param_parse(TPC_PARAM_BYTES, "64M", &v), 0);
  cr_assert_eq(v, 64ll << 20);
  cr_assert_eq(tpc_param_parse(TPC_PARAM_BYTES, "3k", &v), 0);
  cr_assert_eq(v, 3072);
  cr_assert_eq(tpc_param_parse(TPC_PARAM_BYTES, "2GiB", &v), 0);
  cr_assert_eq(v, 2ll << 30);
  cr_assert_eq(tpc_param_parse(TPC_PARAM_BYTES, "4096", &v), 0);
  cr_assert_eq(v, 4096);
  cr_assert_eq(tpc_param_parse(TPC_PARAM_BOOL, "1", &v), 0);
  cr_assert_eq(v, 1);
  cr_assert_eq(tpc_param_parse(TPC_PARAM_ALGO, "TwoShot", &v), 0);
  cr_assert_eq(v, TPC_ALGO_TWOSHOT);
  cr_assert_eq(tpc_param_parse(TPC_PARAM_ALGO, "nccl", &v), 0);
  cr_assert_eq(v, TPC_ALGO_NCCL);
}

Test(param, parse_rejects_garbage) {
  int64_t v;
  const char* bad_int[] = {"", "abc", "12x", "-5", "1.5"};
  for (size_t i = 0; i < sizeof bad_int / sizeof bad_int[0]; i++)
    cr_assert_neq(tpc_param_parse(TPC_PARAM_INT, bad_int[i], &v), 0, "'%s' parsed", bad_int[i]);
  cr_assert_neq(tpc_param_parse(TPC_PARAM_BYTES, "5Q", &v), 0);
  cr_assert_neq(tpc_param_parse(TPC_PARAM_BYTES, "99999999999G", &v), 0);
  cr_assert_neq(tpc_param_parse(TPC_PARAM_BOOL, "2", &v), 0);
  cr_assert_neq(tpc_param_parse(TPC_PARAM_ALGO, "local", &v), 0);
  cr_assert_neq(tpc_param_parse(TPC_PARAM_ALGO, "fast", &v), 0);
}

Test(param, resolve_config_env_default) {
  int64_t v;
  unsetenv("TPCOMM_TIMEOUT_MS");
  cr_assert_eq(tpc_param_resolve(TPC_P_TIMEOUT_MS, TPC_CONFIG_UNDEF, &v), TPC_SUCCESS);
  cr_assert_eq(v, 10000);
  setenv("TPCOMM_TIMEOUT_MS", "250", 1);
  cr_assert_eq(tpc_param_resolve(TPC_P_TIMEOUT_MS, TPC_CONFIG_UNDEF, &v), TPC_SUCCESS);
  cr_assert_eq(v, 250);
  cr_assert_eq(tpc_param_resolve(TPC_P_TIMEOUT_MS, 777, &v), TPC_SUCCESS, "config beats environment");
  cr_assert_eq(v, 777);
  unsetenv("TPCOMM_TIMEOUT_MS");
  unsetenv("TPCOMM_PUSH_MAX_BYTES");
  cr_assert_eq(tpc_param_resolve(TPC_P_PUSH_MAX_BYTES, TPC_CONFIG_UNDEF, &v), TPC_SUCCESS);
  cr_assert_eq(v, -1, "no default: the caller picks one by world size");
}

Test(param, malformed_env_names_variable_and_value) {
  int64_t v;
  setenv("TPCOMM_MAX_BYTES", "lots", 1);
  cr_assert_eq(tpc_param_resolve(TPC_P_MAX_BYTES, TPC_CONFIG_UNDEF, &v), TPC_ERR_INVALID_ARGUMENT);
  const char* msg = tpc_thread_last_error();
  cr_assert(strstr(msg, "TPCOMM_MAX_BYTES") && strstr(msg, "'lots'"), "%s", msg);
  unsetenv("TPCOMM_MAX_BYTES");
  setenv("TPCOMM_ALLREDUCE_ALGO", "fastest", 1);
  cr_assert_eq(tpc_param_resolve(TPC_P_ALLREDUCE_ALGO, TPC_CONFIG_UNDEF, &v), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_thread_last_error(), "fastest"));
  unsetenv("TPCOMM_ALLREDUCE_ALGO");
  cr_assert_eq(tpc_param_resolve(TPC_P_P2P_DISABLE, 3, &v), TPC_ERR_INVALID_ARGUMENT, "config bool out of range");
}

Test(param, every_tunable_documented) {
  char path[1024];
  snprintf(path, sizeof path, "%s/docs/env.md", TPC_SOURCE_DIR);
  FILE* f = fopen(path, "r");
  cr_assert_not_null(f, "cannot open %s", path);
  static char doc[1 << 16];
  size_t n = fread(doc, 1, sizeof doc - 1, f);
  doc[n] = 0;
  fclose(f);
  for (int i = 0; i < TPC_NUM_PARAMS; i++) {
    char key[128];
    snprintf(key, sizeof key, "`%s`", tpc_params[i].env);
    cr_assert(strstr(doc, key), "docs/env.md does not list %s", tpc_params[i].env);
    cr_assert(tpc_params[i].help && strlen(tpc_params[i].help) > 10, "%s has no help", tpc_params[i].env);
    if (*tpc_params[i].def && tpc_params[i].type != TPC_PARAM_STRING) {
      int64_t v;
      cr_assert_eq(tpc_param_parse(tpc_params[i].type, tpc_params[i].def, &v), 0, "default of %s", tpc_params[i].env);
    }
  }
}

Test(status, strings_are_distinct) {
  for (int i = 0; i < TPC_NUM_STATUS; i++) {
    const char* a = tpc_status_string((tpc_status_t)i);
    cr_assert(a && *a && strcmp(a, "unknown status") != 0, "status %d", i);
    for (int j = 0; j < i; j++) cr_assert_str_neq(a, tpc_status_string((tpc_status_t)j));
  }
  cr_assert_str_eq(tpc_status_string((tpc_status_t)999), "unknown status");
  cr_assert_str_eq(tpc_status_string(TPC_ERR_TIMEOUT), "timeout");
}

Test(status, algo_names) {
  cr_assert_str_eq(tpc_algo_name(TPC_ALGO_ONESHOT), "oneshot");
  cr_assert_str_eq(tpc_algo_name(TPC_ALGO_TWOSHOT), "twoshot");
  cr_assert_str_eq(tpc_algo_name((tpc_algo_t)42), "invalid");
}
