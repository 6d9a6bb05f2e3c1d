/* quant_fp8.cu — FP8 (e4m3) quantization kernels and their public launchers (include/tpcomm/gemm.h):
 * per-token (absmax per row -> fp32 scale, saturated e4m3 codes) and static per-tensor.
 *
 * Numerics (must match tests/ref/quant_ref.c bit for bit): amax = max |x| over the finite elements of the
 * row (fmaxf ignores NaN; a row whose max is +Inf is reduced again over its finite elements, a rare slow
 * branch); scale = max(amax / 448, 2^-126) so it is never 0 (an all-zero row gives scale 2^-126 and q = 0,
 * never NaN) and 1/scale is finite; inv = 1/scale rounded once per row; q = e4m3(x * inv) through
 * cvt.rn.satfinite.e4m3x2.f32 (__nv_cvt_float2_to_fp8x2 with __NV_SATFINITE: the paired form of
 * __nv_cvt_float_to_fp8, round to nearest even, saturating to +-448, so +-Inf -> +-448 and NaN -> an e4m3
 * NaN, 0x7F or 0xFF as the hardware gives it). No fast-math: the divisions are IEEE.
 *
 * Kernels (all read their row from global memory once, except TWO_PASS; all use PDL: griddepcontrol.wait
 * before the first global load, launch_dependents right after, as allreduce.cu; WARP and BLOCK blocks of the
 * first wave form their first row's addresses and prefetch it into L2 before the wait, first_wave()):
 *   WARP   quant_warp_kernel<T, VPT>: 256 threads, a warp per row (grid-stride over rows), lane l holds
 *          16-byte vectors l, l+32, ... (VPT of them, up to 16 = hidden 4096) in registers; the absmax is
 *          reduced with shuffles only (no shared memory at all).
 *   BLOCK  quant_block_kernel<T, VPT>: 32..512 threads, a block per row, VPT <= 8 vectors per thread in
 *          registers (hidden <= 32768).
 *   SMEM   quant_row_block_kernel<T, true>: 1024 threads, a block per row, the row staged in dynamic
 *          shared memory (16 bytes per vector, up to the device's opt-in limit, set once per device with
 *          cudaFuncSetAttribute). Each thread reads back only the vectors it wrote itself.
 *   TWO_PASS quant_row_block_kernel<T, false>: as SMEM without the staging; the row is read twice.
 *   static quant_static_kernel<T>: one vector per thread per row, grid (vectors, rows).
 * Bytes in flight: WARP and BLOCK issue all the 16-byte loads of a thread's share of the row back to back
 * (load_row: predicated loads first, the element-by-element tail or misaligned vectors after them), so a
 * WARP SM holds 16 rows = 128 KB in flight at hidden 4096. (Calling the out-of-line tail loader between the
 * loads, as this file once did, made ptxas consume each load before issuing the next: one 16-byte load in
 * flight per thread, 324 us instead of 189 us at 65536 x 4096 on H200.)
 * AUTO (choose_path): WARP for rows of <= 4096 elements and >= 4 rows per SM when the row is narrow
 * (<= 2048 elements) or the rows are many (>= 128 per SM); BLOCK otherwise up to 32768, with up to 4 vectors
 * per thread when there are many rows (128 threads at hidden 4096: 4096 x 4096 in 13.5 us against 14.0 for
 * WARP, whose one-warp rows lengthen the last wave) and the most threads per row when there are few;
 * then SMEM, then TWO_PASS. Grids: WARP up to 64 blocks per SM (one row per warp up to 512 rows per SM:
 * finer scheduling than 16 blocks looping over 4 rows, 185 against 189 us at 65536 x 4096), BLOCK 2x the
 * thread limit, SMEM the blocks whose rows fit in shared memory at once, TWO_PASS 4; every kernel loops over
 * rows, so blocks handle several rows in turn on larger inputs.
 * Block reductions are race-free by construction: every warp writes its own slot s_red[warp], and after a
 * barrier every warp reduces all slots itself, so there is no shared "scale" variable that several warps
 * write; a barrier at the start of each reduction keeps a fast warp from overwriting slots a slow warp is
 * still reading (rows are processed in a loop). Static shared memory: 128 bytes.
 * Vectors: 8 elements (16 bytes in, 8 bytes out) when x is 16-byte aligned with x_stride % 8 == 0 and q is
 * 8-byte aligned with q_stride % 8 == 0; otherwise, and for the tail of a row, element by element.
 *
 * Relies on: sm_89+ for the hardware e4m3 conversion (built for sm_90a); debug.h/param.h of comm/ for
 * tpc_error and TPCOMM_PDL (C headers, included with C linkage). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <float.h>
#include <stdint.h>

#include <atomic>
#include <mutex>
#include <type_traits>

extern "C" {
#include "debug.h"
#include "param.h"
}
#include "pdl.cuh"
#include "tpcomm/gemm.h"

namespace {

constexpr float kE4M3Max = 448.0f;
constexpr float kMinScale = 1.17549435082228750797e-38f; /* 2^-126 */
constexpr int kVecElems = 8;                              /* 16 bytes of bf16/fp16 */
constexpr int kWarpThreads = 256;                         /* WARP path: 8 rows per block */
constexpr int kWarpMaxVpt = 16;                           /* WARP path: hidden <= 32 * 16 * 8 = 4096 */
constexpr int kWarpNarrowVec = 256;     /* AUTO: WARP for rows of <= 256 vectors (hidden 2048) ... */
constexpr int kWarpManyRowsPerSm = 128; /* ... and for wider ones from 128 rows per SM (8 WARP waves) on */
constexpr int kWarpBlocksPerSm = 64;    /* WARP grid cap: one row per warp up to 512 rows per SM */
constexpr int kBlockManyRowsVpt = 4;    /* BLOCK with many rows: up to 4 vectors per thread */
constexpr int kBlockMaxThreads = 512;
constexpr int kBlockMaxVpt = 8; /* BLOCK path: hidden <= 512 * 8 * 8 = 32768 */
constexpr int kBigThreads = 1024; /* SMEM and TWO_PASS */
constexpr int kStaticThreads = 256;
constexpr int kSmemReserve = 1024; /* bytes of the opt-in limit left unused by the SMEM path */

