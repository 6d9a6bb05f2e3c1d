/* norm.cu — RMSNorm, fused residual-add + RMSNorm, and the per-head / across-heads QK-RMSNorms
 * (include/tpcomm/kernels.h), with their extern "C" launchers.
 *
 * Math (every kernel): fp32 sum of squares of the row as stored, r = rsqrtf(sum * (1/n) + eps),
 * y = (x * r) * w in fp32, rounded once to the dtype. The fused kernel rounds x + residual to the dtype
 * first, stores it to residual and normalizes that rounded value, so its x equals tpc_rmsnorm(residual).
 *
 * Data movement: each thread owns "vectors" of 8 consecutive elements (16 bytes), held packed in a uint4
 * and unpacked to fp32 only while summing and scaling, so live state is 4 registers per vector. On the
 * fast path (VEC = 8) a vector is one 16-byte load or store; when a pointer is not 16-byte aligned or a
 * stride / width is not a multiple of 8 elements, the same kernels run with VEC = 1 (element-wise
 * accesses, tails masked per element). Weights go through the read-only path (ld.global.nc).
 *
 * norm_rows_kernel (tpc_rmsnorm, tpc_fused_add_rmsnorm, tpc_qk_rmsnorm_across_heads): up to two
 * segments of rows (q rows and k rows), each with its own pointers, width and weight; the grid is split
 * so a block only ever holds rows of one segment. A row is handled by a group of `group` threads that
 * hold ITEMS vectors each (vector j of lane l covers elements (j*group + l)*8 ..+8, so every load
 * instruction of a group is contiguous). ITEMS is 1, 2, 4 or 8 by width and row count (row_items; all
 * loads of a row are issued before the first use); group is a power of two <= 32 (sub-warp rows, shuffle
 * reduction only) or a multiple of 32 (warp shuffles, then the warps' partials through 2x32 floats of shared
 * memory, double buffered by iteration so one __syncthreads per row suffices). Block = 256 threads for narrow rows
 * (several rows per block), or `group` threads (up to 1024) for wide ones; grid = one block per
 * rows_per_block rows of each segment (a grid-stride loop covers grids beyond 2^31-1 blocks).
 *
 * qk_per_head_kernel (tpc_qk_rmsnorm_per_head): one group of D/8 threads (8, 16, 32) per head row, one
 * vector per thread, one row per group and no loop; reduction by xor shuffles inside the group. Rows are
 * (token, head) pairs over q heads then k heads of each token, so consecutive groups touch consecutive
 * memory; 256 threads per block, one block per 256/(D/8) rows. Every thread reaches the shuffles (rows past
 * the end are masked, not returned), so full-warp shuffles are legal. This plain grid replaced a persistent
 * grid-stride loop with 2 rows per group (and a pipelined form for large inputs): few registers (26-32) give
 * full occupancy, and the block scheduler balances the tail (numbers at launch_per_head_typed).
 *
 * Registers (ptxas, sm_90a, CUDA 13.0; no spills, no stack): norm_rows_kernel 32 with ITEMS 1-2 (full
 * occupancy; 32-44 fused), 60-64 with ITEMS 4-8 (bounded by __launch_bounds__(1024); half the threads per SM,
 * measured faster for wide rows anyway, see row_items); qk_per_head_kernel 26-32 (8 blocks of 256 per SM).
 *
 * PDL (sm_90+, launched with programmatic stream serialization unless TPCOMM_PDL=0): each block first forms
 * its first work item's addresses (RowWork; the per-head kernel likewise) and prefetches its rows into L2
 * (prefetch.global.L2: a hint that reads nothing into
 * registers or L1, so it cannot observe data the previous kernel is still writing: those stores land in
 * L2 and update the line), then griddepcontrol.wait before the first global read, then at once
 * griddepcontrol.launch_dependents, so the next kernel's blocks are scheduled as ours leave and sit
 * prefetching and waiting instead of being launched after our last block (correctness never depends on
 * the trigger: a dependent's wait covers this grid's completion and memory flush). Only the first wave
 * of a grid prefetches (later blocks start after the wait is satisfied). Measured slower with the
 * prefetch, so without it: the fused kernel (1024 x 4096: 10.1 -> 11.4 us). The per-head kernel prefetches
 * at every head_dim (its earlier persistent form skipped head_dim 64, measured slower there; the plain
 * grid with first-wave prefetch measured 6.30 -> 6.01 us at head_dim 64, 1024 tokens).
 *
 * Relies on: no shared memory beyond 256 bytes; no local memory (build with -Xptxas=-warn-spills); the
 * launchers validating every argument before any CUDA call, sizes below the limits in kernels.h, and the
 * current device being the device of the buffers and the stream. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include <atomic>

#include <cuda_runtime_api.h>

#include "tpcomm/kernels.h"

extern "C" {        /* the library's internal C headers (no guards of their own); system headers come first */
#include "checks.h" /* TPC_CHECK, and debug.h: tpc_error */
#include "param.h"  /* tpc_param_resolve(TPC_P_PDL) */
}
#include "pdl.cuh"

namespace {

/* ---- elements: 8 per uint4, element 2i in the low half of word i ----------------------------------- */
template <typename T>
struct Cvt;
/* lo/hi unpack for the sum of squares; lo2/hi2 give the same values through other instructions for the
 * scaling, so the compiler cannot keep the first unpack alive across the reduction (registers). */
template <>
struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float lo(uint32_t w) { return __uint_as_float(w << 16); }
  static __device__ __forceinline__ float hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }
  static __device__ __forceinline__ float lo2(uint32_t w) { return __uint_as_float(__byte_perm(w, 0u, 0x1044)); }
  static __device__ __forceinline__ float hi2(uint32_t w) { return __uint_as_float(__byte_perm(w, 0u, 0x3244)); }
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b); /* .x = a (low), .y = b (high) */
    return (uint32_t)__bfloat16_as_ushort(h.x) | ((uint32_t)__bfloat16_as_ushort(h.y) << 16);
  }
};
template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float lo(uint32_t w) {
    return __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
  }
  static __device__ __forceinline__ float hi(uint32_t w) {
    return __half2float(__ushort_as_half((unsigned short)(w >> 16)));
  }
  static __device__ __forceinline__ float lo2(uint32_t w) { return lo(w); }
  static __device__ __forceinline__ float hi2(uint32_t w) { return hi(w); }
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return (uint32_t)__half_as_ushort(h.x) | ((uint32_t)__half_as_ushort(h.y) << 16);
  }
};

