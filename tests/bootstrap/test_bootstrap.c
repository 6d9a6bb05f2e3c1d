/* test_bootstrap.c — Criterion suite for comm/bootstrap.c: the unique id and its text form, the Unix-socket
 * transport (real multi-process jobs, missing/dead/silent ranks, hostile or broken peers) and the callback
 * transport, plus argument validation. Runs without a GPU.
 *
 * Relies on: fork() for multi-rank jobs (each rank is a child process that reports through its exit code
 * and a shared-memory result table; only the parent asserts); raw socket code below that writes the wire
 * format of bootstrap.c by hand, which this suite therefore pins: a record is a 40-byte header {uint32
 * magic "TPCB", uint32 version 1, uint8 secret[16], uint32 rank, nranks, seq, len} + len payload bytes;
 * hello (seq 0) carries {rank, pid}, welcome (seq 0) {status}; collectives count seq from 1.
 * Bad-connection policy under test (see bootstrap.c): unauthenticated connections are dropped and rank 0
 * keeps waiting (reported in the timeout message); authenticated but inconsistent ones fail at once. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap.h"
#include "debug.h"

/* ---- wire format (pinned) ------------------------------------------------------------------------------ */

#define W_MAGIC 0x54504342u
#define W_VERSION 1u
#define W_HDR 40
#define W_HELLO 8
#define W_WELCOME 4

typedef struct {
  uint32_t magic, version;
  uint8_t secret[16];
  uint32_t rank, nranks, seq, len;
} whdr_t;

static tpc_uid_layout_t layout_of(const tpc_unique_id_t* id) {
  tpc_uid_layout_t u;
  memcpy(&u, id->internal, sizeof u);
  return u;
}

static whdr_t whdr(const tpc_unique_id_t* id, uint32_t rank, uint32_t nranks, uint32_t seq, uint32_t len) {
  tpc_uid_layout_t u = layout_of(id);
  whdr_t h = {W_MAGIC, W_VERSION, {0}, rank, nranks, seq, len};
  memcpy(h.secret, u.secret, sizeof h.secret);
  return h;
}

/* ---- small helpers ------------------------------------------------------------------------------------- */

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void dir_of(const tpc_unique_id_t* id, char* dir, size_t cap) {
  tpc_uid_layout_t u = layout_of(id);
  snprintf(dir, cap, "%s", u.path);
  char* slash = strrchr(dir, '/');
  if (slash) *slash = 0;
}

static int rendezvous_exists(const tpc_unique_id_t* id) {
  char dir[TPC_UID_PATH_MAX];
  struct stat st;
  dir_of(id, dir, sizeof dir);
  return stat(dir, &st) == 0;
}

/* Removes what a test's id left behind (when no real rank 0 did). */
static void rm_id(const tpc_unique_id_t* id) {
  tpc_uid_layout_t u = layout_of(id);
  char dir[TPC_UID_PATH_MAX];
  unlink(u.path);
  dir_of(id, dir, sizeof dir);
  rmdir(dir);
}

static tpc_unique_id_t new_id(void) {
  tpc_unique_id_t id;
  cr_assert_eq(tpc_get_unique_id(&id), TPC_SUCCESS, "tpc_get_unique_id: %s", tpc_get_last_error(NULL));
  return id;
}

/* What a rank process reports to the parent. */
typedef struct {
  int status;
  long elapsed_ms;
  char msg[TPC_ERRMSG_LEN];
} result_t;

static result_t* shared_results(int n) {
  void* p = mmap(NULL, sizeof(result_t) * (size_t)n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  cr_assert_neq(p, MAP_FAILED, "mmap: %s", strerror(errno));
  memset(p, 0, sizeof(result_t) * (size_t)n);
  return p;
}

static void record(result_t* r, tpc_status_t st, long t0) {
  r->status = (int)st;
  r->elapsed_ms = now_ms() - t0;
  snprintf(r->msg, sizeof r->msg, "%s", st == TPC_SUCCESS ? "" : tpc_get_last_error(NULL));
}

typedef int (*child_fn)(int rank, void* arg);

static pid_t spawn(child_fn fn, int rank, void* arg) {
  fflush(NULL);
  pid_t p = fork();
  cr_assert_geq(p, 0, "fork: %s", strerror(errno));
  if (p == 0) _exit(fn(rank, arg));
  return p;
}

/* Waits for every pid; what is still alive after timeout_ms is killed and reported as -1. */
static void wait_all(const pid_t* pids, int n, int timeout_ms, int* codes) {
  long deadline = now_ms() + timeout_ms;
  int left = n;
  for (int i = 0; i < n; i++) codes[i] = -2;
  while (left > 0 && now_ms() < deadline) {
    for (int i = 0; i < n; i++) {
      if (codes[i] != -2) continue;
      int st;
      pid_t r = waitpid(pids[i], &st, WNOHANG);
      if (r == pids[i]) {
        codes[i] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        left--;
      }
    }
    if (left) sleep_ms(5);
  }
  for (int i = 0; i < n; i++) {
    if (codes[i] != -2) continue;
    kill(pids[i], SIGKILL);
    waitpid(pids[i], NULL, 0);
    codes[i] = -1;
  }
}

/* ---- raw peers ----------------------------------------------------------------------------------------- */

static int raw_connect(const char* path, int timeout_ms) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  long deadline = now_ms() + timeout_ms;
  while (now_ms() < deadline) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr*)&sa, sizeof sa) == 0) return fd;
    close(fd);
    sleep_ms(2);
  }
  return -1;
}