struct QuantArgs {
  const uint16_t* x; /* rows x x_stride elements */
  uint8_t* q;        /* rows x q_stride bytes */
  float* scales;     /* rows (per-token only) */
  int64_t rows, hidden, nvec, x_stride, q_stride;
  int64_t nfull; /* vectors loaded and stored whole: hidden / 8 when aligned (see make_args), else 0 */
  int64_t prefetch_blocks; /* WARP and BLOCK: blocks below this (the first wave, with PDL) prefetch their first
                              row before the wait; 0: none */
};

/* ---- PDL ------------------------------------------------------------------------------------------------- */
using tpc::pdl_trigger; /* kernels/pdl.cuh */
using tpc::pdl_wait;

/* ---- element conversions ----------------------------------------------------------------------------------- */
template <typename T>
struct Cvt;
template <>
struct Cvt<__nv_bfloat16> { /* a bf16 is the top half of an fp32 */
  static __device__ __forceinline__ float2 pair(uint32_t w) {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  }
};
template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float2 pair(uint32_t w) {
    return __half22float2(__halves2half2(__ushort_as_half((unsigned short)(w & 0xffffu)),
                                         __ushort_as_half((unsigned short)(w >> 16))));
  }
};

/* ---- 16-byte vectors of a row ------------------------------------------------------------------------------ */
/* Vector v < nfull is loaded/stored whole (nfull = hidden / 8 when the row is aligned, else 0); the others
 * (the tail, or every vector of a misaligned row) element by element, out of line to keep registers free. */
__device__ __forceinline__ uint4 load_vec_slow_inline(const uint16_t* row, int64_t v, int64_t hidden) {
  const int64_t e = v * kVecElems;
  uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < kVecElems; i++)
    if (e + i < hidden) w[i / 2] |= (uint32_t)__ldg(row + e + i) << (16 * (i & 1));
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __noinline__ uint4 load_vec_slow(const uint16_t* row, int64_t v, int64_t hidden) {
  return load_vec_slow_inline(row, v, hidden);
}

__device__ __noinline__ void store_vec_slow(uint8_t* row, int64_t v, int64_t hidden, uint2 val) {
  const int64_t e = v * kVecElems;
#pragma unroll
  for (int i = 0; i < kVecElems; i++)
    if (e + i < hidden) row[e + i] = (uint8_t)(((i < 4 ? val.x : val.y) >> (8 * (i & 3))) & 0xffu);
}

/* Vector v of the row (zeros past the end): the static kernel, one vector per thread. */
__device__ __forceinline__ uint4 load_vec(const uint16_t* row, int64_t v, const QuantArgs& a) {
  if (v < a.nfull) return __ldg(reinterpret_cast<const uint4*>(row) + v);
  if (v < a.nvec) return load_vec_slow(row, v, a.hidden);
  return make_uint4(0, 0, 0, 0);
}

__device__ __forceinline__ void store_vec(uint8_t* row, int64_t v, const QuantArgs& a, uint2 val) {
  if (v < a.nfull) reinterpret_cast<uint2*>(row)[v] = val;
  else if (v < a.nvec) store_vec_slow(row, v, a.hidden, val);
}

/* Whole vector v (v < nfull). */
__device__ __forceinline__ uint4 ldg_vec(const uint16_t* row, int64_t v) {
  return __ldg(reinterpret_cast<const uint4*>(row) + v);
}

__device__ __forceinline__ void stg_vec(uint8_t* row, int64_t v, uint2 val) { reinterpret_cast<uint2*>(row)[v] = val; }

/* Vectors v0, v0 + step, ... (N of them) of a row into registers, zeros past the end. All the whole-vector
 * loads are issued first, back to back (predicated, no branch or call between them), so a thread has N
 * loads in flight; only then the vectors that need the element-by-element path (a tail, or a misaligned
 * row), which a call out of line would otherwise serialize with the loads. */
template <int N, bool INLINE_TAIL = false>
__device__ __forceinline__ void load_row(uint4 (&r)[N], const uint16_t* x, int64_t v0, int64_t step,
                                         const QuantArgs& a) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    const int64_t v = v0 + step * i;
    r[i] = v < a.nfull ? ldg_vec(x, v) : make_uint4(0, 0, 0, 0);
  }
  if (a.nfull < a.nvec) {
#pragma unroll
    for (int i = 0; i < N; i++) {
      const int64_t v = v0 + step * i;
      if (v >= a.nfull && v < a.nvec)
        r[i] = INLINE_TAIL ? load_vec_slow_inline(x, v, a.hidden) : load_vec_slow(x, v, a.hidden);
    }
  }
}

