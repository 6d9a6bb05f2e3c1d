/* testutil.h — helpers shared by the Criterion suites: GPU presence (for skipping), random data,
 * bf16/fp16 conversions, and running a command with its output captured. No Criterion inside. */
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

/* xorshift random numbers in [-1, 1) from a seed */
void tpc_test_fill_random(float* x, size_t n, uint64_t seed);
uint16_t tpc_test_f32_to_bf16(float f);
float tpc_test_bf16_to_f32(uint16_t h);
uint16_t tpc_test_f32_to_f16(float f);
float tpc_test_f16_to_f32(uint16_t h);

#endif