__device__ __forceinline__ uint4 select4(bool c, const uint4& a, const uint4& b) {
  return make_uint4(c ? a.x : b.x, c ? a.y : b.y, c ? a.z : b.z, c ? a.w : b.w);
}
__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

template <typename T>
__device__ __forceinline__ float sum_squares8(const uint4& v) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float a = Cvt<T>::lo(word(v, i)), b = Cvt<T>::hi(word(v, i));
    s = fmaf(a, a, s);
    s = fmaf(b, b, s);
  }
  return s;
}

/* (x * r) * w per element, rounded once */
template <typename T>
__device__ __forceinline__ uint4 scale8(const uint4& x, const uint4& w, float r) {
  uint32_t o[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint32_t xw = word(x, i), ww = word(w, i);
    o[i] = Cvt<T>::pack(Cvt<T>::lo2(xw) * r * Cvt<T>::lo2(ww), Cvt<T>::hi2(xw) * r * Cvt<T>::hi2(ww));
  }
  return make_uint4(o[0], o[1], o[2], o[3]);
}

/* x + y per element in fp32, rounded once */
template <typename T>
__device__ __forceinline__ uint4 add8(const uint4& x, const uint4& y) {
  uint32_t o[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint32_t a = word(x, i), b = word(y, i);
    o[i] = Cvt<T>::pack(Cvt<T>::lo(a) + Cvt<T>::lo(b), Cvt<T>::hi(a) + Cvt<T>::hi(b));
  }
  return make_uint4(o[0], o[1], o[2], o[3]);
}

/* ---- memory: 8 elements from p; `valid` elements exist from p on (VEC == 8: callers pass >= 8) ------- */
template <int VEC>
__device__ __forceinline__ uint4 ld8(const uint16_t* p, int valid) {
  if constexpr (VEC == 8) {
    return *reinterpret_cast<const uint4*>(p);
  } else {
    uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int i = 0; i < 8; i++)
      if (i < valid) w[i >> 1] |= (uint32_t)p[i] << (16 * (i & 1));
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
}
/* the same through the read-only data path, for weights */
template <int VEC>
__device__ __forceinline__ uint4 ldg8(const uint16_t* p, int valid) {
  if constexpr (VEC == 8) {
    return __ldg(reinterpret_cast<const uint4*>(p));
  } else {
    uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int i = 0; i < 8; i++)
      if (i < valid) w[i >> 1] |= (uint32_t)__ldg(reinterpret_cast<const unsigned short*>(p) + i) << (16 * (i & 1));
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
}
template <int VEC>
__device__ __forceinline__ void st8(uint16_t* p, const uint4& v, int valid) {
  if constexpr (VEC == 8) {
    *reinterpret_cast<uint4*>(p) = v;
  } else {
#pragma unroll
    for (int i = 0; i < 8; i++)
      if (i < valid) p[i] = (uint16_t)(word(v, i >> 1) >> (16 * (i & 1)));
  }
}

using tpc::pdl_trigger; /* kernels/pdl.cuh */
using tpc::pdl_wait;

/* Pulls the 16 bytes at p (VEC 8) or the 8 elements from p (VEC 1, may straddle two sectors) into L2. Only a
 * hint, and safe before griddepcontrol.wait: L2 is where the previous grid's stores land (a prefetched line
 * is updated by them, as are lines a remote GPU writes), and L1 is not filled. */
template <int VEC>
__device__ __forceinline__ void prefetch_l2(const uint16_t* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
  if constexpr (VEC != 8) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + 7));
}

/* ---- rows --------------------------------------------------------------------------------------------- */
struct RowSeg {
  const uint16_t* in; /* rows read */
  uint16_t* out;      /* normalized rows written (== in for the in-place calls) */
  uint16_t* res;      /* fused: the residual, read and written; else unused */
  const uint16_t* w;  /* weight [hidden] */
  int64_t rows, in_stride, out_stride, res_stride;
  int64_t blocks;     /* blocks of this segment: ceil(rows / rows_per_block) */
  int hidden;         /* elements per row, <= TPC_NORM_MAX_HIDDEN */
  int group;          /* threads per row: a power of two <= 32, or a multiple of 32 */
  int rows_per_block; /* blockDim.x / group */
  float inv_hidden;
};
struct RowArgs {
  RowSeg seg[2];
  int64_t total_blocks; /* seg[0].blocks + seg[1].blocks (seg[1].blocks 0 when unused) */
  int64_t prefetch_blocks; /* blocks below this (the first wave) prefetch their first rows before the PDL wait;
                              0: none (the fused kernel: measured slower with it) */
  float eps;
};

/* Field by field, so the kernel never indexes its parameter array dynamically (no local copy). */
__device__ __forceinline__ RowSeg pick_seg(const RowArgs& a, bool second) {
  RowSeg s;
  s.in = second ? a.seg[1].in : a.seg[0].in;
  s.out = second ? a.seg[1].out : a.seg[0].out;
  s.res = second ? a.seg[1].res : a.seg[0].res;
  s.w = second ? a.seg[1].w : a.seg[0].w;
  s.rows = second ? a.seg[1].rows : a.seg[0].rows;
  s.in_stride = second ? a.seg[1].in_stride : a.seg[0].in_stride;
  s.out_stride = second ? a.seg[1].out_stride : a.seg[0].out_stride;
  s.res_stride = second ? a.seg[1].res_stride : a.seg[0].res_stride;
  s.blocks = second ? a.seg[1].blocks : a.seg[0].blocks;
  s.hidden = second ? a.seg[1].hidden : a.seg[0].hidden;
  s.group = second ? a.seg[1].group : a.seg[0].group;
  s.rows_per_block = second ? a.seg[1].rows_per_block : a.seg[0].rows_per_block;
  s.inv_hidden = second ? a.seg[1].inv_hidden : a.seg[0].inv_hidden;
  return s;
}

