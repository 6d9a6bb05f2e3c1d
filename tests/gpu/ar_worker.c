/* ar_worker.c — one rank of the GPU all-reduce tests, started by tpcomm-run (or mpirun) from
 * test_allreduce_gpu.c. Modes (argv[1]):
 *   matrix [--quick]  every dtype x algorithm x size (1 element .. 64 MiB, odd counts) x in/out of place x
 *                     eager/graph, against a CPU reference (fp32 sum in rank order, rounded): custom
 *                     algorithms must match bit for bit, NCCL within rounding; unaligned buffers too
 *   replay N          a graph of several all-reduces of different sizes/algorithms replayed N times
 *   streams           calls alternating between two streams on one communicator
 *   timeout           rank 1 never calls; rank 0 must get TPC_ERR_TIMEOUT naming peer 1, not hang
 *   basic             NCCL-path / local sanity for a few sizes (world size 1 too)
 * Prints "rank R: N passed, M failed" (testutil's worker report) and exits non-zero on any failure.
 * Inputs are fresh random values (never zeros); outputs are poisoned before every run. */
#define _GNU_SOURCE
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tpcomm/tpcomm.h"
#ifdef TPC_HAVE_MPI
#include <mpi.h>

#include "tpcomm/tpcomm_mpi.h"
#endif

static int g_rank, g_size;

#define TK(comm, x)                                                                                                 \
  do {                                                                                                              \
    tpc_status_t s_ = (x);                                                                                          \
    if (s_ != TPC_SUCCESS) {                                                                                        \
      fprintf(stderr, "rank %d: %s:%d %s: %s\n", g_rank, __FILE__, __LINE__, #x, tpc_get_last_error(comm));        \
      exit(4);                                                                                                      \
    }                                                                                                               \
  } while (0)

/* Copies and fills go on the test stream and are waited for: a plain cudaMemcpy/cudaMemset runs on the
 * legacy stream, which a non-blocking stream does not wait for (its DMA can still be landing when the
 * all-reduce reads the buffer). */
static cudaStream_t g_stream;
static void h2d(void* dst, const void* src, size_t n) {
  TPC_TEST_CK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, g_stream));
  TPC_TEST_CK(cudaStreamSynchronize(g_stream));
}
static void d2h(void* dst, const void* src, size_t n) {
  TPC_TEST_CK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, g_stream));
  TPC_TEST_CK(cudaStreamSynchronize(g_stream));
}
static void poison(void* dst, size_t n) {
  TPC_TEST_CK(cudaMemsetAsync(dst, 0x7f, n, g_stream));
  TPC_TEST_CK(cudaStreamSynchronize(g_stream));
}

static size_t esize(tpc_dtype_t d) { return d == TPC_FLOAT32 ? 4 : 2; }
static const char* dname(tpc_dtype_t d) { return d == TPC_BFLOAT16 ? "bf16" : d == TPC_FLOAT16 ? "fp16" : "fp32"; }

static float to_f(tpc_dtype_t d, const void* p, size_t i) {
  if (d == TPC_FLOAT32) return ((const float*)p)[i];
  uint16_t h = ((const uint16_t*)p)[i];
  return d == TPC_BFLOAT16 ? tpc_test_bf16_to_f32(h) : tpc_test_f16_to_f32(h);
}
static void from_f(tpc_dtype_t d, void* p, size_t i, float f) {
  if (d == TPC_FLOAT32) ((float*)p)[i] = f;
  else ((uint16_t*)p)[i] = d == TPC_BFLOAT16 ? tpc_test_f32_to_bf16(f) : tpc_test_f32_to_f16(f);
}

/* rank r's input for a test case: random in [-1,1), scaled so sums stay well inside fp16's range */
static void make_input(tpc_dtype_t d, void* host, size_t count, uint64_t seed, int r, float* scratch) {
  tpc_test_fill_random(scratch, count, seed * 131 + (uint64_t)r + 1);
  for (size_t i = 0; i < count; i++) from_f(d, host, i, scratch[i] * 4.0f);
}