static int raw_listen(const char* path) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  unlink(path);
  if (bind(fd, (struct sockaddr*)&sa, sizeof sa) != 0 || listen(fd, 8) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int write_all(int fd, const void* p, size_t n) {
  const char* c = p;
  while (n) {
    ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    c += k;
    n -= (size_t)k;
  }
  return 0;
}

/* Reads n bytes: returns n, fewer at EOF, -1 on timeout/error. */
static long read_full(int fd, void* p, size_t n, int timeout_ms) {
  char* c = p;
  size_t got = 0;
  long deadline = now_ms() + timeout_ms;
  while (got < n) {
    struct pollfd pf = {fd, POLLIN, 0};
    long left = deadline - now_ms();
    if (left <= 0) return -1;
    int r = poll(&pf, 1, (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t k = recv(fd, c + got, n - got, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return -1;
    if (k == 0) return (long)got;
    got += (size_t)k;
  }
  return (long)got;
}

/* 1 when the peer closed the connection within timeout_ms (data before the close is discarded). */
static int wait_eof(int fd, int timeout_ms) {
  char buf[256];
  long deadline = now_ms() + timeout_ms;
  for (;;) {
    struct pollfd pf = {fd, POLLIN, 0};
    long left = deadline - now_ms();
    if (left <= 0) return 0;
    if (poll(&pf, 1, (int)left) <= 0) continue;
    ssize_t k = recv(fd, buf, sizeof buf, 0);
    if (k == 0 || (k < 0 && errno == ECONNRESET)) return 1;
  }
}

static int raw_send_hello(int fd, const tpc_unique_id_t* id, uint32_t rank, uint32_t nranks) {
  uint8_t rec[W_HDR + W_HELLO];
  whdr_t h = whdr(id, rank, nranks, 0, W_HELLO);
  uint32_t body[2] = {rank, (uint32_t)getpid()};
  memcpy(rec, &h, W_HDR);
  memcpy(rec + W_HDR, body, sizeof body);
  return write_all(fd, rec, sizeof rec);
}

/* ---- deterministic per-rank data ----------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static void fill_block(uint8_t* p, size_t n, uint64_t seed, int rank, int k) {
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)(mix64(seed ^ ((uint64_t)rank << 40) ^ ((uint64_t)k << 56) ^ (i / 8)) >> (8 * (i % 8)));
}

static int check_block(const uint8_t* p, size_t n, uint64_t seed, int rank, int k) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (uint8_t)(mix64(seed ^ ((uint64_t)rank << 40) ^ ((uint64_t)k << 56) ^ (i / 8)) >> (8 * (i % 8))))
      return 0;
  return 1;
}

static uint64_t random_seed(void) {
  uint64_t s = 0;
  cr_assert_eq(getrandom(&s, sizeof s, 0), (ssize_t)sizeof s);
  return s;
}

/* =========================================================================================================
 * unique id
 * ========================================================================================================= */

Test(uid, round_trip_through_hex) {
  tpc_unique_id_t id = new_id(), back;
  char s[TPC_UNIQUE_ID_STRLEN];
  memset(s, 'x', sizeof s);
  cr_assert_eq(tpc_unique_id_to_string(&id, s, sizeof s), TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  cr_assert_eq(strlen(s), 2 * TPC_UNIQUE_ID_BYTES);
  for (size_t i = 0; i < strlen(s); i++)
    cr_assert(strchr("0123456789abcdef", s[i]) != NULL, "character %zu '%c' is not lowercase hex", i, s[i]);
  memset(&back, 0, sizeof back);
  cr_assert_eq(tpc_unique_id_from_string(s, &back), TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  cr_assert_eq(memcmp(&id, &back, sizeof id), 0, "round trip changed the id");
  /* uppercase input is accepted too */
  for (char* c = s; *c; c++)
    if (*c >= 'a' && *c <= 'f') *c = (char)(*c - 'a' + 'A');
  cr_assert_eq(tpc_unique_id_from_string(s, &back), TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  cr_assert_eq(memcmp(&id, &back, sizeof id), 0);
  rm_id(&id);
}

Test(uid, layout_and_fresh_secret) {
  tpc_unique_id_t a = new_id(), b = new_id();
  tpc_uid_layout_t ua = layout_of(&a), ub = layout_of(&b);
  cr_assert_eq(ua.magic, TPC_UID_MAGIC);
  cr_assert_eq(ua.version, TPC_UID_VERSION);
  cr_assert_neq(memcmp(ua.secret, ub.secret, sizeof ua.secret), 0, "two ids share a secret");
  cr_assert_str_neq(ua.path, ub.path);
  size_t n = strlen(ua.path);
  cr_assert(n > 2 && strcmp(ua.path + n - 2, "/s") == 0, "path %s does not end in /s", ua.path);
  cr_assert(strstr(ua.path, "/tpcomm-") != NULL, "path %s", ua.path);
  rm_id(&a);
  rm_id(&b);
}

Test(uid, directory_is_private_0700_under_tmpdir) {
  char base[] = "/tmp/tpc-test-XXXXXX";
  cr_assert_not_null(mkdtemp(base));
  char with_slash[64];
  snprintf(with_slash, sizeof with_slash, "%s/", base);
  setenv("TMPDIR", with_slash, 1);
  tpc_unique_id_t id = new_id();
  tpc_uid_layout_t u = layout_of(&id);
  cr_assert_eq(strncmp(u.path, base, strlen(base)), 0, "path %s is not under TMPDIR %s", u.path, base);
  cr_assert_eq(u.path[strlen(base)], '/', "path %s: trailing slash of TMPDIR not normalised", u.path);
  char dir[TPC_UID_PATH_MAX];
  dir_of(&id, dir, sizeof dir);
  struct stat st;
  cr_assert_eq(stat(dir, &st), 0, "stat %s: %s", dir, strerror(errno));
  cr_assert(S_ISDIR(st.st_mode));
  cr_assert_eq(st.st_mode & 07777, 0700, "mode of %s is %o", dir, st.st_mode & 07777);
  cr_assert_eq(st.st_uid, getuid());
  rm_id(&id);
  rmdir(base);
}

Test(uid, tmpdir_too_long_or_relative_is_rejected) {
  char longdir[200];
  memset(longdir, 'a', sizeof longdir);
  longdir[0] = '/';
  longdir[sizeof longdir - 1] = 0;
  setenv("TMPDIR", longdir, 1);
  tpc_unique_id_t id;
  cr_assert_eq(tpc_get_unique_id(&id), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "TMPDIR") && strstr(tpc_get_last_error(NULL), "too long"), "%s",
            tpc_get_last_error(NULL));
  setenv("TMPDIR", "relative/dir", 1);
  cr_assert_eq(tpc_get_unique_id(&id), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "absolute"), "%s", tpc_get_last_error(NULL));
  setenv("TMPDIR", "/nonexistent-tpcomm-dir", 1);
  cr_assert_eq(tpc_get_unique_id(&id), TPC_ERR_SYSTEM);
  cr_assert(strstr(tpc_get_last_error(NULL), "mkdtemp"), "%s", tpc_get_last_error(NULL));
}

Test(uid, bad_strings_are_rejected) {
  tpc_unique_id_t id = new_id(), out;
  char good[TPC_UNIQUE_ID_STRLEN], s[TPC_UNIQUE_ID_STRLEN + 8];
  cr_assert_eq(tpc_unique_id_to_string(&id, good, sizeof good), TPC_SUCCESS);
  memset(&out, 0x5a, sizeof out);
  tpc_unique_id_t untouched = out;

  cr_assert_eq(tpc_unique_id_from_string("", &out), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "0 characters"), "%s", tpc_get_last_error(NULL));

  snprintf(s, sizeof s, "%.*s", 255, good); /* one short */
  cr_assert_eq(tpc_unique_id_from_string(s, &out), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "255 characters"), "%s", tpc_get_last_error(NULL));

  snprintf(s, sizeof s, "%s0", good); /* one long */
  cr_assert_eq(tpc_unique_id_from_string(s, &out), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "more than 256"), "%s", tpc_get_last_error(NULL));

  snprintf(s, sizeof s, "%s", good);
  s[77] = 'g';
  cr_assert_eq(tpc_unique_id_from_string(s, &out), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "character 77 ('g')"), "%s", tpc_get_last_error(NULL));

  snprintf(s, sizeof s, "%s", good);
  s[200] = '\n';
  cr_assert_eq(tpc_unique_id_from_string(s, &out), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "character 200 (byte 0x0a)"), "%s", tpc_get_last_error(NULL));

  snprintf(s, sizeof s, "%s", good);
  memcpy(s, "00000000", 8); /* magic */
  cr_assert_eq(tpc_unique_id_from_string(s, &out), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "magic=0x00000000"), "%s", tpc_get_last_error(NULL));

  snprintf(s, sizeof s, "%s", good);
  memcpy(s + 8, "02000000", 8); /* version 2 (little endian) */
  cr_assert_eq(tpc_unique_id_from_string(s, &out), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "version=2"), "%s", tpc_get_last_error(NULL));

  /* path without a terminating NUL: fill the path bytes (offset 24) with 'a' */
  snprintf(s, sizeof s, "%s", good);
  for (int i = 2 * 24; i < 2 * (24 + TPC_UID_PATH_MAX); i += 2) memcpy(s + i, "61", 2);
  cr_assert_eq(tpc_unique_id_from_string(s, &out), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "NUL-terminated"), "%s", tpc_get_last_error(NULL));

  cr_assert_eq(memcmp(&out, &untouched, sizeof out), 0, "a failed parse wrote the output id");
  rm_id(&id);
}