/* What a thread needs of work item (block) blk: its row's addresses and the segment's shape. It depends only on
 * the launch, so the first item's is formed before the PDL wait, while the previous kernel still runs: formed
 * after it (the division by group and the 64-bit row arithmetic, ~80 instructions a thread, issued by every
 * resident warp) it delayed the first loads. Same-call A/B, graph, bf16 (perf-log.md, 2026-12-04): RMSNorm
 * 1 x 4096 1.53 -> 1.30 us, 1024 x 4096 5.27 -> 5.04; fused add 1 x 4096 1.94 -> 1.39, 1024 x 4096 10.2 -> 9.55;
 * across heads 1 x (8192 + 8192) 1.70 -> 1.49; within 0.5 % or better at the large shapes. */
struct RowWork {
  const uint16_t* in;
  uint16_t* out;
  uint16_t* res;
  const uint16_t* w;
  int hidden, group, lane, grp, rows_per_block;
  float inv_hidden;
  bool active;
};
template <bool FUSED>
__device__ __forceinline__ RowWork row_work(const RowArgs& a, int64_t blk) {
  const bool second = blk >= a.seg[0].blocks;
  const RowSeg s = pick_seg(a, second);
  const int64_t b = second ? blk - a.seg[0].blocks : blk;
  RowWork r;
  r.grp = (int)threadIdx.x / s.group;
  r.lane = (int)threadIdx.x - r.grp * s.group;
  const int64_t row = b * s.rows_per_block + r.grp;
  r.active = r.grp < s.rows_per_block && row < s.rows;
  const int64_t rr = r.active ? row : 0; /* inactive threads form no out-of-range address */
  r.in = s.in + rr * s.in_stride;
  r.out = s.out + rr * s.out_stride;
  r.res = FUSED ? s.res + rr * s.res_stride : nullptr;
  r.w = s.w;
  r.hidden = s.hidden;
  r.group = s.group;
  r.rows_per_block = s.rows_per_block;
  r.inv_hidden = s.inv_hidden;
  return r;
}

template <typename T, int VEC, int ITEMS, bool FUSED>
__global__ void __launch_bounds__(1024) norm_rows_kernel(const RowArgs a) {
  /* wide rows keep the weights until after the reduction instead of prefetching them (registers) */
  constexpr bool kPrefetchWeight = ITEMS <= 4;
  /* fused: vectors of residual loaded at once (element-wise loads hold 8 registers per vector) */
  constexpr int kFusedChunk = (VEC == 8 ? 4 : 2) / (ITEMS == 8 ? 2 : 1);
  __shared__ float s_part[2][32];
  int64_t blk = blockIdx.x;
  RowWork s = row_work<FUSED>(a, blk);
  if (VEC == 8 && blk < a.prefetch_blocks && blk < a.total_blocks && s.active) {
#pragma unroll
    for (int j = 0; j < ITEMS; j++) {
      const int e = (j * s.group + s.lane) * 8;
      if (e < s.hidden) {
        prefetch_l2<VEC>(s.in + e);
        if constexpr (FUSED) prefetch_l2<VEC>(s.res + e);
      }
    }
  }
  pdl_wait();
  pdl_trigger();
  for (int iter = 0; blk < a.total_blocks; blk += gridDim.x, iter++) {
    if (iter > 0) s = row_work<FUSED>(a, blk);
    const int grp = s.grp, lane = s.lane;
    const bool active = s.active;

    uint4 x[ITEMS], w[ITEMS];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < ITEMS; j++) x[j] = w[j] = make_uint4(0u, 0u, 0u, 0u);
    if (active) {
#pragma unroll
      for (int j = 0; j < ITEMS; j++) {
        const int e = (j * s.group + lane) * 8;
        if (e < s.hidden) x[j] = ld8<VEC>(s.in + e, s.hidden - e);
      }
      if constexpr (FUSED) {
        /* the residual in chunks of CH vectors: x[] and one chunk of it live at a time (registers) */
        constexpr int CH = ITEMS < kFusedChunk ? ITEMS : kFusedChunk;
        uint16_t* res = s.res;
#pragma unroll
        for (int c = 0; c < ITEMS; c += CH) {
          uint4 r[CH];
#pragma unroll
          for (int j = c; j < c + CH; j++) {
            const int e = (j * s.group + lane) * 8;
            r[j - c] = make_uint4(0u, 0u, 0u, 0u);
            if (e < s.hidden) r[j - c] = ld8<VEC>(res + e, s.hidden - e);
          }
#pragma unroll
          for (int j = c; j < c + CH; j++) {
            const int e = (j * s.group + lane) * 8;
            if (e < s.hidden) {
              x[j] = add8<T>(x[j], r[j - c]);
              st8<VEC>(res + e, x[j], s.hidden - e);
            }
          }
        }
      }
      if constexpr (kPrefetchWeight) {
#pragma unroll
        for (int j = 0; j < ITEMS; j++) {
          const int e = (j * s.group + lane) * 8;
          if (e < s.hidden) w[j] = ldg8<VEC>(s.w + e, s.hidden - e);
        }
      }
#pragma unroll
      for (int j = 0; j < ITEMS; j++) ss += sum_squares8<T>(x[j]);
    }

    /* sum over the group: xor shuffles inside a warp (groups are aligned to their size), then the warps */
    const int width = s.group < 32 ? s.group : 32;
    for (int o = width >> 1; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (s.group > 32) { /* uniform in the block */
      float* part = s_part[iter & 1];
      if ((threadIdx.x & 31u) == 0) part[threadIdx.x >> 5] = ss;
      __syncthreads();
      ss = 0.f;
      if (grp < s.rows_per_block) {
        const int nw = s.group >> 5;
        for (int i = 0; i < nw; i++) ss += part[grp * nw + i];
      }
    }

    if (active) {
      const float r = rsqrtf(fmaf(ss, s.inv_hidden, a.eps));
      uint16_t* out = s.out;
#pragma unroll
      for (int j = 0; j < ITEMS; j++) {
        const int e = (j * s.group + lane) * 8;
        if (e < s.hidden) {
          if constexpr (!kPrefetchWeight) w[j] = ldg8<VEC>(s.w + e, s.hidden - e);
          st8<VEC>(out + e, scale8<T>(x[j], w[j], r), s.hidden - e);
        }
      }
    }
  }
}