typedef struct {
  tpc_comm_t comm;
  cudaStream_t stream;
  char* dsend; /* device buffers with room for max bytes + 64 (unaligned tests) */
  char* drecv;
  void* hin;
  void* href;
  void* hout;
  float* scratch;
  float* acc;
  size_t max_count; /* of fp32 */
} ctx_t;

/* The reference on this rank: every rank's input regenerated from its seed, summed in fp32 in rank
 * order, rounded to the dtype. */
static void reference(ctx_t* c, tpc_dtype_t d, size_t count, uint64_t seed) {
  for (int r = 0; r < g_size; r++) {
    make_input(d, c->href, count, seed, r, c->scratch);
    for (size_t i = 0; i < count; i++) c->acc[i] = r == 0 ? to_f(d, c->href, i) : c->acc[i] + to_f(d, c->href, i);
  }
  for (size_t i = 0; i < count; i++) from_f(d, c->href, i, c->acc[i]);
}

static size_t count_wrong(ctx_t* c, tpc_dtype_t d, size_t count, int exact, size_t* first) {
  size_t wrong = 0;
  const float tol = d == TPC_BFLOAT16 ? 1.0f / 128 : d == TPC_FLOAT16 ? 1.0f / 1024 : 1e-6f;
  for (size_t i = 0; i < count; i++) {
    int bad;
    if (exact) bad = memcmp((char*)c->hout + i * esize(d), (char*)c->href + i * esize(d), esize(d)) != 0;
    else {
      float o = to_f(d, c->hout, i), r = to_f(d, c->href, i);
      bad = !(fabsf(o - r) <= tol * g_size * (fabsf(r) + 1.0f));
    }
    if (bad && wrong++ == 0) *first = i;
  }
  return wrong;
}

/* One case: fresh input, poisoned output, one call (eager, or a captured graph replayed once). */
static void run_case(ctx_t* c, tpc_dtype_t d, tpc_algo_t algo, size_t count, int inplace, int graph, size_t offset,
                     uint64_t seed) {
  const size_t bytes = count * esize(d);
  char* send = c->dsend + offset;
  char* recv = inplace ? send : c->drecv + offset;
  make_input(d, c->hin, count, seed, g_rank, c->scratch);
  poison(c->drecv, bytes + 64);
  h2d(send, c->hin, bytes);
  if (graph) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    TPC_TEST_CK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    tpc_status_t s = tpc_all_reduce_algo(send, recv, count, d, TPC_SUM, algo, c->comm, c->stream);
    TPC_TEST_CK(cudaStreamEndCapture(c->stream, &g));
    if (s != TPC_SUCCESS) {
      tpc_test_report(0, "%s %s count=%zu graph capture: %s", dname(d), tpc_algo_name(algo), count, tpc_get_last_error(c->comm));
      cudaGraphDestroy(g);
      return;
    }
    TPC_TEST_CK(cudaGraphInstantiate(&ge, g, 0));
    TPC_TEST_CK(cudaGraphLaunch(ge, c->stream));
    TPC_TEST_CK(cudaStreamSynchronize(c->stream));
    TPC_TEST_CK(cudaGraphExecDestroy(ge));
    TPC_TEST_CK(cudaGraphDestroy(g));
  } else {
    tpc_status_t s = tpc_all_reduce_algo(send, recv, count, d, TPC_SUM, algo, c->comm, c->stream);
    if (s != TPC_SUCCESS) {
      tpc_test_report(0, "%s %s count=%zu: %s", dname(d), tpc_algo_name(algo), count, tpc_get_last_error(c->comm));
      return;
    }
    TPC_TEST_CK(cudaStreamSynchronize(c->stream));
  }
  d2h(c->hout, recv, bytes);
  reference(c, d, count, seed);
  size_t first = 0;
  const int exact = algo != TPC_ALGO_NCCL;
  size_t wrong = count_wrong(c, d, count, exact, &first);
  tpc_test_report(wrong == 0, "%s %s count=%zu %s %s offset=%zu: %zu wrong, first at %zu (got %g want %g)", dname(d),
         tpc_algo_name(algo), count, inplace ? "in-place" : "out-of-place", graph ? "graph" : "eager", offset, wrong,
         first, wrong ? to_f(d, c->hout, first) : 0.0, wrong ? to_f(d, c->href, first) : 0.0);
  if (!inplace) { /* nothing past the end was written */
    unsigned char tail[16];
    d2h(tail, recv + bytes, sizeof tail);
    int clean = 1;
    for (int i = 0; i < 16; i++) clean &= tail[i] == 0x7f;
    tpc_test_report(clean, "%s %s count=%zu wrote past the end of recvbuf", dname(d), tpc_algo_name(algo), count);
  }
}

