/* tpcomm_run.c — tpcomm-run, the single-host launcher: starts N copies of a program, one rank per GPU,
 * gives them what tpc_comm_init_env() reads, prefixes their output with the rank, and tears the job down
 * when one rank fails.
 *
 *   tpcomm-run [-n N] [--gpus 0,1,...] [--bind numa|none] [--allow-shared-gpu] [--timeout-ms MS] [--]
 *              prog args...
 *
 * What every rank gets: TPCOMM_RANK, TPCOMM_WORLD_SIZE, TPCOMM_LOCAL_RANK (= rank: one host),
 * TPCOMM_UNIQUE_ID (one id made here with tpc_get_unique_id(), identical for all), TPCOMM_DEVICE (its GPU,
 * only when GPUs are visible), TPCOMM_ALLOW_SHARED_GPU=1 with --allow-shared-gpu, TPCOMM_TIMEOUT_MS with
 * --timeout-ms; stale copies of the launcher-owned names in the inherited environment are dropped, the
 * rest is kept. CUDA_VISIBLE_DEVICES is never set: every rank must still see its peers' GPUs to probe P2P.
 * Rank i runs on GPU gpus[i % len(gpus)]; more ranks than GPUs needs --allow-shared-gpu.
 *
 * Relies on:
 *  - CUDA in this process only (device count, NUMA node of each GPU via tpc_gpu_numa_node). A child does
 *    nothing between fork and exec but set up fds, its process group and, with --bind numa,
 *    tpc_bind_numa_node() (libnuma only; the CPU affinity and memory policy survive exec).
 *  - Each rank leads its own process group (setpgid on both sides of fork), so a signal reaches the rank
 *    and whatever it started; PR_SET_PDEATHSIG kills a rank whose launcher dies. Because ranks are not in
 *    the terminal's foreground group, rank 0 reads the launcher's stdin only when that is not a terminal;
 *    all other stdins are /dev/null.
 *  - One thread: a poll() loop over every rank's stdout/stderr pipe and a self-pipe fed by the handlers of
 *    SIGCHLD, SIGINT, SIGTERM and SIGHUP. Output is cut into whole lines ("[rank] line", one write() each,
 *    so lines never interleave; a line longer than 64 KiB is cut into pieces), a final partial line is
 *    flushed at EOF, and a rank's remaining output is printed before the report of its exit.
 *  - Teardown: the first rank that exits non-zero or is killed by a signal is reported, every rank's
 *    group gets SIGTERM, then SIGKILL after 2 s; the exit status is that rank's status or 128+signal.
 *    SIGINT/SIGTERM/SIGHUP to the launcher are forwarded the same way (exit 128+signal); a second one
 *    sends SIGKILL at once.
 * Errors in this program print a line and exit(): usage errors exit 2, a program that cannot be executed
 * makes its rank exit 127. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <numa.h>

#include "tpcomm/tpcomm.h"

extern char** environ;

enum {
  MAX_RANKS = 1024,
  EXIT_USAGE = 2,
  GRACE_MS = 2000,          /* SIGTERM -> SIGKILL, and the longest wait for output after the last exit */
  DRAIN_QUIET_MS = 200,     /* after every rank exited: stop reading once the pipes are this long quiet */
  LINE_MAX_BYTES = 1 << 16, /* longer lines are cut into pieces */
};

static const char k_usage[] =
    "usage: tpcomm-run [-n N] [--gpus 0,1,...] [--bind numa|none] [--allow-shared-gpu] [--timeout-ms MS] "
    "[--] prog args...\n";

