/* bootstrap.c — how ranks find each other before any GPU communication exists (interface: bootstrap.h),
 * plus the public unique-id calls of tpcomm.h (tpc_get_unique_id, tpc_unique_id_to_string/_from_string).
 *
 * Relies on: Linux (getrandom, accept4, SOCK_CLOEXEC/SOCK_NONBLOCK, MSG_NOSIGNAL, poll, CLOCK_MONOTONIC);
 * mkdtemp making the rendezvous directory 0700, so that only this user (and root) can reach the socket;
 * debug.h for tpc_error() and logging. All ranks run on one host (Unix socket, host byte order).
 *
 * Socket transport, a star through rank 0:
 *   init:      rank 0 binds "<dir>/s" and accepts; every other rank connects (retrying ENOENT/ECONNREFUSED
 *              until the deadline) and sends a hello record {rank, pid}; when all nranks-1 hellos are in,
 *              rank 0 removes the socket file and the directory and answers every rank with a welcome
 *              record {status}. A non-zero status tells the others that rank 0 gave up (a missing rank, an
 *              inconsistent one), so init fails on every rank, not only on rank 0.
 *   allgather: every non-root rank sends its record to rank 0; rank 0 gathers all of them (concurrently,
 *              with poll), then sends every rank the concatenation as one record of its own.
 *   barrier:   an allgather of 0 bytes.
 * Every record is a 40-byte header {magic "TPCB", version, secret[16], rank, nranks, seq, len} followed by
 * len payload bytes. Receivers check every field (the secret in constant time) and that len is exactly the
 * length they expect, so no buffer is ever sized from what a peer sent. seq is 0 for hello/welcome and
 * counts the collectives from 1. Every read and write is non-blocking and bounded by the timeout given at
 * init (per call); a peer that closes early is TPC_ERR_BOOTSTRAP ("rank 2 closed the connection after 12
 * of 48 bytes ..."), a silent one TPC_ERR_TIMEOUT naming it. After any socket failure the bootstrap closes
 * its connections (so that the other ranks fail at once instead of waiting for their timeout) and every
 * later call returns TPC_ERR_INVALID_USAGE.
 *
 * Policy for bad connections while rank 0 waits for hellos (decided here, tested in tests/bootstrap):
 *   - Unauthenticated (wrong magic, version or secret, or a connection that closes or stays silent before
 *     its header is complete): the connection is dropped and logged (WARN), and rank 0 keeps waiting for
 *     the legitimate ranks, so a stray or hostile client cannot make the job fail by sending garbage. If
 *     the deadline then passes with ranks missing, the TPC_ERR_TIMEOUT message names the missing ranks and
 *     the last rejected connection ("... rejected 1 connection(s), last: connection #1: wrong secret ..."),
 *     so a rank started with the wrong id is still reported.
 *   - Authenticated but inconsistent (it knows the secret, so it belongs to this job: wrong nranks, rank
 *     out of range or claimed twice, wrong seq or len, closing mid-hello): TPC_ERR_BOOTSTRAP at once, and
 *     the ranks already connected are told to fail too.
 * At most MAX_PENDING unauthenticated connections are held; beyond that the oldest is dropped.
 *
 * Callback transport: the caller's all-gather moves blocks of {magic, rank, nranks, seq, bytes} + payload,
 * and every block is checked the same way (a callback that reorders or drops blocks is TPC_ERR_BOOTSTRAP).
 *
 * The unique id is single-use for the socket transport: rank 0 removes its directory once init ends
 * (successfully or not). An id that is made but never used leaves an empty directory behind. */
#define _GNU_SOURCE
#include "bootstrap.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "debug.h"

#define REC_MAGIC 0x54504342u /* "TPCB" */
#define REC_VERSION 1u
#define REC_HDR_BYTES 40
#define HELLO_BYTES 8        /* {uint32 rank, uint32 pid} */
#define WELCOME_BYTES 4      /* {uint32 status} */
#define BOOT_MAX_BYTES (1u << 20) /* payload limit per rank and collective */
#define BOOT_MAX_RANKS 1024  /* keeps nranks * BOOT_MAX_BYTES within a uint32 len */
#define MAX_PENDING 64       /* unauthenticated connections held at once by rank 0 */
#define CB_MAGIC 0x54504341u /* "TPCA": block header of the callback transport */
#define CB_HDR_BYTES 24

typedef struct {
  uint32_t magic, version;
  uint8_t secret[16];
  uint32_t rank, nranks, seq, len;
} rec_hdr_t;

typedef struct {
  uint32_t magic, rank, nranks, seq;
  uint64_t bytes;
} cb_hdr_t;

_Static_assert(sizeof(tpc_uid_layout_t) <= TPC_UNIQUE_ID_BYTES, "unique id layout too large");
_Static_assert(sizeof(rec_hdr_t) == REC_HDR_BYTES, "record header must have no padding");
_Static_assert(sizeof(cb_hdr_t) == CB_HDR_BYTES, "callback header must have no padding");
_Static_assert(TPC_UID_PATH_MAX <= sizeof(((struct sockaddr_un*)0)->sun_path), "path must fit sun_path");
_Static_assert((uint64_t)BOOT_MAX_RANKS * BOOT_MAX_BYTES <= UINT32_MAX, "len must fit 32 bits");

enum { BS_SOCKET = 1, BS_CALLBACK = 2 };

/* One receive of a header+payload record from a connected rank (payload goes straight to dst). */
typedef struct {
  int fd, peer;
  uint8_t hdr[REC_HDR_BYTES];
  size_t got;    /* bytes of header+payload received so far */
  uint8_t* dst;  /* payload destination */
  uint32_t len;  /* expected payload length */
} rx_t;

/* One send of the same header+payload to a connected rank. */
typedef struct {
  int fd, peer;
  size_t sent;
} tx_t;

struct tpc_bootstrap {
  int kind, rank, nranks, timeout_ms;
  uint32_t seq;
  tpc_status_t failed; /* socket transport: the error that made it unusable, else TPC_SUCCESS */
  uint8_t secret[16];
  int* fds;            /* socket: rank 0: fds[r] is rank r's connection (fds[0] = -1); others: fds[0] */
  rx_t* rx;            /* socket: nranks scratch entries */
  tx_t* tx;
  struct pollfd* pfd;
  tpc_allgather_fn fn; /* callback */
  void* user;
};