/* The vectors load_row will read (the same v0, step, N) pulled into L2, one thread in 8 (step is a multiple of
 * 8, so a thread's vectors all sit at the same place in their 128-byte lines). Used before griddepcontrol.wait
 * with PDL: only a hint, and safe there (L2 is where the previous grid's stores land; L1 is not filled); it
 * also keeps the row's address work before the wait, which ptxas otherwise schedules after it (it moves
 * arithmetic across the wait, not memory instructions). */
template <int N>
__device__ __forceinline__ void prefetch_row(const uint16_t* x, int64_t v0, int64_t step, const QuantArgs& a) {
  if ((v0 & 7) != 0) return;
#pragma unroll
  for (int i = 0; i < N; i++) {
    const int64_t v = v0 + step * i;
    if (v < a.nvec) asm volatile("prefetch.global.L2 [%0];" ::"l"(x + v * kVecElems));
  }
}

/* Absolute maximum in packed 16-bit arithmetic: m2 holds two running maxima (bf16x2 or half2), updated
 * with __hmax2 on |w| (sign bits cleared). __hmax2 returns the other operand when one is NaN (IEEE maxNum,
 * like fmaxf), so NaN never wins; +Inf does (see vec_absmax_finite). Exact: max and abs do not round.
 * Keeping the absmax phase free of fp32 conversions stops the compiler from keeping converted copies of
 * the row alive until the quantization phase (register pressure). */
template <typename T>
struct Packed;
template <>
struct Packed<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t max_abs(uint32_t m2, uint32_t w) {
    uint32_t a = w & 0x7fff7fffu;
    const __nv_bfloat162 r = __hmax2(*reinterpret_cast<const __nv_bfloat162*>(&m2), *reinterpret_cast<const __nv_bfloat162*>(&a));
    return *reinterpret_cast<const uint32_t*>(&r);
  }
};
template <>
struct Packed<__half> {
  static __device__ __forceinline__ uint32_t max_abs(uint32_t m2, uint32_t w) {
    uint32_t a = w & 0x7fff7fffu;
    const __half2 r = __hmax2(*reinterpret_cast<const __half2*>(&m2), *reinterpret_cast<const __half2*>(&a));
    return *reinterpret_cast<const uint32_t*>(&r);
  }
};

template <typename T>
__device__ __forceinline__ uint32_t vec_absmax2(uint4 r, uint32_t m2) {
  m2 = Packed<T>::max_abs(m2, r.x);
  m2 = Packed<T>::max_abs(m2, r.y);
  m2 = Packed<T>::max_abs(m2, r.z);
  return Packed<T>::max_abs(m2, r.w);
}

/* The larger of the two packed maxima, as fp32 (exact). */
template <typename T>
__device__ __forceinline__ float absmax2_to_float(uint32_t m2) {
  const float2 f = Cvt<T>::pair(m2);
  return fmaxf(f.x, f.y);
}

/* max(m, |elements|) in fp32 (the paths that stream the row: SMEM and TWO_PASS). */
template <typename T>
__device__ __forceinline__ float vec_absmax(uint4 r, float m) {
  return fmaxf(m, absmax2_to_float<T>(vec_absmax2<T>(r, 0u)));
}

/* The same over finite elements only (the slow branch for rows that contain +-Inf). */
template <typename T>
__device__ __forceinline__ float vec_absmax_finite(uint4 r, float m) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 f = Cvt<T>::pair(w[i]);
    const float a = fabsf(f.x), b = fabsf(f.y);
    if (a <= FLT_MAX) m = fmaxf(m, a);
    if (b <= FLT_MAX) m = fmaxf(m, b);
  }
  return m;
}

/* 8 elements * inv -> 8 e4m3 codes (element 0 in the lowest byte). */
template <typename T>
__device__ __forceinline__ uint2 vec_quant(uint4 r, float inv) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
  uint32_t out[2] = {0, 0};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 f = Cvt<T>::pair(w[i]);
    f.x = __fmul_rn(f.x, inv);
    f.y = __fmul_rn(f.y, inv);
    const __nv_fp8x2_storage_t p = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3); /* f.x -> low byte */
    out[i / 2] |= (uint32_t)p << (16 * (i & 1));
  }
  return make_uint2(out[0], out[1]);
}

__device__ __forceinline__ float scale_of(float amax) { return fmaxf(amax / kE4M3Max, kMinScale); }

/* The codes of the vectors load_row read (the same v0, step, N), whole vectors first, then the others. */
template <typename T, int N>
__device__ __forceinline__ void store_row(uint8_t* q, const uint4 (&r)[N], float inv, int64_t v0, int64_t step,
                                          const QuantArgs& a) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    const int64_t v = v0 + step * i;
    if (v < a.nfull) stg_vec(q, v, vec_quant<T>(r[i], inv));
  }
  if (a.nfull < a.nvec) {
#pragma unroll
    for (int i = 0; i < N; i++) {
      const int64_t v = v0 + step * i;
      if (v >= a.nfull && v < a.nvec) store_vec_slow(q, v, a.hidden, vec_quant<T>(r[i], inv));
    }
  }
}