/* ---- per head ----------------------------------------------------------------------------------------- */
constexpr int kHeadBlock = 256;

struct HeadArgs {
  uint16_t* q;
  uint16_t* k;
  const uint16_t* wq;
  const uint16_t* wk;
  int64_t q_stride, k_stride;
  uint32_t total;           /* tokens * heads head rows, < 2^31 */
  uint32_t q_heads, heads;  /* heads = q_heads + kv_heads */
  uint32_t prefetch_blocks; /* blocks of the first wave (SMs x resident blocks): only they prefetch */
  float eps, inv_d;
};

/* One head row per group of D/8 threads, one group per row, no loop: block b holds rows b*GPB .. +GPB-1
 * (a contiguous 4 KiB of q or k at head_dim 128 when the heads of a token are adjacent). */
template <typename T, int VEC, int D>
__global__ void __launch_bounds__(kHeadBlock) qk_per_head_kernel(const HeadArgs a) {
  constexpr int G = D / 8;            /* threads per head row */
  constexpr int GPB = kHeadBlock / G; /* rows per block */
  const int lane = (int)threadIdx.x % G;
  const uint32_t item = blockIdx.x * GPB + threadIdx.x / G; /* < 2^31 + GPB: no overflow */
  const uint32_t tok = item / a.heads;
  const uint32_t head = item - tok * a.heads;
  const bool ok = item < a.total;
  const bool isq = head < a.q_heads;
  uint16_t* const p = (isq ? a.q : a.k) + (int64_t)tok * (isq ? a.q_stride : a.k_stride) +
                      (int)((isq ? head : head - a.q_heads) * D + lane * 8);
  /* later waves start after the previous kernel has finished: a prefetch there only doubles the requests
   * (measured: 8192 tokens 74.7 -> 73.5 us with the first wave only) */
  if (ok && blockIdx.x < a.prefetch_blocks) prefetch_l2<VEC>(p);
  pdl_wait();
  pdl_trigger();
  const uint4 wq = ldg8<VEC>(a.wq + lane * 8, 8);
  const uint4 wk = ldg8<VEC>(a.wk + lane * 8, 8);
  const uint4 x = ok ? ld8<VEC>(p, 8) : make_uint4(0u, 0u, 0u, 0u);
  float ss = sum_squares8<T>(x);
#pragma unroll
  for (int o = G >> 1; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (ok) st8<VEC>(p, scale8<T>(x, select4(isq, wq, wk), rsqrtf(fmaf(ss, a.inv_d, a.eps))), 8);
}

/* ---- host side ---------------------------------------------------------------------------------------- */
constexpr int kMaxDevices = 64;

/* Per-device attributes, cached (the first call per device queries). */
struct DevInfo {
  int device, sms, major;
};
std::atomic<int> g_sms[kMaxDevices];
std::atomic<int> g_major[kMaxDevices];

tpc_status_t cuda_fail(const char* fn, const char* call, cudaError_t err) {
  (void)cudaGetLastError(); /* clear a non-sticky error so later calls report their own */
  return tpc_error(NULL, TPC_ERR_CUDA, "%s: %s failed: %s (%s)", fn, call, cudaGetErrorString(err),
                   cudaGetErrorName(err));
}

tpc_status_t device_info(const char* fn, DevInfo* d) {
  cudaError_t err = cudaGetDevice(&d->device);
  if (err != cudaSuccess) return cuda_fail(fn, "cudaGetDevice", err);
  const bool cached = d->device >= 0 && d->device < kMaxDevices;
  if (cached && g_sms[d->device].load(std::memory_order_relaxed) > 0) {
    d->sms = g_sms[d->device].load(std::memory_order_relaxed);
    d->major = g_major[d->device].load(std::memory_order_relaxed);
    return TPC_SUCCESS;
  }
  err = cudaDeviceGetAttribute(&d->sms, cudaDevAttrMultiProcessorCount, d->device);
  if (err != cudaSuccess) return cuda_fail(fn, "cudaDeviceGetAttribute(MultiProcessorCount)", err);
  err = cudaDeviceGetAttribute(&d->major, cudaDevAttrComputeCapabilityMajor, d->device);
  if (err != cudaSuccess) return cuda_fail(fn, "cudaDeviceGetAttribute(ComputeCapabilityMajor)", err);
  if (cached) {
    g_major[d->device].store(d->major, std::memory_order_relaxed);
    g_sms[d->device].store(d->sms, std::memory_order_relaxed);
  }
  return TPC_SUCCESS;
}

/* Whether to launch with PDL: TPCOMM_PDL (default 1; a malformed value is an error, reported before any CUDA
 * call) and then sm_90+. */
tpc_status_t pdl_wanted(bool* pdl) {
  int64_t v = 1;
  TPC_CHECK(tpc_param_resolve(TPC_P_PDL, TPC_CONFIG_UNDEF, &v));
  *pdl = v != 0;
  return TPC_SUCCESS;
}

/* The device and whether this launch uses PDL; the first CUDA calls of every launcher. */
tpc_status_t launch_setup(const char* fn, DevInfo* d, bool* pdl) {
  TPC_CHECK(pdl_wanted(pdl));
  TPC_CHECK(device_info(fn, d));
  *pdl = *pdl && d->major >= 9;
  return TPC_SUCCESS;
}

template <typename Kernel, typename Args>
tpc_status_t launch(const char* fn, Kernel kernel, int64_t grid, int block, bool pdl, cudaStream_t stream,
                    const Args& args) {
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg = tpc::pdl_launch_config(dim3((unsigned)grid), dim3((unsigned)block), 0, stream, pdl, attr);
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, args);
  if (err != cudaSuccess) return cuda_fail(fn, "cudaLaunchKernelEx", err);
  return TPC_SUCCESS;
}