/* ---- small helpers ---------------------------------------------------------------------------------- */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left until deadline, for poll(): 0 when past. */
static int ms_left(int64_t deadline) {
  int64_t left = deadline - now_ms();
  if (left < 0) return 0;
  return left > INT_MAX ? INT_MAX : (int)left;
}

static int secret_equal(const uint8_t* a, const uint8_t* b) {
  volatile uint8_t d = 0;
  for (int i = 0; i < 16; i++) d |= (uint8_t)(a[i] ^ b[i]);
  return d == 0;
}

static void close_fd(int* fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* Appends printf output to buf (always NUL-terminated, silently truncated). */
static void appendf(char* buf, size_t cap, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static void appendf(char* buf, size_t cap, const char* fmt, ...) {
  size_t len = strnlen(buf, cap);
  if (len + 1 >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + len, cap - len, fmt, ap);
  va_end(ap);
}

static void hdr_make(const tpc_bootstrap_t* bs, uint32_t seq, uint32_t len, uint8_t out[REC_HDR_BYTES]) {
  rec_hdr_t h;
  memset(&h, 0, sizeof h);
  h.magic = REC_MAGIC;
  h.version = REC_VERSION;
  memcpy(h.secret, bs->secret, sizeof h.secret);
  h.rank = (uint32_t)bs->rank;
  h.nranks = (uint32_t)bs->nranks;
  h.seq = seq;
  h.len = len;
  memcpy(out, &h, sizeof h);
}

enum { HDR_OK = 0, HDR_UNAUTHENTICATED = 1, HDR_INCONSISTENT = 2 };

/* Checks a received header. expect_rank >= 0: the sender must be that rank; -1 (a hello): any rank in
 * [1, nranks). Authentication (magic, version, secret) is checked first; why names the wrong field. */
static int hdr_check(const tpc_bootstrap_t* bs, const uint8_t raw[REC_HDR_BYTES], int expect_rank,
                     uint32_t seq, uint32_t len, rec_hdr_t* h, char* why, size_t whylen) {
  memcpy(h, raw, sizeof *h);
  if (h->magic != REC_MAGIC) {
    snprintf(why, whylen, "magic=0x%08x, expected 0x%08x (not a tpcomm bootstrap peer)", h->magic, REC_MAGIC);
    return HDR_UNAUTHENTICATED;
  }
  if (h->version != REC_VERSION) {
    snprintf(why, whylen, "version=%u, expected %u (a different tpcomm version)", h->version, REC_VERSION);
    return HDR_UNAUTHENTICATED;
  }
  if (!secret_equal(h->secret, bs->secret)) {
    snprintf(why, whylen, "wrong secret (the peer holds a different unique id)");
    return HDR_UNAUTHENTICATED;
  }
  if (h->nranks != (uint32_t)bs->nranks) {
    snprintf(why, whylen, "nranks=%u, expected %d", h->nranks, bs->nranks);
    return HDR_INCONSISTENT;
  }
  if (expect_rank < 0 && (h->rank == 0 || h->rank >= (uint32_t)bs->nranks)) {
    snprintf(why, whylen, "rank=%u is out of range [1, %d) for a connecting rank", h->rank, bs->nranks);
    return HDR_INCONSISTENT;
  }
  if (expect_rank >= 0 && h->rank != (uint32_t)expect_rank) {
    snprintf(why, whylen, "rank=%u, expected %d", h->rank, expect_rank);
    return HDR_INCONSISTENT;
  }
  if (h->seq != seq) {
    snprintf(why, whylen, "seq=%u, expected %u (ranks out of step: a collective was skipped or repeated)", h->seq,
             seq);
    return HDR_INCONSISTENT;
  }
  if (h->len != len) {
    snprintf(why, whylen, "len=%u, expected %u%s", h->len, len,
             seq ? " (ranks passed different sizes)" : " (not a valid hello or welcome)");
    return HDR_INCONSISTENT;
  }
  return HDR_OK;
}

static int parent_dir(const char* path, char* dir, size_t cap) {
  const char* slash = strrchr(path, '/');
  if (!slash || slash == path || (size_t)(slash - path) >= cap) return -1;
  memcpy(dir, path, (size_t)(slash - path));
  dir[slash - path] = 0;
  return 0;
}

/* Removes the socket file and its directory (rank 0, once init is over). Only a directory that
 * tpc_bootstrap_create_id could have made ("tpcomm-XXXXXX" holding "s") is removed. */
static void remove_rendezvous(const char* path) {
  char dir[TPC_UID_PATH_MAX];
  if (unlink(path) != 0 && errno != ENOENT)
    TPC_WARN("bootstrap: could not remove the socket %s: %s", path, strerror(errno));
  const char* base = strrchr(path, '/');
  if (parent_dir(path, dir, sizeof dir) != 0 || strcmp(base, "/s") != 0) return;
  const char* dbase = strrchr(dir, '/');
  if (!dbase || strncmp(dbase, "/tpcomm-", 8) != 0) return;
  if (rmdir(dir) != 0 && errno != ENOENT)
    TPC_WARN("bootstrap: could not remove the rendezvous directory %s: %s", dir, strerror(errno));
}

/* ---- unique id -------------------------------------------------------------------------------------- */

tpc_status_t tpc_bootstrap_create_id(tpc_unique_id_t* id) {
  static const char fn[] = "tpc_bootstrap_create_id";
  if (!id) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: id is NULL", fn);
  const char* base = getenv("TMPDIR");
  if (!base || !*base) base = "/tmp";
  size_t bl = strlen(base);
  while (bl > 0 && base[bl - 1] == '/') bl--; /* "/tmp/" -> "/tmp", "/" -> "" */
  if (base[0] != '/')
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "%s: TMPDIR='%s' is not an absolute path (every rank must reach the same socket)", fn, base);
  const size_t path_len = bl + strlen("/tpcomm-XXXXXX") + strlen("/s");
  if (path_len >= TPC_UID_PATH_MAX)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "%s: TMPDIR='%s' is too long: the socket path would have %zu characters, a Unix socket path "
                     "at most %d; set TMPDIR to a shorter directory",
                     fn, base, path_len, TPC_UID_PATH_MAX - 1);

  tpc_uid_layout_t u;
  memset(&u, 0, sizeof u);
  u.magic = TPC_UID_MAGIC;
  u.version = TPC_UID_VERSION;
  for (size_t got = 0; got < sizeof u.secret;) {
    ssize_t n = getrandom(u.secret + got, sizeof u.secret - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: getrandom failed: %s", fn, strerror(errno));
    }
    got += (size_t)n;
  }
  char dir[TPC_UID_PATH_MAX];
  snprintf(dir, sizeof dir, "%.*s/tpcomm-XXXXXX", (int)bl, base);
  if (!mkdtemp(dir))
    return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: mkdtemp(%s) failed: %s (is TMPDIR a writable directory?)", fn, dir,
                     strerror(errno));
  snprintf(u.path, sizeof u.path, "%s/s", dir);
  memset(id, 0, sizeof *id);
  memcpy(id->internal, &u, sizeof u);
  TPC_INFO(TPC_SUB_BOOT, "bootstrap: new unique id, rendezvous %s", u.path);
  return TPC_SUCCESS;
}