/* ---- reductions -------------------------------------------------------------------------------------------- */
__device__ __forceinline__ float warp_max(float m) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  return m;
}

/* Max over the block (blockDim.x a multiple of 32, every thread calls it). See the file comment. */
__device__ __forceinline__ float block_max(float m, float* s_red) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  m = warp_max(m);
  __syncthreads(); /* the previous call's readers are done with s_red */
  if (lane == 0) s_red[warp] = m;
  __syncthreads();
  m = lane < nwarps ? s_red[lane] : 0.0f;
  return warp_max(m);
}

/* ---- WARP: a warp per row, the row in registers ------------------------------------------------------------- */
template <typename T, int VPT>
__global__ void __launch_bounds__(kWarpThreads, 2) quant_warp_kernel(QuantArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t first = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int64_t step = ((int64_t)gridDim.x * blockDim.x) >> 5;
  if (blockIdx.x < a.prefetch_blocks && first < a.rows) prefetch_row<VPT>(a.x + first * a.x_stride, lane, 32, a);
  pdl_wait();
  pdl_trigger();
  for (int64_t row = first; row < a.rows; row += step) { /* uniform per warp */
    uint4 r[VPT];
    load_row(r, a.x + row * a.x_stride, lane, 32, a);
    uint32_t m2 = 0;
#pragma unroll
    for (int i = 0; i < VPT; i++) m2 = vec_absmax2<T>(r[i], m2);
    float m = warp_max(absmax2_to_float<T>(m2));
    if (!(m <= FLT_MAX)) { /* +Inf in the row: the max over finite elements */
      m = 0.0f;
#pragma unroll
      for (int i = 0; i < VPT; i++) m = vec_absmax_finite<T>(r[i], m);
      m = warp_max(m);
    }
    const float scale = scale_of(m);
    store_row<T>(a.q + row * a.q_stride, r, 1.0f / scale, lane, 32, a);
    if (lane == 0) a.scales[row] = scale;
  }
}

/* ---- BLOCK: a block per row, the row in registers ----------------------------------------------------------- */
template <typename T, int VPT>
__global__ void __launch_bounds__(kBlockMaxThreads) quant_block_kernel(QuantArgs a) {
  __shared__ float s_red[32];
  if (blockIdx.x < a.prefetch_blocks && blockIdx.x < a.rows)
    prefetch_row<VPT>(a.x + blockIdx.x * a.x_stride, threadIdx.x, blockDim.x, a);
  pdl_wait();
  pdl_trigger();
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    uint4 r[VPT];
    /* VPT 8: with the call, ptxas gives the kernel 64 registers and spills in the callee */
    load_row<VPT, VPT == 8>(r, a.x + row * a.x_stride, threadIdx.x, blockDim.x, a);
    uint32_t m2 = 0;
#pragma unroll
    for (int i = 0; i < VPT; i++) m2 = vec_absmax2<T>(r[i], m2);
    float m = block_max(absmax2_to_float<T>(m2), s_red);
    if (!(m <= FLT_MAX)) { /* uniform: every thread has the same m */
      m = 0.0f;
#pragma unroll
      for (int i = 0; i < VPT; i++) m = vec_absmax_finite<T>(r[i], m);
      m = block_max(m, s_red);
    }
    const float scale = scale_of(m);
    store_row<T>(a.q + row * a.q_stride, r, 1.0f / scale, threadIdx.x, blockDim.x, a);
    if (threadIdx.x == 0) a.scales[row] = scale;
  }
}

/* ---- SMEM and TWO_PASS: a block per row ---------------------------------------------------------------------
 * STAGE (SMEM): the row is kept in dynamic shared memory between the max and the quantization, so it is read
 * from DRAM once; without it (TWO_PASS, rows too long for shared memory) the row is read twice. The streaming
 * loops run over the whole vectors first (loads unrolled and in flight together), then over the vectors
 * that need the element-by-element path. */
template <typename T, bool STAGE>
__global__ void __launch_bounds__(kBigThreads) quant_row_block_kernel(QuantArgs a) {
  extern __shared__ uint4 s_row[]; /* STAGE: nvec vectors; vector v is written and read by thread v % blockDim */
  __shared__ float s_red[32];
  pdl_wait();
  pdl_trigger();
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const uint16_t* x = a.x + row * a.x_stride;
    float m = 0.0f;
#pragma unroll 4
    for (int64_t v = threadIdx.x; v < a.nfull; v += blockDim.x) {
      const uint4 r = ldg_vec(x, v);
      if constexpr (STAGE) s_row[v] = r;
      m = vec_absmax<T>(r, m);
    }
    for (int64_t v = a.nfull + threadIdx.x; v < a.nvec; v += blockDim.x) {
      const uint4 r = load_vec_slow(x, v, a.hidden);
      if constexpr (STAGE) s_row[v] = r;
      m = vec_absmax<T>(r, m);
    }
    m = block_max(m, s_red);
    if (!(m <= FLT_MAX)) {
      m = 0.0f;
      for (int64_t v = threadIdx.x; v < a.nvec; v += blockDim.x)
        m = vec_absmax_finite<T>(STAGE ? s_row[v] : load_vec(x, v, a), m);
      m = block_max(m, s_red);
    }
    const float scale = scale_of(m);
    const float inv = 1.0f / scale;
    uint8_t* q = a.q + row * a.q_stride;
#pragma unroll 4
    for (int64_t v = threadIdx.x; v < a.nfull; v += blockDim.x)
      stg_vec(q, v, vec_quant<T>(STAGE ? s_row[v] : ldg_vec(x, v), inv));
    for (int64_t v = a.nfull + threadIdx.x; v < a.nvec; v += blockDim.x)
      store_vec_slow(q, v, a.hidden, vec_quant<T>(STAGE ? s_row[v] : load_vec_slow(x, v, a.hidden), inv));
    if (threadIdx.x == 0) a.scales[row] = scale;
  }
}