/* Resident blocks per SM of Kernel at `block` threads on device d: the first wave is sms x this. */
template <auto Kernel>
tpc_status_t resident_blocks(const char* fn, int block, const DevInfo& d, int* occ) {
  const cudaError_t err = tpc::resident_blocks_per_sm<Kernel>(d.device, block, occ);
  if (err != cudaSuccess) return cuda_fail(fn, "cudaOccupancyMaxActiveBlocksPerMultiprocessor", err);
  return TPC_SUCCESS;
}

/* ---- argument checks (no CUDA calls) ------------------------------------------------------------------ */
tpc_status_t check_dtype(const char* fn, tpc_dtype_t dtype) {
  if ((int)dtype < 0 || (int)dtype >= (int)TPC_NUM_DTYPES)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: dtype=%d is not a tpc_dtype_t (0..%d)", fn, (int)dtype,
                     (int)TPC_NUM_DTYPES - 1);
  if (dtype == TPC_FLOAT32)
    return tpc_error(NULL, TPC_ERR_UNSUPPORTED, "%s: dtype=%d (float32) is not supported; use bfloat16 or float16", fn,
                     (int)dtype);
  return TPC_SUCCESS;
}

tpc_status_t check_eps(const char* fn, float eps) {
  if (!isfinite(eps) || eps < 0.f)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: eps=%g must be finite and >= 0", fn, (double)eps);
  return TPC_SUCCESS;
}

tpc_status_t check_ptr(const char* fn, const char* name, const void* p) {
  if (p == NULL) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, name);
  if ((uintptr_t)p % 2 != 0)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: %s=%p is not aligned to the 2-byte element size", fn, name,
                     p);
  return TPC_SUCCESS;
}

tpc_status_t check_positive(const char* fn, const char* name, int64_t v) {
  if (v <= 0) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: %s=%lld must be > 0", fn, name, (long long)v);
  return TPC_SUCCESS;
}

/* stride >= width, and the last row's end fits in the address space (as bytes in int64) */
tpc_status_t check_stride(const char* fn, const char* name, int64_t stride, int64_t width, const char* width_name,
                          int64_t rows) {
  if (stride < width)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: %s=%lld is smaller than %s=%lld", fn, name, (long long)stride,
                     width_name, (long long)width);
  const int64_t limit = INT64_MAX / 4;
  if (rows - 1 > (limit - width) / stride)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: %lld rows of %s=%lld overflow the address space", fn,
                     (long long)rows, name, (long long)stride);
  return TPC_SUCCESS;
}

tpc_status_t check_hidden(const char* fn, const char* name, int64_t hidden) {
  TPC_CHECK(check_positive(fn, name, hidden));
  if (hidden > TPC_NORM_MAX_HIDDEN)
    return tpc_error(NULL, TPC_ERR_UNSUPPORTED, "%s: %s=%lld exceeds the largest supported row of %d elements", fn,
                     name, (long long)hidden, TPC_NORM_MAX_HIDDEN);
  return TPC_SUCCESS;
}

/* The checks tpc_rmsnorm and tpc_fused_add_rmsnorm share, in the order their messages are tested: two row
 * buffers (a, b) with their strides, the weight, dtype, rows, hidden, eps. */
tpc_status_t check_row_args(const char* fn, const char* a_name, const void* a, const char* b_name, const void* b,
                            const void* weight, tpc_dtype_t dtype, int64_t rows, int64_t hidden,
                            const char* a_stride_name, int64_t a_stride, const char* b_stride_name, int64_t b_stride,
                            float eps) {
  TPC_CHECK(check_ptr(fn, a_name, a));
  TPC_CHECK(check_ptr(fn, b_name, b));
  TPC_CHECK(check_ptr(fn, "weight", weight));
  TPC_CHECK(check_dtype(fn, dtype));
  TPC_CHECK(check_positive(fn, "rows", rows));
  TPC_CHECK(check_hidden(fn, "hidden", hidden));
  TPC_CHECK(check_stride(fn, a_stride_name, a_stride, hidden, "hidden", rows));
  TPC_CHECK(check_stride(fn, b_stride_name, b_stride, hidden, "hidden", rows));
  return check_eps(fn, eps);
}

/* The first checks of both QK-norm launchers, in their tested order: q, k, their weights, dtype, tokens. */
tpc_status_t check_qk_args(const char* fn, const void* q, const void* k, const void* q_weight, const void* k_weight,
                           tpc_dtype_t dtype, int64_t tokens) {
  TPC_CHECK(check_ptr(fn, "q", q));
  TPC_CHECK(check_ptr(fn, "k", k));
  TPC_CHECK(check_ptr(fn, "q_weight", q_weight));
  TPC_CHECK(check_ptr(fn, "k_weight", k_weight));
  TPC_CHECK(check_dtype(fn, dtype));
  return check_positive(fn, "tokens", tokens);
}

bool aligned16(const void* p) { return (uintptr_t)p % 16 == 0; }

