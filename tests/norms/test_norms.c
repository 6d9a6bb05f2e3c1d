/* test_norms.c — the norm kernels of include/tpcomm/kernels.h.
 *
 * norms_args: every launcher on bad arguments returns the right status and a message naming the argument
 * and value, before any CUDA call (fake pointers are never dereferenced), so these run on machines without
 * a GPU (CI).
 *
 * norms_gpu (skipped with the reason when no GPU is visible): random non-zero inputs against the fp64 CPU
 * references of tests/ref/norm_ref.c. Every buffer is surrounded by guard elements and every gap between
 * strided rows (and the v part of a fused qkv buffer) holds the poison 0x7F7F; out-of-place outputs start as
 * poison. After each call, each element is checked: normalized elements within tpc_ref_tolerance of the
 * reference (4 ulps), residuals bit-exact, everything else still bit-identical to what was uploaded. In-place
 * outputs cannot start as poison, so the weights are drawn with |w| in [2, 4): |y / x| = |w| / rms >= 2 for
 * every row scale used, and an element left unwritten fails the check. Rows are scaled by 1, 2^-10 or 16 so
 * that eps (1e-6, added to the mean) matters on the small rows. Cases: head_dim 64/128/256, GQA 1/4/8,
 * tokens 1, 7 and grids of many waves (blocks past the first wave, which skip the L2 prefetch), dense / strided / misaligned (element-wise
 * path) / fused-qkv layouts, both dtypes, RMSNorm widths from 1 to 65536 including odd ones, fused add,
 * CUDA-graph capture of first calls, PDL chains of dependent launches, and TPCOMM_PDL=0. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "norm_ref.h"
#include "testutil.h"
#include "tpc_criterion.h"
#include "tpcomm/kernels.h"

/* ---- argument validation (no GPU) ------------------------------------------------------------------ */

#define INV TPC_ERR_INVALID_ARGUMENT
#define UNS TPC_ERR_UNSUPPORTED
#define BF TPC_BFLOAT16

/* Fake, 16-byte aligned device addresses: every call below fails validation before touching them. */
static char* const P = (char*)(uintptr_t)0x100000;
static char* const Q = (char*)(uintptr_t)0x200000;
static char* const W = (char*)(uintptr_t)0x300000;
static char* const W2 = (char*)(uintptr_t)0x400000;

Test(norms_args, rmsnorm) {
  const char* e = "tpc_rmsnorm";
  ASSERT_ERR(tpc_rmsnorm(NULL, P, W, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "out is NULL");
  ASSERT_ERR(tpc_rmsnorm(Q, NULL, W, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "in is NULL");
  ASSERT_ERR(tpc_rmsnorm(Q, P, NULL, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "weight is NULL");
  ASSERT_ERR(tpc_rmsnorm(Q + 1, P, W, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "not aligned to the 2-byte element");
  ASSERT_ERR(tpc_rmsnorm(Q, P + 3, W, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "in=");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W + 1, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "weight=");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 0, 128, 128, 128, 1e-6f, BF, 0), INV, "rows=0 must be > 0");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, -3, 128, 128, 128, 1e-6f, BF, 0), INV, "rows=-3");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 0, 128, 128, 1e-6f, BF, 0), INV, "hidden=0");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, -8, 128, 128, 1e-6f, BF, 0), INV, "hidden=-8");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 65537, 70000, 70000, 1e-6f, BF, 0), UNS, "hidden=65537 exceeds");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 128, 100, 128, 1e-6f, BF, 0), INV, "in_stride=100 is smaller than hidden=128");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 128, 128, 127, 1e-6f, BF, 0), INV, "out_stride=127 is smaller than hidden=128");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, INT64_MAX / 8, 128, 1024, 1024, 1e-6f, BF, 0), INV, "overflow");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 128, 128, 128, NAN, BF, 0), INV, "eps=nan must be finite and >= 0");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 128, 128, 128, INFINITY, BF, 0), INV, "eps=inf");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 128, 128, 128, -1e-6f, BF, 0), INV, "eps=-1e-06");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 128, 128, 128, 1e-6f, (tpc_dtype_t)9, 0), INV, "dtype=9 is not a tpc_dtype_t");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 128, 128, 128, 1e-6f, (tpc_dtype_t)-1, 0), INV, "dtype=-1");
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 128, 128, 128, 1e-6f, TPC_FLOAT32, 0), UNS, "float32");
  ASSERT_ERR(tpc_rmsnorm(P, P, W, 4, 128, 128, 256, 1e-6f, BF, 0), INV, "in_stride == out_stride, got 128 and 256");
  cr_assert(strstr(tpc_get_last_error(NULL), e), "message names the function");
}

