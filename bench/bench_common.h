/* bench_common.h — what every tpcomm-bench subcommand shares: status codes and error messages, option
 * parsing (the getopt loop; byte counts with K/M/G, bounded integers, dtypes, name lists), communicator
 * setup (tpcomm-run, mpirun or a single process), a subcommand's start and end (one set of exit codes),
 * small cross-rank helpers built on tpc_all_reduce (barrier, sums, all-gather), timing with CUDA events eagerly and inside CUDA graphs, host-side bf16/fp16 conversions and
 * random data, the "#" job header, an nccl-tests style table, JSON records and progress lines on stderr.
 *
 * Relies on: the public tpcomm API (tpcomm.h, tpcomm_mpi.h when TPC_HAVE_MPI), the CUDA runtime and NCCL
 * (only for its version and error strings here). Every cross-rank helper is collective: all ranks call it
 * in the same order, as they do tpcomm's own calls. Only rank 0 prints the table, header and progress. */
#ifndef TPCOMM_BENCH_COMMON_H
#define TPCOMM_BENCH_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cuda_runtime_api.h>

#include "tpcomm/tpcomm.h"

/* ---- status and exit codes ------------------------------------------------------------------------ */

/* What a bench helper returns. BENCH_NA: the request is valid but this implementation cannot serve it
 * (TPC_ERR_UNSUPPORTED): the caller prints "n/a" and goes on. BENCH_FAIL: the message is in
 * bench_error_message(). */
typedef enum { BENCH_OK = 0, BENCH_NA = 1, BENCH_FAIL = 2 } bench_rc_t;

/* Process exit codes of every subcommand. */
enum {
  BENCH_EXIT_OK = 0,    /* done, every checked result right (or nothing to do: no GPU) */
  BENCH_EXIT_WRONG = 1, /* done, but some results were wrong */
  BENCH_EXIT_USAGE = 2, /* bad command line */
  BENCH_EXIT_FAIL = 3   /* a CUDA, NCCL, tpcomm or system call failed */
};

/* Records a failure message (printf style) and returns BENCH_FAIL. */
bench_rc_t bench_fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
/* The last recorded failure message. */
const char* bench_error_message(void);
bench_rc_t bench_cuda_fail(cudaError_t err, const char* call, const char* file, int line);
struct bench_ctx;
/* Records "<call> failed: <status>: <tpc_get_last_error>" and returns BENCH_FAIL. ctx may be NULL. */
bench_rc_t bench_tpc_fail(const struct bench_ctx* ctx, tpc_status_t st, const char* call, const char* file,
                          int line);
/* TPC_SUCCESS -> BENCH_OK, TPC_ERR_UNSUPPORTED -> BENCH_NA (no message), others -> bench_tpc_fail. */
bench_rc_t bench_tpc_rc(const struct bench_ctx* ctx, tpc_status_t st, const char* call, const char* file,
                        int line);
bench_rc_t bench_nccl_fail(int nccl_result, const char* call, const char* file, int line);

#define BENCH_CHECK(call)                    \
  do {                                       \
    bench_rc_t bench_rc_ = (call);           \
    if (bench_rc_ != BENCH_OK) return bench_rc_; \
  } while (0)
