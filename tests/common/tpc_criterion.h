/* tpc_criterion.h — assertion macros shared by the Criterion suites (testutil.h stays Criterion-free):
 *   ASSERT_ERR(call, status, needle)  the call returns `status` and its message contains `needle`
 *   TPC_OK(call)                      the call returns TPC_SUCCESS (the message is shown otherwise)
 *   CUDA_OK(call)                     the CUDA runtime call returns cudaSuccess (defined when the suite
 *                                     includes cuda_runtime_api.h before this header)
 * Relies on <criterion/criterion.h>, <string.h> and tpcomm/tpcomm.h (tpc_get_last_error). */
#ifndef TPCOMM_TESTS_TPC_CRITERION_H
#define TPCOMM_TESTS_TPC_CRITERION_H

#include <criterion/criterion.h>
#include <string.h>

#include "tpcomm/tpcomm.h"

#define ASSERT_ERR(call, status, needle)                                                          \
  do {                                                                                            \
    tpc_status_t s_ = (call);                                                                     \
    cr_assert_eq(s_, (status), "%s returned %d (%s)", #call, (int)s_, tpc_get_last_error(NULL)); \
    cr_assert(strstr(tpc_get_last_error(NULL), (needle)), "%s: message '%s' lacks '%s'", #call,   \
              tpc_get_last_error(NULL), (needle));                                                \
  } while (0)

#define TPC_OK(call)                                                                                \
  do {                                                                                              \
    tpc_status_t s_ = (call);                                                                       \
    cr_assert_eq(s_, TPC_SUCCESS, "%s returned %d: %s", #call, (int)s_, tpc_get_last_error(NULL)); \
  } while (0)

#ifdef CUDART_VERSION
#define CUDA_OK(call)                                                                                          \
  do {                                                                                                         \
    cudaError_t e_ = (call);                                                                                   \
    cr_assert_eq(e_, cudaSuccess, "%s failed: %s (%s:%d)", #call, cudaGetErrorString(e_), __FILE__, __LINE__); \
  } while (0)
#endif

#endif