static const char k_help[] =
    "Starts N ranks of prog on this host, one per GPU, with TPCOMM_RANK, TPCOMM_WORLD_SIZE,\n"
    "TPCOMM_LOCAL_RANK, TPCOMM_UNIQUE_ID and TPCOMM_DEVICE set for tpc_comm_init_env().\n"
    "  -n N                number of ranks, 1..1024 (default: the GPUs in --gpus, else every visible GPU)\n"
    "  --gpus 0,1,...      GPUs to use; rank i runs on the (i mod len)-th (default: all visible)\n"
    "  --bind numa|none    bind each rank's CPUs and memory to its GPU's NUMA node (default numa)\n"
    "  --allow-shared-gpu  allow more ranks than GPUs (sets TPCOMM_ALLOW_SHARED_GPU=1; tests only)\n"
    "  --timeout-ms MS     peer timeout of the ranks (sets TPCOMM_TIMEOUT_MS)\n"
    "Output lines are prefixed with \"[rank] \". When a rank fails the others get SIGTERM, then SIGKILL\n"
    "after 2 s, and tpcomm-run exits with that rank's status (128+signal when it was killed).\n";

typedef enum { BIND_DEFAULT, BIND_NUMA, BIND_NONE } bind_mode_t;

typedef struct {
  int nranks;           /* 0: not given */
  int gpus[MAX_RANKS];  /* --gpus */
  int ngpus;            /* 0: --gpus not given */
  const char* gpus_arg; /* the text of --gpus, for messages */
  bind_mode_t bind;
  int allow_shared_gpu;
  long timeout_ms; /* -1: not given */
  char** prog;     /* program and its arguments, NULL-terminated */
} options_t;

typedef struct {
  int fd;  /* read end of the pipe; -1 once closed */
  int out; /* where its lines go: 1 or 2 */
  char* buf;
  size_t len, cap;
} stream_t;

typedef struct {
  int rank;
  pid_t pid; /* also its process group */
  int device;    /* -1: no GPU */
  int numa_node; /* node to bind to in the child; -1: do not bind */
  stream_t io[2];
  int done;
} rank_t;

typedef struct {
  rank_t* ranks;
  int n;
  int live;           /* ranks not reaped yet */
  int exit_code;      /* -1 until a failure or a signal decides it */
  int teardown;       /* SIGTERM (or the forwarded signal) sent to every rank */
  int killed;         /* SIGKILL sent to every rank */
  double kill_at;     /* when teardown turns into SIGKILL */
} job_t;

static int g_sigpipe[2] = {-1, -1};
static const int k_forwarded[] = {SIGINT, SIGTERM, SIGHUP};
static struct rlimit g_nofile; /* the limit the ranks get back */

/* ---- small helpers --------------------------------------------------------------------------------- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* our own stdout/stderr is gone: nothing better to do with the text */
    p += w;
    n -= (size_t)w;
  }
}

/* One line "tpcomm-run: ..." on stderr, with one write(). */
static void say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char* fmt, ...) {
  char line[1024];
  int n = snprintf(line, sizeof line, "tpcomm-run: ");
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof line - 2) len = sizeof line - 2;
  line[len++] = '\n';
  write_all(2, line, len);
}

