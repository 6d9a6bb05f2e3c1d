/* debug.c — the logger and the last-error bookkeeping declared in debug.h.
 * Relies on: TPCOMM_DEBUG / TPCOMM_DEBUG_SUBSYS / TPCOMM_DEBUG_FILE read once (thread-safe via
 * pthread_once); messages are formatted into one buffer and written with a single fputs so that lines of
 * several threads or ranks do not interleave. */
#include "debug.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static tpc_log_level_t g_level = TPC_LOG_WARN;
static unsigned g_subsys = TPC_SUB_ALL;
static FILE* g_file;
static char g_host[64] = "?";
static int g_rank = -1;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Thread_local char t_last_error[TPC_ERRMSG_LEN] = "no error";

static const struct {
  const char* name;
  unsigned bit;
} k_subsys[] = {{"INIT", TPC_SUB_INIT}, {"BOOT", TPC_SUB_BOOT}, {"P2P", TPC_SUB_P2P}, {"COLL", TPC_SUB_COLL},
                {"ENV", TPC_SUB_ENV},   {"ALLOC", TPC_SUB_ALLOC}, {"ALL", TPC_SUB_ALL}};

static void log_init(void) {
  const char* lv = getenv("TPCOMM_DEBUG");
  if (lv) {
    if (!strcasecmp(lv, "NONE")) g_level = TPC_LOG_NONE;
    else if (!strcasecmp(lv, "WARN")) g_level = TPC_LOG_WARN;
    else if (!strcasecmp(lv, "INFO")) g_level = TPC_LOG_INFO;
    else if (!strcasecmp(lv, "TRACE")) g_level = TPC_LOG_TRACE;
    else fprintf(stderr, "tpcomm: TPCOMM_DEBUG='%s' is not NONE|WARN|INFO|TRACE; using WARN\n", lv);
  }
  const char* ss = getenv("TPCOMM_DEBUG_SUBSYS");
  if (ss && *ss) {
    unsigned mask = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", ss);
    char* save = NULL;
    for (char* tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
      unsigned bit = 0;
      for (size_t i = 0; i < sizeof k_subsys / sizeof k_subsys[0]; i++)
        if (!strcasecmp(tok, k_subsys[i].name)) bit = k_subsys[i].bit;
      if (!bit) fprintf(stderr, "tpcomm: TPCOMM_DEBUG_SUBSYS: unknown subsystem '%s' ignored\n", tok);
      mask |= bit;
    }
    if (mask) g_subsys = mask;
  }
  g_file = stderr;
  const char* f = getenv("TPCOMM_DEBUG_FILE");
  if (f && *f) {
    char path[512];
    /* %h -> host, %p -> pid, as in NCCL_DEBUG_FILE */
    gethostname(g_host, sizeof g_host - 1);
    size_t o = 0;
    for (const char* c = f; *c && o < sizeof path - 32; c++) {
      if (c[0] == '%' && c[1] == 'h') o += snprintf(path + o, sizeof path - o, "%s", g_host), c++;
      else if (c[0] == '%' && c[1] == 'p') o += snprintf(path + o, sizeof path - o, "%d", (int)getpid()), c++;
      else path[o++] = *c;
    }
    path[o] = 0;
    FILE* fp = fopen(path, "a");
    if (fp) {
      setvbuf(fp, NULL, _IOLBF, 0);
      g_file = fp;
    } else {
      fprintf(stderr, "tpcomm: cannot open TPCOMM_DEBUG_FILE '%s'; logging to stderr\n", path);
    }
  }
  gethostname(g_host, sizeof g_host - 1);
  char* dot = strchr(g_host, '.');
  if (dot) *dot = 0;
}

int tpc_log_enabled(tpc_log_level_t level, unsigned subsys) {
  pthread_once(&g_once, log_init);
  return level <= g_level && (level == TPC_LOG_WARN || (subsys & g_subsys));
}

void tpc_log_set_rank(int rank) { g_rank = rank; }

static void vlog(tpc_log_level_t level, unsigned subsys, const char* fmt, va_list ap) {
  static const char* names[] = {"NONE", "WARN", "INFO", "TRACE"};
  char line[1024];
  int n = snprintf(line, sizeof line, "%s:%d [%d] TPC %s ", g_host, (int)getpid(), g_rank, names[level]);
  if (n < 0) return;
  int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  size_t len = (m < 0) ? (size_t)n : (size_t)n + (size_t)m;
  if (len > sizeof line - 2) len = sizeof line - 2;
  line[len] = '\n';
  line[len + 1] = 0;
  fputs(line, g_file);
}

void tpc_log(tpc_log_level_t level, unsigned subsys, const char* fmt, ...) {
  if (!tpc_log_enabled(level, subsys)) return;
  va_list ap;
  va_start(ap, fmt);
  vlog(level, subsys, fmt, ap);
  va_end(ap);
}

tpc_status_t tpc_verror(struct tpc_comm* comm, tpc_status_t status, const char* fmt, va_list ap) {
  char msg[TPC_ERRMSG_LEN];
  vsnprintf(msg, sizeof msg, fmt, ap);
  snprintf(t_last_error, sizeof t_last_error, "%s: %s", tpc_status_string(status), msg);
  size_t len = 0;
  char* cbuf = comm ? tpc_comm_error_buffer(comm, &len) : NULL;
  if (cbuf) snprintf(cbuf, len, "%s", t_last_error);
  tpc_log(TPC_LOG_WARN, TPC_SUB_ALL, "%s", t_last_error);
  return status;
}

tpc_status_t tpc_error(struct tpc_comm* comm, tpc_status_t status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  tpc_status_t s = tpc_verror(comm, status, fmt, ap);
  va_end(ap);
  return s;
}

const char* tpc_thread_last_error(void) { return t_last_error; }

const char* tpc_status_string(tpc_status_t status) {
  switch (status) {
    case TPC_SUCCESS: return "success";
    case TPC_ERR_INVALID_ARGUMENT: return "invalid argument";
    case TPC_ERR_INVALID_USAGE: return "invalid usage";
    case TPC_ERR_CUDA: return "CUDA error";
    case TPC_ERR_NCCL: return "NCCL error";
    case TPC_ERR_SYSTEM: return "system error";
    case TPC_ERR_TIMEOUT: return "timeout";
    case TPC_ERR_UNSUPPORTED: return "unsupported";
    case TPC_ERR_INTERNAL: return "internal error";
    case TPC_ERR_NO_DEVICE: return "no CUDA device";
    case TPC_ERR_BOOTSTRAP: return "bootstrap error";
    case TPC_ERR_ABORTED: return "aborted";
    default: return "unknown status";
  }
}
