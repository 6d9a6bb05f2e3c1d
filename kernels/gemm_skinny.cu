/* gemm_skinny.cu — the skinny 16-bit GEMM of comm/gemm.c for few tokens (m <= 16): y[m, n] = x[m, k] . W[n, k]^T
 * with bf16 or fp16 in and out and fp32 accumulation. At m <= 16 the product is a weight stream (15.4 MB for
 * the merged projection k 2304 x n 3336 against 74 KB of x), so the kernel is written for memory bandwidth:
 * every weight byte is loaded once, 16 bytes per lane, with several loads in flight per warp, and the
 * arithmetic goes to the tensor cores (mma.sync m16n8k16, fp32 accumulators) so that m = 16 costs no more than
 * m = 1.
 *
 * Layout: one block of 8 warps per 16 weight rows (= 16 output columns); the warps split k in runs of 32.
 * In a run, lane (g = lane/4, t = lane%4) loads 8 consecutive k of weight rows g and g+8 and of token rows
 * g (and g+8 when m > 8) as one 16-byte load each. Because a dot product may visit k in any order, the mma's
 * logical k is a permutation of the physical k, the same for A (weights, row-major 16 x 16) and B (x,
 * "col" 16 x 8): in step s (0, 1) of a run, logical k 2t,2t+1 is physical 8t+4s+{0,1} and logical 2t+8,2t+9
 * is physical 8t+4s+2+{0,1} — exactly the 32-bit words 2s and 2s+1 of each lane's 16-byte loads, so no
 * shuffles are needed. Before anything else, 16 threads of the block ask for its 16 weight rows with
 * cp.async.bulk.prefetch.L2 (sm_90), so the whole weight streams from DRAM at once while the warps' own
 * loads (5 runs per chunk) follow from L2. The 8 warps' fp32 partial sums meet in shared memory; one thread per (row, token)
 * adds them in warp order, rounds once (to nearest even) and stores. Deterministic, no atomics, no workspace.
 *
 * Requirements (checked by the caller): 1 <= m <= 16, k, x_ld and w_ld multiples of 8, x and w 16-byte
 * aligned; y needs only element alignment. PDL: when w_early is set (the caller guarantees that no earlier
 * kernel still writes W: the merged linear's own weight), the first weight loads are issued before
 * griddepcontrol.wait, overlapping the previous kernel's tail; x is read and y written only after it.
 *
 * Relies on: kernels/pdl.cuh; being called by comm/gemm.c with validated arguments (C interface at the end). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <cuda_runtime_api.h>
#include "pdl.cuh"

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16; /* weight rows (output columns) per block */
constexpr int kRun = 32;  /* k per lane group and step pair */
constexpr int kUnroll = 5; /* runs loaded before the first mma of a chunk (k 2304: 9 runs per warp, 2 chunks) */

using tpc::pdl_trigger;
using tpc::pdl_wait;

template <typename T>
struct Mma;
template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
};
template <>
struct Mma<__half> {
  static __device__ __forceinline__ void run(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
};

__device__ __forceinline__ uint4 ld16(const void* p) { return __ldg(static_cast<const uint4*>(p)); }
/* Weights are streamed once: do not let them push x out of L1. */
__device__ __forceinline__ uint4 ld16_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
/* The block's weight rows into L2 with bulk prefetches (no registers, no shared memory): the whole weight is
 * requested from DRAM at once, and the warps' chunked loads then mostly hit L2. Safe before the PDL wait:
 * L2 is the GPU's point of coherence, so a line prefetched there is never stale. */
__device__ __forceinline__ void prefetch_rows_l2(const void* w, int64_t w_ld_bytes, int64_t row0, int64_t n,
                                                 int64_t row_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x < kRows && row0 + threadIdx.x < n) {
    const char* p = static_cast<const char*>(w) + (row0 + threadIdx.x) * w_ld_bytes;
    for (int64_t off = 0; off < row_bytes; off += (int64_t)1 << 20) {
      const int64_t left = row_bytes - off;
      const uint32_t len = (uint32_t)(left < ((int64_t)1 << 20) ? left : ((int64_t)1 << 20));
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + off), "r"(len) : "memory");
    }
  }
#endif
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