Test(uid, argument_validation) {
  tpc_unique_id_t id = new_id(), zero;
  char buf[TPC_UNIQUE_ID_STRLEN];
  memset(&zero, 0, sizeof zero);
  cr_assert_eq(tpc_get_unique_id(NULL), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "id is NULL"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_create_id(NULL), TPC_ERR_INVALID_ARGUMENT);
  cr_assert_eq(tpc_unique_id_to_string(NULL, buf, sizeof buf), TPC_ERR_INVALID_ARGUMENT);
  cr_assert_eq(tpc_unique_id_to_string(&id, NULL, sizeof buf), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "buf is NULL"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_unique_id_to_string(&id, buf, TPC_UNIQUE_ID_STRLEN - 1), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "buflen=256"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_unique_id_to_string(&zero, buf, sizeof buf), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "magic"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_unique_id_from_string(NULL, &id), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "str is NULL"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_unique_id_to_string(&id, buf, sizeof buf), TPC_SUCCESS);
  cr_assert_eq(tpc_unique_id_from_string(buf, NULL), TPC_ERR_INVALID_ARGUMENT);

  cr_assert_eq(tpc_bootstrap_check_id(NULL), TPC_ERR_INVALID_ARGUMENT);
  cr_assert_eq(tpc_bootstrap_check_id(&zero), TPC_ERR_INVALID_ARGUMENT);
  cr_assert_eq(tpc_bootstrap_check_id(&id), TPC_SUCCESS);
  tpc_uid_layout_t u = layout_of(&id);
  snprintf(u.path, sizeof u.path, "relative/s");
  tpc_unique_id_t rel = id;
  memcpy(rel.internal, &u, sizeof u);
  cr_assert_eq(tpc_bootstrap_check_id(&rel), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "not an absolute path"), "%s", tpc_get_last_error(NULL));
  rm_id(&id);
}

/* =========================================================================================================
 * socket transport: real jobs
 * ========================================================================================================= */

typedef struct {
  tpc_unique_id_t id;
  int nranks, timeout_ms;
  uint64_t seed;
  result_t* res;
} job_t;

static const size_t k_sizes[] = {1, 8, 17, 4096, 65536 + 3, 0, 1u << 20};
#define NSIZES ((int)(sizeof k_sizes / sizeof k_sizes[0]))

/* A full rank: init, several allgathers of distinct per-rank data (one in place), a barrier. Exit codes
 * say which step failed; res[rank].msg has the library's message. */
static int job_rank(int rank, void* arg) {
  job_t* j = arg;
  long t0 = now_ms();
  tpc_bootstrap_t* bs = NULL;
  tpc_status_t st = tpc_bootstrap_init_socket(&bs, &j->id, rank, j->nranks, j->timeout_ms);
  record(&j->res[rank], st, t0);
  if (st != TPC_SUCCESS) return 10;
  if (tpc_bootstrap_rank(bs) != rank || tpc_bootstrap_size(bs) != j->nranks) return 11;
  int code = 0;
  for (int k = 0; k < NSIZES && !code; k++) {
    size_t bytes = k_sizes[k];
    uint8_t* send = malloc(bytes + 1);
    uint8_t* recv = malloc(bytes * (size_t)j->nranks + 1);
    fill_block(send, bytes, j->seed, rank, k);
    memset(recv, 0xee, bytes * (size_t)j->nranks);
    st = tpc_bootstrap_allgather(bs, send, recv, bytes);
    record(&j->res[rank], st, t0);
    if (st != TPC_SUCCESS) code = 20 + k;
    for (int r = 0; r < j->nranks && !code; r++)
      if (!check_block(recv + (size_t)r * bytes, bytes, j->seed, r, k)) code = 40 + k;
    free(send);
    free(recv);
  }
  if (!code) { /* in place: this rank's block already sits in recv */
    const size_t bytes = 333;
    uint8_t* recv = malloc(bytes * (size_t)j->nranks);
    memset(recv, 0, bytes * (size_t)j->nranks);
    fill_block(recv + (size_t)rank * bytes, bytes, j->seed, rank, 99);
    st = tpc_bootstrap_allgather(bs, recv + (size_t)rank * bytes, recv, bytes);
    record(&j->res[rank], st, t0);
    if (st != TPC_SUCCESS) code = 60;
    for (int r = 0; r < j->nranks && !code; r++)
      if (!check_block(recv + (size_t)r * bytes, bytes, j->seed, r, 99)) code = 61;
    free(recv);
  }
  if (!code) {
    st = tpc_bootstrap_barrier(bs);
    record(&j->res[rank], st, t0);
    if (st != TPC_SUCCESS) code = 70;
  }
  tpc_bootstrap_destroy(bs);
  return code;
}

static void run_job(int nranks) {
  job_t j;
  j.id = new_id();
  j.nranks = nranks;
  j.timeout_ms = 20000;
  j.seed = random_seed();
  j.res = shared_results(nranks);
  pid_t pids[16];
  int codes[16];
  for (int r = nranks - 1; r >= 0; r--) pids[r] = spawn(job_rank, r, &j); /* rank 0 last: others must retry */
  wait_all(pids, nranks, 60000, codes);
  for (int r = 0; r < nranks; r++)
    cr_expect_eq(codes[r], 0, "nranks=%d: rank %d exited with %d (%s)", nranks, r, codes[r], j.res[r].msg);
  cr_expect_not(rendezvous_exists(&j.id), "rank 0 left the rendezvous directory behind");
  rm_id(&j.id);
}

Test(socket, allgather_2_ranks, .timeout = 90) { run_job(2); }
Test(socket, allgather_3_ranks, .timeout = 90) { run_job(3); }
Test(socket, allgather_8_ranks, .timeout = 90) { run_job(8); }

Test(socket, single_rank_job) {
  tpc_unique_id_t id = new_id();
  tpc_bootstrap_t* bs = NULL;
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, &id, 0, 1, 1000), TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  cr_assert_not(rendezvous_exists(&id));
  uint32_t x = 42, y = 0;
  cr_assert_eq(tpc_bootstrap_allgather(bs, &x, &y, sizeof x), TPC_SUCCESS);
  cr_assert_eq(y, 42);
  cr_assert_eq(tpc_bootstrap_barrier(bs), TPC_SUCCESS);
  tpc_bootstrap_destroy(bs);
}

/* A rank that only inits and records its result. */
static int init_only_rank(int rank, void* arg) {
  job_t* j = arg;
  long t0 = now_ms();
  tpc_bootstrap_t* bs = NULL;
  tpc_status_t st = tpc_bootstrap_init_socket(&bs, &j->id, rank, j->nranks, j->timeout_ms);
  record(&j->res[rank], st, t0);
  if (st == TPC_SUCCESS) st = tpc_bootstrap_barrier(bs);
  record(&j->res[rank], st, t0);
  tpc_bootstrap_destroy(bs);
  return st == TPC_SUCCESS ? 0 : 1;
}