/* ---- static per-tensor scale --------------------------------------------------------------------------------- */
template <typename T>
__global__ void __launch_bounds__(kStaticThreads) quant_static_kernel(QuantArgs a, const float* scale) {
  pdl_wait();
  pdl_trigger();
  const float s = fminf(fmaxf(*scale, kMinScale), FLT_MAX); /* fmaxf(NaN, min) = min */
  const float inv = 1.0f / s;
  const int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (v >= a.nvec) return;
  for (int64_t row = blockIdx.y; row < a.rows; row += gridDim.y) {
    const uint4 r = load_vec(a.x + row * a.x_stride, v, a);
    store_vec(a.q + row * a.q_stride, v, a, vec_quant<T>(r, inv));
  }
}

/* ---- host side ------------------------------------------------------------------------------------------------ */

constexpr int kMaxDevices = 64;
struct DevInfo {
  int ready, device;
  int sms, cc_major;
  int smem_optin;     /* cudaDevAttrMaxSharedMemoryPerBlockOptin */
  int smem_set[2];    /* cudaFuncSetAttribute done for quant_row_block_kernel<bf16|fp16, true> */
};
std::mutex g_lock;
DevInfo g_dev[kMaxDevices];
int g_pdl = -1; /* TPCOMM_PDL, resolved once */

tpc_status_t device_info(const char* fn, DevInfo* out) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return tpc_error(NULL, err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver ? TPC_ERR_NO_DEVICE : TPC_ERR_CUDA,
                     "%s: cudaGetDevice failed: %s", fn, cudaGetErrorString(err));
  }
  if (dev < 0 || dev >= kMaxDevices) return tpc_error(NULL, TPC_ERR_UNSUPPORTED, "%s: device %d (at most %d devices)", fn, dev, kMaxDevices);
  std::lock_guard<std::mutex> guard(g_lock);
  if (g_pdl < 0) {
    int64_t v = 1;
    tpc_status_t st = tpc_param_resolve(TPC_P_PDL, TPC_CONFIG_UNDEF, &v);
    if (st != TPC_SUCCESS) return st;
    g_pdl = v ? 1 : 0;
  }
  DevInfo* d = &g_dev[dev];
  if (!d->ready) {
    int sms = 0, major = 0, smem = 0;
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return tpc_error(NULL, TPC_ERR_CUDA, "%s: cudaDeviceGetAttribute on device %d failed: %s", fn, dev, cudaGetErrorString(err));
    }
    d->device = dev;
    d->sms = sms > 0 ? sms : 1;
    d->cc_major = major;
    d->smem_optin = smem;
    d->ready = 1;
  }
  *out = *d;
  return TPC_SUCCESS;
}

/* Largest row (in 16-byte vectors) the SMEM path can hold on this device. */
int64_t smem_max_vec(const DevInfo& d) {
  const int64_t bytes = (int64_t)d.smem_optin - kSmemReserve;
  return bytes > 0 ? bytes / 16 : 0;
}

tpc_quant_path_t choose_path(const DevInfo& d, int64_t rows, int64_t nvec) {
  if (nvec <= 32 * kWarpMaxVpt && rows >= 4 * (int64_t)d.sms &&
      (nvec <= kWarpNarrowVec || rows >= kWarpManyRowsPerSm * (int64_t)d.sms))
    return TPC_QUANT_PATH_WARP;
  if (nvec <= (int64_t)kBlockMaxThreads * kBlockMaxVpt) return TPC_QUANT_PATH_BLOCK;
  if (nvec <= smem_max_vec(d)) return TPC_QUANT_PATH_SMEM;
  return TPC_QUANT_PATH_TWO_PASS;
}

/* Why `path` cannot serve nvec vectors on d (NULL when it can). */
const char* path_refusal(const DevInfo& d, tpc_quant_path_t path, int64_t nvec) {
  switch (path) {
    case TPC_QUANT_PATH_WARP: return nvec <= 32 * kWarpMaxVpt ? NULL : "the warp path holds at most 4096 elements per row";
    case TPC_QUANT_PATH_BLOCK:
      return nvec <= (int64_t)kBlockMaxThreads * kBlockMaxVpt ? NULL : "the block path holds at most 32768 elements per row";
    case TPC_QUANT_PATH_SMEM:
      return nvec <= smem_max_vec(d) ? NULL : "the row does not fit in this device's shared memory per block";
    default: return NULL;
  }
}

/* Blocks for `work` blocks' worth of rows, at most `per_sm` per SM: the kernels loop over rows (grid
 * stride), so a large input runs on a bounded, mostly resident grid and a block handles several rows in
 * turn (which is also what exercises the reuse of the reduction slots). */