static int algo_available(ctx_t* c, tpc_algo_t algo, size_t count, tpc_dtype_t d) {
  /* probe with a harmless call: UNSUPPORTED means this algorithm cannot serve the size here */
  tpc_status_t s = tpc_all_reduce_algo(c->dsend, c->drecv, count, d, TPC_SUM, algo, c->comm, c->stream);
  TPC_TEST_CK(cudaStreamSynchronize(c->stream));
  if (s == TPC_ERR_UNSUPPORTED) return 0;
  TK(c->comm, s);
  return 1;
}

static void mode_matrix(ctx_t* c, int quick) {
  static const size_t small[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 255, 1000, 4095, 4096, 4097, 65535, 65537};
  const tpc_algo_t algos[] = {TPC_ALGO_ONESHOT, TPC_ALGO_TWOSHOT, TPC_ALGO_NCCL, TPC_ALGO_AUTO};
  const tpc_dtype_t dtypes[] = {TPC_BFLOAT16, TPC_FLOAT16, TPC_FLOAT32};
  uint64_t seed = 1;
  for (int ai = 0; ai < 4; ai++) {
    for (int di = 0; di < 3; di++) {
      const tpc_dtype_t d = dtypes[di];
      if (!algo_available(c, algos[ai], 1, d)) {
        if (g_rank == 0) printf("# %s unavailable here; skipped\n", tpc_algo_name(algos[ai]));
        break;
      }
      for (size_t si = 0; si < sizeof small / sizeof small[0]; si++)
        for (int inplace = 0; inplace < 2; inplace++)
          for (int graph = 0; graph < 2; graph++) run_case(c, d, algos[ai], small[si], inplace, graph, 0, seed++);
      /* misaligned buffers: element offsets 1 and 3 */
      run_case(c, d, algos[ai], 1000, 0, 0, esize(d), seed++);
      run_case(c, d, algos[ai], 4097, 1, 1, 3 * esize(d), seed++);
    }
    /* large sizes (bf16): 1 MiB + odd tail up to 64 MiB */
    const size_t max_bytes = quick ? (4u << 20) : (64u << 20);
    for (size_t bytes = 1u << 20; bytes <= max_bytes; bytes *= 4) {
      const size_t count = bytes / 2 - (bytes > (1u << 20) ? 3 : 0);
      if (!algo_available(c, algos[ai], count, TPC_BFLOAT16)) continue;
      run_case(c, TPC_BFLOAT16, algos[ai], count, 1, 0, 0, seed++);
      run_case(c, TPC_BFLOAT16, algos[ai], count, 0, 1, 0, seed++);
    }
  }
}

/* A graph with several calls of different sizes and algorithms, replayed many times: exercises slot
 * rotation, epochs and semaphore bases across replays. Inputs stay constant, outputs are compared after
 * the last replay (and the out-of-place outputs are poisoned before). */