#define BENCH_CHECK_CUDA(call)                                                  \
  do {                                                                          \
    cudaError_t bench_cerr_ = (call);                                           \
    if (bench_cerr_ != cudaSuccess) return bench_cuda_fail(bench_cerr_, #call, __FILE__, __LINE__); \
  } while (0)
/* For code that must reach its cleanup: runs `call` only while rc (a bench_rc_t variable) is BENCH_OK,
 * and records its failure in rc the way BENCH_CHECK_CUDA would return it. */
#define BENCH_TRY_CUDA(rc, call)                                                               \
  do {                                                                                         \
    if ((rc) == BENCH_OK) {                                                                    \
      cudaError_t bench_cerr_ = (call);                                                        \
      if (bench_cerr_ != cudaSuccess) (rc) = bench_cuda_fail(bench_cerr_, #call, __FILE__, __LINE__); \
    }                                                                                          \
  } while (0)
/* Any tpcomm error, TPC_ERR_UNSUPPORTED included, is a failure. */
#define BENCH_CHECK_TPC(ctx, call)                                                                  \
  do {                                                                                              \
    tpc_status_t bench_st_ = (call);                                                                \
    if (bench_st_ != TPC_SUCCESS) return bench_tpc_fail((ctx), bench_st_, #call, __FILE__, __LINE__); \
  } while (0)
#define BENCH_CHECK_NCCL(call)                                                              \
  do {                                                                                      \
    int bench_nres_ = (int)(call);                                                          \
    if (bench_nres_ != 0) return bench_nccl_fail(bench_nres_, #call, __FILE__, __LINE__);   \
  } while (0)

/* ---- command line ----------------------------------------------------------------------------------- */

#define BENCH_PROGRAM "tpcomm-bench"

/* The whole command line (main's argc/argv), for the header. */
void bench_set_command_line(int argc, char** argv);
/* Resets getopt so a subcommand can parse its own argv. */
void bench_getopt_reset(void);
/* Prints "tpcomm-bench <cmd>: <message>" and a hint to stderr; returns BENCH_EXIT_USAGE. */
int bench_usage_error(const char* cmd, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parsers: 0 on success; on a bad value they print a message naming `opt` and the value (through
 * bench_usage_error) and return -1. */
int bench_parse_bytes(const char* cmd, const char* opt, const char* val, size_t* out); /* 8, 64K, 1M, 2G */
int bench_parse_long(const char* cmd, const char* opt, const char* val, long min, long max, long* out);
int bench_parse_dtype(const char* cmd, const char* opt, const char* val, tpc_dtype_t* out);
/* A file name (--json): non-empty, else the message and -1. */
int bench_parse_path(const char* cmd, const char* opt, const char* val, const char** out);
/* A comma list of names[0..n-1] (or "all") into bits: bit i for names[i]. `what` names one item in the
 * messages ("kernel", "section", ...). */
int bench_parse_name_list(const char* cmd, const char* opt, const char* val, const char* const* names, int n,
                          const char* what, unsigned* out);
/* 1 if s is a non-empty string of decimal digits (for options with an optional numeric argument). */
int bench_is_number(const char* s);
/* Applies one option (getopt's c and optarg) to a subcommand's options; 0, or non-zero after printing the
 * message (bench_usage_error / the parsers above). */
typedef int (*bench_apply_fn)(int c, int argc, char** argv, void* opts);
/* What bench_parse_options and bench_start return when the subcommand goes on; anything else is the exit
 * code to return at once. */
#define BENCH_CONTINUE (-1)
struct option;
/* The getopt_long loop of every subcommand. optstring starts with ':' and has 'h' (help). -h prints
 * usage to stdout (BENCH_EXIT_OK); a missing value, an unknown option (named) or a stray argument is a
 * usage error (BENCH_EXIT_USAGE), like a value `apply` rejects; else BENCH_CONTINUE. */
int bench_parse_options(const char* cmd, int argc, char** argv, const char* optstring, const struct option* longs,
                        void (*usage)(FILE*), bench_apply_fn apply, void* opts);
/* "64M", "1K", "8" ... for byte counts in messages. */
const char* bench_format_bytes(size_t bytes, char* buf, size_t len);

/* ---- data types and host data ----------------------------------------------------------------------- */

const char* bench_dtype_name(tpc_dtype_t dtype); /* "bfloat16", "half", "float" */
size_t bench_dtype_size(tpc_dtype_t dtype);
/* Unit round-off of the type: bf16 2^-8, fp16 2^-11, fp32 1e-6 (the check's tolerance per rank). */
double bench_dtype_eps(tpc_dtype_t dtype);
uint16_t bench_f32_to_bf16(float f);
float bench_bf16_to_f32(uint16_t h);
uint16_t bench_f32_to_f16(float f);
float bench_f16_to_f32(uint16_t h);
/* x rounded to dtype (round to nearest even) and back to float. */
float bench_round_to_dtype(float x, tpc_dtype_t dtype);
/* Element i of a host array of dtype, as float / stores float x (rounded) into element i. */
float bench_load_elem(const void* data, size_t i, tpc_dtype_t dtype);
void bench_store_elem(void* data, size_t i, tpc_dtype_t dtype, float x);

/* xorshift64 random numbers in [-1, 1), the generator of tests/common/testutil.c. */
typedef struct {
  uint64_t s;
} bench_rng_t;
void bench_rng_init(bench_rng_t* rng, uint64_t seed);
static inline float bench_rng_next(bench_rng_t* rng) {
  uint64_t s = rng->s;
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  rng->s = s;
  return (float)((double)(s >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}
/* A well-mixed seed from three values (e.g. size, implementation, rank). */
uint64_t bench_seed(uint64_t a, uint64_t b, uint64_t c);

/* ---- the job: communicator, device, stream ------------------------------------------------------------ */

typedef enum { BENCH_LAUNCH_SINGLE = 0, BENCH_LAUNCH_TPCOMM_RUN = 1, BENCH_LAUNCH_MPI = 2 } bench_launch_t;

/* A measurement times this many back-to-back blocks (each: `iters` eager calls, or `reps` graph replays) with
 * no synchronization between them and reports the median block, so one disturbed block (a late launch, a
 * clock change) does not move the result. */
#define BENCH_TIMING_BLOCKS 3

typedef struct bench_ctx {
  tpc_comm_t comm;
  int rank, nranks, device;
  bench_launch_t launch;
  int mpi_initialized;
  cudaStream_t stream; /* non-blocking; every measurement runs on it */
  cudaEvent_t ev[BENCH_TIMING_BLOCKS + 1]; /* boundaries of the timed blocks of one measurement */
  void* nccl;      /* the communicator's ncclComm_t, or NULL when it has none */
  float* d_scratch; /* device floats for the cross-rank helpers */
  size_t scratch_count;
  double t_start;  /* wall clock at setup, for progress lines */
} bench_ctx_t;

/* Outcome of bench_ctx_init besides BENCH_OK / BENCH_FAIL. */
#define BENCH_NO_GPU 3

/* Sets up the job: with TPCOMM_RANK in the environment tpc_comm_init_env; else with
 * OMPI_COMM_WORLD_RANK and MPI support MPI_Init + tpc_comm_init_mpi; else world size 1 on device 0.
 * Returns BENCH_NO_GPU (after printing the one "no CUDA GPU" line, rank 0 only) when no GPU is visible,
 * BENCH_OK, or BENCH_FAIL. */
int bench_ctx_init(bench_ctx_t* ctx);
/* Frees everything, destroys the communicator, MPI_Finalize. Not collective beyond what tpcomm needs. */
bench_rc_t bench_ctx_finish(bench_ctx_t* ctx);
/* After a BENCH_FAIL: prints the message (with the rank) to stderr, aborts the communicator (and the MPI
 * job when there are other ranks, so none is left waiting) and returns BENCH_EXIT_FAIL. */
int bench_ctx_fail(bench_ctx_t* ctx);

/* Keeps the first failure: *first = rc when *first is BENCH_OK (for teardown that goes on after one). */
void bench_keep_first(bench_rc_t* first, bench_rc_t rc);

/* ---- cross-rank helpers (collective) ------------------------------------------------------------------ */

/* A tiny tpc_all_reduce, then waits for the stream: every rank has arrived. */
bench_rc_t bench_barrier(bench_ctx_t* ctx);
/* vals[i] summed over ranks, in place (float32 through tpc_all_reduce). */
bench_rc_t bench_sum_floats(bench_ctx_t* ctx, float* vals, size_t n);
/* Sum over ranks of a count, exact up to 2^44 per rank. */
bench_rc_t bench_sum_count(bench_ctx_t* ctx, uint64_t* count);
/* Average over ranks of a value (e.g. a time, like nccl-tests). */
bench_rc_t bench_average(bench_ctx_t* ctx, double value, double* avg);
/* all[r*bytes .. ] = rank r's `mine`, for every rank (byte-wise through float sums; for small records). */
bench_rc_t bench_all_gather(bench_ctx_t* ctx, const void* mine, void* all, size_t bytes);
/* *how_many = number of ranks where flag is non-zero. */
bench_rc_t bench_count_ranks(bench_ctx_t* ctx, int flag, int* how_many);

/* ---- timing ------------------------------------------------------------------------------------------- */

/* One operation to time: enqueues its work on `stream` (BENCH_NA when unsupported). */
typedef bench_rc_t (*bench_enqueue_fn)(void* arg, cudaStream_t stream);
typedef struct {
  bench_enqueue_fn fn;
  void* arg;
} bench_op_t;

/* Captures `calls` back-to-back calls of op on ctx->stream (cudaStreamCaptureModeThreadLocal) and
 * instantiates them. On any failure the capture is ended and nothing is left behind. */
bench_rc_t bench_graph_capture(bench_ctx_t* ctx, bench_op_t op, int calls, cudaGraphExec_t* exec);
/* Runs op once, eagerly (graph=0) or as a graph of one call replayed once (graph=1), and waits for it. */
bench_rc_t bench_run_once(bench_ctx_t* ctx, bench_op_t op, int graph);
/* Eager: `warmup` calls, then CUDA events around `iters` calls; *us = microseconds per call, this rank. */
bench_rc_t bench_time_eager(bench_ctx_t* ctx, bench_op_t op, int warmup, int iters, double* us);
/* Graph: `iters` calls captured in one graph, one warm-up replay, then events around `reps` replays;
 * *us = total / (iters * reps), this rank. */
bench_rc_t bench_time_graph(bench_ctx_t* ctx, bench_op_t op, int iters, int reps, double* us);

/* Host to device, returning only when the bytes are in device memory (cudaMemcpy, then cudaDeviceSynchronize:
 * from pageable memory cudaMemcpy may return before its DMA lands, and work on a non-blocking stream does not
 * wait for the legacy stream's copy). For set-up copies; the first error is returned. */
cudaError_t bench_h2d(void* dst, const void* src, size_t bytes);

/* ---- single-GPU kernel benchmarks: memory floor and cold L2 --------------------------------------------- */

/* The device-to-device copy bandwidth (bytes read + written per second / 1e9) of ctx's GPU: cudaMemcpy of
 * up to 1 GiB (less when device memory is short), 3 warm-up and 20 timed copies on ctx->stream. Prints
 * the "# copy bandwidth" line (rank 0). The floor of the kernel benchmarks is bytes / this. */
bench_rc_t bench_copy_bandwidth(bench_ctx_t* ctx, double* gbs);
/* The L2 cache size of ctx's GPU in bytes. */
bench_rc_t bench_l2_bytes(const bench_ctx_t* ctx, size_t* bytes);
/* How many copies of a buffer set of set_bytes to rotate over so that together they exceed twice the L2
 * cache (calls then read DRAM): at least 1, at most max_sets, and at most budget_bytes in all. */
int bench_rotation_sets(size_t l2_bytes, size_t set_bytes, int max_sets, size_t budget_bytes);

/* ---- output ------------------------------------------------------------------------------------------- */

/* stdout on rank 0, NULL elsewhere: pass to the printers below, which do nothing with NULL. */
FILE* bench_out(const bench_ctx_t* ctx);
/* Prints to f (if not NULL) and flushes. */
void bench_printf(FILE* f, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
/* The "#" header shared by every subcommand: command line, UTC date, host, ranks and their devices,
 * NCCL and tpcomm versions, transport and reason, TPCOMM_* / NCCL_* settings. Collective. */
bench_rc_t bench_print_job_header(bench_ctx_t* ctx);
/* "[  12.3 s] message" to stderr, rank 0 only. */
void bench_progress(const bench_ctx_t* ctx, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

/* An nccl-tests style table: right-aligned fixed-width columns, optionally grouped under a title. Header
 * lines start with '#', rows with ' ', so columns line up. Cells wider than their column push the row. */
#define BENCH_TABLE_MAX_COLS 64
typedef struct {
  const char* name;
  const char* unit;
  int width;
  int group; /* index into groups, -1 = none */
} bench_col_t;
typedef struct {
  int ncols, ngroups, cur_group, next_cell;
  bench_col_t cols[BENCH_TABLE_MAX_COLS];
  const char* groups[BENCH_TABLE_MAX_COLS];
  char row[4096];
  size_t row_len;
} bench_table_t;
void bench_table_init(bench_table_t* t);
/* Columns added after this belong to group `title` (NULL: to no group). */
void bench_table_group(bench_table_t* t, const char* title);
void bench_table_col(bench_table_t* t, const char* name, const char* unit, int width);
void bench_table_print_header(const bench_table_t* t, FILE* f);
/* The next cell of the current row. */
void bench_table_cell(bench_table_t* t, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints the row (missing trailing cells are blank) and starts a new one. */
void bench_table_end_row(bench_table_t* t, FILE* f);

/* JSON: an array of flat records. With a NULL file (no --json, or not rank 0) every call does nothing. */
typedef struct {
  FILE* f;
  const char* path;
  int nrecords, nfields;
  int open_failed; /* bench_json_open: rank 0 could not open or write the file (every rank knows) */
} bench_json_t;
/* Opens path on rank 0 (other ranks: inactive writer); the result is agreed on by every rank. NULL path:
 * an inactive writer. */
bench_rc_t bench_json_open(bench_ctx_t* ctx, bench_json_t* j, const char* path);
void bench_json_begin(bench_json_t* j);
void bench_json_str(bench_json_t* j, const char* key, const char* val);
void bench_json_int(bench_json_t* j, const char* key, long long val);
void bench_json_num(bench_json_t* j, const char* key, double val); /* null when not finite */
void bench_json_bool(bench_json_t* j, const char* key, int val);
void bench_json_null(bench_json_t* j, const char* key);
void bench_json_end(bench_json_t* j);
/* Closes the array and the file; BENCH_FAIL when a write failed. */
bench_rc_t bench_json_close(bench_json_t* j);

/* ---- a subcommand's start and end ------------------------------------------------------------------- */

/* The start of a subcommand, once its options are parsed: bench_ctx_init, then bench_json_open(json,
 * json_path). BENCH_CONTINUE when both are ready; else the exit code: BENCH_EXIT_OK without a GPU,
 * BENCH_EXIT_USAGE when rank 0 cannot write the --json file (said once, by rank 0, after a clean
 * teardown), BENCH_EXIT_FAIL after bench_ctx_fail. */
int bench_start(const char* cmd, bench_ctx_t* ctx, bench_json_t* json, const char* json_path);
/* The end of a subcommand whose run returned rc. After a failure: bench_ctx_fail, no collective teardown
 * (peers may be gone). Else closes the JSON file, runs cleanup(arg) (may be NULL: what the subcommand
 * allocated), bench_ctx_finish; BENCH_EXIT_WRONG when wrong > 0, else BENCH_EXIT_OK (BENCH_EXIT_FAIL
 * after bench_ctx_fail if any step fails). */
int bench_finish(bench_ctx_t* ctx, bench_json_t* json, bench_rc_t rc, bench_rc_t (*cleanup)(void* arg), void* arg,
                 uint64_t wrong);

#endif