unsigned grid_of(int64_t work, const DevInfo& d, int per_sm) {
  const int64_t cap = (int64_t)d.sms * (per_sm > 0 ? per_sm : 1);
  return (unsigned)(work < 1 ? 1 : (work > cap ? cap : work));
}

/* With PDL, the blocks of the first wave (SMs x the blocks one SM holds of `kernel` at `threads`, queried once per
 * device and block size): they prefetch their first row before the wait (graph, H200: 16 x 4096 1.30 -> 1.15 us,
 * 1024 x 1368 2.86 -> 2.13, 4096 x 4096 13.50 -> 12.85, 65536 x 4096 185.8 -> 185.2; perf-log.md 2026-12-04). Later
 * blocks start after the wait and would only add traffic (65536 x 4096 185.1 -> 189.1 us when every block
 * prefetched). 0 (no prefetch) if the query fails: it is only a hint. */
template <auto Kernel>
int64_t first_wave(int threads, const DevInfo& d, int pdl) {
  int occ = 0;
  if (!pdl) return 0;
  if (tpc::resident_blocks_per_sm<Kernel>(d.device, threads, &occ) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return (int64_t)d.sms * occ;
}

template <typename T, int VPT>
cudaError_t launch_warp(const DevInfo& d, const QuantArgs& a, int pdl, cudaStream_t stream) {
  cudaLaunchAttribute attr[1];
  const int64_t rows_per_block = kWarpThreads / 32;
  const dim3 grid(grid_of((a.rows + rows_per_block - 1) / rows_per_block, d, kWarpBlocksPerSm));
  const cudaLaunchConfig_t cfg = tpc::pdl_launch_config(grid, dim3(kWarpThreads), 0, stream, pdl, attr);
  QuantArgs args = a;
  args.prefetch_blocks = first_wave<quant_warp_kernel<T, VPT>>(kWarpThreads, d, pdl);
  return cudaLaunchKernelEx(&cfg, quant_warp_kernel<T, VPT>, args);
}

template <typename T, int VPT>
cudaError_t launch_block(const DevInfo& d, const QuantArgs& a, int threads, int pdl, cudaStream_t stream) {
  cudaLaunchAttribute attr[1];
  const dim3 grid(grid_of(a.rows, d, 2 * 2048 / threads));
  const cudaLaunchConfig_t cfg = tpc::pdl_launch_config(grid, dim3((unsigned)threads), 0, stream, pdl, attr);
  QuantArgs args = a;
  args.prefetch_blocks = first_wave<quant_block_kernel<T, VPT>>(threads, d, pdl);
  return cudaLaunchKernelEx(&cfg, quant_block_kernel<T, VPT>, args);
}

/* Vectors per thread of the BLOCK path: the fewest that fit in kBlockMaxThreads threads (most threads per
 * row: what a few rows need), raised towards kBlockManyRowsVpt when there are many rows (fewer, longer
 * threads per row: more rows in flight per SM and less reduction per byte), keeping at least a warp. */
int block_vpt(const DevInfo& d, int64_t rows, int64_t nvec) {
  int vpt = 1;
  while ((nvec + vpt - 1) / vpt > kBlockMaxThreads) vpt *= 2;
  if (rows >= 4 * (int64_t)d.sms)
    while (vpt < kBlockManyRowsVpt && (nvec + 2 * vpt - 1) / (2 * vpt) >= 32) vpt *= 2;
  return vpt;
}

template <typename T>
cudaError_t launch_per_token(const DevInfo& d, tpc_quant_path_t path, const QuantArgs& a, int pdl,
                             cudaStream_t stream) {
  switch (path) {
    case TPC_QUANT_PATH_WARP: {
      const int64_t need = (a.nvec + 31) / 32;
      if (need <= 1) return launch_warp<T, 1>(d, a, pdl, stream);
      if (need <= 2) return launch_warp<T, 2>(d, a, pdl, stream);
      if (need <= 4) return launch_warp<T, 4>(d, a, pdl, stream);
      if (need <= 8) return launch_warp<T, 8>(d, a, pdl, stream);
      return launch_warp<T, 16>(d, a, pdl, stream);
    }
    case TPC_QUANT_PATH_BLOCK: {
      const int vpt = block_vpt(d, a.rows, a.nvec);
      const int threads = (int)(((a.nvec + vpt - 1) / vpt + 31) / 32 * 32);
      switch (vpt) {
        case 1: return launch_block<T, 1>(d, a, threads, pdl, stream);
        case 2: return launch_block<T, 2>(d, a, threads, pdl, stream);
        case 4: return launch_block<T, 4>(d, a, threads, pdl, stream);
        default: return launch_block<T, 8>(d, a, threads, pdl, stream);
      }
    }
    case TPC_QUANT_PATH_SMEM: {
      const int idx = std::is_same<T, __half>::value ? 1 : 0;
      const int64_t max_bytes = smem_max_vec(d) * 16;
      {
        std::lock_guard<std::mutex> guard(g_lock);
        if (!g_dev[d.device].smem_set[idx]) {
          cudaError_t err = cudaFuncSetAttribute(quant_row_block_kernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 (int)max_bytes);
          if (err != cudaSuccess) return err;
          g_dev[d.device].smem_set[idx] = 1;
        }
      }
      const int threads = a.nvec >= kBigThreads ? kBigThreads : (int)((a.nvec + 31) / 32 * 32);
      cudaLaunchAttribute attr[1];
      const int per_sm = (int)((int64_t)d.smem_optin / (a.nvec * 16 + kSmemReserve)); /* resident blocks */
      const cudaLaunchConfig_t cfg = tpc::pdl_launch_config(dim3(grid_of(a.rows, d, per_sm)), dim3((unsigned)threads),
                                                            (size_t)a.nvec * 16, stream, pdl, attr);
      return cudaLaunchKernelEx(&cfg, quant_row_block_kernel<T, true>, a);
    }
    default: {
      cudaLaunchAttribute attr[1];
      const int threads = a.nvec >= kBigThreads ? kBigThreads : (int)((a.nvec + 31) / 32 * 32);
      const cudaLaunchConfig_t cfg =
          tpc::pdl_launch_config(dim3(grid_of(a.rows, d, 4)), dim3((unsigned)threads), 0, stream, pdl, attr);
      return cudaLaunchKernelEx(&cfg, quant_row_block_kernel<T, false>, a);
    }
  }
}

/* ---- argument checks (before any CUDA call) ---------------------------------------------------------------- */

tpc_status_t check_dtype(const char* fn, tpc_dtype_t dtype) {
  if ((int)dtype < 0 || (int)dtype >= TPC_NUM_DTYPES)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: dtype=%d is not a tpc_dtype_t (0..%d)", fn, (int)dtype,
                     TPC_NUM_DTYPES - 1);
  if (dtype == TPC_FLOAT32)
    return tpc_error(NULL, TPC_ERR_UNSUPPORTED, "%s: dtype=float32: the input must be bfloat16 or float16", fn);
  return TPC_SUCCESS;
}