Test(socket, missing_rank_times_out_and_is_named, .timeout = 30) {
  job_t j = {new_id(), 3, 500, 0, shared_results(3)};
  pid_t pids[2];
  int codes[2];
  pids[0] = spawn(init_only_rank, 0, &j);
  pids[1] = spawn(init_only_rank, 1, &j);
  wait_all(pids, 2, 10000, codes);
  cr_assert_eq(codes[0], 1);
  cr_assert_eq(codes[1], 1);
  cr_expect_eq(j.res[0].status, TPC_ERR_TIMEOUT, "rank 0: %s", j.res[0].msg);
  cr_expect(strstr(j.res[0].msg, "rank 2 never arrived"), "rank 0: %s", j.res[0].msg);
  cr_expect(j.res[0].elapsed_ms >= 450 && j.res[0].elapsed_ms < 3000, "rank 0 took %ld ms", j.res[0].elapsed_ms);
  cr_expect_eq(j.res[1].status, TPC_ERR_TIMEOUT, "rank 1: %s", j.res[1].msg);
  cr_expect(j.res[1].elapsed_ms < 3000, "rank 1 took %ld ms", j.res[1].elapsed_ms);
  cr_expect_not(rendezvous_exists(&j.id), "a failed rank 0 left the rendezvous directory behind");
  rm_id(&j.id);
}

Test(socket, missing_root_times_out, .timeout = 30) {
  tpc_unique_id_t id = new_id();
  tpc_bootstrap_t* bs = NULL;
  long t0 = now_ms();
  tpc_status_t st = tpc_bootstrap_init_socket(&bs, &id, 1, 2, 300);
  long dt = now_ms() - t0;
  cr_assert_eq(st, TPC_ERR_TIMEOUT, "%s", tpc_get_last_error(NULL));
  cr_assert_null(bs);
  cr_assert(strstr(tpc_get_last_error(NULL), "rank 0 never accepted"), "%s", tpc_get_last_error(NULL));
  cr_assert(dt >= 280 && dt < 3000, "took %ld ms", dt);
  rm_id(&id);
}

/* ranks die in the middle of a job: the others must fail fast, not wait for the (long) timeout */
typedef struct {
  job_t j;
  int victim;
} death_t;

static int death_rank(int rank, void* arg) {
  death_t* d = arg;
  long t0 = now_ms();
  tpc_bootstrap_t* bs = NULL;
  tpc_status_t st = tpc_bootstrap_init_socket(&bs, &d->j.id, rank, d->j.nranks, d->j.timeout_ms);
  if (st != TPC_SUCCESS) return 10;
  uint64_t x = (uint64_t)rank, all[8];
  if (tpc_bootstrap_allgather(bs, &x, all, sizeof x) != TPC_SUCCESS) return 11;
  if (rank == d->victim) _exit(0); /* dies without a word, sockets closed by the kernel */
  t0 = now_ms();
  st = tpc_bootstrap_allgather(bs, &x, all, sizeof x);
  record(&d->j.res[rank], st, t0);
  if (st == TPC_SUCCESS) return 12;
  /* the bootstrap is unusable afterwards */
  st = tpc_bootstrap_barrier(bs);
  if (st != TPC_ERR_INVALID_USAGE) return 13;
  tpc_bootstrap_destroy(bs);
  return 0;
}

static void run_death(int victim) {
  death_t d = {{new_id(), 3, 10000, 0, shared_results(3)}, victim};
  pid_t pids[3];
  int codes[3];
  for (int r = 0; r < 3; r++) pids[r] = spawn(death_rank, r, &d);
  wait_all(pids, 3, 20000, codes);
  for (int r = 0; r < 3; r++) {
    cr_expect_eq(codes[r], 0, "rank %d exited with %d (%s)", r, codes[r], d.j.res[r].msg);
    if (r == victim) continue;
    cr_expect_eq(d.j.res[r].status, TPC_ERR_BOOTSTRAP, "rank %d: %s", r, d.j.res[r].msg);
    cr_expect(d.j.res[r].elapsed_ms < 3000, "rank %d noticed the death only after %ld ms", r, d.j.res[r].elapsed_ms);
  }
  int first = victim == 0 ? 1 : 0;
  char want[64];
  snprintf(want, sizeof want, "rank %d closed the connection", victim == 0 ? 0 : victim);
  cr_expect(strstr(d.j.res[first].msg, want), "rank %d: %s", first, d.j.res[first].msg);
  rm_id(&d.j.id);
}

Test(socket, non_root_dies_mid_job, .timeout = 60) { run_death(2); }
Test(socket, root_dies_mid_job, .timeout = 60) { run_death(0); }

/* ranks disagree on the size of an allgather */
static int mismatch_rank(int rank, void* arg) {
  job_t* j = arg;
  tpc_bootstrap_t* bs = NULL;
  if (tpc_bootstrap_init_socket(&bs, &j->id, rank, j->nranks, j->timeout_ms) != TPC_SUCCESS) return 10;
  uint8_t send[16] = {0}, recv[64];
  long t0 = now_ms();
  tpc_status_t st = tpc_bootstrap_allgather(bs, send, recv, rank == 1 ? 16 : 8);
  record(&j->res[rank], st, t0);
  tpc_bootstrap_destroy(bs);
  return st == TPC_SUCCESS ? 1 : 0;
}

Test(socket, size_mismatch_is_bootstrap_error, .timeout = 60) {
  job_t j = {new_id(), 3, 10000, 0, shared_results(3)};
  pid_t pids[3];
  int codes[3];
  for (int r = 0; r < 3; r++) pids[r] = spawn(mismatch_rank, r, &j);
  wait_all(pids, 3, 20000, codes);
  for (int r = 0; r < 3; r++) {
    cr_expect_eq(codes[r], 0, "rank %d exited with %d", r, codes[r]);
    cr_expect_eq(j.res[r].status, TPC_ERR_BOOTSTRAP, "rank %d: %s", r, j.res[r].msg);
    cr_expect(j.res[r].elapsed_ms < 3000, "rank %d took %ld ms", r, j.res[r].elapsed_ms);
  }
  cr_expect(strstr(j.res[0].msg, "from rank 1") && strstr(j.res[0].msg, "len=16, expected 8"), "rank 0: %s",
            j.res[0].msg);
  rm_id(&j.id);
}

/* =========================================================================================================
 * socket transport: rank 0 against raw clients
 * ========================================================================================================= */

enum {
  C_WRONG_SECRET,  /* hello with a flipped secret byte */
  C_WRONG_MAGIC,   /* hello with another magic */
  C_WRONG_VERSION, /* hello with version 2 */
  C_TRUNC_HDR,     /* 12 bytes of a hello, then close */
  C_SILENT,        /* connects and says nothing */
  C_NRANKS,        /* authenticated hello with the wrong nranks */
  C_RANK_RANGE,    /* authenticated hello claiming rank 7 */
  C_RANK_ZERO,     /* authenticated hello claiming rank 0 */
  C_SEQ,           /* authenticated hello with seq 3 */
  C_HUGE_LEN,      /* authenticated hello with len 0xffffffff */
  C_TRUNC_BODY,    /* authenticated header + 4 of 8 body bytes, then close */
  C_BODY_RANK,     /* header says rank 1, body says rank 2 */
  C_DUPLICATE,     /* a valid hello as rank 1 (used twice) */
};

typedef struct {
  tpc_unique_id_t id;
  int mode;
  uint32_t nranks;
} client_t;

