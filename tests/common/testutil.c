/* testutil.c — see testutil.h. */
#define _GNU_SOURCE
#include "testutil.h"

#include "half_ref.h"

#include <cuda_runtime_api.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int tpc_test_gpu_count(const char** why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = cudaGetErrorString(e);
    cudaGetLastError();
    return 0;
  }
  if (n == 0 && why) *why = "cudaGetDeviceCount returned 0";
  return n;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int tpc_test_run(char* const argv[], char* const env[], char** out, int timeout_s) {
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    setpgid(0, 0);
    for (int i = 0; env && env[i]; i++) putenv(env[i]);
    execvp(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(pfd[1]);
  size_t cap = 4096, len = 0;
  char* buf = malloc(cap);
  double deadline = now_s() + timeout_s;
  int timed_out = 0;
  for (;;) {
    struct pollfd p = {pfd[0], POLLIN, 0};
    int left_ms = (int)((deadline - now_s()) * 1000);
    if (left_ms <= 0) {
      timed_out = 1;
      break;
    }
    int r = poll(&p, 1, left_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    if (len + 1024 > cap) buf = realloc(buf, cap *= 2);
    ssize_t n = read(pfd[0], buf + len, cap - len - 1);
    if (n <= 0) break;
    len += (size_t)n;
  }
  close(pfd[0]);
  buf[len] = 0;
  if (out) *out = buf;
  else free(buf);
  if (timed_out) {
    kill(-pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -2;
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int tpc_test_launch_workers(const char* launcher, const char* bin_dir, int nranks, const char* launcher_extra,
                            const char* worker, const char* worker_args, char* const env[], int timeout_s, int* clean) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s -n %d %s -- %s/%s %s", launcher, nranks, launcher_extra, bin_dir, worker, worker_args);
  char* argv[] = {"sh", "-c", cmd, NULL};
  char* out = NULL;
  int rc = tpc_test_run(argv, env, &out, timeout_s);
  fprintf(stderr, "$ %s\n%s\n", cmd, out ? out : "");
  int reports = 0, failed = 0;
  for (const char* p = out; p && (p = strstr(p, " passed, ")) != NULL; p++) {
    reports++;
    failed |= strncmp(p, " passed, 0 failed", 17) != 0;
  }
  *clean = reports == nranks && !failed;
  free(out);
  return rc;
}

static int g_worker_rank, g_worker_pass, g_worker_fail;

void tpc_test_worker_set_rank(int rank) { g_worker_rank = rank; }

void tpc_test_report(int ok, const char* fmt, ...) {
  if (ok) {
    g_worker_pass++;
    return;
  }
  g_worker_fail++;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "rank %d: FAIL ", g_worker_rank);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

int tpc_test_worker_summary(void) {
  printf("rank %d: %d passed, %d failed\n", g_worker_rank, g_worker_pass, g_worker_fail);
  fflush(stdout);
  return g_worker_fail ? 1 : 0;
}

void tpc_test_worker_cuda_fail(int err, const char* call, const char* file, int line) {
  fprintf(stderr, "rank %d: %s:%d %s: %s\n", g_worker_rank, file, line, call, cudaGetErrorString((cudaError_t)err));
  exit(3);
}

void tpc_test_fill_random(float* x, size_t n, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x[i] = (float)((double)(s >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
  }
}

uint16_t tpc_test_f32_to_bf16(float f) { return href_f32_to_bf16(f); }

float tpc_test_bf16_to_f32(uint16_t h) { return href_bf16_to_f32(h); }

uint16_t tpc_test_f32_to_f16(float f) { return href_f32_to_f16(f); }

float tpc_test_f16_to_f32(uint16_t h) { return href_f16_to_f32(h); }