tpc_status_t tpc_bootstrap_check_id(const tpc_unique_id_t* id) {
  static const char fn[] = "tpc_bootstrap_check_id";
  if (!id) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: id is NULL", fn);
  tpc_uid_layout_t u;
  memcpy(&u, id->internal, sizeof u);
  if (u.magic != TPC_UID_MAGIC)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "%s: unique id has magic=0x%08x, expected 0x%08x (not made by tpc_get_unique_id, or corrupted)",
                     fn, u.magic, TPC_UID_MAGIC);
  if (u.version != TPC_UID_VERSION)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "%s: unique id has version=%u, expected %u (made by a different tpcomm version)", fn, u.version,
                     TPC_UID_VERSION);
  if (!memchr(u.path, 0, sizeof u.path))
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: unique id path is not NUL-terminated within %d bytes", fn,
                     TPC_UID_PATH_MAX);
  if (u.path[0] != '/')
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: unique id path '%s' is not an absolute path", fn, u.path);
  return TPC_SUCCESS;
}

tpc_status_t tpc_get_unique_id(tpc_unique_id_t* id) {
  if (!id) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "tpc_get_unique_id: id is NULL");
  return tpc_bootstrap_create_id(id);
}

tpc_status_t tpc_unique_id_to_string(const tpc_unique_id_t* id, char* buf, size_t buflen) {
  static const char fn[] = "tpc_unique_id_to_string";
  static const char hex[] = "0123456789abcdef";
  if (!id) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: id is NULL", fn);
  if (!buf) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: buf is NULL", fn);
  if (buflen < TPC_UNIQUE_ID_STRLEN)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: buflen=%zu is too small, need at least %d", fn, buflen,
                     TPC_UNIQUE_ID_STRLEN);
  tpc_status_t st = tpc_bootstrap_check_id(id);
  if (st != TPC_SUCCESS) return st;
  const unsigned char* b = (const unsigned char*)id->internal;
  for (int i = 0; i < TPC_UNIQUE_ID_BYTES; i++) {
    buf[2 * i] = hex[b[i] >> 4];
    buf[2 * i + 1] = hex[b[i] & 15];
  }
  buf[2 * TPC_UNIQUE_ID_BYTES] = 0;
  return TPC_SUCCESS;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

tpc_status_t tpc_unique_id_from_string(const char* str, tpc_unique_id_t* id) {
  static const char fn[] = "tpc_unique_id_from_string";
  if (!str) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: str is NULL", fn);
  if (!id) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: id is NULL", fn);
  const size_t want = 2 * TPC_UNIQUE_ID_BYTES;
  size_t n = strnlen(str, want + 1);
  if (n != want)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: str has %s%zu characters, expected %zu hex digits", fn,
                     n > want ? "more than " : "", n > want ? want : n, want);
  tpc_unique_id_t tmp;
  for (size_t i = 0; i < want; i += 2) {
    int hi = hex_value(str[i]), lo = hex_value(str[i + 1]);
    if (hi < 0 || lo < 0) {
      size_t pos = hi < 0 ? i : i + 1;
      unsigned char c = (unsigned char)str[pos];
      if (isprint(c))
        return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: character %zu ('%c') is not a hex digit", fn, pos, c);
      return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: character %zu (byte 0x%02x) is not a hex digit", fn, pos,
                       c);
    }
    tmp.internal[i / 2] = (char)(hi << 4 | lo);
  }
  tpc_status_t st = tpc_bootstrap_check_id(&tmp);
  if (st != TPC_SUCCESS) return st;
  *id = tmp;
  return TPC_SUCCESS;
}

/* ---- non-blocking record I/O, bounded by a deadline -------------------------------------------------- */