/* A raw client: sends the hello variant of `mode`, then waits for rank 0 to close the connection. */
static int raw_client(int rank, void* arg) {
  client_t* c = arg;
  tpc_uid_layout_t u = layout_of(&c->id);
  int fd = raw_connect(u.path, 5000);
  if (fd < 0) return 2;
  uint8_t rec[W_HDR + W_HELLO];
  whdr_t h = whdr(&c->id, (uint32_t)rank, c->nranks, 0, W_HELLO);
  uint32_t body[2] = {(uint32_t)rank, (uint32_t)getpid()};
  size_t n = sizeof rec;
  switch (c->mode) {
    case C_WRONG_SECRET: h.secret[5] ^= 0x40; break;
    case C_WRONG_MAGIC: h.magic = 0x12345678u; break;
    case C_WRONG_VERSION: h.version = 2; break;
    case C_TRUNC_HDR: n = 12; break;
    case C_SILENT: n = 0; break;
    case C_NRANKS: h.nranks = c->nranks + 1; break;
    case C_RANK_RANGE: h.rank = body[0] = 7; break;
    case C_RANK_ZERO: h.rank = body[0] = 0; break;
    case C_SEQ: h.seq = 3; break;
    case C_HUGE_LEN: h.len = 0xffffffffu; break;
    case C_TRUNC_BODY: n = W_HDR + 4; break;
    case C_BODY_RANK: body[0] = 2; break;
    default: break;
  }
  memcpy(rec, &h, W_HDR);
  memcpy(rec + W_HDR, body, sizeof body);
  if (n && write_all(fd, rec, n) != 0) return 3;
  if (c->mode == C_TRUNC_HDR || c->mode == C_TRUNC_BODY) {
    close(fd);
    return 0;
  }
  int eof = wait_eof(fd, 10000);
  close(fd);
  return eof ? 0 : 4; /* rank 0 must drop us (or give up) rather than keep us forever */
}

/* Rank 0 runs in this process against the given client (rank 1 unless said otherwise). */
static tpc_status_t root_vs(client_t* c, int client_rank, int timeout_ms, long* elapsed, int* client_code) {
  pid_t pid = spawn(raw_client, client_rank, c);
  tpc_bootstrap_t* bs = NULL;
  long t0 = now_ms();
  tpc_status_t st = tpc_bootstrap_init_socket(&bs, &c->id, 0, (int)c->nranks, timeout_ms);
  *elapsed = now_ms() - t0;
  tpc_bootstrap_destroy(bs);
  wait_all(&pid, 1, 15000, client_code);
  return st;
}

static void expect_dropped(int mode, const char* want) {
  client_t c = {new_id(), mode, 2};
  long dt;
  int code;
  tpc_status_t st = root_vs(&c, 1, 600, &dt, &code);
  const char* msg = tpc_get_last_error(NULL);
  cr_expect_eq(st, TPC_ERR_TIMEOUT, "mode %d: %s", mode, msg);
  cr_expect(strstr(msg, "rank 1 never arrived"), "%s", msg);
  cr_expect(strstr(msg, want), "expected '%s' in: %s", want, msg);
  cr_expect(dt >= 550 && dt < 4000, "took %ld ms", dt);
  cr_expect_eq(code, 0, "client exited with %d", code);
  cr_expect_not(rendezvous_exists(&c.id));
  rm_id(&c.id);
}

Test(root_policy, wrong_secret_is_dropped_then_reported, .timeout = 30) {
  expect_dropped(C_WRONG_SECRET, "wrong secret");
}
Test(root_policy, wrong_magic_is_dropped_then_reported, .timeout = 30) {
  expect_dropped(C_WRONG_MAGIC, "magic=0x12345678");
}
Test(root_policy, wrong_version_is_dropped_then_reported, .timeout = 30) {
  expect_dropped(C_WRONG_VERSION, "version=2");
}
Test(root_policy, truncated_hello_is_dropped_then_reported, .timeout = 30) {
  expect_dropped(C_TRUNC_HDR, "after 12 of 48 bytes");
}

Test(root_policy, silent_connection_is_reported_at_timeout, .timeout = 30) {
  client_t c = {new_id(), C_SILENT, 2};
  long dt;
  int code;
  tpc_status_t st = root_vs(&c, 1, 500, &dt, &code);
  const char* msg = tpc_get_last_error(NULL);
  cr_expect_eq(st, TPC_ERR_TIMEOUT, "%s", msg);
  cr_expect(strstr(msg, "rank 1 never arrived") && strstr(msg, "1 connection(s) never completed their hello"), "%s",
            msg);
  cr_expect_eq(code, 0, "client exited with %d", code);
  rm_id(&c.id);
}

static void expect_fatal(int mode, int client_rank, const char* want) {
  client_t c = {new_id(), mode, 2};
  long dt;
  int code;
  tpc_status_t st = root_vs(&c, client_rank, 5000, &dt, &code);
  const char* msg = tpc_get_last_error(NULL);
  cr_expect_eq(st, TPC_ERR_BOOTSTRAP, "mode %d: %s", mode, msg);
  cr_expect(strstr(msg, want), "expected '%s' in: %s", want, msg);
  cr_expect(dt < 2500, "an authenticated but inconsistent rank must fail at once, took %ld ms", dt);
  cr_expect_eq(code, 0, "client exited with %d", code);
  cr_expect_not(rendezvous_exists(&c.id));
  rm_id(&c.id);
}

Test(root_policy, wrong_nranks_fails_at_once, .timeout = 30) { expect_fatal(C_NRANKS, 1, "nranks=3, expected 2"); }
Test(root_policy, rank_out_of_range_fails_at_once, .timeout = 30) { expect_fatal(C_RANK_RANGE, 1, "rank=7"); }
Test(root_policy, second_rank_zero_fails_at_once, .timeout = 30) { expect_fatal(C_RANK_ZERO, 1, "rank=0"); }
Test(root_policy, wrong_hello_seq_fails_at_once, .timeout = 30) { expect_fatal(C_SEQ, 1, "seq=3, expected 0"); }
Test(root_policy, huge_len_fails_at_once, .timeout = 30) {
  expect_fatal(C_HUGE_LEN, 1, "len=4294967295, expected 8");
}
Test(root_policy, truncated_body_fails_at_once, .timeout = 30) {
  expect_fatal(C_TRUNC_BODY, 1, "rank 1, which closed the connection after 44 of 48 bytes");
}
Test(root_policy, inconsistent_body_fails_at_once, .timeout = 30) {
  expect_fatal(C_BODY_RANK, 1, "rank 1 in its header but rank 2 in its body");
}

Test(root_policy, duplicate_rank_fails_at_once, .timeout = 30) {
  client_t c = {new_id(), C_DUPLICATE, 3};
  pid_t pids[2];
  int codes[2];
  pids[0] = spawn(raw_client, 1, &c);
  pids[1] = spawn(raw_client, 1, &c);
  tpc_bootstrap_t* bs = NULL;
  long t0 = now_ms();
  tpc_status_t st = tpc_bootstrap_init_socket(&bs, &c.id, 0, 3, 5000);
  long dt = now_ms() - t0;
  const char* msg = tpc_get_last_error(NULL);
  cr_expect_eq(st, TPC_ERR_BOOTSTRAP, "%s", msg);
  cr_expect(strstr(msg, "rank 1 connected twice"), "%s", msg);
  cr_expect(dt < 2500, "took %ld ms", dt);
  wait_all(pids, 2, 15000, codes);
  cr_expect(codes[0] == 0 && codes[1] == 0, "clients exited with %d, %d", codes[0], codes[1]);
  rm_id(&c.id);
}