Test(norms_args, fused_add_rmsnorm) {
  ASSERT_ERR(tpc_fused_add_rmsnorm(NULL, P, W, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "x is NULL");
  ASSERT_ERR(tpc_fused_add_rmsnorm(Q, NULL, W, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "residual is NULL");
  ASSERT_ERR(tpc_fused_add_rmsnorm(Q, P, NULL, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "weight is NULL");
  ASSERT_ERR(tpc_fused_add_rmsnorm(Q, P + 1, W, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "residual=");
  ASSERT_ERR(tpc_fused_add_rmsnorm(Q, P, W, 0, 128, 128, 128, 1e-6f, BF, 0), INV, "rows=0");
  ASSERT_ERR(tpc_fused_add_rmsnorm(Q, P, W, 4, 100000, 100000, 100000, 1e-6f, BF, 0), UNS, "hidden=100000");
  ASSERT_ERR(tpc_fused_add_rmsnorm(Q, P, W, 4, 128, 64, 128, 1e-6f, BF, 0), INV, "x_stride=64 is smaller");
  ASSERT_ERR(tpc_fused_add_rmsnorm(Q, P, W, 4, 128, 128, 8, 1e-6f, BF, 0), INV, "residual_stride=8 is smaller");
  ASSERT_ERR(tpc_fused_add_rmsnorm(Q, P, W, 4, 128, 128, 128, -INFINITY, BF, 0), INV, "eps=-inf");
  ASSERT_ERR(tpc_fused_add_rmsnorm(Q, P, W, 4, 128, 128, 128, 1e-6f, TPC_FLOAT32, 0), UNS, "float32");
  ASSERT_ERR(tpc_fused_add_rmsnorm(Q, Q, W, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "x and residual are the same buffer");
}

Test(norms_args, qk_rmsnorm_per_head) {
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(NULL, P, W, W2, 4, 8, 1, 128, 1024, 128, 1e-6f, BF, 0), INV, "q is NULL");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, NULL, W, W2, 4, 8, 1, 128, 1024, 128, 1e-6f, BF, 0), INV, "k is NULL");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, NULL, W2, 4, 8, 1, 128, 1024, 128, 1e-6f, BF, 0), INV, "q_weight is NULL");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, NULL, 4, 8, 1, 128, 1024, 128, 1e-6f, BF, 0), INV, "k_weight is NULL");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P + 1, W, W2, 4, 8, 1, 128, 1024, 128, 1e-6f, BF, 0), INV, "k=");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, 1, 96, 1024, 128, 1e-6f, BF, 0), UNS,
             "tpc_qk_rmsnorm_per_head: head_dim=96 is not 64, 128 or 256");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, 1, 512, 8192, 512, 1e-6f, BF, 0), UNS, "head_dim=512");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, 1, 0, 1024, 128, 1e-6f, BF, 0), INV, "head_dim=0");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, 1, -128, 1024, 128, 1e-6f, BF, 0), INV, "head_dim=-128");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 0, 8, 1, 128, 1024, 128, 1e-6f, BF, 0), INV, "tokens=0");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 0, 1, 128, 1024, 128, 1e-6f, BF, 0), INV, "q_heads=0");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, -1, 128, 1024, 128, 1e-6f, BF, 0), INV, "kv_heads=-1");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 70000, 1, 128, 70000LL * 128, 128, 1e-6f, BF, 0), UNS,
             "q_heads=70000");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, 1, 128, 1000, 128, 1e-6f, BF, 0), INV,
             "q_stride=1000 is smaller than q_heads*head_dim=1024");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, 2, 128, 1024, 128, 1e-6f, BF, 0), INV,
             "k_stride=128 is smaller than kv_heads*head_dim=256");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, 1, 128, 1024, 128, NAN, BF, 0), INV, "eps=nan");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, 1, 128, 1024, 128, 1e-6f, TPC_FLOAT32, 0), UNS, "float32");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, 1, 128, 1024, 128, 1e-6f, (tpc_dtype_t)3, 0), INV, "dtype=3");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, Q, W, W2, 4, 8, 1, 128, 1024, 128, 1e-6f, BF, 0), INV, "q and k are the same");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 1LL << 29, 8, 1, 128, 1024, 128, 1e-6f, BF, 0), UNS,
             "exceeds 2^31-1 head rows");
}

Test(norms_args, qk_rmsnorm_across_heads) {
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(NULL, P, W, W2, 4, 1024, 128, 1024, 128, 1e-6f, BF, 0), INV, "q is NULL");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, NULL, W, W2, 4, 1024, 128, 1024, 128, 1e-6f, BF, 0), INV, "k is NULL");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, NULL, W2, 4, 1024, 128, 1024, 128, 1e-6f, BF, 0), INV,
             "q_weight is NULL");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, W, NULL, 4, 1024, 128, 1024, 128, 1e-6f, BF, 0), INV,
             "k_weight is NULL");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, W, W2 + 1, 4, 1024, 128, 1024, 128, 1e-6f, BF, 0), INV, "k_weight=");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, W, W2, -1, 1024, 128, 1024, 128, 1e-6f, BF, 0), INV, "tokens=-1");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, W, W2, 4, 0, 128, 1024, 128, 1e-6f, BF, 0), INV, "q_hidden=0");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, W, W2, 4, 1024, 0, 1024, 128, 1e-6f, BF, 0), INV, "k_hidden=0");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, W, W2, 4, 1024, 65544, 1024, 65544, 1e-6f, BF, 0), UNS,
             "k_hidden=65544 exceeds");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, W, W2, 4, 1024, 128, 1023, 128, 1e-6f, BF, 0), INV,
             "q_stride=1023 is smaller than q_hidden=1024");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, W, W2, 4, 1024, 128, 1024, 0, 1e-6f, BF, 0), INV,
             "k_stride=0 is smaller than k_hidden=128");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, W, W2, 4, 1024, 128, 1024, 128, -0.5f, BF, 0), INV, "eps=-0.5");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, P, W, W2, 4, 1024, 128, 1024, 128, 1e-6f, TPC_FLOAT32, 0), UNS, "float32");
  ASSERT_ERR(tpc_qk_rmsnorm_across_heads(Q, Q, W, W2, 4, 1024, 128, 1024, 128, 1e-6f, BF, 0), INV,
             "q and k are the same");
}

Test(norms_args, malformed_pdl_env) {
  /* resolved before any CUDA call: fails the same with or without a GPU, and launches nothing */
  setenv("TPCOMM_PDL", "sometimes", 1);
  ASSERT_ERR(tpc_rmsnorm(Q, P, W, 4, 128, 128, 128, 1e-6f, BF, 0), INV, "TPCOMM_PDL");
  ASSERT_ERR(tpc_qk_rmsnorm_per_head(Q, P, W, W2, 4, 8, 1, 128, 1024, 128, 1e-6f, BF, 0), INV, "TPCOMM_PDL");
  unsetenv("TPCOMM_PDL");
}

Test(norms_args, eps_zero_is_valid) {
  /* eps = 0 passes validation: with no GPU the call then fails at its first CUDA call, never earlier */
  const char* why = "";
  if (tpc_test_gpu_count(&why) > 0) cr_skip_test("a GPU is visible: this case is about machines without one");
  tpc_status_t s = tpc_rmsnorm(Q, P, W, 4, 128, 128, 128, 0.0f, BF, 0);
  cr_assert_eq(s, TPC_ERR_CUDA, "got %d (%s)", (int)s, tpc_get_last_error(NULL));
}

/* ---- GPU test infrastructure ------------------------------------------------------------------------ */

#define POISON 0x7F7Fu
#define GUARD 64 /* poisoned elements before and after every buffer */
#define EPS 1e-6f

static cudaStream_t g_stream;