/* Waits until one of bs->pfd[0..m) is ready or the deadline passed (*timed_out), retrying after signals. */
static tpc_status_t poll_pending(tpc_bootstrap_t* bs, int m, int64_t deadline, const char* fn, int* timed_out) {
  for (;;) {
    int r = poll(bs->pfd, (nfds_t)m, ms_left(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: poll failed: %s", fn, strerror(errno));
    *timed_out = r == 0 && ms_left(deadline) == 0;
    return TPC_SUCCESS;
  }
}

/* Receives one record on each of rx[0..n) concurrently: the header is checked against (peer, seq, len)
 * as soon as it is complete, the payload goes to dst. what names the record in messages. */
static tpc_status_t rx_all(tpc_bootstrap_t* bs, rx_t* rx, int n, uint32_t seq, int64_t deadline, const char* fn,
                           const char* what) {
  for (int i = 0; i < n; i++) rx[i].got = 0;
  int left = n;
  while (left > 0) {
    int m = 0;
    for (int i = 0; i < n; i++) {
      if (rx[i].got == REC_HDR_BYTES + (size_t)rx[i].len) continue;
      bs->pfd[m].fd = rx[i].fd;
      bs->pfd[m].events = POLLIN;
      bs->pfd[m].revents = 0;
      m++;
    }
    int timed_out = 0;
    tpc_status_t ps = poll_pending(bs, m, deadline, fn, &timed_out);
    if (ps != TPC_SUCCESS) return ps;
    if (timed_out) {
      char msg[TPC_ERRMSG_LEN] = "";
      int k = 0;
      for (int i = 0; i < n; i++) {
        size_t total = REC_HDR_BYTES + (size_t)rx[i].len;
        if (rx[i].got == total) continue;
        appendf(msg, sizeof msg, "%srank %d (%zu of %zu bytes received)", k++ ? ", " : "", rx[i].peer, rx[i].got,
                total);
      }
      return tpc_error(NULL, TPC_ERR_TIMEOUT, "%s: rank %d timed out after %d ms waiting for the %s (seq %u) of %s", fn,
                       bs->rank, bs->timeout_ms, what, seq, msg);
    }
    int j = 0;
    for (int i = 0; i < n; i++) {
      rx_t* x = &rx[i];
      size_t total = REC_HDR_BYTES + (size_t)x->len;
      if (x->got == total) continue;
      short rev = bs->pfd[j++].revents;
      if (!rev) continue;
      while (x->got < total) {
        uint8_t* to = x->got < REC_HDR_BYTES ? x->hdr + x->got : x->dst + (x->got - REC_HDR_BYTES);
        size_t want = x->got < REC_HDR_BYTES ? REC_HDR_BYTES - x->got : total - x->got;
        ssize_t k = recv(x->fd, to, want, MSG_DONTWAIT);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (k == 0 || (k < 0 && errno == ECONNRESET))
          return tpc_error(NULL, TPC_ERR_BOOTSTRAP,
                           "%s: rank %d closed the connection after %zu of %zu bytes of its %s (seq %u)%s", fn,
                           x->peer, x->got, total, what, seq,
                           x->peer == 0 ? "; rank 0 failed, exited or rejected this rank: see its log" : "");
        if (k < 0)
          return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: recv from rank %d failed: %s", fn, x->peer, strerror(errno));
        x->got += (size_t)k;
        if (x->got == REC_HDR_BYTES) {
          rec_hdr_t h;
          char why[200];
          if (hdr_check(bs, x->hdr, x->peer, seq, x->len, &h, why, sizeof why) != HDR_OK)
            return tpc_error(NULL, TPC_ERR_BOOTSTRAP, "%s: bad %s header from rank %d: %s; dropping the connection",
                             fn, what, x->peer, why);
        }
      }
      if (x->got == total) left--;
    }
  }
  return TPC_SUCCESS;
}

/* Sends the same header+payload on each of tx[0..n) concurrently. */
static tpc_status_t tx_all(tpc_bootstrap_t* bs, tx_t* tx, int n, const uint8_t* hdr, const void* pay, size_t len,
                           int64_t deadline, const char* fn, const char* what) {
  const size_t total = REC_HDR_BYTES + len;
  for (int i = 0; i < n; i++) tx[i].sent = 0;
  int left = n;
  while (left > 0) {
    int m = 0;
    for (int i = 0; i < n; i++) {
      if (tx[i].sent == total) continue;
      bs->pfd[m].fd = tx[i].fd;
      bs->pfd[m].events = POLLOUT;
      bs->pfd[m].revents = 0;
      m++;
    }
    int timed_out = 0;
    tpc_status_t ps = poll_pending(bs, m, deadline, fn, &timed_out);
    if (ps != TPC_SUCCESS) return ps;
    if (timed_out) {
      char msg[TPC_ERRMSG_LEN] = "";
      int k = 0;
      for (int i = 0; i < n; i++)
        if (tx[i].sent != total)
          appendf(msg, sizeof msg, "%srank %d (%zu of %zu bytes sent)", k++ ? ", " : "", tx[i].peer, tx[i].sent,
                  total);
      return tpc_error(NULL, TPC_ERR_TIMEOUT, "%s: rank %d timed out after %d ms sending the %s to %s", fn, bs->rank,
                       bs->timeout_ms, what, msg);
    }
    int j = 0;
    for (int i = 0; i < n; i++) {
      tx_t* x = &tx[i];
      if (x->sent == total) continue;
      if (!bs->pfd[j++].revents) continue;
      while (x->sent < total) {
        struct iovec iov[2];
        int niov = 0;
        if (x->sent < REC_HDR_BYTES) {
          iov[niov].iov_base = (void*)(hdr + x->sent);
          iov[niov++].iov_len = REC_HDR_BYTES - x->sent;
          if (len) {
            iov[niov].iov_base = (void*)pay;
            iov[niov++].iov_len = len;
          }
        } else {
          iov[niov].iov_base = (void*)((const uint8_t*)pay + (x->sent - REC_HDR_BYTES));
          iov[niov++].iov_len = total - x->sent;
        }
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)niov;
        ssize_t k = sendmsg(x->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (k < 0 && (errno == EPIPE || errno == ECONNRESET))
          return tpc_error(NULL, TPC_ERR_BOOTSTRAP,
                           "%s: rank %d closed the connection while rank %d sent it the %s (%zu of %zu bytes sent)%s",
                           fn, x->peer, bs->rank, what, x->sent, total,
                           x->peer == 0 ? "; rank 0 failed, exited or rejected this rank: see its log" : "");
        if (k < 0)
          return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: send to rank %d failed: %s", fn, x->peer, strerror(errno));
        x->sent += (size_t)k;
      }
      if (x->sent == total) left--;
    }
  }
  return TPC_SUCCESS;
}

/* ---- socket transport: init -------------------------------------------------------------------------- */

static tpc_bootstrap_t* bs_alloc(int kind, int rank, int nranks, int timeout_ms) {
  tpc_bootstrap_t* bs = calloc(1, sizeof *bs);
  if (!bs) return NULL;
  bs->kind = kind;
  bs->rank = rank;
  bs->nranks = nranks;
  bs->timeout_ms = timeout_ms;
  if (kind == BS_SOCKET) {
    bs->fds = malloc(sizeof(int) * (size_t)nranks);
    bs->rx = calloc((size_t)nranks, sizeof(rx_t));
    bs->tx = calloc((size_t)nranks, sizeof(tx_t));
    bs->pfd = calloc((size_t)nranks + MAX_PENDING + 1, sizeof(struct pollfd));
    if (!bs->fds || !bs->rx || !bs->tx || !bs->pfd) {
      tpc_bootstrap_destroy(bs);
      return NULL;
    }
    for (int i = 0; i < nranks; i++) bs->fds[i] = -1;
  }
  return bs;
}

/* Marks the socket transport failed and closes every connection, so that the other ranks see it at once. */
static tpc_status_t bs_fail(tpc_bootstrap_t* bs, tpc_status_t st) {
  if (bs->kind == BS_SOCKET) {
    for (int i = 0; i < bs->nranks; i++) close_fd(&bs->fds[i]);
    bs->failed = st;
  }
  return st;
}

typedef struct {
  int fd, id;
  size_t got;
  uint8_t buf[REC_HDR_BYTES + HELLO_BYTES];
} pending_t;

enum { HELLO_MORE = 0, HELLO_DONE = 1, HELLO_DROP = 2, HELLO_FATAL = 3 };

/* Reads what is available of a pending connection's hello. DONE: *rank_out is its rank. DROP: why says
 * why an unauthenticated connection is dropped. FATAL: an authenticated rank is inconsistent (why). */
static int hello_step(tpc_bootstrap_t* bs, pending_t* p, int* rank_out, int* pid_out, char* why, size_t whylen) {
  const size_t total = sizeof p->buf;
  for (;;) {
    size_t want = (p->got < REC_HDR_BYTES ? REC_HDR_BYTES : total) - p->got;
    ssize_t k = recv(p->fd, p->buf + p->got, want, MSG_DONTWAIT);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return HELLO_MORE;
    if (k == 0 || (k < 0 && errno == ECONNRESET)) {
      if (p->got < REC_HDR_BYTES) {
        snprintf(why, whylen, "connection #%d, which closed after %zu of %zu bytes of its hello", p->id, p->got,
                 total);
        return HELLO_DROP;
      }
      rec_hdr_t h;
      memcpy(&h, p->buf, sizeof h);
      snprintf(why, whylen, "rank %u, which closed the connection after %zu of %zu bytes of its hello", h.rank,
               p->got, total);
      return HELLO_FATAL;
    }
    if (k < 0) {
      snprintf(why, whylen, "connection #%d, whose recv failed: %s", p->id, strerror(errno));
      return p->got < REC_HDR_BYTES ? HELLO_DROP : HELLO_FATAL;
    }
    p->got += (size_t)k;
    if (p->got == REC_HDR_BYTES) {
      rec_hdr_t h;
      char what[200];
      int c = hdr_check(bs, p->buf, -1, 0, HELLO_BYTES, &h, what, sizeof what);
      if (c != HDR_OK) {
        snprintf(why, whylen, "connection #%d (claiming rank %u), whose hello header is bad: %s", p->id, h.rank,
                 what);
        return c == HDR_UNAUTHENTICATED ? HELLO_DROP : HELLO_FATAL;
      }
    }
    if (p->got == total) {
      rec_hdr_t h;
      uint32_t body[2];
      memcpy(&h, p->buf, sizeof h);
      memcpy(body, p->buf + REC_HDR_BYTES, sizeof body);
      if (body[0] != h.rank) {
        snprintf(why, whylen, "connection #%d, whose hello says rank %u in its header but rank %u in its body", p->id,
                 h.rank, body[0]);
        return HELLO_FATAL;
      }
      *rank_out = (int)h.rank;
      *pid_out = (int)body[1];
      return HELLO_DONE;
    }
  }
}

/* Formats "ranks 2, 5" / "rank 2" for the ranks that have no connection yet. */
static void missing_ranks(const tpc_bootstrap_t* bs, char* buf, size_t cap) {
  int n = 0;
  for (int r = 1; r < bs->nranks; r++) n += bs->fds[r] < 0;
  buf[0] = 0;
  appendf(buf, cap, "%s ", n == 1 ? "rank" : "ranks");
  int k = 0;
  for (int r = 1; r < bs->nranks; r++)
    if (bs->fds[r] < 0) appendf(buf, cap, "%s%d", k++ ? ", " : "", r);
}

/* Best-effort failure notice to the ranks already connected (a 44-byte record always fits an empty
 * socket buffer), then every connection is closed. */
static void root_abort_peers(tpc_bootstrap_t* bs, tpc_status_t st) {
  uint8_t rec[REC_HDR_BYTES + WELCOME_BYTES];
  uint32_t status = (uint32_t)st;
  hdr_make(bs, 0, WELCOME_BYTES, rec);
  memcpy(rec + REC_HDR_BYTES, &status, sizeof status);
  for (int r = 1; r < bs->nranks; r++) {
    if (bs->fds[r] < 0) continue;
    ssize_t k;
    do k = send(bs->fds[r], rec, sizeof rec, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (k < 0 && errno == EINTR);
  }
  bs_fail(bs, st);
}

static tpc_status_t root_init(tpc_bootstrap_t* bs, const char* path, int64_t deadline) {
  static const char fn[] = "tpc_bootstrap_init_socket";
  const int64_t start = now_ms();
  tpc_status_t st = TPC_SUCCESS;
  int lfd = -1, bound = 0, npend = 0, next_id = 1, arrived = 0, nrejected = 0;
  pending_t* pend = NULL;
  char rejected[300] = "";

  if (bs->nranks == 1) {
    remove_rendezvous(path); /* unused: nobody connects to a job of one */
    return TPC_SUCCESS;
  }
  pend = calloc(MAX_PENDING, sizeof *pend);
  if (!pend) return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: out of memory", fn);

  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (lfd < 0) {
    st = tpc_error(NULL, TPC_ERR_SYSTEM, "%s: socket(AF_UNIX) failed: %s", fn, strerror(errno));
    goto out;
  }
  if (unlink(path) != 0 && errno != ENOENT) {
    st = tpc_error(NULL, TPC_ERR_SYSTEM, "%s: removing the stale socket %s failed: %s", fn, path, strerror(errno));
    goto out;
  }
  if (bind(lfd, (struct sockaddr*)&sa, sizeof sa) != 0) {
    st = tpc_error(NULL, TPC_ERR_SYSTEM,
                   "%s: bind(%s) failed: %s (the id's directory must exist: was the id already used by a rank 0, or "
                   "made on another host?)",
                   fn, path, strerror(errno));
    goto out;
  }
  bound = 1;
  if (listen(lfd, bs->nranks + 16) != 0) {
    st = tpc_error(NULL, TPC_ERR_SYSTEM, "%s: listen(%s) failed: %s", fn, path, strerror(errno));
    goto out;
  }
  TPC_INFO(TPC_SUB_BOOT, "bootstrap: rank 0 listening on %s for %d ranks (timeout %d ms)", path, bs->nranks,
           bs->timeout_ms);

  while (arrived < bs->nranks - 1) {
    int ms = ms_left(deadline);
    if (ms == 0) break;
    bs->pfd[0].fd = lfd;
    bs->pfd[0].events = POLLIN;
    bs->pfd[0].revents = 0;
    for (int i = 0; i < npend; i++) {
      bs->pfd[1 + i].fd = pend[i].fd;
      bs->pfd[1 + i].events = POLLIN;
      bs->pfd[1 + i].revents = 0;
    }
    int r = poll(bs->pfd, (nfds_t)(1 + npend), ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      st = tpc_error(NULL, TPC_ERR_SYSTEM, "%s: poll failed: %s", fn, strerror(errno));
      goto out;
    }
    if (r == 0) continue;
    /* pending connections, backwards so that removing one (swap with the last) keeps pfd indices valid */
    for (int i = npend - 1; i >= 0; i--) {
      if (!bs->pfd[1 + i].revents) continue;
      int rank = -1, pid = 0;
      char why[300];
      int res = hello_step(bs, &pend[i], &rank, &pid, why, sizeof why);
      if (res == HELLO_MORE) continue;
      if (res == HELLO_FATAL) {
        st = tpc_error(NULL, TPC_ERR_BOOTSTRAP, "%s: rank 0 rejected %s", fn, why);
        goto out;
      }
      if (res == HELLO_DONE && bs->fds[rank] >= 0) {
        st = tpc_error(NULL, TPC_ERR_BOOTSTRAP,
                       "%s: rank 0: rank %d connected twice (the second time on connection #%d, pid %d); two "
                       "processes were given the same rank",
                       fn, rank, pend[i].id, pid);
        goto out;
      }
      if (res == HELLO_DONE) {
        bs->fds[rank] = pend[i].fd;
        arrived++;
        TPC_INFO(TPC_SUB_BOOT, "bootstrap: rank %d (pid %d) arrived on connection #%d, %d of %d", rank, pid,
                 pend[i].id, arrived + 1, bs->nranks);
      } else { /* HELLO_DROP */
        nrejected++;
        snprintf(rejected, sizeof rejected, "%s", why);
        TPC_WARN("bootstrap: rank 0 dropped %s; still waiting for the job's ranks", why);
        close(pend[i].fd);
      }
      pend[i] = pend[--npend];
    }
    if (bs->pfd[0].revents) {
      for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          st = tpc_error(NULL, TPC_ERR_SYSTEM, "%s: accept on %s failed: %s", fn, path, strerror(errno));
          goto out;
        }
        if (npend == MAX_PENDING) { /* drop the oldest unauthenticated connection */
          int oldest = 0;
          for (int i = 1; i < npend; i++)
            if (pend[i].id < pend[oldest].id) oldest = i;
          nrejected++;
          snprintf(rejected, sizeof rejected, "connection #%d, which sent no complete hello before %d newer ones",
                   pend[oldest].id, MAX_PENDING);
          TPC_WARN("bootstrap: rank 0 dropped %s", rejected);
          close(pend[oldest].fd);
          pend[oldest] = pend[--npend];
        }
        memset(&pend[npend], 0, sizeof pend[npend]);
        pend[npend].fd = fd;
        pend[npend].id = next_id++;
        npend++;
      }
    }
  }

  if (arrived < bs->nranks - 1) {
    char miss[200], extra[400] = "";
    missing_ranks(bs, miss, sizeof miss);
    if (npend) appendf(extra, sizeof extra, "; %d connection(s) never completed their hello", npend);
    if (nrejected) appendf(extra, sizeof extra, "; rejected %d connection(s), last: %s", nrejected, rejected);
    st = tpc_error(NULL, TPC_ERR_TIMEOUT,
                   "%s: rank 0 timed out after %lld ms: %s never arrived (%d of %d ranks connected)%s", fn,
                   (long long)(now_ms() - start), miss, arrived + 1, bs->nranks, extra);
    goto out;
  }

  /* everyone is here: the rendezvous is no longer needed; confirm to every rank */
  close_fd(&lfd);
  remove_rendezvous(path);
  bound = 0;
  {
    uint8_t hdr[REC_HDR_BYTES];
    uint32_t ok = 0;
    hdr_make(bs, 0, WELCOME_BYTES, hdr);
    for (int r = 1; r < bs->nranks; r++) {
      bs->tx[r - 1].fd = bs->fds[r];
      bs->tx[r - 1].peer = r;
    }
    st = tx_all(bs, bs->tx, bs->nranks - 1, hdr, &ok, sizeof ok, deadline, fn, "welcome");
    if (st != TPC_SUCCESS) {
      bs_fail(bs, st);
      goto out;
    }
  }

out:
  if (st != TPC_SUCCESS && !bs->failed) root_abort_peers(bs, st);
  for (int i = 0; i < npend; i++) close(pend[i].fd);
  free(pend);
  close_fd(&lfd);
  if (bound) remove_rendezvous(path);
  return st;
}

static tpc_status_t peer_init(tpc_bootstrap_t* bs, const char* path, int64_t deadline) {
  static const char fn[] = "tpc_bootstrap_init_socket";
  const int64_t start = now_ms();
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);

  int fd = -1, last_err = 0, attempts = 0, nap_ms = 1;
  for (;;) {
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: socket(AF_UNIX) failed: %s", fn, strerror(errno));
    attempts++;
    if (connect(fd, (struct sockaddr*)&sa, sizeof sa) == 0) break;
    last_err = errno;
    close_fd(&fd);
    if (last_err != ENOENT && last_err != ECONNREFUSED && last_err != EAGAIN && last_err != EINTR)
      return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: rank %d: connect(%s) failed: %s", fn, bs->rank, path,
                       strerror(last_err));
    int left = ms_left(deadline);
    if (left == 0)
      return tpc_error(NULL, TPC_ERR_TIMEOUT,
                       "%s: rank %d: rank 0 never accepted: connect(%s) kept failing for %lld ms, %d attempts (last "
                       "error: %s)",
                       fn, bs->rank, path, (long long)(now_ms() - start), attempts, strerror(last_err));
    int nap = nap_ms < left ? nap_ms : left;
    struct timespec ts = {nap / 1000, (long)(nap % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    if (nap_ms < 20) nap_ms *= 2;
  }
  bs->fds[0] = fd;
  TPC_INFO(TPC_SUB_BOOT, "bootstrap: rank %d connected to %s after %d attempt(s)", bs->rank, path, attempts);

  uint8_t hdr[REC_HDR_BYTES];
  uint32_t hello[2] = {(uint32_t)bs->rank, (uint32_t)getpid()};
  hdr_make(bs, 0, HELLO_BYTES, hdr);
  bs->tx[0].fd = fd;
  bs->tx[0].peer = 0;
  tpc_status_t st = tx_all(bs, bs->tx, 1, hdr, hello, sizeof hello, deadline, fn, "hello");
  if (st != TPC_SUCCESS) return st;

  uint32_t status = 0;
  bs->rx[0].fd = fd;
  bs->rx[0].peer = 0;
  bs->rx[0].dst = (uint8_t*)&status;
  bs->rx[0].len = WELCOME_BYTES;
  st = rx_all(bs, bs->rx, 1, 0, deadline, fn, "welcome");
  if (st != TPC_SUCCESS) return st;
  if (status != TPC_SUCCESS) {
    tpc_status_t rs = (status < TPC_NUM_STATUS) ? (tpc_status_t)status : TPC_ERR_BOOTSTRAP;
    return tpc_error(NULL, rs,
                     "%s: rank %d: rank 0 gave up the bootstrap (%s): a rank never arrived or was rejected; see rank "
                     "0's log",
                     fn, bs->rank, tpc_status_string(rs));
  }
  return TPC_SUCCESS;
}

tpc_status_t tpc_bootstrap_init_socket(tpc_bootstrap_t** bs, const tpc_unique_id_t* id, int rank, int nranks,
                                       int timeout_ms) {
  static const char fn[] = "tpc_bootstrap_init_socket";
  if (!bs) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: bs is NULL", fn);
  *bs = NULL;
  if (!id) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: id is NULL", fn);
  if (nranks < 1 || nranks > BOOT_MAX_RANKS)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: nranks=%d is out of range [1, %d]", fn, nranks,
                     BOOT_MAX_RANKS);
  if (rank < 0 || rank >= nranks)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: rank=%d is out of range for nranks=%d", fn, rank, nranks);
  if (timeout_ms <= 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: timeout_ms=%d must be positive", fn, timeout_ms);
  tpc_status_t st = tpc_bootstrap_check_id(id);
  if (st != TPC_SUCCESS) return st;

  tpc_uid_layout_t u;
  memcpy(&u, id->internal, sizeof u);
  tpc_bootstrap_t* b = bs_alloc(BS_SOCKET, rank, nranks, timeout_ms);
  if (!b) return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: out of memory for nranks=%d", fn, nranks);
  memcpy(b->secret, u.secret, sizeof b->secret);
  const int64_t start = now_ms(), deadline = start + timeout_ms;
  st = rank == 0 ? root_init(b, u.path, deadline) : peer_init(b, u.path, deadline);
  if (st != TPC_SUCCESS) {
    tpc_bootstrap_destroy(b);
    return st;
  }
  TPC_INFO(TPC_SUB_BOOT, "bootstrap: rank %d of %d connected in %lld ms", rank, nranks, (long long)(now_ms() - start));
  *bs = b;
  return TPC_SUCCESS;
}

tpc_status_t tpc_bootstrap_init_callback(tpc_bootstrap_t** bs, int rank, int nranks, tpc_allgather_fn fn,
                                         void* user) {
  static const char f[] = "tpc_bootstrap_init_callback";
  if (!bs) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: bs is NULL", f);
  *bs = NULL;
  if (!fn) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: allgather function is NULL", f);
  if (nranks < 1 || nranks > BOOT_MAX_RANKS)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: nranks=%d is out of range [1, %d]", f, nranks,
                     BOOT_MAX_RANKS);
  if (rank < 0 || rank >= nranks)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: rank=%d is out of range for nranks=%d", f, rank, nranks);
  tpc_bootstrap_t* b = bs_alloc(BS_CALLBACK, rank, nranks, 0);
  if (!b) return tpc_error(NULL, TPC_ERR_SYSTEM, "%s: out of memory", f);
  b->fn = fn;
  b->user = user;
  TPC_INFO(TPC_SUB_BOOT, "bootstrap: rank %d of %d uses the caller's all-gather", rank, nranks);
  *bs = b;
  return TPC_SUCCESS;
}