static void usage_error(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_error(const char* fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  say("%s", msg);
  write_all(2, k_usage, sizeof k_usage - 1);
  exit(EXIT_USAGE);
}

static const char* sig_name(int sig, char* buf, size_t len) {
  const char* abbrev = sigabbrev_np(sig);
  if (abbrev) snprintf(buf, len, "SIG%s", abbrev);
  else snprintf(buf, len, "signal %d", sig);
  return buf;
}

/* Whole-string decimal in [lo, hi]; returns 0 on success. */
static int parse_long(const char* text, long lo, long hi, long* out) {
  if (!text || !*text) return -1;
  char* end = NULL;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno || *end || end == text || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

/* ---- arguments ------------------------------------------------------------------------------------- */

static void parse_gpus(const char* text, options_t* o) {
  o->gpus_arg = text;
  o->ngpus = 0;
  const char* p = text;
  for (;;) {
    const char* comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    char item[32];
    long v = 0;
    if (len == 0 || len >= sizeof item)
      usage_error("--gpus '%s': expected a comma-separated list of GPU indices such as 0,1,2,3", text);
    memcpy(item, p, len);
    item[len] = 0;
    if (parse_long(item, 0, INT_MAX, &v) != 0)
      usage_error("--gpus '%s': '%s' is not a GPU index (a number >= 0)", text, item);
    if (o->ngpus == MAX_RANKS) usage_error("--gpus '%s': more than %d entries", text, MAX_RANKS);
    o->gpus[o->ngpus++] = (int)v;
    if (!comma) break;
    p = comma + 1;
  }
}

static void parse_args(int argc, char** argv, options_t* o) {
  enum { OPT_GPUS = 256, OPT_BIND, OPT_SHARED, OPT_TIMEOUT };
  static const struct option longopts[] = {{"gpus", required_argument, NULL, OPT_GPUS},
                                           {"bind", required_argument, NULL, OPT_BIND},
                                           {"allow-shared-gpu", no_argument, NULL, OPT_SHARED},
                                           {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  memset(o, 0, sizeof *o);
  o->timeout_ms = -1;
  opterr = 0;
  int c;
  /* '+': options end at the program name, so its own options are left alone. ':': report missing values. */
  while ((c = getopt_long(argc, argv, "+:n:h", longopts, NULL)) != -1) {
    long v = 0;
    switch (c) {
      case 'n':
        if (parse_long(optarg, 1, MAX_RANKS, &v) != 0)
          usage_error("-n '%s': the number of ranks must be an integer in 1..%d", optarg, MAX_RANKS);
        o->nranks = (int)v;
        break;
      case OPT_GPUS: parse_gpus(optarg, o); break;
      case OPT_BIND:
        if (!strcmp(optarg, "numa")) o->bind = BIND_NUMA;
        else if (!strcmp(optarg, "none")) o->bind = BIND_NONE;
        else usage_error("--bind '%s': expected numa or none", optarg);
        break;
      case OPT_SHARED: o->allow_shared_gpu = 1; break;
      case OPT_TIMEOUT:
        if (parse_long(optarg, 1, INT_MAX, &v) != 0)
          usage_error("--timeout-ms '%s': expected milliseconds in 1..%d", optarg, INT_MAX);
        o->timeout_ms = v;
        break;
      case 'h':
        write_all(1, k_usage, sizeof k_usage - 1);
        write_all(1, k_help, sizeof k_help - 1);
        exit(0);
      case ':': usage_error("option '%s' needs a value", argv[optind - 1]);
      default:
        if (optopt && optopt < 256) usage_error("unknown option '-%c'", optopt);
        usage_error("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind >= argc) usage_error("no program to run");
  o->prog = argv + optind;
}

/* ---- GPUs, placement and the checks that need the device count ------------------------------------ */

static int visible_gpus(const char** why) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError(); /* clear it */
    *why = cudaGetErrorString(err);
    return 0;
  }
  if (count == 0) *why = "cudaGetDeviceCount returned 0";
  return count;
}

/* Fills o->gpus/ngpus/nranks from the visible GPUs and checks them. Returns 0 when there is nothing to
 * launch (no GPU, no -n). */
static int resolve_gpus(options_t* o, int count, const char* why) {
  for (int i = 0; i < o->ngpus; i++) {
    if (count == 0)
      usage_error("--gpus '%s': GPU %d is not visible: no CUDA GPU is visible (%s)", o->gpus_arg, o->gpus[i],
                  why);
    if (o->gpus[i] >= count)
      usage_error("--gpus '%s': GPU %d is not visible (%d visible GPU%s: 0..%d)", o->gpus_arg, o->gpus[i],
                  count, count == 1 ? "" : "s", count - 1);
  }
  if (count == 0) {
    if (o->nranks == 0) {
      say("no CUDA GPU is visible (%s); nothing to launch", why);
      return 0;
    }
    return 1; /* CPU-only job: no devices, no binding */
  }
  if (o->ngpus == 0) {
    o->ngpus = count < MAX_RANKS ? count : MAX_RANKS;
    for (int i = 0; i < o->ngpus; i++) o->gpus[i] = i;
  }
  if (o->nranks == 0) o->nranks = o->ngpus;
  if (!o->allow_shared_gpu) {
    if (o->nranks > o->ngpus)
      usage_error("-n %d runs several ranks per GPU on %d GPU%s; pass --allow-shared-gpu to allow it",
                  o->nranks, o->ngpus, o->ngpus == 1 ? "" : "s");
    for (int i = 0; i < o->nranks; i++)
      for (int j = 0; j < i; j++)
        if (o->gpus[i] == o->gpus[j])
          usage_error("--gpus '%s' gives GPU %d to ranks %d and %d; pass --allow-shared-gpu to allow it",
                      o->gpus_arg, o->gpus[i], j, i);
  }
  return 1;
}

/* Device and NUMA node of every rank. The node is looked up once per GPU, here in the parent. */
static void place_ranks(const options_t* o, int have_gpus, rank_t* ranks) {
  int bind = have_gpus && o->bind != BIND_NONE;
  if (!have_gpus && o->bind == BIND_NUMA) say("--bind numa ignored: no CUDA GPU is visible");
  if (bind && numa_available() < 0) {
    say("--bind numa ignored: libnuma reports no NUMA support on this machine");
    bind = 0;
  }
  for (int r = 0; r < o->nranks; r++) {
    ranks[r].rank = r;
    ranks[r].device = have_gpus ? o->gpus[r % o->ngpus] : -1;
    ranks[r].numa_node = -1;
    if (!bind) continue;
    int first = -1; /* an earlier rank on the same GPU */
    for (int q = 0; q < r && first < 0; q++)
      if (ranks[q].device == ranks[r].device) first = q;
    if (first >= 0) {
      ranks[r].numa_node = ranks[first].numa_node;
      continue;
    }
    int node = -1;
    if (tpc_gpu_numa_node(ranks[r].device, &node) != TPC_SUCCESS)
      say("GPU %d: NUMA node unknown (%s); its ranks are not bound", ranks[r].device, tpc_get_last_error(NULL));
    else if (node < 0)
      say("GPU %d: the system gives no NUMA node for it; its ranks are not bound", ranks[r].device);
    ranks[r].numa_node = node;
  }
}

/* ---- spawning -------------------------------------------------------------------------------------- */

static char* xasprintf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static char* xasprintf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char* s = NULL;
  if (vasprintf(&s, fmt, ap) < 0) {
    say("out of memory");
    exit(1);
  }
  va_end(ap);
  return s;
}

static int launcher_owned(const char* entry) {
  static const char* names[] = {"TPCOMM_RANK=", "TPCOMM_WORLD_SIZE=", "TPCOMM_LOCAL_RANK=", "TPCOMM_UNIQUE_ID=",
                                "TPCOMM_DEVICE="};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strncmp(entry, names[i], strlen(names[i]))) return 1;
  return 0;
}

/* The environment of one rank: ours plus the inherited one minus stale launcher-owned names (and minus
 * the tunables we set). The added strings are owned by the array; free_env() frees both. */
static char** build_env(const options_t* o, const rank_t* r, const char* uid_hex, int* nadded) {
  size_t inherited = 0;
  while (environ[inherited]) inherited++;
  char** env = calloc(inherited + 8, sizeof *env);
  if (!env) {
    say("out of memory");
    exit(1);
  }
  int k = 0;
  env[k++] = xasprintf("TPCOMM_RANK=%d", r->rank);
  env[k++] = xasprintf("TPCOMM_WORLD_SIZE=%d", o->nranks);
  env[k++] = xasprintf("TPCOMM_LOCAL_RANK=%d", r->rank);
  env[k++] = xasprintf("TPCOMM_UNIQUE_ID=%s", uid_hex);
  if (r->device >= 0) env[k++] = xasprintf("TPCOMM_DEVICE=%d", r->device);
  if (o->allow_shared_gpu) env[k++] = xasprintf("TPCOMM_ALLOW_SHARED_GPU=1");
  if (o->timeout_ms > 0) env[k++] = xasprintf("TPCOMM_TIMEOUT_MS=%ld", o->timeout_ms);
  *nadded = k;
  for (size_t i = 0; i < inherited; i++) {
    const char* e = environ[i];
    if (launcher_owned(e)) continue;
    if (o->allow_shared_gpu && !strncmp(e, "TPCOMM_ALLOW_SHARED_GPU=", 24)) continue;
    if (o->timeout_ms > 0 && !strncmp(e, "TPCOMM_TIMEOUT_MS=", 18)) continue;
    env[k++] = environ[i];
  }
  env[k] = NULL;
  return env;
}

static void free_env(char** env, int nadded) {
  for (int i = 0; i < nadded; i++) free(env[i]);
  free(env);
}

static void on_signal(int sig) {
  int saved = errno;
  unsigned char b = (unsigned char)sig;
  if (write(g_sigpipe[1], &b, 1) < 0) {
  } /* a full pipe already holds a wake-up */
  errno = saved;
}

static void handled_signals(sigset_t* set) {
  sigemptyset(set);
  sigaddset(set, SIGCHLD);
  for (size_t i = 0; i < sizeof k_forwarded / sizeof k_forwarded[0]; i++) sigaddset(set, k_forwarded[i]);
}

static void install_signal_handlers(void) {
  if (pipe2(g_sigpipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    say("pipe: %s", strerror(errno));
    exit(1);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGCHLD, &sa, NULL);
  for (size_t i = 0; i < sizeof k_forwarded / sizeof k_forwarded[0]; i++) sigaction(k_forwarded[i], &sa, NULL);
  signal(SIGPIPE, SIG_IGN); /* a closed stdout must not kill the launcher while ranks run */
}

/* In the child, after fork: everything the launcher changed goes back, then exec. Never returns. */
static void exec_rank(const options_t* o, const rank_t* r, char** env, int out_fd, int err_fd, int null_fd,
                      pid_t parent, const sigset_t* old_mask) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGCHLD, &dfl, NULL);
  sigaction(SIGPIPE, &dfl, NULL);
  for (size_t i = 0; i < sizeof k_forwarded / sizeof k_forwarded[0]; i++) sigaction(k_forwarded[i], &dfl, NULL);
  sigprocmask(SIG_SETMASK, old_mask, NULL);

  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1); /* the launcher died before prctl */

  if (dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) _exit(127);
  if (r->rank != 0 || isatty(0)) dup2(null_fd, 0);
  setrlimit(RLIMIT_NOFILE, &g_nofile);

  /* from here on say() writes into the rank's stderr pipe, so its lines carry the rank prefix */
  if (r->numa_node >= 0 && tpc_bind_numa_node(r->numa_node) != TPC_SUCCESS)
    say("rank %d: not bound to NUMA node %d: %s", r->rank, r->numa_node, tpc_get_last_error(NULL));
  execvpe(o->prog[0], o->prog, env);
  say("rank %d: cannot execute '%s': %s", r->rank, o->prog[0], strerror(errno));
  _exit(127);
}

static void spawn_rank(const options_t* o, rank_t* r, const char* uid_hex, int null_fd) {
  int pout[2], perr[2];
  if (pipe2(pout, O_CLOEXEC) != 0 || pipe2(perr, O_CLOEXEC) != 0) {
    say("rank %d: pipe: %s", r->rank, strerror(errno));
    exit(1);
  }
  int nadded = 0;
  char** env = build_env(o, r, uid_hex, &nadded);
  sigset_t handled, old_mask;
  handled_signals(&handled);
  sigprocmask(SIG_BLOCK, &handled, &old_mask); /* no launcher handler may run in the child */
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) exec_rank(o, r, env, pout[1], perr[1], null_fd, parent, &old_mask);
  int fork_errno = errno;
  sigprocmask(SIG_SETMASK, &old_mask, NULL);
  free_env(env, nadded);
  close(pout[1]);
  close(perr[1]);
  if (pid < 0) {
    say("rank %d: fork: %s", r->rank, strerror(fork_errno));
    close(pout[0]);
    close(perr[0]);
    r->done = 1;
    r->pid = -1;
    r->io[0].fd = r->io[1].fd = -1;
    return;
  }
  setpgid(pid, pid); /* also here, so the group exists before we could signal it */
  r->pid = pid;
  r->io[0] = (stream_t){.fd = pout[0], .out = 1};
  r->io[1] = (stream_t){.fd = perr[0], .out = 2};
  fcntl(pout[0], F_SETFL, O_NONBLOCK);
  fcntl(perr[0], F_SETFL, O_NONBLOCK);
}