tpc_status_t check_shape(const char* fn, int64_t rows, int64_t hidden) {
  if (rows < 0) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: rows=%lld (must be >= 0)", fn, (long long)rows);
  if (hidden < 1)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: hidden=%lld (must be >= 1)", fn, (long long)hidden);
  if (hidden > INT64_MAX / 4)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: hidden=%lld is too large", fn, (long long)hidden);
  return TPC_SUCCESS;
}

tpc_status_t check_args(const char* fn, const void* q, const float* scales, int need_scales, const void* x,
                        int64_t rows, int64_t hidden, int64_t x_stride, int64_t q_stride, tpc_dtype_t dtype) {
  tpc_status_t st = check_dtype(fn, dtype);
  if (st == TPC_SUCCESS) st = check_shape(fn, rows, hidden);
  if (st != TPC_SUCCESS) return st;
  if (x_stride < hidden)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: x_stride=%lld is smaller than hidden=%lld", fn,
                     (long long)x_stride, (long long)hidden);
  if (q_stride < hidden)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: q_stride=%lld is smaller than hidden=%lld", fn,
                     (long long)q_stride, (long long)hidden);
  if (rows > 0 && (x_stride > (INT64_MAX / 2 - hidden) / rows || q_stride > (INT64_MAX - hidden) / rows))
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: rows=%lld with x_stride=%lld, q_stride=%lld overflows", fn,
                     (long long)rows, (long long)x_stride, (long long)q_stride);
  if (rows == 0) return TPC_SUCCESS;
  if (!x) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: x is NULL (rows=%lld)", fn, (long long)rows);
  if (!q) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: q_out is NULL (rows=%lld)", fn, (long long)rows);
  if (need_scales && !scales)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: scales is NULL (rows=%lld)", fn, (long long)rows);
  if ((uintptr_t)x % 2 != 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: x=%p is not aligned to its 2-byte elements", fn, x);
  if (need_scales && (uintptr_t)scales % 4 != 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: scales=%p is not 4-byte aligned", fn, (const void*)scales);
  return TPC_SUCCESS;
}

QuantArgs make_args(void* q, float* scales, const void* x, int64_t rows, int64_t hidden, int64_t x_stride,
                    int64_t q_stride) {
  QuantArgs a;
  a.x = static_cast<const uint16_t*>(x);
  a.q = static_cast<uint8_t*>(q);
  a.scales = scales;
  a.rows = rows;
  a.hidden = hidden;
  a.nvec = (hidden + kVecElems - 1) / kVecElems;
  a.x_stride = x_stride;
  a.q_stride = q_stride;
  const int vec = (uintptr_t)x % 16 == 0 && x_stride % 8 == 0 && (uintptr_t)q % 8 == 0 && q_stride % 8 == 0;
  a.nfull = vec ? hidden / kVecElems : 0;
  a.prefetch_blocks = 0;
  return a;
}

tpc_status_t launch_status(const char* fn, cudaError_t err, const char* what) {
  if (err == cudaSuccess) return TPC_SUCCESS;
  (void)cudaGetLastError(); /* a launch error is not sticky: clear it for the caller's next call */
  return tpc_error(NULL, TPC_ERR_CUDA, "%s: %s failed: %s", fn, what, cudaGetErrorString(err));
}

}  // namespace