/* ---- collectives ------------------------------------------------------------------------------------- */

static tpc_status_t cb_allgather(tpc_bootstrap_t* bs, const void* send, void* recv, size_t bytes, uint32_t seq) {
  static const char fn[] = "tpc_bootstrap_allgather";
  const size_t blk = CB_HDR_BYTES + bytes;
  uint8_t* sbuf = malloc(blk);
  uint8_t* rbuf = calloc((size_t)bs->nranks, blk);
  tpc_status_t st = TPC_SUCCESS;
  if (!sbuf || !rbuf) {
    st = tpc_error(NULL, TPC_ERR_SYSTEM, "%s: out of memory for %zu bytes", fn, blk * (size_t)(bs->nranks + 1));
    goto out;
  }
  cb_hdr_t h = {CB_MAGIC, (uint32_t)bs->rank, (uint32_t)bs->nranks, seq, (uint64_t)bytes};
  memcpy(sbuf, &h, sizeof h);
  if (bytes) memcpy(sbuf + CB_HDR_BYTES, send, bytes);
  int rc = bs->fn(sbuf, rbuf, blk, bs->user);
  if (rc != 0) {
    st = tpc_error(NULL, TPC_ERR_BOOTSTRAP,
                   "%s: the caller's allgather function returned %d (rank %d, seq %u, %zu bytes per rank)", fn,
                   rc, bs->rank, seq, blk);
    goto out;
  }
  for (int i = 0; i < bs->nranks; i++) {
    cb_hdr_t g;
    memcpy(&g, rbuf + (size_t)i * blk, sizeof g);
    const char* field = g.magic != CB_MAGIC          ? "magic"
                        : g.rank != (uint32_t)i         ? "rank"
                        : g.nranks != (uint32_t)bs->nranks ? "nranks"
                        : g.seq != seq                  ? "seq"
                        : g.bytes != bytes              ? "bytes"
                                                        : NULL;
    if (field) {
      st = tpc_error(NULL, TPC_ERR_BOOTSTRAP,
                     "%s: block %d returned by the caller's allgather function has a wrong %s (magic=0x%08x rank=%u "
                     "nranks=%u seq=%u bytes=%llu; expected rank=%d nranks=%d seq=%u bytes=%zu)",
                     fn, i, field, g.magic, g.rank, g.nranks, g.seq, (unsigned long long)g.bytes, i, bs->nranks, seq,
                     bytes);
      goto out;
    }
  }
  for (int i = 0; i < bs->nranks && bytes; i++)
    memcpy((uint8_t*)recv + (size_t)i * bytes, rbuf + (size_t)i * blk + CB_HDR_BYTES, bytes);
out:
  free(sbuf);
  free(rbuf);
  return st;
}