/* ---- output ---------------------------------------------------------------------------------------- */

static void emit_line(const rank_t* r, const stream_t* s, const char* line, size_t len) {
  static char buf[LINE_MAX_BYTES + 32];
  int n = snprintf(buf, sizeof buf, "[%d] ", r->rank);
  memcpy(buf + n, line, len);
  buf[(size_t)n + len] = '\n';
  write_all(s->out, buf, (size_t)n + len + 1);
}

/* Emits every complete line in s->buf (all of it when at_eof), keeping the partial tail. */
static void emit_lines(const rank_t* r, stream_t* s, int at_eof) {
  size_t start = 0;
  for (;;) {
    char* nl = memchr(s->buf + start, '\n', s->len - start);
    if (!nl) break;
    emit_line(r, s, s->buf + start, (size_t)(nl - (s->buf + start)));
    start = (size_t)(nl - s->buf) + 1;
  }
  size_t rest = s->len - start;
  if (rest > 0 && (at_eof || rest == LINE_MAX_BYTES)) {
    emit_line(r, s, s->buf + start, rest);
    start = s->len;
  }
  memmove(s->buf, s->buf + start, s->len - start);
  s->len -= start;
}

static void close_stream(const rank_t* r, stream_t* s) {
  emit_lines(r, s, 1);
  close(s->fd);
  s->fd = -1;
  free(s->buf);
  s->buf = NULL;
  s->len = s->cap = 0;
}