/* NT token tiles of 8 (1: m <= 8, 2: m <= 16). */
template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 2) gemm_skinny_kernel(const T* __restrict__ w, int64_t w_ld,
                                                               const T* __restrict__ x, int64_t x_ld, T* __restrict__ y,
                                                               int64_t y_ld, int m, int64_t n, int64_t k,
                                                               int runs_per_warp, int w_early) {
  __shared__ float part[kWarps][kRows][NT * 8];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t row0 = (int64_t)blockIdx.x * kRows;
  const bool va = row0 + g < n, vb = row0 + g + 8 < n;
  const T* wa = w + (va ? (row0 + g) * w_ld : 0);
  const T* wb = w + (vb ? (row0 + g + 8) * w_ld : 0);
  const T* xr[NT];
  bool vx[NT];
#pragma unroll
  for (int tt = 0; tt < NT; tt++) {
    vx[tt] = tt * 8 + g < m;
    xr[tt] = x + (vx[tt] ? (int64_t)(tt * 8 + g) * x_ld : 0);
  }
  const int64_t runs = (k + kRun - 1) / kRun;
  const int64_t r_begin = (int64_t)warp * runs_per_warp;
  const int64_t r_end = r_begin + runs_per_warp < runs ? r_begin + runs_per_warp : runs;

  float acc[NT][4];
#pragma unroll
  for (int tt = 0; tt < NT; tt++) acc[tt][0] = acc[tt][1] = acc[tt][2] = acc[tt][3] = 0.f;

  prefetch_rows_l2(w, w_ld * (int64_t)sizeof(T), row0, n, k * (int64_t)sizeof(T));
  const uint4 zero = make_uint4(0, 0, 0, 0);
  bool waited = false;
  if (!w_early) {
    pdl_wait();
    pdl_trigger();
    waited = true;
  }
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kUnroll) {
    uint4 la[kUnroll], lb[kUnroll], lx[kUnroll][NT];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const int64_t kk = (r0 + u) * kRun + t * 8;
      const bool in = r0 + u < r_end && kk < k;
      la[u] = in && va ? ld16_stream(wa + kk) : zero;
      lb[u] = in && vb ? ld16_stream(wb + kk) : zero;
    }
    if (!waited) { /* the first weights are on their way; x may be the previous kernel's output */
      pdl_wait();
      pdl_trigger();
      waited = true;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const int64_t kk = (r0 + u) * kRun + t * 8;
      const bool in = r0 + u < r_end && kk < k;
#pragma unroll
      for (int tt = 0; tt < NT; tt++) lx[u][tt] = in && vx[tt] ? ld16(xr[tt] + kk) : zero;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
#pragma unroll
      for (int s = 0; s < 2; s++) {
        const uint32_t a0 = word(la[u], 2 * s), a1 = word(lb[u], 2 * s), a2 = word(la[u], 2 * s + 1),
                       a3 = word(lb[u], 2 * s + 1);
#pragma unroll
        for (int tt = 0; tt < NT; tt++) Mma<T>::run(acc[tt], a0, a1, a2, a3, word(lx[u][tt], 2 * s), word(lx[u][tt], 2 * s + 1));
      }
    }
  }
  if (!waited) { /* this warp had no k to cover */
    pdl_wait();
    pdl_trigger();
  }
#pragma unroll
  for (int tt = 0; tt < NT; tt++) {
    part[warp][g][tt * 8 + 2 * t] = acc[tt][0];
    part[warp][g][tt * 8 + 2 * t + 1] = acc[tt][1];
    part[warp][g + 8][tt * 8 + 2 * t] = acc[tt][2];
    part[warp][g + 8][tt * 8 + 2 * t + 1] = acc[tt][3];
  }
  __syncthreads();
  const int row = threadIdx.x % kRows, tok = threadIdx.x / kRows;
  if (tok < NT * 8 && tok < m && row0 + row < n) {
    float sum = 0.f;
#pragma unroll
    for (int wi = 0; wi < kWarps; wi++) sum += part[wi][row][tok];
    Mma<T>::store(y + (int64_t)tok * y_ld + row0 + row, sum);
  }
}

template <typename T>
cudaError_t launch(const void* w, int64_t w_ld, const void* x, int64_t x_ld, void* y, int64_t y_ld, int64_t m,
                   int64_t n, int64_t k, int w_early, int pdl, cudaStream_t stream) {
  const int64_t blocks = (n + kRows - 1) / kRows;
  const int64_t runs = (k + kRun - 1) / kRun;
  const int runs_per_warp = (int)((runs + kWarps - 1) / kWarps);
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg = tpc::pdl_launch_config(dim3((unsigned)blocks), dim3(kThreads), 0, stream, pdl, attr);
  const T* wt = static_cast<const T*>(w);
  const T* xt = static_cast<const T*>(x);
  T* yt = static_cast<T*>(y);
  if (m <= 8)
    return cudaLaunchKernelEx(&cfg, gemm_skinny_kernel<T, 1>, wt, w_ld, xt, x_ld, yt, y_ld, (int)m, n, k, runs_per_warp,
                              w_early && pdl);
  return cudaLaunchKernelEx(&cfg, gemm_skinny_kernel<T, 2>, wt, w_ld, xt, x_ld, yt, y_ld, (int)m, n, k, runs_per_warp,
                            w_early && pdl);
}

}  // namespace

/* dtype: 0 bf16, 1 fp16 (tpc_dtype_t values). 1 <= m <= 16; n < 2^31 * 16; see the header comment for the
 * alignment the caller guarantees. Returns the launch error (cudaErrorInvalidValue for arguments outside
 * that contract). */
extern "C" cudaError_t tpc_gemm_skinny_launch(const void* w, int64_t w_ld, const void* x, int64_t x_ld, void* y,
                                              int64_t y_ld, int64_t m, int64_t n, int64_t k, int dtype, int w_early,
                                              int pdl, cudaStream_t stream) {
  if (m < 1 || m > 16 || n < 1 || k < 1 || k % 8 || w_ld % 8 || x_ld % 8 || (uintptr_t)w % 16 || (uintptr_t)x % 16 ||
      (n + kRows - 1) / kRows > 0x7fffffff)
    return cudaErrorInvalidValue;
  switch (dtype) {
    case 0: return launch<__nv_bfloat16>(w, w_ld, x, x_ld, y, y_ld, m, n, k, w_early, pdl, stream);
    case 1: return launch<__half>(w, w_ld, x, x_ld, y, y_ld, m, n, k, w_early, pdl, stream);
    default: return cudaErrorInvalidValue;
  }
}