static void need_gpu(void) {
  const char* why = "";
  if (tpc_test_gpu_count(&why) == 0) cr_skip_test("no CUDA GPU on this machine (%s): GPU test skipped", why);
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
}

static int sm_count(void) {
  int n = 0;
  CUDA_OK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, 0));
  return n;
}

enum { K_KEEP = 0, K_NEAR = 1, K_EXACT = 2 };

/* A device buffer with its host mirror and, per element, what it must hold after the call. */
typedef struct {
  size_t total, off; /* elements in all; offset of the data region (guard + misalignment) */
  uint16_t* before;  /* uploaded values (inputs, poison) */
  uint16_t* after;   /* downloaded values */
  uint16_t* exact;   /* K_EXACT: the expected bits (allocated on first use) */
  float* ref;        /* K_NEAR: the reference (fp64, stored as fp32: far below the tolerance) */
  uint8_t* kind;     /* K_KEEP: still == before */
  uint16_t* dev;
  double tol_scale; /* K_NEAR accepts tol_scale * tpc_ref_tolerance (1 unless a test says) */
} tbuf_t;

static void tb_init(tbuf_t* b, size_t extent, size_t misalign) {
  memset(b, 0, sizeof *b);
  b->off = GUARD + misalign;
  b->total = b->off + extent + GUARD;
  b->before = malloc(b->total * 2);
  b->after = malloc(b->total * 2);
  b->exact = NULL;
  b->ref = malloc(b->total * sizeof(float));
  b->kind = calloc(b->total, 1);
  b->tol_scale = 1.0;
  cr_assert(b->before && b->after && b->ref && b->kind, "out of host memory (%zu elements)", b->total);
  for (size_t i = 0; i < b->total; i++) b->before[i] = POISON;
  CUDA_OK(cudaMalloc((void**)&b->dev, b->total * 2));
}

static uint16_t* tb_host(tbuf_t* b) { return b->before + b->off; }
static void* tb_dev(tbuf_t* b) { return b->dev + b->off; }
/* On g_stream, so the kernel launched next on it reads the copied bytes: a plain cudaMemcpy from pageable memory
 * may return before its DMA lands, and g_stream (non-blocking) does not wait for the legacy stream. */
static void tb_upload(tbuf_t* b) {
  CUDA_OK(cudaMemcpyAsync(b->dev, b->before, b->total * 2, cudaMemcpyHostToDevice, g_stream));
}
static void tb_download(tbuf_t* b) {
  CUDA_OK(cudaStreamSynchronize(g_stream));
  CUDA_OK(cudaMemcpy(b->after, b->dev, b->total * 2, cudaMemcpyDeviceToHost));
}

/* Rows [rows][width] at column col0 of rows `stride` apart must match ref (dense) / the bits (dense). */
static void tb_expect_near(tbuf_t* b, const double* ref, int64_t rows, int64_t width, int64_t stride, int64_t col0) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < width; c++) {
      size_t i = b->off + (size_t)(r * stride + col0 + c);
      b->kind[i] = K_NEAR;
      b->ref[i] = (float)ref[r * width + c];
    }
}
static void tb_expect_exact(tbuf_t* b, const uint16_t* bits, int64_t rows, int64_t width, int64_t stride,
                            int64_t col0) {
  if (!b->exact) b->exact = malloc(b->total * 2);
  cr_assert(b->exact, "out of host memory");
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < width; c++) {
      size_t i = b->off + (size_t)(r * stride + col0 + c);
      b->kind[i] = K_EXACT;
      b->exact[i] = bits[r * width + c];
    }
}

/* Number of wrong elements (the first few printed with `what`). */
static size_t tb_check(const tbuf_t* b, const char* what, tpc_dtype_t dt) {
  size_t wrong = 0;
  for (size_t i = 0; i < b->total; i++) {
    int ok;
    switch (b->kind[i]) {
      case K_NEAR: {
        const double g = tpc_ref_to_float(b->after[i], dt);
        ok = b->tol_scale == 1.0
                 ? tpc_ref_close(b->after[i], b->ref[i], dt)
                 : isfinite(g) && fabs(g - b->ref[i]) <= b->tol_scale * tpc_ref_tolerance(b->ref[i], dt);
        break;
      }
      case K_EXACT: ok = b->after[i] == b->exact[i]; break;
      default: ok = b->after[i] == b->before[i]; break;
    }
    if (!ok && wrong++ < 6) {
      long long pos = (long long)i - (long long)b->off;
      if (b->kind[i] == K_NEAR)
        fprintf(stderr, "  %s: element %lld = %g (0x%04x), reference %.6g\n", what, pos,
                (double)tpc_ref_to_float(b->after[i], dt), b->after[i], (double)b->ref[i]);
      else
        fprintf(stderr, "  %s: element %lld = 0x%04x, expected 0x%04x (%s)\n", what, pos, b->after[i],
                b->kind[i] == K_EXACT ? b->exact[i] : b->before[i],
                b->kind[i] == K_EXACT ? "residual"
                : pos < 0             ? "guard before"
                                      : "must stay untouched");
    }
  }
  return wrong;
}

static void tb_free(tbuf_t* b) {
  CUDA_OK(cudaFree(b->dev));
  free(b->before);
  free(b->after);
  free(b->exact);
  free(b->ref);
  free(b->kind);
}

/* Rows of random non-zero values: |v| in [0.05, 1) with a random sign, times a row scale of 1, 2^-10 or 16. */
static void fill_rows(uint16_t* base, int64_t rows, int64_t width, int64_t stride, uint64_t seed, tpc_dtype_t dt) {
  float* v = malloc((size_t)width * sizeof(float));
  cr_assert(v);
  for (int64_t r = 0; r < rows; r++) {
    const float scale = r % 3 == 0 ? 1.0f : r % 3 == 1 ? 1.0f / 1024.0f : 16.0f;
    tpc_test_fill_random(v, (size_t)width, seed * 1000003u + (uint64_t)r);
    for (int64_t c = 0; c < width; c++) {
      const float a = 0.05f + 0.95f * fabsf(v[c]);
      base[r * stride + c] = tpc_ref_from_float((v[c] < 0 ? -a : a) * scale, dt);
    }
  }
  free(v);
}