/* Reads what one stream has, at most max_reads times (or until it would block or ends). */
static void pump_output(const rank_t* r, stream_t* s, int max_reads) {
  for (int i = 0; i < max_reads && s->fd >= 0; i++) {
    if (s->cap - s->len < 1024 && s->cap < LINE_MAX_BYTES) {
      size_t cap = s->cap ? s->cap * 2 : 4096;
      if (cap > LINE_MAX_BYTES) cap = LINE_MAX_BYTES;
      char* nb = realloc(s->buf, cap);
      if (!nb) {
        say("out of memory");
        exit(1);
      }
      s->buf = nb;
      s->cap = cap;
    }
    ssize_t n = read(s->fd, s->buf + s->len, s->cap - s->len);
    if (n > 0) {
      s->len += (size_t)n;
      emit_lines(r, s, 0);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    close_stream(r, s); /* EOF, or an error that ends the stream all the same */
  }
}

/* ---- waiting and teardown -------------------------------------------------------------------------- */

static void signal_all(job_t* job, int sig) {
  for (int i = 0; i < job->n; i++)
    if (job->ranks[i].pid > 0) kill(-job->ranks[i].pid, sig); /* the group: the rank and its children */
}

static void start_teardown(job_t* job, int sig) {
  job->teardown = 1;
  job->kill_at = now_s() + GRACE_MS / 1000.0;
  signal_all(job, sig);
}

static void handle_signals(job_t* job) {
  unsigned char sigs[64];
  ssize_t n;
  while ((n = read(g_sigpipe[0], sigs, sizeof sigs)) > 0) {
    for (ssize_t i = 0; i < n; i++) {
      int sig = sigs[i];
      if (sig == SIGCHLD) continue; /* reap_ranks() follows */
      char name[32];
      sig_name(sig, name, sizeof name);
      if (job->teardown && !job->killed) {
        say("received %s during teardown; killing every rank", name);
        signal_all(job, SIGKILL);
        job->killed = 1;
      } else if (!job->teardown) {
        say("received %s; forwarding it to every rank", name);
        if (job->exit_code < 0) job->exit_code = 128 + sig;
        start_teardown(job, sig);
      }
    }
  }
}

static void report_failure(const rank_t* r, int status, job_t* job) {
  if (WIFEXITED(status)) {
    say("rank %d (pid %d) exited with status %d", r->rank, (int)r->pid, WEXITSTATUS(status));
    job->exit_code = WEXITSTATUS(status);
  } else {
    char name[32];
    int sig = WTERMSIG(status);
    say("rank %d (pid %d) was killed by signal %d (%s)%s", r->rank, (int)r->pid, sig, sig_name(sig, name, sizeof name),
        WCOREDUMP(status) ? ", core dumped" : "");
    job->exit_code = 128 + sig;
  }
}

static void reap_ranks(job_t* job) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    rank_t* r = NULL;
    for (int i = 0; i < job->n && !r; i++)
      if (job->ranks[i].pid == pid && !job->ranks[i].done) r = &job->ranks[i];
    if (!r) continue;
    r->done = 1;
    job->live--;
    /* what it wrote before exiting comes before the report of its exit */
    for (int k = 0; k < 2; k++) pump_output(r, &r->io[k], 64);
    int failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    if (failed && !job->teardown) {
      report_failure(r, status, job);
      if (job->live > 0) say("terminating the other ranks (SIGTERM, then SIGKILL after %d s)", GRACE_MS / 1000);
      start_teardown(job, SIGTERM);
    }
  }
}