/* ---- row launches ------------------------------------------------------------------------------------- */
/* Vectors per thread for the widest row (nvec vectors) of a launch of `rows` rows at most per segment. Rows up to
 * 1024 elements: one warp (or less) per row, no shared memory. Wider rows: 4 vectors per thread (64 registers:
 * half the threads per SM, but fewer threads to reduce a row over), 8 for the normalizing kernel above 8192
 * elements when there are at least as many rows as SMs, and always 8 above 32768 so a row fits one block of
 * <= 1024 threads; with fewer rows than SMs (latency-bound: more threads per row) the fused kernel keeps 2 up
 * to 8192 elements, and RMSNorm takes 2 from 4 rows of 1025-4096 elements (below). Measured on H200, graph,
 * us (perf-log.md, fifth round; 2 / 4 / 8 vectors a thread):
 * RMSNorm 1024 x 4096 5.56 / 5.29 / 6.46, 8192 x 8192 68.6 / 64.6 / 67.1, 4096 x 16384 83.5 / 69.7 / 67.1,
 * 16384^2 318.6 / 269.2 / 261.1; across heads 2048 x (8192 + 8192) 36.0 / 33.9 / 38.7, 1 x (8192 + 8192)
 * 1.98 / 1.70; fused 1 x 4096 1.84 / 2.09, 1024 x 4096 10.98 / 10.17, 16384^2 571 / 527 / 534. */
int row_items(int64_t nvec, bool fused, bool one_segment, int64_t rows, int sms) {
  if (nvec <= 32) return 1;
  if (nvec <= 64) return 2;
  if (nvec > 4096) return 8;
  const bool few_rows = rows < sms; /* decode sizes keep the earlier choice (2 / 4) where unmeasured or slower */
  if (fused && nvec > 128 && nvec <= 1024 && few_rows) return 2;
  /* RMSNorm, 4 to SMs - 1 rows of 1025-4096 elements: 2 (graph, H200, after RowWork: 4 x 4096 1.53 -> 1.41 us,
   * 16 x 4096 1.59 -> 1.43, 64 x 4096 1.76 -> 1.65, 100 x 4096 1.83 -> 1.80, 16 / 64 x 2048 1.52 / 1.62 -> 1.39 /
   * 1.48); one row, and rows of 8192, stay at 4 (1 x 4096 1.32 -> 1.38, 16 x 8192 1.70 -> 1.90 with 2). Not for
   * the across-heads norm (two segments): not measured there */
  if (!fused && one_segment && few_rows && rows >= 4 && nvec > 128 && nvec <= 512) return 2;
  if (!fused && nvec > 1024 && !few_rows) return 8;
  return 4;
}

/* threads per row for a row of nvec vectors at `items` vectors per thread */
int row_group(int64_t nvec, int items) {
  const int need = (int)((nvec + items - 1) / items);
  if (need <= 32) {
    int g = 1;
    while (g < need) g <<= 1;
    return g;
  }
  return (need + 31) / 32 * 32;
}

/* Fills group, rows_per_block and blocks of each segment; returns the block size, *items the vectors per
 * thread (set by the widest segment). */
int plan_rows(RowArgs* a, int nseg, bool fused, int sms, int* items_out) {
  int64_t nvec_max = 0, rows_max = 0;
  for (int i = 0; i < nseg; i++) {
    const int64_t nvec = (a->seg[i].hidden + 7) / 8;
    if (nvec > nvec_max) nvec_max = nvec;
    if (a->seg[i].rows > rows_max) rows_max = a->seg[i].rows;
  }
  const int items = row_items(nvec_max, fused, nseg == 1, rows_max, sms);
  *items_out = items;
  int block = 32;
  for (int i = 0; i < nseg; i++) {
    RowSeg& s = a->seg[i];
    s.group = row_group((s.hidden + 7) / 8, items);
    const int bd = s.group >= 256 ? s.group : (256 / s.group) * s.group;
    if (bd > block) block = bd;
  }
  a->total_blocks = 0;
  for (int i = 0; i < 2; i++) {
    RowSeg& s = a->seg[i];
    if (i >= nseg) {
      s.blocks = 0;
      continue;
    }
    s.rows_per_block = block / s.group;
    s.blocks = (s.rows + s.rows_per_block - 1) / s.rows_per_block;
    s.inv_hidden = 1.0f / (float)s.hidden;
    a->total_blocks += s.blocks;
  }
  return block;
}

/* One segment of rows as the public launchers describe it; plan_rows fills the rest. */
RowSeg row_seg(const void* in, void* out, void* res, const void* w, int64_t rows, int64_t hidden, int64_t in_stride,
               int64_t out_stride, int64_t res_stride) {
  RowSeg s = {};
  s.in = (const uint16_t*)in;
  s.out = (uint16_t*)out;
  s.res = (uint16_t*)res;
  s.w = (const uint16_t*)w;
  s.rows = rows;
  s.hidden = (int)hidden;
  s.in_stride = in_stride;
  s.out_stride = out_stride;
  s.res_stride = res_stride;
  return s;
}

/* One row kernel: the blocks of its first wave (SMs x resident blocks, queried: the ITEMS 4-8 kernels hold 60-64
 * registers a thread, so half as many threads as the 32-register ones) prefetch their first rows before the PDL
 * wait; later blocks would only add traffic while the first wave streams. The fused kernel prefetches nothing
 * (measured slower with it). */
template <typename T, int VEC, int ITEMS, bool FUSED>
tpc_status_t launch_rows_kernel(const char* fn, RowArgs a, int block, const DevInfo& d, bool pdl, cudaStream_t stream) {
  const auto kernel = norm_rows_kernel<T, VEC, ITEMS, FUSED>;
  a.prefetch_blocks = 0;
  if (!FUSED && VEC == 8) {
    int occ = 0;
    TPC_CHECK((resident_blocks<norm_rows_kernel<T, VEC, ITEMS, FUSED>>(fn, block, d, &occ)));
    a.prefetch_blocks = (int64_t)d.sms * occ;
  }
  const int64_t grid = a.total_blocks < 0x7fffffffLL ? a.total_blocks : 0x7fffffffLL;
  return launch(fn, kernel, grid, block, pdl, stream, a);
}