/* Weights with |w| in [2, 4) and a random sign (see the file comment). */
static void fill_weight(uint16_t* w, int64_t n, uint64_t seed, tpc_dtype_t dt) {
  float* v = malloc((size_t)n * sizeof(float));
  cr_assert(v);
  tpc_test_fill_random(v, (size_t)n, seed);
  for (int64_t i = 0; i < n; i++) {
    const float a = 2.0f + 2.0f * fabsf(v[i]);
    w[i] = tpc_ref_from_float(v[i] < 0 ? -a : a, dt);
  }
  free(v);
}

typedef enum { L_DENSE, L_STRIDED, L_MISALIGNED, L_QKV } layout_t;
static const char* const k_layout[] = {"dense", "strided", "misaligned", "qkv"};
static const char* dname(tpc_dtype_t dt) { return dt == TPC_BFLOAT16 ? "bf16" : "fp16"; }

/* ---- q and k of one in-place norm case ----------------------------------------------------------------- */

/* q and k rows in their own buffers, or both inside one [tokens][q | k | v] buffer (L_QKV; v stays poison).
 * L_MISALIGNED: every pointer one element past 16-byte alignment. The host references rq/rk are the
 * caller's to fill between qk_case_init and qk_case_upload. */
typedef struct {
  tbuf_t q, k, wq, wk;
  tbuf_t* kb; /* &k, or &q under L_QKV */
  int64_t tokens, qw, kw, qs, ks, kcol;
  double *rq, *rk;
} qk_case_t;

static uint16_t* qk_case_k(qk_case_t* c) { return tb_host(c->kb) + c->kcol; }
static void* qk_case_k_dev(qk_case_t* c) { return (uint16_t*)tb_dev(c->kb) + c->kcol; }

/* pad: the extra row elements of q and k under L_STRIDED, then under L_MISALIGNED (odd there) */
static void qk_case_init(qk_case_t* c, tpc_dtype_t dt, int64_t tokens, int64_t qw, int64_t kw, int64_t wq_len,
                         int64_t wk_len, layout_t lay, const int64_t pad[4], uint64_t seed) {
  const size_t mis = lay == L_MISALIGNED ? 1 : 0;
  c->tokens = tokens, c->qw = qw, c->kw = kw, c->qs = qw, c->ks = kw, c->kcol = 0, c->kb = &c->k;
  if (lay == L_STRIDED) c->qs = qw + pad[0], c->ks = kw + pad[1];
  if (lay == L_MISALIGNED) c->qs = qw + pad[2], c->ks = kw + pad[3];
  if (lay == L_QKV) {
    c->qs = c->ks = qw + 2 * kw;
    c->kcol = qw;
    tb_init(&c->q, (size_t)(tokens * c->qs), 0);
    c->kb = &c->q;
  } else {
    tb_init(&c->q, (size_t)((tokens - 1) * c->qs + qw), mis);
    tb_init(&c->k, (size_t)((tokens - 1) * c->ks + kw), mis);
  }
  tb_init(&c->wq, (size_t)wq_len, mis);
  tb_init(&c->wk, (size_t)wk_len, mis);
  fill_rows(tb_host(&c->q), tokens, qw, c->qs, seed, dt);
  fill_rows(qk_case_k(c), tokens, kw, c->ks, seed + 1, dt);
  fill_weight(tb_host(&c->wq), wq_len, seed + 2, dt);
  fill_weight(tb_host(&c->wk), wk_len, seed + 3, dt);
  c->rq = malloc((size_t)(tokens * qw) * sizeof(double));
  c->rk = malloc((size_t)(tokens * kw) * sizeof(double));
  cr_assert(c->rq && c->rk);
}

/* The expected rows from rq/rk, then every buffer to the device. */
static void qk_case_upload(qk_case_t* c) {
  tb_expect_near(&c->q, c->rq, c->tokens, c->qw, c->qs, 0);
  tb_expect_near(c->kb, c->rk, c->tokens, c->kw, c->ks, c->kcol);
  tb_upload(&c->q);
  if (c->kb != &c->q) tb_upload(c->kb);
  tb_upload(&c->wq);
  tb_upload(&c->wk);
}

/* Back from the device, every buffer checked (weights and guards untouched, rows as expected), freed;
 * returns the number of wrong elements. */
static size_t qk_case_finish(qk_case_t* c, const char* what, tpc_dtype_t dt) {
  tb_download(&c->q);
  if (c->kb != &c->q) tb_download(c->kb);
  tb_download(&c->wq);
  tb_download(&c->wk);
  size_t wrong = tb_check(&c->q, what, dt) + (c->kb != &c->q ? tb_check(c->kb, what, dt) : 0) +
                 tb_check(&c->wq, what, dt) + tb_check(&c->wk, what, dt);
  free(c->rq);
  free(c->rk);
  tb_free(&c->q);
  if (c->kb != &c->q) tb_free(c->kb);
  tb_free(&c->wq);
  tb_free(&c->wk);
  return wrong;
}

/* ---- per head ----------------------------------------------------------------------------------------- */

/* One per-head call, checked; returns the number of wrong elements. */
static size_t run_per_head(tpc_dtype_t dt, int D, int qh, int kh, int64_t tokens, layout_t lay, uint64_t seed) {
  static const int64_t pad[4] = {24, 8, 3, 5};
  qk_case_t c;
  qk_case_init(&c, dt, tokens, (int64_t)qh * D, (int64_t)kh * D, D, D, lay, pad, seed);
  tpc_ref_qk_rmsnorm_per_head(c.rq, c.rk, tb_host(&c.q), qk_case_k(&c), tb_host(&c.wq), tb_host(&c.wk), tokens, qh,
                              kh, D, c.qs, c.ks, EPS, dt);
  qk_case_upload(&c);
  TPC_OK(tpc_qk_rmsnorm_per_head(tb_dev(&c.q), qk_case_k_dev(&c), tb_dev(&c.wq), tb_dev(&c.wk), tokens, qh, kh, D,
                                 c.qs, c.ks, EPS, dt, g_stream));
  char what[160];
  snprintf(what, sizeof what, "per_head %s D=%d q_heads=%d kv_heads=%d tokens=%lld %s", dname(dt), D, qh, kh,
           (long long)tokens, k_layout[lay]);
  return qk_case_finish(&c, what, dt);
}