/* Runs the job until every rank has exited and its output is printed. */
static void wait_ranks(job_t* job) {
  struct pollfd* pfds = calloc((size_t)job->n * 2 + 1, sizeof *pfds);
  stream_t** owners = calloc((size_t)job->n * 2 + 1, sizeof *owners);
  const rank_t** owner_ranks = calloc((size_t)job->n * 2 + 1, sizeof *owner_ranks);
  if (!pfds || !owners || !owner_ranks) {
    say("out of memory");
    exit(1);
  }
  double drain_until = 0; /* set once every rank has exited */
  for (;;) {
    reap_ranks(job); /* also catches exits that happened before the handlers could report them */
    if (job->live == 0 && drain_until == 0) drain_until = now_s() + GRACE_MS / 1000.0;
    int nfds = 0;
    pfds[nfds++] = (struct pollfd){g_sigpipe[0], POLLIN, 0};
    for (int i = 0; i < job->n; i++)
      for (int k = 0; k < 2; k++)
        if (job->ranks[i].io[k].fd >= 0) {
          owners[nfds] = &job->ranks[i].io[k];
          owner_ranks[nfds] = &job->ranks[i];
          pfds[nfds++] = (struct pollfd){job->ranks[i].io[k].fd, POLLIN, 0};
        }
    if (job->live == 0 && (nfds == 1 || now_s() >= drain_until)) break;

    int timeout_ms = -1;
    if (job->live == 0) timeout_ms = DRAIN_QUIET_MS;
    else if (job->teardown && !job->killed) {
      timeout_ms = (int)((job->kill_at - now_s()) * 1000) + 1;
      if (timeout_ms < 0) timeout_ms = 0;
    }
    int ready = poll(pfds, (nfds_t)nfds, timeout_ms);
    if (ready < 0 && errno != EINTR) {
      say("poll: %s", strerror(errno));
      exit(1);
    }
    if (ready == 0 && job->live == 0) break; /* every rank exited and the pipes stay quiet */
    if (ready > 0) {
      if (pfds[0].revents) handle_signals(job);
      for (int i = 1; i < nfds; i++)
        if (pfds[i].revents) pump_output(owner_ranks[i], owners[i], 4);
    }
    if (job->teardown && !job->killed && now_s() >= job->kill_at && job->live > 0) {
      say("%d rank%s still running after %d s; sending SIGKILL", job->live, job->live == 1 ? "" : "s",
          GRACE_MS / 1000);
      signal_all(job, SIGKILL);
      job->killed = 1;
    }
  }
  /* whatever a left-over child of a rank still holds open is cut off here */
  for (int i = 0; i < job->n; i++)
    for (int k = 0; k < 2; k++)
      if (job->ranks[i].io[k].fd >= 0) close_stream(&job->ranks[i], &job->ranks[i].io[k]);
  free(pfds);
  free(owners);
  free(owner_ranks);
}