extern "C" const char* tpc_quant_path_name(tpc_quant_path_t path) {
  switch (path) {
    case TPC_QUANT_PATH_AUTO: return "auto";
    case TPC_QUANT_PATH_WARP: return "warp";
    case TPC_QUANT_PATH_BLOCK: return "block";
    case TPC_QUANT_PATH_SMEM: return "smem";
    case TPC_QUANT_PATH_TWO_PASS: return "two-pass";
    default: return "invalid";
  }
}

extern "C" tpc_status_t tpc_quant_fp8_per_token_path(int64_t rows, int64_t hidden, tpc_dtype_t dtype,
                                                     tpc_quant_path_t* path) {
  const char* fn = "tpc_quant_fp8_per_token_path";
  if (!path) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: path is NULL", fn);
  tpc_status_t st = check_dtype(fn, dtype);
  if (st == TPC_SUCCESS) st = check_shape(fn, rows, hidden);
  if (st != TPC_SUCCESS) return st;
  DevInfo d;
  st = device_info(fn, &d);
  if (st != TPC_SUCCESS) return st;
  *path = choose_path(d, rows, (hidden + kVecElems - 1) / kVecElems);
  return TPC_SUCCESS;
}

extern "C" tpc_status_t tpc_quant_fp8_per_token_ex(void* q_out, float* scales, const void* x, int64_t rows,
                                                   int64_t hidden, int64_t x_stride, int64_t q_stride,
                                                   tpc_dtype_t dtype, tpc_quant_path_t path, cudaStream_t stream) {
  const char* fn = "tpc_quant_fp8_per_token";
  if ((int)path < 0 || (int)path >= TPC_NUM_QUANT_PATHS)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: path=%d is not a tpc_quant_path_t (0..%d)", fn, (int)path,
                     TPC_NUM_QUANT_PATHS - 1);
  tpc_status_t st = check_args(fn, q_out, scales, 1, x, rows, hidden, x_stride, q_stride, dtype);
  if (st != TPC_SUCCESS || rows == 0) return st;
  DevInfo d;
  st = device_info(fn, &d);
  if (st != TPC_SUCCESS) return st;
  const QuantArgs a = make_args(q_out, scales, x, rows, hidden, x_stride, q_stride);
  if (path == TPC_QUANT_PATH_AUTO) path = choose_path(d, rows, a.nvec);
  const char* why = path_refusal(d, path, a.nvec);
  if (why)
    return tpc_error(NULL, TPC_ERR_UNSUPPORTED, "%s: path %s cannot serve hidden=%lld: %s", fn, tpc_quant_path_name(path),
                     (long long)hidden, why);
  const int pdl = g_pdl && d.cc_major >= 9;
  const cudaError_t err = dtype == TPC_BFLOAT16 ? launch_per_token<__nv_bfloat16>(d, path, a, pdl, stream)
                                                : launch_per_token<__half>(d, path, a, pdl, stream);
  return launch_status(fn, err, tpc_quant_path_name(path));
}

extern "C" tpc_status_t tpc_quant_fp8_per_token(void* q_out, float* scales, const void* x, int64_t rows,
                                                int64_t hidden, int64_t x_stride, int64_t q_stride, tpc_dtype_t dtype,
                                                cudaStream_t stream) {
  return tpc_quant_fp8_per_token_ex(q_out, scales, x, rows, hidden, x_stride, q_stride, dtype, TPC_QUANT_PATH_AUTO,
                                    stream);
}

extern "C" tpc_status_t tpc_quant_fp8_static(void* q_out, const void* x, const float* scale, int64_t rows,
                                             int64_t hidden, int64_t x_stride, int64_t q_stride, tpc_dtype_t dtype,
                                             cudaStream_t stream) {
  const char* fn = "tpc_quant_fp8_static";
  tpc_status_t st = check_args(fn, q_out, NULL, 0, x, rows, hidden, x_stride, q_stride, dtype);
  if (st != TPC_SUCCESS) return st;
  if (!scale) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: scale is NULL", fn);
  if ((uintptr_t)scale % 4 != 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: scale=%p is not 4-byte aligned", fn, (const void*)scale);
  if (rows == 0) return TPC_SUCCESS;
  DevInfo d;
  st = device_info(fn, &d);
  if (st != TPC_SUCCESS) return st;
  const QuantArgs a = make_args(q_out, NULL, x, rows, hidden, x_stride, q_stride);
  const int threads = a.nvec >= kStaticThreads ? kStaticThreads : (int)((a.nvec + 31) / 32 * 32);
  const int64_t gx = (a.nvec + threads - 1) / threads;
  if (gx > INT32_MAX) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: hidden=%lld is too large", fn, (long long)hidden);
  const unsigned gy = (unsigned)(rows < 65535 ? rows : 65535);
  cudaLaunchAttribute attr[1];
  const int pdl = g_pdl && d.cc_major >= 9;
  const cudaLaunchConfig_t cfg =
      tpc::pdl_launch_config(dim3((unsigned)gx, gy), dim3((unsigned)threads), 0, stream, pdl, attr);
  const cudaError_t err = dtype == TPC_BFLOAT16 ? cudaLaunchKernelEx(&cfg, quant_static_kernel<__nv_bfloat16>, a, scale)
                                                : cudaLaunchKernelEx(&cfg, quant_static_kernel<__half>, a, scale);
  return launch_status(fn, err, "static quantization kernel");
}