static void mode_replay(ctx_t* c, int replays) {
  const size_t counts[] = {513, 40000, 3, 300000};
  const tpc_algo_t algos[] = {TPC_ALGO_ONESHOT, TPC_ALGO_ONESHOT, TPC_ALGO_AUTO, TPC_ALGO_TWOSHOT};
  const tpc_dtype_t d = TPC_BFLOAT16;
  size_t off[4], total = 0;
  for (int i = 0; i < 4; i++) {
    off[i] = total;
    total += (counts[i] * 2 + 255) / 256 * 256;
  }
  void* hin = malloc(total);
  for (int i = 0; i < 4; i++) {
    make_input(d, (char*)hin + off[i], counts[i], 1000 + i, g_rank, c->scratch);
  }
  h2d(c->dsend, hin, total);
  poison(c->drecv, total);
  cudaGraph_t g;
  cudaGraphExec_t ge;
  TPC_TEST_CK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < 4; i++)
    TK(c->comm, tpc_all_reduce_algo(c->dsend + off[i], c->drecv + off[i], counts[i], d, TPC_SUM, algos[i], c->comm,
                                    c->stream));
  TPC_TEST_CK(cudaStreamEndCapture(c->stream, &g));
  TPC_TEST_CK(cudaGraphInstantiate(&ge, g, 0));
  for (int r = 0; r < replays; r++) TPC_TEST_CK(cudaGraphLaunch(ge, c->stream));
  TPC_TEST_CK(cudaStreamSynchronize(c->stream));
  tpc_status_t async = TPC_SUCCESS;
  TK(c->comm, tpc_comm_get_async_error(c->comm, &async));
  tpc_test_report(async == TPC_SUCCESS, "replay: async error %s", tpc_get_last_error(c->comm));
  for (int i = 0; i < 4; i++) {
    d2h(c->hout, c->drecv + off[i], counts[i] * 2);
    reference(c, d, counts[i], 1000 + i);
    size_t first = 0, wrong = count_wrong(c, d, counts[i], 1, &first);
    tpc_test_report(wrong == 0, "replay x%d call %d (count=%zu, %s): %zu wrong, first at %zu", replays, i, counts[i],
           tpc_algo_name(algos[i]), wrong, first);
  }
  TPC_TEST_CK(cudaGraphExecDestroy(ge));
  TPC_TEST_CK(cudaGraphDestroy(g));
  free(hin);
}

/* Back-to-back eager calls alternating between two streams and sizes. */
static void mode_streams(ctx_t* c) {
  cudaStream_t s2;
  TPC_TEST_CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  const tpc_dtype_t d = TPC_FLOAT16;
  const size_t counts[2] = {777, 123457};
  void* hin = malloc(counts[1] * 2);
  make_input(d, hin, counts[0], 77, g_rank, c->scratch);
  h2d(c->dsend, hin, counts[0] * 2);
  make_input(d, hin, counts[1], 78, g_rank, c->scratch);
  h2d(c->dsend + (1 << 20), hin, counts[1] * 2);
  for (int it = 0; it < 200; it++) {
    const int k = it & 1;
    TK(c->comm, tpc_all_reduce(c->dsend + k * (1 << 20), c->drecv + k * (1 << 20), counts[k], d, TPC_SUM, c->comm,
                               k ? s2 : c->stream));
  }
  TPC_TEST_CK(cudaDeviceSynchronize());
  for (int k = 0; k < 2; k++) {
    d2h(c->hout, c->drecv + k * (1 << 20), counts[k] * 2);
    reference(c, d, counts[k], 77 + k);
    size_t first = 0, wrong = count_wrong(c, d, counts[k], 0, &first);
    tpc_test_report(wrong == 0, "two streams, count=%zu: %zu wrong", counts[k], wrong);
  }
  TPC_TEST_CK(cudaStreamDestroy(s2));
  free(hin);
}