#define EXPECT_RIGHT(call, fmt, ...)                                    \
  do {                                                                  \
    size_t w_ = (call);                                                 \
    cr_expect_eq(w_, 0, "%zu wrong elements: " fmt, w_, ##__VA_ARGS__); \
  } while (0)

static const int k_dims[] = {64, 128, 256};
static const int k_gqa[] = {1, 4, 8};

static void per_head_small(tpc_dtype_t dt) {
  const int64_t toks[] = {1, 7};
  for (int d = 0; d < 3; d++)
    for (int g = 0; g < 3; g++)
      for (int kh = 1; kh <= 8; kh *= 8)
        for (int t = 0; t < 2; t++)
          for (int lay = L_DENSE; lay <= L_QKV; lay++)
            EXPECT_RIGHT(run_per_head(dt, k_dims[d], k_gqa[g] * kh, kh, toks[t], (layout_t)lay, 11 + d * 7 + g),
                         "D=%d gqa=%d kv=%d tokens=%lld %s", k_dims[d], k_gqa[g], kh, (long long)toks[t],
                         k_layout[lay]);
}

/* Tokens for a grid of many waves: one wave is at most SMs x 8 blocks of 256 / (D/8) head rows (8 blocks of
 * 256 threads fill an SM); this asks for 10 waves' worth of head rows (the kernel once ran a persistent grid
 * with up to 4 rows a group, which this bound was written for; blocks past the first wave now skip the L2
 * prefetch, so both kinds of block are covered). */
static int64_t tokens_beyond_grid(int D, int heads) {
  const int64_t per_pass = (int64_t)sm_count() * 8 * (256 / (D / 8)) * 4;
  int64_t t = (5 * per_pass / 2 + heads - 1) / heads;
  const int64_t floor_t = 2 * (int64_t)sm_count() * 8 + 5; /* and above 2 x SMs x occupancy tokens */
  return t > floor_t ? t : floor_t;
}

static void per_head_large(tpc_dtype_t dt) {
  for (int d = 0; d < 3; d++)
    for (int g = 0; g < 3; g++) {
      const int kh = g == 1 ? 1 : 2, qh = k_gqa[g] * kh;
      const int64_t tokens = tokens_beyond_grid(k_dims[d], qh + kh);
      for (int lay = L_DENSE; lay <= L_MISALIGNED; lay += 2) /* dense and misaligned */
        EXPECT_RIGHT(run_per_head(dt, k_dims[d], qh, kh, tokens, (layout_t)lay, 101 + d * 5 + g),
                     "D=%d q_heads=%d kv=%d tokens=%lld %s", k_dims[d], qh, kh, (long long)tokens, k_layout[lay]);
    }
}

Test(norms_gpu, per_head_small_bf16, .timeout = 300) {
  need_gpu();
  per_head_small(TPC_BFLOAT16);
}
Test(norms_gpu, per_head_small_fp16, .timeout = 300) {
  need_gpu();
  per_head_small(TPC_FLOAT16);
}
Test(norms_gpu, per_head_many_waves_bf16, .timeout = 600) {
  need_gpu();
  per_head_large(TPC_BFLOAT16);
}
Test(norms_gpu, per_head_many_waves_fp16, .timeout = 600) {
  need_gpu();
  per_head_large(TPC_FLOAT16);
}
Test(norms_gpu, per_head_decode_shapes) {
  need_gpu();
  EXPECT_RIGHT(run_per_head(TPC_BFLOAT16, 128, 64, 8, 1, L_DENSE, 5), "GQA 8, 8 kv heads, 1 token");
  EXPECT_RIGHT(run_per_head(TPC_BFLOAT16, 128, 4, 1, 1, L_DENSE, 6), "GQA 4, 1 kv head, 1 token");
  EXPECT_RIGHT(run_per_head(TPC_BFLOAT16, 128, 64, 8, 1024, L_QKV, 7), "GQA 8, 8 kv heads, 1024 tokens, qkv");
  EXPECT_RIGHT(run_per_head(TPC_FLOAT16, 64, 3, 5, 33, L_STRIDED, 8), "more kv heads than q heads");
}

/* ---- rows: rmsnorm and fused add ---------------------------------------------------------------------- */

static size_t run_rmsnorm(tpc_dtype_t dt, int64_t rows, int64_t hidden, layout_t lay, int fused, uint64_t seed) {
  const size_t mis = lay == L_MISALIGNED ? 1 : 0;
  int64_t s_in = hidden, s_out = hidden;
  if (lay == L_STRIDED) s_in = hidden + 8, s_out = hidden + 16;
  if (lay == L_MISALIGNED) s_in = hidden + 3, s_out = hidden + 1;
  tbuf_t bin, bout, bw;
  tb_init(&bin, (size_t)((rows - 1) * s_in + hidden), mis);
  tb_init(&bout, (size_t)((rows - 1) * s_out + hidden), mis);
  tb_init(&bw, (size_t)hidden, mis);
  fill_rows(tb_host(&bin), rows, hidden, s_in, seed, dt);
  if (fused) fill_rows(tb_host(&bout), rows, hidden, s_out, seed + 1, dt); /* bin = x, bout = residual */
  fill_weight(tb_host(&bw), hidden, seed + 2, dt);
  double* ref = malloc((size_t)(rows * hidden) * sizeof(double));
  uint16_t* res = fused ? malloc((size_t)(rows * hidden) * 2) : NULL;
  cr_assert(ref && (res || !fused));
  if (fused) {
    tpc_ref_fused_add_rmsnorm(ref, res, tb_host(&bin), tb_host(&bout), tb_host(&bw), rows, hidden, s_in, s_out, EPS,
                              dt);
    tb_expect_near(&bin, ref, rows, hidden, s_in, 0);
    tb_expect_exact(&bout, res, rows, hidden, s_out, 0);
  } else {
    tpc_ref_rmsnorm(ref, tb_host(&bin), tb_host(&bw), rows, hidden, s_in, EPS, dt);
    tb_expect_near(&bout, ref, rows, hidden, s_out, 0);
  }
  tb_upload(&bin);
  tb_upload(&bout);
  tb_upload(&bw);
  if (fused)
    TPC_OK(
        tpc_fused_add_rmsnorm(tb_dev(&bin), tb_dev(&bout), tb_dev(&bw), rows, hidden, s_in, s_out, EPS, dt, g_stream));
  else
    TPC_OK(tpc_rmsnorm(tb_dev(&bout), tb_dev(&bin), tb_dev(&bw), rows, hidden, s_in, s_out, EPS, dt, g_stream));
  tb_download(&bin);
  tb_download(&bout);
  tb_download(&bw);
  char what[160];
  snprintf(what, sizeof what, "%s %s rows=%lld hidden=%lld %s", fused ? "fused_add_rmsnorm" : "rmsnorm", dname(dt),
           (long long)rows, (long long)hidden, k_layout[lay]);
  size_t wrong = tb_check(&bin, what, dt) + tb_check(&bout, what, dt) + tb_check(&bw, what, dt);
  free(ref);
  free(res);
  tb_free(&bin);
  tb_free(&bout);
  tb_free(&bw);
  return wrong;
}

static const int64_t k_hidden[] = {1,    7,    64,   127,  128,  256,  264,  512,  1000,
                                   1024, 1032, 2048, 4096, 4097, 5120, 8192, 16384};

static void rows_matrix(tpc_dtype_t dt, int fused) {
  const int64_t rows[] = {1, 7, 150};
  for (size_t h = 0; h < sizeof k_hidden / sizeof k_hidden[0]; h++)
    for (int r = 0; r < 3; r++)
      for (int lay = L_DENSE; lay <= L_MISALIGNED; lay++)
        EXPECT_RIGHT(run_rmsnorm(dt, rows[r], k_hidden[h], (layout_t)lay, fused, 31 + h * 3 + r),
                     "%s hidden=%lld rows=%lld %s", fused ? "fused" : "rmsnorm", (long long)k_hidden[h],
                     (long long)rows[r], k_layout[lay]);
}

Test(norms_gpu, rmsnorm_bf16, .timeout = 300) {
  need_gpu();
  rows_matrix(TPC_BFLOAT16, 0);
}
Test(norms_gpu, rmsnorm_fp16, .timeout = 300) {
  need_gpu();
  rows_matrix(TPC_FLOAT16, 0);
}
Test(norms_gpu, fused_add_rmsnorm_bf16, .timeout = 300) {
  need_gpu();
  rows_matrix(TPC_BFLOAT16, 1);
}
Test(norms_gpu, fused_add_rmsnorm_fp16, .timeout = 300) {
  need_gpu();
  rows_matrix(TPC_FLOAT16, 1);
}
Test(norms_gpu, rows_wide_and_many, .timeout = 300) {
  need_gpu();
  const int64_t wide[] = {32768, 32776, 65535, 65536};
  for (int i = 0; i < 4; i++)
    for (int fused = 0; fused < 2; fused++) {
      EXPECT_RIGHT(run_rmsnorm(TPC_BFLOAT16, 5, wide[i], L_DENSE, fused, 71 + i), "hidden=%lld fused=%d",
                   (long long)wide[i], fused);
      EXPECT_RIGHT(run_rmsnorm(TPC_FLOAT16, 3, wide[i], L_MISALIGNED, fused, 81 + i), "hidden=%lld fused=%d misaligned",
                   (long long)wide[i], fused);
    }
  EXPECT_RIGHT(run_rmsnorm(TPC_BFLOAT16, 5000, 128, L_DENSE, 0, 91), "5000 rows of 128");
  EXPECT_RIGHT(run_rmsnorm(TPC_BFLOAT16, 2048, 4096, L_STRIDED, 1, 92), "2048 rows of 4096, fused");
}

Test(norms_gpu, rmsnorm_in_place) {
  need_gpu();
  const int64_t shapes[][3] = {{9, 4096, 4104}, {3, 1001, 1001}, {130, 128, 128}};
  for (int i = 0; i < 3; i++) {
    const tpc_dtype_t dt = i == 1 ? TPC_FLOAT16 : TPC_BFLOAT16;
    const int64_t rows = shapes[i][0], hidden = shapes[i][1], stride = shapes[i][2];
    tbuf_t x, w;
    tb_init(&x, (size_t)((rows - 1) * stride + hidden), 0);
    tb_init(&w, (size_t)hidden, 0);
    fill_rows(tb_host(&x), rows, hidden, stride, 21 + i, dt);
    fill_weight(tb_host(&w), hidden, 22 + i, dt);
    double* ref = malloc((size_t)(rows * hidden) * sizeof(double));
    cr_assert(ref);
    tpc_ref_rmsnorm(ref, tb_host(&x), tb_host(&w), rows, hidden, stride, EPS, dt);
    tb_expect_near(&x, ref, rows, hidden, stride, 0);
    tb_upload(&x);
    tb_upload(&w);
    TPC_OK(tpc_rmsnorm(tb_dev(&x), tb_dev(&x), tb_dev(&w), rows, hidden, stride, stride, EPS, dt, g_stream));
    tb_download(&x);
    tb_download(&w);
    const size_t wrong = tb_check(&x, "rmsnorm in place", dt) + tb_check(&w, "rmsnorm in place", dt);
    cr_expect_eq(wrong, 0, "%zu wrong elements: rows=%lld hidden=%lld stride=%lld", wrong, (long long)rows,
                 (long long)hidden, (long long)stride);
    free(ref);
    tb_free(&x);
    tb_free(&w);
  }
}

/* ---- across heads ------------------------------------------------------------------------------------- */

static size_t run_across(tpc_dtype_t dt, int64_t tokens, int64_t qh, int64_t kh, layout_t lay, uint64_t seed) {
  static const int64_t pad[4] = {64, 8, 1, 7};
  qk_case_t c;
  qk_case_init(&c, dt, tokens, qh, kh, qh, kh, lay, pad, seed);
  tpc_ref_rmsnorm(c.rq, tb_host(&c.q), tb_host(&c.wq), tokens, qh, c.qs, EPS, dt);
  tpc_ref_rmsnorm(c.rk, qk_case_k(&c), tb_host(&c.wk), tokens, kh, c.ks, EPS, dt);
  qk_case_upload(&c);
  TPC_OK(tpc_qk_rmsnorm_across_heads(tb_dev(&c.q), qk_case_k_dev(&c), tb_dev(&c.wq), tb_dev(&c.wk), tokens, qh, kh,
                                     c.qs, c.ks, EPS, dt, g_stream));
  char what[160];
  snprintf(what, sizeof what, "across_heads %s tokens=%lld q_hidden=%lld k_hidden=%lld %s", dname(dt),
           (long long)tokens, (long long)qh, (long long)kh, k_layout[lay]);
  return qk_case_finish(&c, what, dt);
}

static void across_matrix(tpc_dtype_t dt) {
  static const int64_t shapes[][3] = {{1, 8192, 8192}, {7, 4096, 1024}, {256, 1024, 1024}, {33, 5120, 640},
                                      {5, 65536, 128}, {3, 1000, 8},    {2, 6, 4104},      {129, 2048, 256}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    for (int lay = L_DENSE; lay <= L_QKV; lay++)
      EXPECT_RIGHT(run_across(dt, shapes[i][0], shapes[i][1], shapes[i][2], (layout_t)lay, 51 + i),
                   "tokens=%lld q_hidden=%lld k_hidden=%lld %s", (long long)shapes[i][0], (long long)shapes[i][1],
                   (long long)shapes[i][2], k_layout[lay]);
}

Test(norms_gpu, across_heads_bf16, .timeout = 300) {
  need_gpu();
  across_matrix(TPC_BFLOAT16);
  EXPECT_RIGHT(run_across(TPC_BFLOAT16, 2048, 8192, 8192, L_DENSE, 61), "2048 x 8192");
}
Test(norms_gpu, across_heads_fp16, .timeout = 300) {
  need_gpu();
  across_matrix(TPC_FLOAT16);
}

/* ---- capture, PDL ------------------------------------------------------------------------------------- */

/* The first call of each kernel in this process happens inside a (global-mode) stream capture: the launchers'
 * device queries must be legal there. The graph is then replayed and the results checked. */
Test(norms_gpu, first_calls_inside_graph_capture) {
  need_gpu();
  const tpc_dtype_t dt = TPC_BFLOAT16;
  const int64_t T = 37, D = 128, QH = 16, KH = 2, H = 2048;
  tbuf_t q, k, wq, wk, x, y, w;
  tb_init(&q, (size_t)(T * QH * D), 0);
  tb_init(&k, (size_t)(T * KH * D), 0);
  tb_init(&wq, (size_t)D, 0);
  tb_init(&wk, (size_t)D, 0);
  tb_init(&x, (size_t)(T * H), 0);
  tb_init(&y, (size_t)(T * H), 0);
  tb_init(&w, (size_t)H, 0);
  fill_rows(tb_host(&q), T, QH * D, QH * D, 1, dt);
  fill_rows(tb_host(&k), T, KH * D, KH * D, 2, dt);
  fill_weight(tb_host(&wq), D, 3, dt);
  fill_weight(tb_host(&wk), D, 4, dt);
  fill_rows(tb_host(&x), T, H, H, 5, dt);
  fill_weight(tb_host(&w), H, 6, dt);
  double* rq = malloc((size_t)(T * QH * D) * sizeof(double));
  double* rk = malloc((size_t)(T * KH * D) * sizeof(double));
  double* ry = malloc((size_t)(T * H) * sizeof(double));
  cr_assert(rq && rk && ry);
  tpc_ref_qk_rmsnorm_per_head(rq, rk, tb_host(&q), tb_host(&k), tb_host(&wq), tb_host(&wk), T, QH, KH, D, QH * D,
                              KH * D, EPS, dt);
  tpc_ref_rmsnorm(ry, tb_host(&x), tb_host(&w), T, H, H, EPS, dt);
  tb_expect_near(&q, rq, T, QH * D, QH * D, 0);
  tb_expect_near(&k, rk, T, KH * D, KH * D, 0);
  tb_expect_near(&y, ry, T, H, H, 0);
  tbuf_t* all[] = {&q, &k, &wq, &wk, &x, &y, &w};
  for (int i = 0; i < 7; i++) tb_upload(all[i]);

  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  CUDA_OK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeGlobal));
  tpc_status_t s1 = tpc_qk_rmsnorm_per_head(tb_dev(&q), tb_dev(&k), tb_dev(&wq), tb_dev(&wk), T, QH, KH, D, QH * D,
                                            KH * D, EPS, dt, g_stream);
  tpc_status_t s2 = tpc_rmsnorm(tb_dev(&y), tb_dev(&x), tb_dev(&w), T, H, H, H, EPS, dt, g_stream);
  CUDA_OK(cudaStreamEndCapture(g_stream, &graph));
  cr_assert_eq(s1, TPC_SUCCESS, "per-head under capture: %s", tpc_get_last_error(NULL));
  cr_assert_eq(s2, TPC_SUCCESS, "rmsnorm under capture: %s", tpc_get_last_error(NULL));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphLaunch(exec, g_stream));
  for (int i = 0; i < 7; i++) tb_download(all[i]);
  size_t wrong = 0;
  for (int i = 0; i < 7; i++) wrong += tb_check(all[i], "graph", dt);
  cr_expect_eq(wrong, 0, "%zu wrong elements after a graph replay", wrong);
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  for (int i = 0; i < 7; i++) tb_free(all[i]);
  free(rq);
  free(rk);
  free(ry);
}

