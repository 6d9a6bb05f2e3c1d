/* tp_qknorm.cu — tensor-parallel QK-RMSNorm: q[t] *= rsqrt(sum over all ranks of q[t]^2 / (D_q * N) + eps)
 * * w_q, the same for k, where each rank holds D_q = q_dim_local columns of q (and D_k of k).
 *
 * Fused kernel: phase A, for each token of the block: load the row's q and k vectors, sum their squares
 * (fp32, a fixed block-reduction tree), and push {sum_q, sum_k} (8 bytes) into slot [epoch&1][my rank]
 * [token] of every rank's norm region (mine included). Phase B, for each token: lanes 0..N-1 of warp 0
 * poll slot [p][token] until both words are not the empty pattern (all-ones; a sender rewrites an
 * all-ones sum to the canonical NaN), re-arm it, and warp 0 sums the N values in rank order, so every
 * rank computes identical statistics; then every thread scales its vectors in place. The first token of
 * each block stays in registers between the phases; later ones are read again, and every row load is
 * issued before the wait it can overlap (the next token's reduction in phase A, the poll in phase B). Epochs are per block with a
 * fixed grid, as in the one-shot all-reduce (allreduce.cu), and the same argument bounds a peer to one call
 * ahead, so two slots suffice.
 *
 * Unfused kernels: partial (sums per token into a buffer) and apply (scale with all-reduced sums); the
 * caller all-reduces the buffer in between (our kernels or NCCL).
 *
 * Launch: block = 32..1024 threads, each holding J = 1, 2 or 4 16-byte vectors of the row (q vectors
 * first, then k); q_vecs + k_vecs <= TPC_QK_MAX_VECS. Fused grid = args->blocks (persistent over tokens);
 * unfused grids = min(tokens, 8 * 132). Shared memory: 33 float2. PDL as in allreduce.cu. */
#include <stdint.h>

#include "common.cuh"
#include "tp_qknorm.h"

namespace {
using namespace tpc;

/* {sum of squares of q part, of k part} over the block; the tree depends only on blockDim. */
__device__ __forceinline__ float2 block_sum2(float a, float b, float2* sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) sh[warp] = make_float2(a, b);
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    float2 v = lane < nw ? sh[lane] : make_float2(0.f, 0.f);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      v.x += __shfl_xor_sync(0xffffffffu, v.x, o);
      v.y += __shfl_xor_sync(0xffffffffu, v.y, o);
    }
    if (lane == 0) sh[32] = v;
  }
  __syncthreads();
  return sh[32];
}

template <typename T>
__device__ __forceinline__ float sum_squares(uint4 v) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const float x = Elem<T>::to_float((uint16_t)(w[i / 2] >> (16 * (i & 1))));
    s = fmaf(x, x, s);
  }
  return s;
}

template <typename T>
__device__ __forceinline__ uint4 scale_vec(uint4 x, uint4 w, float scale) {
  const uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ws[4] = {w.x, w.y, w.z, w.w};
  uint32_t r[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    uint32_t lo = Elem<T>::from_float(Elem<T>::to_float((uint16_t)xs[i]) * scale * Elem<T>::to_float((uint16_t)ws[i]));
    uint32_t hi = Elem<T>::from_float(Elem<T>::to_float((uint16_t)(xs[i] >> 16)) * scale *
                                      Elem<T>::to_float((uint16_t)(ws[i] >> 16)));
    r[i] = lo | (hi << 16);
  }
  return make_uint4(r[0], r[1], r[2], r[3]);
}

/* Row vector i of token t: q vectors first, then k. */
template <typename T>
__device__ __forceinline__ uint4* row_vec(const tpc_qk_problem_t& p, int64_t t, int i) {
  return i < p.q_vecs ? reinterpret_cast<uint4*>((T*)p.q + t * p.q_stride) + i
                      : reinterpret_cast<uint4*>((T*)p.k + t * p.k_stride) + (i - p.q_vecs);
}
template <typename T>
__device__ __forceinline__ uint4 weight_vec(const tpc_qk_problem_t& p, int i) {
  return i < p.q_vecs ? reinterpret_cast<const uint4*>(p.q_weight)[i]
                      : reinterpret_cast<const uint4*>(p.k_weight)[i - p.q_vecs];
}

/* Loads the row's vectors of this thread and returns its partial {sum_q, sum_k}. */
template <typename T, int J>
__device__ __forceinline__ float2 load_row(const tpc_qk_problem_t& p, int64_t t, uint4 (&x)[J]) {
  const int nv = p.q_vecs + p.k_vecs;
  float sq = 0.f, sk = 0.f;
#pragma unroll
  for (int j = 0; j < J; j++) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < nv) {
      x[j] = *row_vec<T>(p, t, i);
      const float s = sum_squares<T>(x[j]);
      if (i < p.q_vecs) sq += s;
      else sk += s;
    }
  }
  return make_float2(sq, sk);
}

/* Weights stay in registers across tokens only with one vector per thread (J == 1); with more, keeping
 * them would spill under the 64-register cap of 1024-thread blocks, so they are re-read (L1/L2 hits). */
