/* testutil.h — helpers shared by the Criterion suites: GPU presence (for skipping), random data,
 * bf16/fp16 conversions, and running a command with its output captured; and the result report of the GPU
 * test workers (ar_worker.c, qk_worker.c in tests/gpu). No Criterion inside. */
#ifndef TPCOMM_TESTUTIL_H
#define TPCOMM_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* Number of visible CUDA GPUs (0 when none or no driver); *why gets the reason when 0. */
int tpc_test_gpu_count(const char** why);

/* Runs argv (NULL-terminated) with extra environment entries ("K=V", NULL-terminated, may be NULL),
 * captures stdout+stderr into a malloc'd string (*out, caller frees), waits at most timeout_s seconds
 * (then kills it and returns -2). Returns the exit status (0-255) or 128+signal. */
int tpc_test_run(char* const argv[], char* const env[], char** out, int timeout_s);

/* Runs `tpcomm-run -n nranks <launcher_extra> -- <bin_dir>/<worker> <worker_args>` (GPU test workers),
 * prints the command and its output to stderr, and returns the exit status. *clean gets 1 when exactly
 * nranks "N passed, 0 failed" reports came back and none reported a failure. */
int tpc_test_launch_workers(const char* launcher, const char* bin_dir, int nranks, const char* launcher_extra,
                            const char* worker, const char* worker_args, char* const env[], int timeout_s, int* clean);

/* GPU test workers: the tally of checks and the one line per rank that tpc_test_launch_workers reads.
 * tpc_test_worker_set_rank: the rank every message names (0 until set). tpc_test_report: counts a check;
 * a failed one is printed as "rank R: FAIL <message>" on stderr. tpc_test_worker_summary: prints
 * "rank R: N passed, M failed" on stdout and returns the worker's exit status (1 on any failure).
 * TPC_TEST_CK(call): a CUDA runtime call that must succeed, else "rank R: file:line call: error" on
 * stderr and exit 3. */
void tpc_test_worker_set_rank(int rank);
void tpc_test_report(int ok, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int tpc_test_worker_summary(void);
void tpc_test_worker_cuda_fail(int err, const char* call, const char* file, int line) __attribute__((noreturn));
#define TPC_TEST_CK(x)                                                           \
  do {                                                                           \
    int tpc_test_ck_ = (int)(x);                                                 \
    if (tpc_test_ck_ != 0) tpc_test_worker_cuda_fail(tpc_test_ck_, #x, __FILE__, __LINE__); \
  } while (0)

/* xorshift random numbers in [-1, 1) from a seed */
void tpc_test_fill_random(float* x, size_t n, uint64_t seed);
uint16_t tpc_test_f32_to_bf16(float f);
float tpc_test_bf16_to_f32(uint16_t h);
uint16_t tpc_test_f32_to_f16(float f);
float tpc_test_f16_to_f32(uint16_t h);

#endif