/* Dependent launches back to back (PDL on sm_90): b = norm(a), c = norm(b) several times over; c is checked
 * against the reference of the b the GPU produced, so a kernel that read before its predecessor finished
 * (b still poison) fails. The same with TPCOMM_PDL=0 must give identical bits. */
static void pdl_chain(uint16_t* out_c, int64_t rows, int64_t hidden, size_t* wrong) {
  const tpc_dtype_t dt = TPC_BFLOAT16;
  enum { N = 4 };
  tbuf_t a, b[N], c[N], w;
  tb_init(&a, (size_t)(rows * hidden), 0);
  tb_init(&w, (size_t)hidden, 0);
  fill_rows(tb_host(&a), rows, hidden, hidden, 77, dt);
  fill_weight(tb_host(&w), hidden, 78, dt);
  tb_upload(&a);
  tb_upload(&w);
  for (int i = 0; i < N; i++) {
    tb_init(&b[i], (size_t)(rows * hidden), 0);
    tb_init(&c[i], (size_t)(rows * hidden), 0);
    tb_upload(&b[i]);
    tb_upload(&c[i]);
  }
  for (int i = 0; i < N; i++) {
    TPC_OK(tpc_rmsnorm(tb_dev(&b[i]), tb_dev(&a), tb_dev(&w), rows, hidden, hidden, hidden, EPS, dt, g_stream));
    TPC_OK(tpc_rmsnorm(tb_dev(&c[i]), tb_dev(&b[i]), tb_dev(&w), rows, hidden, hidden, hidden, EPS, dt, g_stream));
  }
  double* ref = malloc((size_t)(rows * hidden) * sizeof(double));
  cr_assert(ref);
  tpc_ref_rmsnorm(ref, tb_host(&a), tb_host(&w), rows, hidden, hidden, EPS, dt);
  *wrong = 0;
  for (int i = 0; i < N; i++) {
    tb_download(&b[i]);
    tb_download(&c[i]);
    tb_expect_near(&b[i], ref, rows, hidden, hidden, 0);
    *wrong += tb_check(&b[i], "pdl chain, first", dt);
    double* ref2 = malloc((size_t)(rows * hidden) * sizeof(double));
    cr_assert(ref2);
    tpc_ref_rmsnorm(ref2, b[i].after + b[i].off, tb_host(&w), rows, hidden, hidden, EPS, dt);
    tb_expect_near(&c[i], ref2, rows, hidden, hidden, 0);
    *wrong += tb_check(&c[i], "pdl chain, second", dt);
    free(ref2);
  }
  memcpy(out_c, c[N - 1].after + c[N - 1].off, (size_t)(rows * hidden) * 2);
  free(ref);
  for (int i = 0; i < N; i++) {
    tb_free(&b[i]);
    tb_free(&c[i]);
  }
  tb_free(&a);
  tb_free(&w);
}