template <int J>
struct Weights {
  uint4 w[J];
  template <typename T>
  __device__ __forceinline__ void load(const tpc_qk_problem_t& p) {
    if constexpr (J == 1) {
      if ((int)threadIdx.x < p.q_vecs + p.k_vecs) w[0] = weight_vec<T>(p, threadIdx.x);
    }
  }
  template <typename T>
  __device__ __forceinline__ uint4 get(const tpc_qk_problem_t& p, int j, int i) const {
    if constexpr (J == 1) return w[0];
    else return weight_vec<T>(p, i);
  }
};

template <typename T, int J>
__device__ __forceinline__ void apply_row(const tpc_qk_problem_t& p, int64_t t, const uint4 (&x)[J],
                                          const Weights<J>& w, float scale_q, float scale_k) {
  const int nv = p.q_vecs + p.k_vecs;
#pragma unroll
  for (int j = 0; j < J; j++) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < nv) *row_vec<T>(p, t, i) = scale_vec<T>(x[j], w.template get<T>(p, j, i), i < p.q_vecs ? scale_q : scale_k);
  }
}

__device__ __forceinline__ float2 scales_of(const tpc_qk_problem_t& p, float2 total) {
  return make_float2(rsqrtf(total.x / p.q_total + p.eps), rsqrtf(total.y / p.k_total + p.eps));
}

