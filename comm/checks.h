/* checks.h — macros that turn foreign return codes (CUDA, NCCL, libc) into tpc_status_t with a message
 * naming the call and where it failed, and propagate tpcomm statuses. Internal to the library.
 * The ..._GOTO forms set `res` and jump to a cleanup label (single-exit unwinding, UCX style). */
#ifndef TPCOMM_CHECKS_H
#define TPCOMM_CHECKS_H

#include <errno.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "debug.h"

#define TPC_CHECK(call)                                                         \
  do {                                                                          \
    tpc_status_t tpc_res_ = (call);                                             \
    if (tpc_res_ != TPC_SUCCESS) {                                              \
      TPC_TRACE(TPC_SUB_ALL, "%s:%d -> %d", __FILE__, __LINE__, (int)tpc_res_); \
      return tpc_res_;                                                          \
    }                                                                           \
  } while (0)

#define TPC_CHECK_GOTO(call, res, label) \
  do {                                   \
    (res) = (call);                      \
    if ((res) != TPC_SUCCESS) goto label; \
  } while (0)

#define TPC_CUDA_CHECK_COMM(comm, call)                                                               \
  do {                                                                                                \
    cudaError_t tpc_cerr_ = (call);                                                                   \
    if (tpc_cerr_ != cudaSuccess)                                                                     \
      return tpc_error((comm), TPC_ERR_CUDA, "%s failed: %s (%s:%d)", #call,                          \
                       cudaGetErrorString(tpc_cerr_), __FILE__, __LINE__);                            \
  } while (0)
#define TPC_CUDA_CHECK(call) TPC_CUDA_CHECK_COMM(NULL, call)

#define TPC_CUDA_CHECK_GOTO(comm, call, res, label)                                                   \
  do {                                                                                                \
    cudaError_t tpc_cerr_ = (call);                                                                   \
    if (tpc_cerr_ != cudaSuccess) {                                                                   \
      (res) = tpc_error((comm), TPC_ERR_CUDA, "%s failed: %s (%s:%d)", #call,                         \
                        cudaGetErrorString(tpc_cerr_), __FILE__, __LINE__);                           \
      goto label;                                                                                     \
    }                                                                                                 \
  } while (0)

#define TPC_SYS_CHECK(call, what)                                                                     \
  do {                                                                                                \
    if ((call) < 0)                                                                                   \
      return tpc_error(NULL, TPC_ERR_SYSTEM, "%s failed: %s (%s:%d)", (what), strerror(errno),        \
                       __FILE__, __LINE__);                                                           \
  } while (0)

#endif