Test(norms_gpu, pdl_chain_and_pdl_off_identical, .timeout = 300) {
  need_gpu();
  const int64_t rows = 1024, hidden = 4096;
  uint16_t* on = malloc((size_t)(rows * hidden) * 2);
  uint16_t* off = malloc((size_t)(rows * hidden) * 2);
  cr_assert(on && off);
  size_t wrong = 0;
  unsetenv("TPCOMM_PDL");
  pdl_chain(on, rows, hidden, &wrong);
  cr_expect_eq(wrong, 0, "PDL on: %zu wrong elements", wrong);
  setenv("TPCOMM_PDL", "0", 1);
  pdl_chain(off, rows, hidden, &wrong);
  unsetenv("TPCOMM_PDL");
  cr_expect_eq(wrong, 0, "PDL off: %zu wrong elements", wrong);
  cr_expect(memcmp(on, off, (size_t)(rows * hidden) * 2) == 0, "PDL on and off differ");
  free(on);
  free(off);
}

/* Per-head twice in place, back to back: the second must see the first's output (a dependent read). */
Test(norms_gpu, per_head_twice_in_place) {
  need_gpu();
  const tpc_dtype_t dt = TPC_BFLOAT16;
  const int64_t T = 4096;
  const int D = 128, QH = 32, KH = 8;
  tbuf_t q, k, wq, wk;
  tb_init(&q, (size_t)(T * QH * D), 0);
  tb_init(&k, (size_t)(T * KH * D), 0);
  tb_init(&wq, (size_t)D, 0);
  tb_init(&wk, (size_t)D, 0);
  fill_rows(tb_host(&q), T, QH * D, QH * D, 41, dt);
  fill_rows(tb_host(&k), T, KH * D, KH * D, 42, dt);
  fill_weight(tb_host(&wq), D, 43, dt);
  fill_weight(tb_host(&wk), D, 44, dt);
  tbuf_t* all[] = {&q, &k, &wq, &wk};
  for (int i = 0; i < 4; i++) tb_upload(all[i]);
  for (int rep = 0; rep < 2; rep++)
    TPC_OK(tpc_qk_rmsnorm_per_head(tb_dev(&q), tb_dev(&k), tb_dev(&wq), tb_dev(&wk), T, QH, KH, D, QH * D, KH * D, EPS,
                                   dt, g_stream));
  /* reference: once, rounded to the dtype, then again */
  const size_t nq = (size_t)(T * QH * D), nk = (size_t)(T * KH * D);
  double* rq = malloc(nq * sizeof(double));
  double* rk = malloc(nk * sizeof(double));
  uint16_t* q1 = malloc(nq * 2);
  uint16_t* k1 = malloc(nk * 2);
  cr_assert(rq && rk && q1 && k1);
  tpc_ref_qk_rmsnorm_per_head(rq, rk, tb_host(&q), tb_host(&k), tb_host(&wq), tb_host(&wk), T, QH, KH, D, QH * D,
                              KH * D, EPS, dt);
  for (size_t i = 0; i < nq; i++) q1[i] = tpc_ref_from_float((float)rq[i], dt);
  for (size_t i = 0; i < nk; i++) k1[i] = tpc_ref_from_float((float)rk[i], dt);
  tpc_ref_qk_rmsnorm_per_head(rq, rk, q1, k1, tb_host(&wq), tb_host(&wk), T, QH, KH, D, QH * D, KH * D, EPS, dt);
  tb_expect_near(&q, rq, T, QH * D, QH * D, 0);
  tb_expect_near(&k, rk, T, KH * D, KH * D, 0);
  /* The reference's intermediate rounding may differ from the GPU's by one ulp where the exact value sits at a
   * rounding boundary, and that ulp carries into the second result: allow 3x. A second launch that read the
   * first's input instead of its output is off by a factor |w| / rms(w x^) per element, far outside. */
  q.tol_scale = k.tol_scale = 3.0;
  size_t wrong = 0;
  for (int i = 0; i < 4; i++) {
    tb_download(all[i]);
    wrong += tb_check(all[i], "per-head twice", dt);
  }
  cr_expect_eq(wrong, 0, "%zu wrong elements", wrong);
  for (int i = 0; i < 4; i++) tb_free(all[i]);
  free(rq);
  free(rk);
  free(q1);
  free(k1);
}