/* ---- main ------------------------------------------------------------------------------------------ */

/* A closed stdin/stdout/stderr would let a pipe or /dev/null take fd 0-2 and get lost in the dup2()s
 * of the children: fill the holes with /dev/null first. */
static void ensure_std_fds(void) {
  for (int fd = 0; fd < 3; fd++)
    if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) < 0) exit(1);
}

/* Two pipe ends per rank stay open in the launcher; raise the soft limit when -n needs it. */
static void ensure_fd_limit(int nranks) {
  getrlimit(RLIMIT_NOFILE, &g_nofile);
  rlim_t need = (rlim_t)nranks * 2 + 32;
  if (g_nofile.rlim_cur != RLIM_INFINITY && g_nofile.rlim_cur < need) {
    struct rlimit raised = g_nofile;
    raised.rlim_cur = (g_nofile.rlim_max == RLIM_INFINITY || g_nofile.rlim_max >= need) ? need : g_nofile.rlim_max;
    if (raised.rlim_cur < need || setrlimit(RLIMIT_NOFILE, &raised) != 0) {
      say("-n %d needs %lu open files but the limit is %lu (ulimit -n)", nranks, (unsigned long)need,
          (unsigned long)g_nofile.rlim_max);
      exit(1);
    }
  }
}

int main(int argc, char** argv) {
  ensure_std_fds();
  options_t opts;
  parse_args(argc, argv, &opts);

  const char* why = "";
  int count = visible_gpus(&why);
  if (!resolve_gpus(&opts, count, why)) return 0;

  rank_t* ranks = calloc((size_t)opts.nranks, sizeof *ranks);
  if (!ranks) {
    say("out of memory");
    return 1;
  }
  place_ranks(&opts, count > 0, ranks);

  tpc_unique_id_t id;
  char uid_hex[TPC_UNIQUE_ID_STRLEN];
  if (tpc_get_unique_id(&id) != TPC_SUCCESS ||
      tpc_unique_id_to_string(&id, uid_hex, sizeof uid_hex) != TPC_SUCCESS) {
    say("cannot create the job's unique id: %s", tpc_get_last_error(NULL));
    return 1;
  }

  ensure_fd_limit(opts.nranks);
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0) {
    say("/dev/null: %s", strerror(errno));
    return 1;
  }
  install_signal_handlers();

  job_t job = {.ranks = ranks, .n = opts.nranks, .exit_code = -1};
  for (int r = 0; r < opts.nranks; r++) {
    spawn_rank(&opts, &ranks[r], uid_hex, null_fd);
    if (ranks[r].pid < 0) { /* fork failed: what started is taken down */
      job.exit_code = 1;
      start_teardown(&job, SIGTERM);
      break;
    }
    job.live++;
  }
  for (int r = job.live; r < opts.nranks; r++) ranks[r].io[0].fd = ranks[r].io[1].fd = -1;
  close(null_fd);

  wait_ranks(&job);
  free(ranks);
  return job.exit_code < 0 ? 0 : job.exit_code;
}
