/* debug.h — logging (TPCOMM_DEBUG, TPCOMM_DEBUG_SUBSYS) and the last-error message of each call.
 *
 * Lines look like "host:pid [rank] TPC INFO P2P message". WARN always prints unless TPCOMM_DEBUG=NONE;
 * INFO and TRACE print when TPCOMM_DEBUG asks for them and the subsystem is enabled. tpc_error() is the
 * one way a library call reports a failure: it records the message (thread-local and, when given, on
 * the communicator), logs it as WARN, and returns the status so callers write `return tpc_error(...)`. */
#ifndef TPCOMM_DEBUG_H
#define TPCOMM_DEBUG_H

#include <stdarg.h>

#include "tpcomm/tpcomm.h"

typedef enum { TPC_LOG_NONE = 0, TPC_LOG_WARN = 1, TPC_LOG_INFO = 2, TPC_LOG_TRACE = 3 } tpc_log_level_t;

/* Subsystems, a bitmask for TPCOMM_DEBUG_SUBSYS=INIT,BOOT,P2P,COLL,ENV,ALLOC (default ALL). */
enum {
  TPC_SUB_INIT = 1u << 0,
  TPC_SUB_BOOT = 1u << 1,
  TPC_SUB_P2P = 1u << 2,
  TPC_SUB_COLL = 1u << 3,
  TPC_SUB_ENV = 1u << 4,
  TPC_SUB_ALLOC = 1u << 5,
  TPC_SUB_ALL = 0xffffu
};

void tpc_log(tpc_log_level_t level, unsigned subsys, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
int tpc_log_enabled(tpc_log_level_t level, unsigned subsys);
/* The rank printed in log lines of this process (-1 before a communicator exists). */
void tpc_log_set_rank(int rank);

#define TPC_WARN(...) tpc_log(TPC_LOG_WARN, TPC_SUB_ALL, __VA_ARGS__)
#define TPC_INFO(sub, ...) tpc_log(TPC_LOG_INFO, (sub), __VA_ARGS__)
#define TPC_TRACE(sub, ...) tpc_log(TPC_LOG_TRACE, (sub), __VA_ARGS__)

struct tpc_comm;
/* Records and logs a failure; returns status. comm may be NULL. */
tpc_status_t tpc_error(struct tpc_comm* comm, tpc_status_t status, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
tpc_status_t tpc_verror(struct tpc_comm* comm, tpc_status_t status, const char* fmt, va_list ap);
/* The comm-side message buffer (implemented in comm.c; NULL for an invalid comm). */
char* tpc_comm_error_buffer(struct tpc_comm* comm, size_t* len);
#define TPC_ERRMSG_LEN 512
/* The last failure message of this thread ("no error" before any). */
const char* tpc_thread_last_error(void);

#endif