template <typename T, int VEC, bool FUSED>
tpc_status_t launch_rows_items(const char* fn, const RowArgs& a, int items, int block, const DevInfo& d, bool pdl,
                               cudaStream_t stream) {
  switch (items) {
    case 1: return launch_rows_kernel<T, VEC, 1, FUSED>(fn, a, block, d, pdl, stream);
    case 2: return launch_rows_kernel<T, VEC, 2, FUSED>(fn, a, block, d, pdl, stream);
    case 4: return launch_rows_kernel<T, VEC, 4, FUSED>(fn, a, block, d, pdl, stream);
    case 8: return launch_rows_kernel<T, VEC, 8, FUSED>(fn, a, block, d, pdl, stream);
    default: return tpc_error(NULL, TPC_ERR_INTERNAL, "%s: no kernel for %d vectors per thread", fn, items);
  }
}

/* Plans and launches norm_rows_kernel for nseg filled segments (pointers, rows, strides, hidden). */
tpc_status_t launch_rows(const char* fn, RowArgs* a, int nseg, bool fused, bool vec8, tpc_dtype_t dtype,
                         cudaStream_t stream) {
  DevInfo d;
  bool pdl = false;
  TPC_CHECK(launch_setup(fn, &d, &pdl));
  int items = 0;
  const int block = plan_rows(a, nseg, fused, d.sms, &items);
  const bool bf16 = dtype == TPC_BFLOAT16;
  if (fused) {
    if (bf16)
      return vec8 ? launch_rows_items<__nv_bfloat16, 8, true>(fn, *a, items, block, d, pdl, stream)
                  : launch_rows_items<__nv_bfloat16, 1, true>(fn, *a, items, block, d, pdl, stream);
    return vec8 ? launch_rows_items<__half, 8, true>(fn, *a, items, block, d, pdl, stream)
                : launch_rows_items<__half, 1, true>(fn, *a, items, block, d, pdl, stream);
  }
  if (bf16)
    return vec8 ? launch_rows_items<__nv_bfloat16, 8, false>(fn, *a, items, block, d, pdl, stream)
                : launch_rows_items<__nv_bfloat16, 1, false>(fn, *a, items, block, d, pdl, stream);
  return vec8 ? launch_rows_items<__half, 8, false>(fn, *a, items, block, d, pdl, stream)
              : launch_rows_items<__half, 1, false>(fn, *a, items, block, d, pdl, stream);
}

/* ---- per-head launches -------------------------------------------------------------------------------- */
/* Grid: one block per GPB head rows (not a persistent grid: same-call A/B on H200, GQA 8 / 8 kv heads, bf16,
 * graph, against the persistent grid-stride loop with 2 rows per group and its pipelined form: 8192 tokens
 * 75.66 -> 72.96 us, 1024 tokens 10.56 -> 10.40, 1 token 0.93 -> 0.92, head_dim 64 6.30 -> 6.01, 256 20.66 ->
 * 19.50; docs/results/2026-12-04/ab_per_head.log). */
template <typename T, int VEC, int D>
tpc_status_t launch_per_head_typed(const char* fn, HeadArgs a, const DevInfo& d, bool pdl, cudaStream_t stream) {
  constexpr int GPB = kHeadBlock / (D / 8);
  int occ = 0;
  TPC_CHECK((resident_blocks<qk_per_head_kernel<T, VEC, D>>(fn, kHeadBlock, d, &occ)));
  a.prefetch_blocks = (uint32_t)d.sms * (uint32_t)occ;
  a.inv_d = 1.0f / (float)D;
  const int64_t grid = ((int64_t)a.total + GPB - 1) / GPB;
  return launch(fn, qk_per_head_kernel<T, VEC, D>, grid, kHeadBlock, pdl, stream, a);
}

template <typename T, int VEC>
tpc_status_t launch_per_head_dim(const char* fn, const HeadArgs& a, int head_dim, const DevInfo& d, bool pdl,
                                 cudaStream_t stream) {
  switch (head_dim) {
    case 64: return launch_per_head_typed<T, VEC, 64>(fn, a, d, pdl, stream);
    case 128: return launch_per_head_typed<T, VEC, 128>(fn, a, d, pdl, stream);
    case 256: return launch_per_head_typed<T, VEC, 256>(fn, a, d, pdl, stream);
    default: return tpc_error(NULL, TPC_ERR_INTERNAL, "%s: no kernel for head_dim=%d", fn, head_dim);
  }
}

}  // namespace

/* ---- the public launchers ----------------------------------------------------------------------------- */

extern "C" tpc_status_t tpc_rmsnorm(void* out, const void* in, const void* weight, int64_t rows, int64_t hidden,
                                    int64_t in_stride, int64_t out_stride, float eps, tpc_dtype_t dtype,
                                    cudaStream_t stream) {
  static const char fn[] = "tpc_rmsnorm";
  TPC_CHECK(check_row_args(fn, "out", out, "in", in, weight, dtype, rows, hidden, "in_stride", in_stride, "out_stride",
                           out_stride, eps));
  if (out == in && in_stride != out_stride)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT,
                     "%s: in place (out == in) needs in_stride == out_stride, got %lld and %lld", fn,
                     (long long)in_stride, (long long)out_stride);
  const bool vec8 = aligned16(out) && aligned16(in) && aligned16(weight) && hidden % 8 == 0 && in_stride % 8 == 0 &&
                    out_stride % 8 == 0;
  RowArgs a = {};
  a.eps = eps;
  a.seg[0] = row_seg(in, out, NULL, weight, rows, hidden, in_stride, out_stride, 0);
  return launch_rows(fn, &a, 1, false, vec8, dtype, stream);
}