__device__ __forceinline__ uint2 sanitize2(float2 v) {
  uint32_t a = __float_as_uint(v.x), b = __float_as_uint(v.y);
  return make_uint2(a == kEmpty ? 0x7fffffffu : a, b == kEmpty ? 0x7fffffffu : b);
}
__device__ __forceinline__ void st_volatile_v2(void* p, uint2 v) {
  asm volatile("st.volatile.global.v2.b32 [%0], {%1,%2};" ::"l"(p), "r"(v.x), "r"(v.y) : "memory");
}
__device__ __forceinline__ uint2 ld_volatile_v2(const void* p) {
  uint2 v;
  asm volatile("ld.volatile.global.v2.b32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p) : "memory");
  return v;
}

template <typename T, int J>
__global__ void __launch_bounds__(1024) qk_fused_kernel(tpc_ar_args_t a, tpc_qk_problem_t p) {
  __shared__ float2 sh[33];
  __shared__ float2 s_scale;
  __shared__ bool s_fail;
  pdl_wait();
  pdl_trigger();
  const uint32_t epoch = a.local->norm_epoch[blockIdx.x];
  const int n = a.nranks, rank = a.rank;
  const size_t M = a.norm_max_tokens;
  const size_t slot = (size_t)(epoch & 1u) * n * M * 8;
  if (threadIdx.x == 0) s_fail = false;
  uint4 keep[J];
  Weights<J> w;
  w.template load<T>(p);

  /* phase A: partial sums of every token of this block, to every rank; the next token's row is loaded
   * while this one is reduced */
  float2 part = make_float2(0.f, 0.f);
  if (blockIdx.x < p.tokens) part = load_row<T, J>(p, blockIdx.x, keep);
  for (int64_t t = blockIdx.x; t < p.tokens; t += gridDim.x) {
    uint4 next[J];
    float2 next_part = make_float2(0.f, 0.f);
    if (t + gridDim.x < p.tokens) next_part = load_row<T, J>(p, t + gridDim.x, next);
    const float2 s = block_sum2(part.x, part.y, sh);
    if ((int)threadIdx.x < n)
      st_volatile_v2((char*)a.norm[threadIdx.x] + slot + ((size_t)rank * M + (size_t)t) * 8, sanitize2(s));
    part = next_part;
  }

  /* phase B: sum the ranks' partials in rank order, scale */
  Waiter wt(a);
  char* const mine = (char*)a.norm[rank] + slot;
  for (int64_t t = blockIdx.x; t < p.tokens; t += gridDim.x) {
    uint4 x[J]; /* the row, loaded while the partial sums are awaited (the first token is still in keep) */
    if (t == blockIdx.x) {
#pragma unroll
      for (int j = 0; j < J; j++) x[j] = keep[j];
    } else {
      load_row<T, J>(p, t, x);
    }
    if (threadIdx.x < 32) {
      uint2 v = make_uint2(0, 0);
      if ((int)threadIdx.x < n) {
        char* src = mine + ((size_t)threadIdx.x * M + (size_t)t) * 8;
        v = ld_volatile_v2(src);
        while (v.x == kEmpty || v.y == kEmpty) {
          if (wt.give_up(threadIdx.x, 3)) {
            s_fail = true;
            break;
          }
          v = ld_volatile_v2(src);
        }
        st_volatile_v2(src, make_uint2(kEmpty, kEmpty)); /* re-arm */
      }
      float2 total = make_float2(0.f, 0.f);
      for (int q = 0; q < n; q++) { /* rank order, identical on every rank */
        const float x = __shfl_sync(0xffffffffu, __uint_as_float(v.x), q);
        const float y = __shfl_sync(0xffffffffu, __uint_as_float(v.y), q);
        total = q == 0 ? make_float2(x, y) : make_float2(total.x + x, total.y + y);
      }
      if (threadIdx.x == 0) s_scale = scales_of(p, total);
    }
    __syncthreads();
    if (s_fail) break;
    apply_row<T, J>(p, t, x, w, s_scale.x, s_scale.y);
    __syncthreads(); /* s_scale is rewritten for the next token */
  }
  __syncthreads();
  if (threadIdx.x == 0) a.local->norm_epoch[blockIdx.x] = epoch + 1;
}

template <typename T, int J>
__global__ void __launch_bounds__(1024) qk_partial_kernel(tpc_qk_problem_t p, float2* sums) {
  __shared__ float2 sh[33];
  pdl_wait();
  pdl_trigger();
  for (int64_t t = blockIdx.x; t < p.tokens; t += gridDim.x) {
    uint4 x[J];
    const float2 part = load_row<T, J>(p, t, x);
    const float2 s = block_sum2(part.x, part.y, sh);
    if (threadIdx.x == 0) sums[t] = s;
  }
}

template <typename T, int J>
__global__ void __launch_bounds__(1024) qk_apply_kernel(tpc_qk_problem_t p, const float2* sums) {
  pdl_wait();
  pdl_trigger();
  Weights<J> w;
  w.template load<T>(p);
  for (int64_t t = blockIdx.x; t < p.tokens; t += gridDim.x) {
    const float2 sc = scales_of(p, sums[t]);
    uint4 x[J];
    load_row<T, J>(p, t, x);
    apply_row<T, J>(p, t, x, w, sc.x, sc.y);
  }
}

/* Threads and vectors per thread for a row of nv vectors. */
static void shape(int nv, int* threads, int* J) {
  *J = nv <= 1024 ? 1 : nv <= 2048 ? 2 : 4;
  int t = (nv + *J - 1) / *J;
  *threads = (t + 31) / 32 * 32;
}

static cudaLaunchConfig_t config(int blocks, int threads, int pdl, cudaStream_t stream, cudaLaunchAttribute* attr) {
  return pdl_launch_config(dim3((unsigned)blocks), dim3((unsigned)threads), 0, stream, pdl, attr);
}

template <typename T, int J>
cudaError_t launch_kind(int kind, const tpc_ar_args_t* a, const tpc_qk_problem_t* p, float* sums, int threads,
                        int pdl, cudaStream_t stream) {
  cudaLaunchAttribute attr[1];
  int64_t unfused_blocks = p->tokens < 8 * 132 ? p->tokens : 8 * 132;
  if (kind == 0) {
    cudaLaunchConfig_t cfg = config(a->blocks, threads, pdl, stream, attr);
    return cudaLaunchKernelEx(&cfg, qk_fused_kernel<T, J>, *a, *p);
  }
  cudaLaunchConfig_t cfg = config((int)unfused_blocks, threads, pdl, stream, attr);
  if (kind == 1) return cudaLaunchKernelEx(&cfg, qk_partial_kernel<T, J>, *p, (float2*)sums);
  return cudaLaunchKernelEx(&cfg, qk_apply_kernel<T, J>, *p, (const float2*)sums);
}

template <typename T>
cudaError_t launch_typed(int kind, const tpc_ar_args_t* a, const tpc_qk_problem_t* p, float* sums, int pdl,
                         cudaStream_t stream) {
  int threads, J;
  shape(p->q_vecs + p->k_vecs, &threads, &J);
  if (J == 1) return launch_kind<T, 1>(kind, a, p, sums, threads, pdl, stream);
  if (J == 2) return launch_kind<T, 2>(kind, a, p, sums, threads, pdl, stream);
  return launch_kind<T, 4>(kind, a, p, sums, threads, pdl, stream);
}

cudaError_t launch(int kind, const tpc_ar_args_t* a, const tpc_qk_problem_t* p, float* sums, int pdl,
                   cudaStream_t stream) {
  if (p->q_vecs + p->k_vecs > TPC_QK_MAX_VECS || p->tokens <= 0) return cudaErrorInvalidValue;
  if (p->dtype == 0) return launch_typed<__nv_bfloat16>(kind, a, p, sums, pdl, stream);
  if (p->dtype == 1) return launch_typed<__half>(kind, a, p, sums, pdl, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

extern "C" cudaError_t tpc_qk_launch_fused(const tpc_ar_args_t* args, const tpc_qk_problem_t* p, int pdl,
                                           cudaStream_t stream) {
  if ((uint64_t)p->tokens > args->norm_max_tokens) return cudaErrorInvalidValue;
  return launch(0, args, p, NULL, pdl, stream);
}
extern "C" cudaError_t tpc_qk_launch_partial(const tpc_qk_problem_t* p, float* sums, int pdl, cudaStream_t stream) {
  return launch(1, NULL, p, sums, pdl, stream);
}
extern "C" cudaError_t tpc_qk_launch_apply(const tpc_qk_problem_t* p, const float* sums, int pdl,
                                           cudaStream_t stream) {
  return launch(2, NULL, p, (float*)sums, pdl, stream);
}