/* garbage first, then the real rank 1: the job must still come up */
static int real_rank_after(int rank, void* arg) {
  job_t* j = arg;
  sleep_ms(100);
  return init_only_rank(rank, arg) == 0 && j->res[rank].status == TPC_SUCCESS ? 0 : 1;
}

Test(root_policy, garbage_then_legit_rank_succeeds, .timeout = 30) {
  job_t j = {new_id(), 2, 5000, 0, shared_results(2)};
  client_t bad = {j.id, C_WRONG_SECRET, 2}, silent = {j.id, C_SILENT, 2}, trunc = {j.id, C_TRUNC_HDR, 2};
  pid_t pids[4];
  int codes[4];
  pids[0] = spawn(raw_client, 1, &bad);
  pids[1] = spawn(raw_client, 1, &silent);
  pids[2] = spawn(raw_client, 1, &trunc);
  pids[3] = spawn(real_rank_after, 1, &j);
  tpc_bootstrap_t* bs = NULL;
  tpc_status_t st = tpc_bootstrap_init_socket(&bs, &j.id, 0, 2, 5000);
  cr_expect_eq(st, TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  if (st == TPC_SUCCESS) cr_expect_eq(tpc_bootstrap_barrier(bs), TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  tpc_bootstrap_destroy(bs); /* closes the silent connection too (it is dropped when init ends) */
  wait_all(pids, 4, 15000, codes);
  for (int i = 0; i < 4; i++) cr_expect_eq(codes[i], 0, "process %d exited with %d (%s)", i, codes[i], j.res[1].msg);
  rm_id(&j.id);
}

/* ---- rank 0 against a raw rank 1 that misbehaves in an allgather ----------------------------------------- */

enum { A_TRUNC_HDR, A_TRUNC_PAYLOAD, A_HUGE_LEN, A_SEQ, A_SECRET, A_RANK, A_SILENT };

static int raw_rank1_allgather(int rank, void* arg) {
  client_t* c = arg;
  tpc_uid_layout_t u = layout_of(&c->id);
  int fd = raw_connect(u.path, 5000);
  if (fd < 0) return 2;
  if (raw_send_hello(fd, &c->id, 1, 2) != 0) return 3;
  uint8_t welcome[W_HDR + W_WELCOME];
  if (read_full(fd, welcome, sizeof welcome, 5000) != (long)sizeof welcome) return 4;
  uint32_t status;
  memcpy(&status, welcome + W_HDR, 4);
  if (status != 0) return 5;
  uint8_t rec[W_HDR + 8] = {0};
  whdr_t h = whdr(&c->id, 1, 2, 1, 8);
  size_t n = sizeof rec;
  switch (c->mode) {
    case A_TRUNC_HDR: n = 12; break;
    case A_TRUNC_PAYLOAD: n = W_HDR + 3; break;
    case A_HUGE_LEN: h.len = 1u << 30; break;
    case A_SEQ: h.seq = 5; break;
    case A_SECRET: h.secret[0] ^= 1; break;
    case A_RANK: h.rank = 0; break;
    case A_SILENT: n = 0; break;
    default: break;
  }
  memcpy(rec, &h, W_HDR);
  if (n && write_all(fd, rec, n) != 0) return 6;
  if (c->mode == A_TRUNC_HDR || c->mode == A_TRUNC_PAYLOAD) {
    close(fd);
    return 0;
  }
  int eof = wait_eof(fd, 10000);
  close(fd);
  return eof ? 0 : 7;
}

static void root_allgather_vs(int mode, int timeout_ms, tpc_status_t want_st, const char* want) {
  client_t c = {new_id(), mode, 2};
  pid_t pid = spawn(raw_rank1_allgather, 1, &c);
  tpc_bootstrap_t* bs = NULL;
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, &c.id, 0, 2, timeout_ms), TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  uint64_t x = 7, all[2];
  long t0 = now_ms();
  tpc_status_t st = tpc_bootstrap_allgather(bs, &x, all, sizeof x);
  long dt = now_ms() - t0;
  const char* msg = tpc_get_last_error(NULL);
  cr_expect_eq(st, want_st, "mode %d: %s", mode, msg);
  cr_expect(strstr(msg, want), "expected '%s' in: %s", want, msg);
  if (want_st == TPC_ERR_TIMEOUT) cr_expect(dt >= timeout_ms - 50 && dt < timeout_ms + 2500, "took %ld ms", dt);
  else cr_expect(dt < 2500, "took %ld ms", dt);
  cr_expect_eq(tpc_bootstrap_allgather(bs, &x, all, sizeof x), TPC_ERR_INVALID_USAGE, "usable after a failure");
  tpc_bootstrap_destroy(bs);
  int code;
  wait_all(&pid, 1, 15000, &code);
  cr_expect_eq(code, 0, "raw rank 1 exited with %d", code);
  rm_id(&c.id);
}

Test(root_allgather, truncated_header, .timeout = 30) {
  root_allgather_vs(A_TRUNC_HDR, 5000, TPC_ERR_BOOTSTRAP, "rank 1 closed the connection after 12 of 48 bytes");
}
Test(root_allgather, truncated_payload, .timeout = 30) {
  root_allgather_vs(A_TRUNC_PAYLOAD, 5000, TPC_ERR_BOOTSTRAP, "rank 1 closed the connection after 43 of 48 bytes");
}
Test(root_allgather, len_too_large, .timeout = 30) {
  root_allgather_vs(A_HUGE_LEN, 5000, TPC_ERR_BOOTSTRAP, "len=1073741824, expected 8");
}
Test(root_allgather, wrong_seq, .timeout = 30) {
  root_allgather_vs(A_SEQ, 5000, TPC_ERR_BOOTSTRAP, "seq=5, expected 1");
}
Test(root_allgather, wrong_secret, .timeout = 30) {
  root_allgather_vs(A_SECRET, 5000, TPC_ERR_BOOTSTRAP, "from rank 1: wrong secret");
}
Test(root_allgather, wrong_rank, .timeout = 30) {
  root_allgather_vs(A_RANK, 5000, TPC_ERR_BOOTSTRAP, "rank=0, expected 1");
}
Test(root_allgather, silent_peer_times_out, .timeout = 30) {
  root_allgather_vs(A_SILENT, 500, TPC_ERR_TIMEOUT, "rank 1 (0 of 48 bytes received)");
}

/* ---- a real rank 1 against a raw rank 0 ------------------------------------------------------------------ */

enum { R_WELCOME_FAIL, R_CLOSE_BEFORE_WELCOME, R_NO_WELCOME, R_BAD_LEN, R_BAD_SECRET, R_TRUNC_RESULT, R_SILENT };

static int raw_root(int rank, void* arg) {
  client_t* c = arg;
  tpc_uid_layout_t u = layout_of(&c->id);
  int lfd = raw_listen(u.path);
  if (lfd < 0) return 2;
  int fd = accept(lfd, NULL, NULL);
  close(lfd);
  unlink(u.path);
  if (fd < 0) return 3;
  uint8_t hello[W_HDR + W_HELLO];
  if (read_full(fd, hello, sizeof hello, 5000) != (long)sizeof hello) return 4;
  if (c->mode == R_CLOSE_BEFORE_WELCOME) {
    close(fd);
    return 0;
  }
  if (c->mode == R_NO_WELCOME) {
    int eof = wait_eof(fd, 10000);
    close(fd);
    return eof ? 0 : 5;
  }
  uint8_t welcome[W_HDR + W_WELCOME];
  whdr_t h = whdr(&c->id, 0, 2, 0, W_WELCOME);
  uint32_t status = c->mode == R_WELCOME_FAIL ? (uint32_t)TPC_ERR_TIMEOUT : 0;
  memcpy(welcome, &h, W_HDR);
  memcpy(welcome + W_HDR, &status, 4);
  if (write_all(fd, welcome, sizeof welcome) != 0) return 6;
  if (c->mode == R_WELCOME_FAIL) {
    close(fd);
    return 0;
  }
  uint8_t rec[W_HDR + 8];
  if (read_full(fd, rec, sizeof rec, 5000) != (long)sizeof rec) return 7;
  uint8_t res[W_HDR + 16] = {0};
  whdr_t r = whdr(&c->id, 0, 2, 1, 16);
  size_t n = sizeof res;
  if (c->mode == R_BAD_LEN) r.len = 999;
  if (c->mode == R_BAD_SECRET) r.secret[15] ^= 0x80;
  if (c->mode == R_TRUNC_RESULT) n = W_HDR + 5;
  if (c->mode == R_SILENT) n = 0;
  memcpy(res, &r, W_HDR);
  if (n && write_all(fd, res, n) != 0) return 8;
  if (c->mode == R_TRUNC_RESULT) {
    close(fd);
    return 0;
  }
  int eof = wait_eof(fd, 10000);
  close(fd);
  return eof ? 0 : 9;
}

static void rank1_vs_raw_root(int mode, int timeout_ms, int fail_in_init, tpc_status_t want_st, const char* want) {
  client_t c = {new_id(), mode, 2};
  pid_t pid = spawn(raw_root, 0, &c);
  tpc_bootstrap_t* bs = NULL;
  long t0 = now_ms();
  tpc_status_t st = tpc_bootstrap_init_socket(&bs, &c.id, 1, 2, timeout_ms);
  if (!fail_in_init) {
    cr_assert_eq(st, TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
    uint64_t x = 7, all[2];
    t0 = now_ms();
    st = tpc_bootstrap_allgather(bs, &x, all, sizeof x);
  }
  long dt = now_ms() - t0;
  const char* msg = tpc_get_last_error(NULL);
  cr_expect_eq(st, want_st, "mode %d: %s", mode, msg);
  cr_expect(strstr(msg, want), "expected '%s' in: %s", want, msg);
  if (want_st == TPC_ERR_TIMEOUT && mode != R_WELCOME_FAIL)
    cr_expect(dt >= timeout_ms - 50 && dt < timeout_ms + 2500, "took %ld ms", dt);
  else
    cr_expect(dt < 2500, "took %ld ms", dt);
  tpc_bootstrap_destroy(bs);
  int code;
  wait_all(&pid, 1, 15000, &code);
  cr_expect_eq(code, 0, "raw rank 0 exited with %d", code);
  rm_id(&c.id);
}

Test(peer, root_gives_up_in_welcome, .timeout = 30) {
  rank1_vs_raw_root(R_WELCOME_FAIL, 5000, 1, TPC_ERR_TIMEOUT, "rank 0 gave up the bootstrap");
}
Test(peer, root_closes_before_welcome, .timeout = 30) {
  rank1_vs_raw_root(R_CLOSE_BEFORE_WELCOME, 5000, 1, TPC_ERR_BOOTSTRAP,
                    "rank 0 closed the connection after 0 of 44 bytes of its welcome");
}
Test(peer, root_never_welcomes, .timeout = 30) {
  rank1_vs_raw_root(R_NO_WELCOME, 500, 1, TPC_ERR_TIMEOUT, "waiting for the welcome");
}
Test(peer, result_with_wrong_len, .timeout = 30) {
  rank1_vs_raw_root(R_BAD_LEN, 5000, 0, TPC_ERR_BOOTSTRAP, "from rank 0: len=999, expected 16");
}
Test(peer, result_with_wrong_secret, .timeout = 30) {
  rank1_vs_raw_root(R_BAD_SECRET, 5000, 0, TPC_ERR_BOOTSTRAP, "from rank 0: wrong secret");
}
Test(peer, truncated_result, .timeout = 30) {
  rank1_vs_raw_root(R_TRUNC_RESULT, 5000, 0, TPC_ERR_BOOTSTRAP, "rank 0 closed the connection after 45 of 56 bytes");
}
Test(peer, silent_root_times_out, .timeout = 30) {
  rank1_vs_raw_root(R_SILENT, 500, 0, TPC_ERR_TIMEOUT, "rank 0 (0 of 56 bytes received)");
}

/* =========================================================================================================
 * callback transport
 * ========================================================================================================= */

#define FAKE_MAX_RANKS 8
#define FAKE_SLOT (64 * 1024)

typedef struct {
  int nranks;
  pthread_barrier_t bar;
  uint8_t slots[FAKE_MAX_RANKS][FAKE_SLOT];
  int fail_with;  /* non-zero: the callback returns this */
  int scramble;   /* 1: blocks 0 and 1 are swapped */
} fake_group_t;

typedef struct {
  fake_group_t* g;
  int rank;
  uint64_t seed;
  tpc_status_t st;
  int code;
  char msg[TPC_ERRMSG_LEN];
} fake_rank_t;

/* An in-process all-gather over threads: every rank drops its block in a slot, waits, copies all. */
static int fake_allgather(const void* send, void* recv, size_t bytes, void* user) {
  fake_rank_t* me = user;
  fake_group_t* g = me->g;
  if (g->fail_with) return g->fail_with;
  if (bytes > FAKE_SLOT) return -1;
  memcpy(g->slots[me->rank], send, bytes);
  pthread_barrier_wait(&g->bar);
  for (int i = 0; i < g->nranks; i++) {
    int from = g->scramble && i < 2 ? 1 - i : i;
    memcpy((uint8_t*)recv + (size_t)i * bytes, g->slots[from], bytes);
  }
  pthread_barrier_wait(&g->bar);
  return 0;
}

static void* fake_rank_main(void* arg) {
  fake_rank_t* me = arg;
  tpc_bootstrap_t* bs = NULL;
  me->st = tpc_bootstrap_init_callback(&bs, me->rank, me->g->nranks, fake_allgather, me);
  if (me->st != TPC_SUCCESS) {
    me->code = 10;
    goto out;
  }
  if (tpc_bootstrap_rank(bs) != me->rank || tpc_bootstrap_size(bs) != me->g->nranks) {
    me->code = 11;
    goto out;
  }
  static const size_t sizes[] = {4, 1000, 0, 60000};
  for (int k = 0; k < 4; k++) {
    size_t bytes = sizes[k];
    uint8_t* send = malloc(bytes + 1);
    uint8_t* recv = malloc(bytes * (size_t)me->g->nranks + 1);
    fill_block(send, bytes, me->seed, me->rank, k);
    me->st = tpc_bootstrap_allgather(bs, send, recv, bytes);
    if (me->st != TPC_SUCCESS) me->code = 20 + k;
    for (int r = 0; r < me->g->nranks && !me->code; r++)
      if (!check_block(recv + (size_t)r * bytes, bytes, me->seed, r, k)) me->code = 40 + k;
    free(send);
    free(recv);
    if (me->code) goto out;
  }
  me->st = tpc_bootstrap_barrier(bs);
  if (me->st != TPC_SUCCESS) me->code = 70;
out:
  snprintf(me->msg, sizeof me->msg, "%s", tpc_get_last_error(NULL)); /* thread-local */
  tpc_bootstrap_destroy(bs);
  return NULL;
}

static void run_fake(int nranks, int fail_with, int scramble, fake_rank_t* ranks) {
  static fake_group_t g; /* large: keep it off the stack */
  memset(&g, 0, sizeof g);
  g.nranks = nranks;
  g.fail_with = fail_with;
  g.scramble = scramble;
  pthread_barrier_init(&g.bar, NULL, (unsigned)nranks);
  pthread_t th[FAKE_MAX_RANKS];
  uint64_t seed = random_seed();
  for (int r = 0; r < nranks; r++) {
    memset(&ranks[r], 0, sizeof ranks[r]);
    ranks[r].g = &g;
    ranks[r].rank = r;
    ranks[r].seed = seed;
    cr_assert_eq(pthread_create(&th[r], NULL, fake_rank_main, &ranks[r]), 0);
  }
  for (int r = 0; r < nranks; r++) pthread_join(th[r], NULL);
  pthread_barrier_destroy(&g.bar);
}

Test(callback, fake_allgather_4_threads, .timeout = 30) {
  fake_rank_t ranks[FAKE_MAX_RANKS];
  run_fake(4, 0, 0, ranks);
  for (int r = 0; r < 4; r++) cr_expect_eq(ranks[r].code, 0, "rank %d: code %d (%s)", r, ranks[r].code, ranks[r].msg);
}

Test(callback, fake_allgather_single_rank, .timeout = 30) {
  fake_rank_t ranks[1];
  run_fake(1, 0, 0, ranks);
  cr_expect_eq(ranks[0].code, 0, "code %d (%s)", ranks[0].code, ranks[0].msg);
}

Test(callback, callback_error_is_reported, .timeout = 30) {
  fake_rank_t ranks[2];
  run_fake(2, 7, 0, ranks);
  for (int r = 0; r < 2; r++) {
    cr_expect_eq(ranks[r].st, TPC_ERR_BOOTSTRAP, "rank %d: %s", r, ranks[r].msg);
    cr_expect(strstr(ranks[r].msg, "returned 7"), "rank %d: %s", r, ranks[r].msg);
  }
}

Test(callback, misordered_blocks_are_detected, .timeout = 30) {
  fake_rank_t ranks[3];
  run_fake(3, 0, 1, ranks);
  for (int r = 0; r < 3; r++) {
    cr_expect_eq(ranks[r].st, TPC_ERR_BOOTSTRAP, "rank %d: %s", r, ranks[r].msg);
    cr_expect(strstr(ranks[r].msg, "block 0") && strstr(ranks[r].msg, "wrong rank"), "rank %d: %s", r, ranks[r].msg);
  }
}

/* =========================================================================================================
 * argument validation
 * ========================================================================================================= */

static int dummy_allgather(const void* s, void* r, size_t b, void* u) {
  memcpy(r, s, b);
  return 0;
}

Test(args, init_socket) {
  tpc_unique_id_t id = new_id(), zero;
  memset(&zero, 0, sizeof zero);
  tpc_bootstrap_t* bs = (tpc_bootstrap_t*)0x1;
  cr_assert_eq(tpc_bootstrap_init_socket(NULL, &id, 0, 2, 100), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "bs is NULL"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, NULL, 0, 2, 100), TPC_ERR_INVALID_ARGUMENT);
  cr_assert_null(bs, "*bs must be NULL after a failure");
  cr_assert(strstr(tpc_get_last_error(NULL), "id is NULL"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, &id, 0, 0, 100), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "nranks=0"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, &id, 0, 100000, 100), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "nranks=100000"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, &id, 5, 4, 100), TPC_ERR_INVALID_ARGUMENT);
  cr_assert_str_eq(tpc_get_last_error(NULL),
                   "invalid argument: tpc_bootstrap_init_socket: rank=5 is out of range for nranks=4");
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, &id, -1, 4, 100), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "rank=-1"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, &id, 0, 2, 0), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "timeout_ms=0"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, &id, 0, 2, -5), TPC_ERR_INVALID_ARGUMENT);
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, &zero, 0, 2, 100), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "magic"), "%s", tpc_get_last_error(NULL));
  cr_assert_null(bs);
  cr_assert(rendezvous_exists(&id), "argument errors must not consume the id");
  rm_id(&id);
}