tpc_status_t tpc_bootstrap_allgather(tpc_bootstrap_t* bs, const void* send, void* recv, size_t bytes) {
  static const char fn[] = "tpc_bootstrap_allgather";
  if (!bs) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: bs is NULL", fn);
  if (bytes > BOOT_MAX_BYTES)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: bytes=%zu exceeds the bootstrap limit of %u bytes per rank",
                     fn, bytes, BOOT_MAX_BYTES);
  if (bytes && !send) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: send is NULL with bytes=%zu", fn, bytes);
  if (bytes && !recv) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: recv is NULL with bytes=%zu", fn, bytes);
  if (bs->failed)
    return tpc_error(NULL, TPC_ERR_INVALID_USAGE,
                     "%s: rank %d: the bootstrap failed earlier (%s) and its connections are closed; destroy it", fn,
                     bs->rank, tpc_status_string(bs->failed));
  const uint32_t seq = ++bs->seq;
  TPC_TRACE(TPC_SUB_BOOT, "bootstrap: rank %d allgather seq %u, %zu bytes", bs->rank, seq, bytes);
  if (bs->kind == BS_CALLBACK) return cb_allgather(bs, send, recv, bytes, seq);
  if (bs->nranks == 1) {
    if (bytes) memmove(recv, send, bytes);
    return TPC_SUCCESS;
  }

  const int64_t deadline = now_ms() + bs->timeout_ms;
  const uint32_t total = (uint32_t)(bytes * (size_t)bs->nranks);
  uint8_t hdr[REC_HDR_BYTES];
  tpc_status_t st;
  if (bs->rank != 0) {
    hdr_make(bs, seq, (uint32_t)bytes, hdr);
    bs->tx[0].fd = bs->fds[0];
    bs->tx[0].peer = 0;
    st = tx_all(bs, bs->tx, 1, hdr, send, bytes, deadline, fn, "allgather record");
    if (st != TPC_SUCCESS) return bs_fail(bs, st);
    bs->rx[0].fd = bs->fds[0];
    bs->rx[0].peer = 0;
    bs->rx[0].dst = recv;
    bs->rx[0].len = total;
    st = rx_all(bs, bs->rx, 1, seq, deadline, fn, "allgather result");
    if (st != TPC_SUCCESS) return bs_fail(bs, st);
    return TPC_SUCCESS;
  }
  if (bytes) memmove(recv, send, bytes);
  for (int r = 1; r < bs->nranks; r++) {
    rx_t* x = &bs->rx[r - 1];
    x->fd = bs->fds[r];
    x->peer = r;
    x->dst = bytes ? (uint8_t*)recv + (size_t)r * bytes : NULL;
    x->len = (uint32_t)bytes;
    bs->tx[r - 1].fd = bs->fds[r];
    bs->tx[r - 1].peer = r;
  }
  st = rx_all(bs, bs->rx, bs->nranks - 1, seq, deadline, fn, "allgather record");
  if (st != TPC_SUCCESS) return bs_fail(bs, st);
  hdr_make(bs, seq, total, hdr);
  st = tx_all(bs, bs->tx, bs->nranks - 1, hdr, recv, total, deadline, fn, "allgather result");
  if (st != TPC_SUCCESS) return bs_fail(bs, st);
  return TPC_SUCCESS;
}

tpc_status_t tpc_bootstrap_barrier(tpc_bootstrap_t* bs) {
  if (!bs) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "tpc_bootstrap_barrier: bs is NULL");
  return tpc_bootstrap_allgather(bs, NULL, NULL, 0);
}

int tpc_bootstrap_rank(const tpc_bootstrap_t* bs) { return bs ? bs->rank : -1; }
int tpc_bootstrap_size(const tpc_bootstrap_t* bs) { return bs ? bs->nranks : -1; }

void tpc_bootstrap_destroy(tpc_bootstrap_t* bs) {
  if (!bs) return;
  if (bs->fds)
    for (int i = 0; i < bs->nranks; i++) close_fd(&bs->fds[i]);
  free(bs->fds);
  free(bs->rx);
  free(bs->tx);
  free(bs->pfd);
  explicit_bzero(bs->secret, sizeof bs->secret);
  free(bs);
}