/* Rank 1 never calls: rank 0's kernel must give up and report the peer. */
static void mode_timeout(ctx_t* c) {
  tpc_transport_t t;
  TK(c->comm, tpc_comm_transport(c->comm, &t, NULL));
  if (t != TPC_TRANSPORT_CUSTOM) {
    printf("# transport is not custom; timeout test skipped\n");
    return;
  }
  for (int algo = TPC_ALGO_ONESHOT; algo <= TPC_ALGO_TWOSHOT; algo++) {
    if (g_rank == 0) {
      TK(c->comm, tpc_all_reduce_algo(c->dsend, c->drecv, 1000, TPC_BFLOAT16, TPC_SUM, (tpc_algo_t)algo, c->comm,
                                      c->stream));
      TPC_TEST_CK(cudaStreamSynchronize(c->stream)); /* returns: the kernel gave up */
      tpc_status_t async = TPC_SUCCESS;
      TK(c->comm, tpc_comm_get_async_error(c->comm, &async));
      const char* msg = tpc_get_last_error(c->comm);
      tpc_test_report(async == TPC_ERR_TIMEOUT && strstr(msg, "peer 1") != NULL, "timeout (%s): async=%d msg=%s",
             tpc_algo_name((tpc_algo_t)algo), (int)async, msg);
      tpc_status_t again = tpc_all_reduce(c->dsend, c->drecv, 1000, TPC_BFLOAT16, TPC_SUM, c->comm, c->stream);
      tpc_test_report(again == TPC_ERR_TIMEOUT, "a call after the timeout returned %d, want TPC_ERR_TIMEOUT", (int)again);
      break; /* the communicator is unusable after a timeout */
    }
  }
}

static void mode_basic(ctx_t* c) {
  const size_t counts[] = {1, 17, 4096, 100003};
  uint64_t seed = 500;
  for (int di = 0; di < 3; di++)
    for (size_t i = 0; i < 4; i++)
      for (int inplace = 0; inplace < 2; inplace++)
        run_case(c, (tpc_dtype_t)di, g_size == 1 ? TPC_ALGO_AUTO : TPC_ALGO_NCCL, counts[i], inplace, 0, 0, seed++);
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "basic";
  int mpi = getenv("TPCOMM_RANK") == NULL && getenv("OMPI_COMM_WORLD_RANK") != NULL;
  ctx_t c;
  memset(&c, 0, sizeof c);
#ifdef TPC_HAVE_MPI
  if (mpi) {
    MPI_Init(&argc, &argv);
    TK(NULL, tpc_comm_init_mpi(&c.comm, MPI_COMM_WORLD, NULL));
  }
#else
  if (mpi) {
    fprintf(stderr, "built without MPI\n");
    return 2;
  }
#endif
  if (!mpi) TK(NULL, tpc_comm_init_env(&c.comm, NULL));
  TK(c.comm, tpc_comm_rank(c.comm, &g_rank));
  tpc_test_worker_set_rank(g_rank);
  TK(c.comm, tpc_comm_size(c.comm, &g_size));
  const char* reason = "";
  tpc_transport_t t;
  TK(c.comm, tpc_comm_transport(c.comm, &t, &reason));
  if (g_rank == 0) printf("# %d ranks, transport: %s\n", g_size, reason);
  c.max_count = (64u << 20) / 2 + 64;
  TPC_TEST_CK(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
  g_stream = c.stream;
  TPC_TEST_CK(cudaMalloc((void**)&c.dsend, (64u << 20) + 256));
  TPC_TEST_CK(cudaMalloc((void**)&c.drecv, (64u << 20) + 256));
  c.hin = malloc((64u << 20) + 256);
  c.href = malloc((64u << 20) + 256);
  c.hout = malloc((64u << 20) + 256);
  c.scratch = malloc(c.max_count * sizeof(float));
  c.acc = malloc(c.max_count * sizeof(float));

  if (!strcmp(mode, "matrix")) mode_matrix(&c, argc > 2 && !strcmp(argv[2], "--quick"));
  else if (!strcmp(mode, "replay")) mode_replay(&c, argc > 2 ? atoi(argv[2]) : 10000);
  else if (!strcmp(mode, "streams")) mode_streams(&c);
  else if (!strcmp(mode, "timeout")) {
    mode_timeout(&c);
    if (g_rank != 0) sleep(6); /* stay alive while rank 0 waits, so that it is a silent peer, not a dead one */
  } else mode_basic(&c);

  const int status = tpc_test_worker_summary();
  if (strcmp(mode, "timeout") != 0) TK(c.comm, tpc_comm_destroy(c.comm));
  else tpc_comm_abort(c.comm), tpc_comm_destroy(c.comm);
#ifdef TPC_HAVE_MPI
  if (mpi) MPI_Finalize();
#endif
  return status;
}