Test(args, init_socket_on_used_id) {
  tpc_unique_id_t id = new_id();
  rm_id(&id); /* as if another rank 0 already ran */
  tpc_bootstrap_t* bs = NULL;
  cr_assert_eq(tpc_bootstrap_init_socket(&bs, &id, 0, 2, 100), TPC_ERR_SYSTEM);
  cr_assert(strstr(tpc_get_last_error(NULL), "bind("), "%s", tpc_get_last_error(NULL));
}

Test(args, init_callback) {
  tpc_bootstrap_t* bs = (tpc_bootstrap_t*)0x1;
  cr_assert_eq(tpc_bootstrap_init_callback(NULL, 0, 2, dummy_allgather, NULL), TPC_ERR_INVALID_ARGUMENT);
  cr_assert_eq(tpc_bootstrap_init_callback(&bs, 0, 2, NULL, NULL), TPC_ERR_INVALID_ARGUMENT);
  cr_assert_null(bs);
  cr_assert(strstr(tpc_get_last_error(NULL), "allgather function is NULL"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_init_callback(&bs, 0, 0, dummy_allgather, NULL), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "nranks=0"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_init_callback(&bs, 2, 2, dummy_allgather, NULL), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "rank=2 is out of range for nranks=2"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_init_callback(&bs, 0, 1, dummy_allgather, NULL), TPC_SUCCESS);
  tpc_bootstrap_destroy(bs);
}

Test(args, allgather_barrier_and_accessors) {
  uint8_t buf[16] = {0};
  cr_assert_eq(tpc_bootstrap_allgather(NULL, buf, buf, 1), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "bs is NULL"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_barrier(NULL), TPC_ERR_INVALID_ARGUMENT);
  cr_assert_eq(tpc_bootstrap_rank(NULL), -1);
  cr_assert_eq(tpc_bootstrap_size(NULL), -1);
  tpc_bootstrap_destroy(NULL);

  tpc_bootstrap_t* bs = NULL;
  cr_assert_eq(tpc_bootstrap_init_callback(&bs, 0, 1, dummy_allgather, NULL), TPC_SUCCESS);
  cr_assert_eq(tpc_bootstrap_allgather(bs, NULL, buf, 4), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "send is NULL with bytes=4"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_allgather(bs, buf, NULL, 4), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "recv is NULL with bytes=4"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_allgather(bs, buf, buf, (1u << 20) + 1), TPC_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(tpc_get_last_error(NULL), "bytes=1048577"), "%s", tpc_get_last_error(NULL));
  cr_assert_eq(tpc_bootstrap_allgather(bs, NULL, NULL, 0), TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  memset(buf, 3, 4);
  cr_assert_eq(tpc_bootstrap_allgather(bs, buf, buf + 8, 4), TPC_SUCCESS, "%s", tpc_get_last_error(NULL));
  cr_assert_eq(memcmp(buf, buf + 8, 4), 0);
  tpc_bootstrap_destroy(bs);
}