extern "C" tpc_status_t tpc_fused_add_rmsnorm(void* x, void* residual, const void* weight, int64_t rows, int64_t hidden,
                                              int64_t x_stride, int64_t residual_stride, float eps, tpc_dtype_t dtype,
                                              cudaStream_t stream) {
  static const char fn[] = "tpc_fused_add_rmsnorm";
  TPC_CHECK(check_row_args(fn, "x", x, "residual", residual, weight, dtype, rows, hidden, "x_stride", x_stride,
                           "residual_stride", residual_stride, eps));
  if (x == residual)
    return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: x and residual are the same buffer (%p)", fn, x);
  const bool vec8 = aligned16(x) && aligned16(residual) && aligned16(weight) && hidden % 8 == 0 && x_stride % 8 == 0 &&
                    residual_stride % 8 == 0;
  RowArgs a = {};
  a.eps = eps;
  a.seg[0] = row_seg(x, x, residual, weight, rows, hidden, x_stride, x_stride, residual_stride);
  return launch_rows(fn, &a, 1, true, vec8, dtype, stream);
}

extern "C" tpc_status_t tpc_qk_rmsnorm_across_heads(void* q, void* k, const void* q_weight, const void* k_weight,
                                                    int64_t tokens, int64_t q_hidden, int64_t k_hidden,
                                                    int64_t q_stride, int64_t k_stride, float eps, tpc_dtype_t dtype,
                                                    cudaStream_t stream) {
  static const char fn[] = "tpc_qk_rmsnorm_across_heads";
  TPC_CHECK(check_qk_args(fn, q, k, q_weight, k_weight, dtype, tokens));
  TPC_CHECK(check_hidden(fn, "q_hidden", q_hidden));
  TPC_CHECK(check_hidden(fn, "k_hidden", k_hidden));
  TPC_CHECK(check_stride(fn, "q_stride", q_stride, q_hidden, "q_hidden", tokens));
  TPC_CHECK(check_stride(fn, "k_stride", k_stride, k_hidden, "k_hidden", tokens));
  TPC_CHECK(check_eps(fn, eps));
  if (q == k) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: q and k are the same buffer (%p)", fn, q);
  const bool vec8 = aligned16(q) && aligned16(k) && aligned16(q_weight) && aligned16(k_weight) && q_hidden % 8 == 0 &&
                    k_hidden % 8 == 0 && q_stride % 8 == 0 && k_stride % 8 == 0;
  RowArgs a = {};
  a.eps = eps;
  a.seg[0] = row_seg(q, q, NULL, q_weight, tokens, q_hidden, q_stride, q_stride, 0);
  a.seg[1] = row_seg(k, k, NULL, k_weight, tokens, k_hidden, k_stride, k_stride, 0);
  return launch_rows(fn, &a, 2, false, vec8, dtype, stream);
}

extern "C" tpc_status_t tpc_qk_rmsnorm_per_head(void* q, void* k, const void* q_weight, const void* k_weight,
                                                int64_t tokens, int q_heads, int kv_heads, int head_dim,
                                                int64_t q_stride, int64_t k_stride, float eps, tpc_dtype_t dtype,
                                                cudaStream_t stream) {
  static const char fn[] = "tpc_qk_rmsnorm_per_head";
  TPC_CHECK(check_qk_args(fn, q, k, q_weight, k_weight, dtype, tokens));
  TPC_CHECK(check_positive(fn, "q_heads", q_heads));
  TPC_CHECK(check_positive(fn, "kv_heads", kv_heads));
  if (head_dim != 64 && head_dim != 128 && head_dim != 256)
    return tpc_error(NULL, head_dim > 0 ? TPC_ERR_UNSUPPORTED : TPC_ERR_INVALID_ARGUMENT,
                     "%s: head_dim=%d is not 64, 128 or 256", fn, head_dim);
  if (q_heads > 65536 || kv_heads > 65536)
    return tpc_error(NULL, TPC_ERR_UNSUPPORTED, "%s: q_heads=%d, kv_heads=%d: at most 65536 heads each", fn, q_heads,
                     kv_heads);
  TPC_CHECK(check_stride(fn, "q_stride", q_stride, (int64_t)q_heads * head_dim, "q_heads*head_dim", tokens));
  TPC_CHECK(check_stride(fn, "k_stride", k_stride, (int64_t)kv_heads * head_dim, "kv_heads*head_dim", tokens));
  TPC_CHECK(check_eps(fn, eps));
  if (q == k) return tpc_error(NULL, TPC_ERR_INVALID_ARGUMENT, "%s: q and k are the same buffer (%p)", fn, q);
  const int heads = q_heads + kv_heads;
  if (tokens > INT32_MAX / heads)
    return tpc_error(NULL, TPC_ERR_UNSUPPORTED, "%s: tokens=%lld x %d heads exceeds 2^31-1 head rows", fn,
                     (long long)tokens, heads);
  const bool vec8 = aligned16(q) && aligned16(k) && aligned16(q_weight) && aligned16(k_weight) && q_stride % 8 == 0 &&
                    k_stride % 8 == 0;

  DevInfo d;
  bool pdl = false;
  TPC_CHECK(launch_setup(fn, &d, &pdl));
  HeadArgs a = {};
  a.q = (uint16_t*)q;
  a.k = (uint16_t*)k;
  a.wq = (const uint16_t*)q_weight;
  a.wk = (const uint16_t*)k_weight;
  a.q_stride = q_stride;
  a.k_stride = k_stride;
  a.total = (uint32_t)(tokens * heads);
  a.q_heads = (uint32_t)q_heads;
  a.heads = (uint32_t)heads;
  a.eps = eps;
  if (dtype == TPC_BFLOAT16)
    return vec8 ? launch_per_head_dim<__nv_bfloat16, 8>(fn, a, head_dim, d, pdl, stream)
                : launch_per_head_dim<__nv_bfloat16, 1>(fn, a, head_dim, d, pdl, stream);
  return vec8 ? launch_per_head_dim<__half, 8>(fn, a, head_dim, d, pdl, stream)
              : launch_per_head_dim<__half, 1>(fn, a, head_dim, d, pdl, stream);
}
