/* tp_qknorm.cu — tensor-parallel QK-RMSNorm: q[t] *= rsqrt(sum over all ranks of q[t]^2 / (D_q * N) + eps)
 * * w_q, the same for k, where each rank holds D_q = q_dim_local columns of q (and D_k of k).
 *
 * Fused kernel: a token belongs to a group of W warps; each lane holds J <= 8 of the row's 16-byte
 * vectors (q first, then k), so the whole row is in flight at once. Phase A, per token of the group: sum
 * the squares (fp32) and push {sum_q, sum_k} (8 bytes) into slot [epoch&1] of every rank's norm region
 * (mine included), at entry [token][my rank][V] (token-major, so that a poll's entry is token x n V + lane, no
 * division): one entry per warp (V = W; warp shuffles only, nothing waits for the group) while tokens x W fit
 * norm_max_tokens, else one per token (V = 1; the W warp sums combined through shared memory and a named barrier
 * per group). Phase B, per token: every warp polls the n x V entries
 * itself (V = W or 1) until neither word is the empty pattern (all-ones; a sender rewrites an all-ones sum
 * to the canonical NaN) and sums them in a fixed order (per lane in index order, then one shuffle tree),
 * so every warp of every rank computes identical statistics; the group scales its vectors in place. The
 * entries are re-armed after the block's last barrier. J and W are chosen per call from the row length and
 * the token count: few tokens spread a row over many lanes (latency), many tokens use more vectors per
 * lane so that all of them fit in one wave. The grid is at most what is resident at once (groups of a
 * rank wait for the peers' groups, so no block may wait for a free SM).
 * At two ranks the kernel is compiled for exactly two (NR = 2; measured 1 token 2.74 -> 2.64 us, no change
 * from 4 tokens up, perf-log.md fifth round); NR = 0 reads the rank count at run time. When the grid has a
 * group for every token (the decode sizes) the ONE form runs: no loops over tokens, no next-row prefetch,
 * only the one row held (bf16, J = 2, two ranks: 80 -> 62 registers; 2 ranks sharing one H200 under MPS,
 * 1-128 tokens: -0.15 to -0.27 us, perf-log.md 2026-12-04; not yet measured on two GPUs). With PDL the ONE form
 * also forms its row addresses before the wait and prefetches the row into L2 there (LaneRow): after the wait
 * only the loads remain (same proxy with PDL forced on, 1-128 tokens: -0.3 to -0.5 us, 1 token 2.35 -> 1.87;
 * perf-log.md 2026-12-04, third session; not yet measured on two GPUs).
 * Slot parity: one epoch per block entry; a block advances its own entry and the entries a smaller grid
 * lacks (b + k * grid), so all entries stay equal between calls whatever the grid; as in the one-shot
 * all-reduce (allreduce.cu) a peer is at most one call ahead, so two slots suffice.
 *
 * Unfused kernels: partial (sums per token into a buffer) and apply (scale with all-reduced sums); the
 * caller all-reduces the buffer in between (our kernels or NCCL). Block = 32..1024 threads, each holding
 * J = 1, 2 or 4 vectors; grid = min(tokens, 1056). With PDL the blocks of the first wave prefetch their first
 * token's row into L2 before the wait (unfused path through our all-reduce, same proxy, 1-256 tokens: -0.06 to
 * -0.28 us; perf-log.md 2026-12-04, fourth session).
 * PDL as in allreduce.cu; addresses that depend only on the launch are formed before the wait. */
#include <stdint.h>

#include <atomic>

#include "common.cuh"
#include "tp_qknorm.h"

namespace {
using namespace tpc;

/* Both components summed over the warp by a xor butterfly: every lane gets the same sums, in an order that
 * depends on nothing but the lane values (identical on every rank). */
__device__ __forceinline__ float2 warp_sum2(float2 v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    v.x += __shfl_xor_sync(0xffffffffu, v.x, o);
    v.y += __shfl_xor_sync(0xffffffffu, v.y, o);
  }
  return v;
}

/* {sum of squares of q part, of k part} over the block; the tree depends only on blockDim. */
__device__ __forceinline__ float2 block_sum2(float a, float b, float2* sh) {
  const float2 s = warp_sum2(make_float2(a, b));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) sh[warp] = s;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    const float2 v = warp_sum2(lane < nw ? sh[lane] : make_float2(0.f, 0.f));
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

/* the pair as pushed: an all-ones word becomes the canonical NaN, never the empty pattern (common.cuh) */
__device__ __forceinline__ uint2 sanitize2(float2 v) {
  return make_uint2(sanitize_word<float>(__float_as_uint(v.x)), sanitize_word<float>(__float_as_uint(v.y)));
}
__device__ __forceinline__ void st_volatile_v2(void* p, uint2 v) {
  asm volatile("st.volatile.global.v2.b32 [%0], {%1,%2};" ::"l"(p), "r"(v.x), "r"(v.y) : "memory");
}
__device__ __forceinline__ uint2 ld_volatile_v2(const void* p) {
  uint2 v;
  asm volatile("ld.volatile.global.v2.b32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p) : "memory");
  return v;
}

/* ---- fused kernel ---------------------------------------------------------------------------------
 * A token belongs to a group of W warps (L = 32 W lanes); lane l of the group holds the row's vectors
 * l, l + L, ..., l + (J-1) L (q vectors first, then k), so a whole row is loaded with J independent
 * 16-byte loads per lane. A block holds G <= 8 groups; group g synchronizes its warps with named barrier
 * g + 1 (W == 1: no barrier at all). Token t is handled by group t mod (grid * G). */
struct Group {
  int W, L, g, lane, warp_in_group;
  __device__ Group(int w) : W(w), L(32 * w) {
    g = threadIdx.x / L;
    lane = threadIdx.x % L;
    warp_in_group = lane >> 5;
  }
  __device__ __forceinline__ void sync() const {
    if (W == 1) __syncwarp();
    else asm volatile("bar.sync %0, %1;" ::"r"(g + 1), "r"(L) : "memory");
  }
};

template <typename T, int J>
__device__ __forceinline__ float2 group_load_row(const tpc_qk_problem_t& p, int64_t t, const Group& gr, uint4 (&x)[J]) {
  const int nv = p.q_vecs + p.k_vecs;
  float sq = 0.f, sk = 0.f;
#pragma unroll
  for (int j = 0; j < J; j++) {
    const int i = gr.lane + j * gr.L;
    if (i < nv) x[j] = *row_vec<T>(p, t, i);
  }
#pragma unroll
  for (int j = 0; j < J; j++) {
    const int i = gr.lane + j * gr.L;
    if (i < nv) {
      const float s = sum_squares<T>(x[j]);
      if (i < p.q_vecs) sq += s;
      else sk += s;
    }
  }
  return make_float2(sq, sk);
}

/* ONE form: this lane's J vectors of its group's token (null past the row; q vectors first, then k, bit j of
 * qmask set for a q vector) and their weights. Formed before the PDL wait, with the row's vectors prefetched
 * into L2 there (with PDL): only a hint, and safe before the wait (L2 is where the previous grid's stores land;
 * L1 is not filled); it also keeps the row's address work before the wait, since ptxas moves arithmetic across
 * griddepcontrol.wait (an empty asm does not pin it) but not memory instructions. After the wait the row loads
 * issue at once. */
template <typename T, int J>
struct LaneRow {
  uint4* x[J];
  const uint4* w[J];
  uint32_t qmask;
  __device__ __forceinline__ void form(const tpc_qk_problem_t& p, int64_t t, const Group& gr) {
    const int nv = p.q_vecs + p.k_vecs;
    qmask = 0;
#pragma unroll
    for (int j = 0; j < J; j++) {
      const int i = gr.lane + j * gr.L;
      const bool isq = i < p.q_vecs;
      x[j] = i < nv ? row_vec<T>(p, t, i) : nullptr;
      w[j] = i >= nv ? nullptr
             : isq   ? reinterpret_cast<const uint4*>(p.q_weight) + i
                     : reinterpret_cast<const uint4*>(p.k_weight) + (i - p.q_vecs);
      qmask |= isq ? 1u << j : 0u;
    }
  }
  /* the row's vectors only (the weights are loaded after the push, off the critical path), one lane in 8 (8
   * consecutive vectors hold one 128-byte line's worth) */
  __device__ __forceinline__ void prefetch(const Group& gr) const {
#pragma unroll
    for (int j = 0; j < J; j++)
      if (x[j] && (gr.lane & 7) == 0) asm volatile("prefetch.global.L2 [%0];" ::"l"(x[j]));
  }
  __device__ __forceinline__ bool is_q(int j) const { return qmask >> j & 1u; }
  /* loads the vectors into v and returns their {sum_q, sum_k} */
  __device__ __forceinline__ float2 load(uint4 (&v)[J]) const {
#pragma unroll
    for (int j = 0; j < J; j++)
      if (x[j]) v[j] = *x[j];
    float sq = 0.f, sk = 0.f;
#pragma unroll
    for (int j = 0; j < J; j++)
      if (x[j]) {
        const float s = sum_squares<T>(v[j]);
        if (is_q(j)) sq += s;
        else sk += s;
      }
    return make_float2(sq, sk);
  }
};

/* Sum over the group's lanes; the tree depends only on W, identical on every rank. part: [2][16] per
 * block, double-buffered by `buf` so that one barrier per token suffices. */
__device__ __forceinline__ float2 group_sum(float a, float b, const Group& gr, float2 (*part)[16], int buf) {
  const float2 s = warp_sum2(make_float2(a, b));
  if (gr.W == 1) return s;
  const int w0 = gr.g * gr.W, l = threadIdx.x & 31;
  if (l == 0) part[buf][w0 + gr.warp_in_group] = s;
  gr.sync();
  /* the W warp sums, one per lane (zeros beyond W), through the same shuffle tree */
  return warp_sum2(l < gr.W ? part[buf][w0 + l] : make_float2(0.f, 0.f));
}

/* ONE: every group has at most one token (the launcher's grid covers the tokens): no loops over tokens, no
 * next-row prefetch and no reload, so the kernel holds only the one row. Its minimum of 1 block per SM lets
 * ptxas use the registers it needs (without it, it stopped at 80 and spilled 16 bytes in the J = 5 kernel); the
 * ONE kernels still use fewer than the looping ones (56-131 against 60-194), whose occupancy sizes the grid. */
template <typename T, int J, int kMaxThreads, int NR, bool ONE>
__global__ void __launch_bounds__(kMaxThreads, ONE ? 1 : 0) qk_fused_kernel(tpc_ar_args_t a, tpc_qk_problem_t p, int W,
                                                                             int pdl) {
  __shared__ float2 s_part[2][16]; /* warp sums: at most 16 warps a block */
  /* 512-thread blocks with J >= 5 (at most 128 registers a thread): weights re-read per token, first row
   * too, no prefetch */
  constexpr bool kLean = kMaxThreads > 256 && J >= 5;
  Group gr(W);
  const int G = blockDim.x / gr.L;
  const int64_t first = (int64_t)blockIdx.x * G + gr.g;
  const int64_t groups = (int64_t)gridDim.x * G;
  const int n = NR ? NR : a.nranks, rank = a.rank, lane = threadIdx.x & 31;
  const size_t M = a.norm_max_tokens;
  /* Per-warp sums while tokens x W entries fit a rank's region (every warp pushes its own sum: nothing
   * waits for the group before the push), else one sum per token (the group's, after a named barrier).
   * V = values per rank and token. */
  const bool per_warp = p.tokens * W <= (int64_t)M;
  const int V = per_warp ? W : 1, nvals = n * V;
  /* addresses that depend only on the launch, written before the wait for the previous kernel (the empty asm keeps
   * them there in the PTX; ptxas may still schedule them after it unless a memory instruction before the wait
   * uses them, as LaneRow's prefetch does) */
  char* mine_base = (char*)a.norm[rank];
  char* push_dst = (char*)a.norm[lane < n ? lane : 0] + (size_t)rank * V * 8; /* lane p -> rank p */
  uint32_t* epoch_ptr = &a.local->norm_epoch[blockIdx.x];
  asm volatile("" : "+l"(mine_base), "+l"(push_dst), "+l"(epoch_ptr));
  /* entry offsets within a slot (token-major: token t's n x V values are entries t n V ... t n V + n V - 1, value k
   * = source rank k / V, its warp k % V): token t's push (this warp's entry, or the token's; push_dst adds the
   * source rank), and value k of its poll */
  auto push_off = [&](int64_t t) { return ((size_t)t * nvals + (per_warp ? gr.warp_in_group : 0)) * 8; };
  auto poll_off = [&](int64_t t, int k) { return ((size_t)t * nvals + (size_t)k) * 8; };
  /* ONE: the row, weight and entry addresses of the group's token too (the poll's first value, k = lane). The two
   * offsets are derivable after the wait (one multiply-add each), but precomputed here they are measurably faster:
   * deriving them cost +0.1 to +0.3 us at 4-64 tokens (2 ranks sharing one H200, PDL forced on; perf-log.md
   * 2026-12-04, fourth session), while an empty-asm pin of gr, G and first measured no change and was removed. */
  LaneRow<T, J> row;
  size_t one_push = 0, one_poll = 0;
  if constexpr (ONE) {
    row.form(p, first < p.tokens ? first : 0, gr);
    if (pdl && first < p.tokens) row.prefetch(gr); /* without PDL nothing overlaps: the prefetch would only delay */
    one_push = push_off(first);
    one_poll = lane < nvals ? poll_off(first, lane) : 0;
  }
  pdl_wait();
  pdl_trigger();
  const uint32_t epoch = *epoch_ptr;
  const size_t slot = (size_t)(epoch & 1u) * n * M * 8; /* slot bytes: M x n entries (tokens x V <= M) */

  /* phase A: partial sums of this group's tokens, pushed to every rank (mine included); the first row
   * stays in registers, the next row is loaded while this one is reduced */
  uint4 keep[J];
  float2 part = make_float2(0.f, 0.f);
  if (first < p.tokens) part = ONE ? row.load(keep) : group_load_row<T, J>(p, first, gr, keep);
  int buf = 0;
  auto push_sums = [&](size_t off, float2 v) {
    if (per_warp) {
      const float2 s = warp_sum2(v);
      if (lane < n) st_volatile_v2(push_dst + slot + off, sanitize2(s));
    } else {
      const float2 s = group_sum(v.x, v.y, gr, s_part, buf);
      buf ^= 1;
      if (gr.lane < n) st_volatile_v2(push_dst + slot + off, sanitize2(s));
    }
  };
  if constexpr (ONE) {
    if (first < p.tokens) push_sums(one_push, part);
  } else {
    for (int64_t t = first; t < p.tokens; t += groups) {
      float2 next_part = make_float2(0.f, 0.f);
      if constexpr (!kLean) { /* prefetch; with 512-thread blocks and J >= 5 no registers are spare for it */
        uint4 next[J];
        if (t + groups < p.tokens) next_part = group_load_row<T, J>(p, t + groups, gr, next);
      } else if (t != first) {
        uint4 x[J];
        part = group_load_row<T, J>(p, t, gr, x);
      }
      push_sums(push_off(t), part);
      part = next_part;
    }
  }

  /* phase B: the weights are loaded while the first token's sums travel; per token, every warp polls the
   * n x V values itself (no barrier), lane l taking values l, l + 32, ..., and sums them in a fixed order
   * (per lane in index order, then one shuffle tree), so every warp of every rank gets identical
   * statistics. The slots are re-armed after the block's last barrier, when no warp reads them any more. */
  const int nv = p.q_vecs + p.k_vecs;
  uint4 wv[kLean ? 1 : J];
  if constexpr (ONE) {
#pragma unroll
    for (int j = 0; j < J; j++)
      if (row.x[j]) wv[j] = *row.w[j];
  } else if constexpr (!kLean) {
#pragma unroll
    for (int j = 0; j < J; j++) {
      const int i = gr.lane + j * gr.L;
      if (i < nv) wv[j] = weight_vec<T>(p, i);
    }
  }
  Waiter wt(a);
  char* const mine = mine_base + slot;
  /* token t's sums from every rank, then its row scaled in place; false when the wait was given up */
  auto finish = [&](int64_t t, const uint4 (&x)[J]) -> bool {
    float2 total = make_float2(0.f, 0.f);
    bool fail = false;
    for (int k = lane; k < nvals && !fail; k += 32) {
      const char* src = mine + (ONE && k == lane ? one_poll : poll_off(t, k));
      uint2 v = ld_volatile_v2(src);
      while (v.x == kEmpty || v.y == kEmpty) {
        if (wt.give_up(k / V, 3)) {
          fail = true;
          break;
        }
        v = ld_volatile_v2(src);
      }
      total.x += __uint_as_float(v.x);
      total.y += __uint_as_float(v.y);
    }
    if (__any_sync(0xffffffffu, fail)) return false;
    const float2 sc = scales_of(p, warp_sum2(total));
    if constexpr (ONE) {
#pragma unroll
      for (int j = 0; j < J; j++)
        if (row.x[j]) *row.x[j] = scale_vec<T>(x[j], wv[j], row.is_q(j) ? sc.x : sc.y);
    } else {
#pragma unroll
      for (int j = 0; j < J; j++) {
        const int i = gr.lane + j * gr.L;
        if (i < nv) {
          uint4 w;
          if constexpr (kLean) w = weight_vec<T>(p, i);
          else w = wv[j];
          *row_vec<T>(p, t, i) = scale_vec<T>(x[j], w, i < p.q_vecs ? sc.x : sc.y);
        }
      }
    }
    return true;
  };
  if constexpr (ONE) {
    if (first < p.tokens) finish(first, keep);
  } else {
    for (int64_t t = first; t < p.tokens; t += groups) {
      uint4 x[J]; /* the row: still in registers for the first token, else loaded while the sums are awaited */
      if (t == first && !kLean) {
#pragma unroll
        for (int j = 0; j < J; j++) x[j] = keep[j];
      } else {
        group_load_row<T, J>(p, t, gr, x);
      }
      if (!finish(t, x)) break;
    }
  }
  /* every warp is done with the slots and every thread has read the epoch: re-arm this group's slots, and
   * advance the epoch for this block's entry and the entries of the blocks a smaller grid does not have
   * (b + k * grid), so all entries stay equal whatever the next grid is */
  __syncthreads();
  /* ONE: at most one pass (groups >= tokens); the explicit bound tells the compiler so (with the plain bound the
   * J = 5 ONE kernels spill 4 bytes) */
  for (int64_t t = first; t < (ONE && first < p.tokens ? first + 1 : p.tokens); t += groups)
    for (int k = gr.lane; k < nvals; k += gr.L) st_volatile_v2(mine + poll_off(t, k), make_uint2(kEmpty, kEmpty));
  for (int i = blockIdx.x + threadIdx.x * gridDim.x; i < TPC_QK_MAX_BLOCKS; i += blockDim.x * gridDim.x)
    a.local->norm_epoch[i] = epoch + 1;
}

/* Unfused kernels, first wave (blockIdx.x < prefetch_blocks, set with PDL): the block's first token's row into L2
 * before the wait, one thread in 8 (a hint, safe there; it keeps the row's address work before the wait). */
template <typename T, int J>
__device__ __forceinline__ void prefetch_first_row(const tpc_qk_problem_t& p, int64_t prefetch_blocks) {
  if (blockIdx.x >= prefetch_blocks || blockIdx.x >= p.tokens || (threadIdx.x & 7) != 0) return;
  const int nv = p.q_vecs + p.k_vecs;
#pragma unroll
  for (int j = 0; j < J; j++) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < nv) asm volatile("prefetch.global.L2 [%0];" ::"l"(row_vec<T>(p, blockIdx.x, i)));
  }
}

template <typename T, int J>
__global__ void __launch_bounds__(1024) qk_partial_kernel(tpc_qk_problem_t p, float2* sums, int64_t prefetch_blocks) {
  __shared__ float2 sh[33];
  prefetch_first_row<T, J>(p, prefetch_blocks);
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
__global__ void __launch_bounds__(1024) qk_apply_kernel(tpc_qk_problem_t p, const float2* sums,
                                                         int64_t prefetch_blocks) {
  prefetch_first_row<T, J>(p, prefetch_blocks);
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
cudaError_t launch_unfused(int kind, const tpc_qk_problem_t* p, float* sums, int threads, int pdl, cudaStream_t stream) {
  cudaLaunchAttribute attr[1];
  /* a grid-stride loop over the tokens: any grid is correct; 1056 blocks fill every SM of an H100/H200 */
  constexpr int64_t kMaxBlocks = 1056;
  const int64_t blocks = p->tokens < kMaxBlocks ? p->tokens : kMaxBlocks;
  cudaLaunchConfig_t cfg = config((int)blocks, threads, pdl, stream, attr);
  /* with PDL, the first wave (SMs x resident blocks) prefetches its first rows before the wait */
  int per_sm = 0;
  if (pdl) {
    const cudaError_t e = kind == 1 ? resident_blocks_per_sm<qk_partial_kernel<T, J>>(p->device, threads, &per_sm)
                                    : resident_blocks_per_sm<qk_apply_kernel<T, J>>(p->device, threads, &per_sm);
    if (e != cudaSuccess) return e;
  }
  const int64_t prefetch_blocks = (int64_t)p->sm_count * per_sm;
  if (kind == 1) return cudaLaunchKernelEx(&cfg, qk_partial_kernel<T, J>, *p, (float2*)sums, prefetch_blocks);
  return cudaLaunchKernelEx(&cfg, qk_apply_kernel<T, J>, *p, (const float2*)sums, prefetch_blocks);
}

/* One fused kernel family (MAXL threads a group at most, TWO = 2 for two ranks): every block resident at once, since
 * the groups of one rank wait for the peers' groups and a block waiting for a free SM could wait forever.
 * a.blocks = the SMs this rank may fill (SMs / ranks on the GPU), unless TPCOMM_NUM_BLOCKS set it; never more than
 * the GPU's SMs. The occupancy is that of the looping form: it holds more registers than the ONE form, so its count
 * is safe for both. */
template <typename T, int J, int MAXL, int TWO>
cudaError_t launch_fused_family(const tpc_ar_args_t* a, const tpc_qk_problem_t* p, int W, int G, int pdl,
                                cudaStream_t stream) {
  const int threads = G * 32 * W;
  int per_sm = 0;
  const cudaError_t err = resident_blocks_per_sm<qk_fused_kernel<T, J, MAXL, TWO, false>>(a->device, threads, &per_sm);
  if (err != cudaSuccess) return err;
  const int sms = a->sm_count > 0 ? a->sm_count : 1;
  int64_t blocks = (p->tokens + G - 1) / G;
  const int64_t cap = (int64_t)per_sm * (a->blocks < sms ? a->blocks : sms);
  if (blocks > cap) blocks = cap;
  if (blocks > TPC_QK_MAX_BLOCKS) blocks = TPC_QK_MAX_BLOCKS;
  /* a group per token at most: the ONE form (groups of up to 8 warps; the 9-16-warp groups of rows over
   * 2048 vectors a rank keep the looping form) */
  auto kernel = qk_fused_kernel<T, J, MAXL, TWO, false>;
  if constexpr (MAXL == 256)
    if (blocks * G >= p->tokens) kernel = qk_fused_kernel<T, J, MAXL, TWO, true>;
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg = config((int)blocks, threads, pdl, stream, attr);
  return cudaLaunchKernelEx(&cfg, kernel, *a, *p, W, pdl);
}

/* Groups of up to 8 warps: blocks of at most 256 threads (up to 255 registers a thread: row, next row and
 * weights stay in registers up to J = 8). Groups of 9 to 16 warps: one group per block of up to 512
 * threads (J >= 5 then runs lean, see the kernel). */
template <typename T, int J>
cudaError_t launch_fused_j(const tpc_ar_args_t* a, const tpc_qk_problem_t* p, int W, int pdl, cudaStream_t stream) {
  const int L = 32 * W;
  int G = L <= 256 ? (256 / L < 8 ? 256 / L : 8) : 1; /* groups per block */
  if (p->tokens < G) G = (int)p->tokens;
  if (L > 512) return cudaErrorInvalidValue;
  const bool two = a->nranks == 2;
  if (L <= 256)
    return two ? launch_fused_family<T, J, 256, 2>(a, p, W, G, pdl, stream)
               : launch_fused_family<T, J, 256, 0>(a, p, W, G, pdl, stream);
  return two ? launch_fused_family<T, J, 512, 2>(a, p, W, G, pdl, stream)
             : launch_fused_family<T, J, 512, 0>(a, p, W, G, pdl, stream);
}

template <typename T>
cudaError_t launch_typed(int kind, const tpc_ar_args_t* a, const tpc_qk_problem_t* p, float* sums, int pdl,
                         cudaStream_t stream) {
  const int nv = p->q_vecs + p->k_vecs;
  if (kind == 0) {
    /* fused: J vectors per lane, W = ceil(vectors / 32 J) <= 16 warps per token. Measured on 2 x H200
     * (docs/perf-log.md): few vectors per lane but at most 8 warps a token (J = 2, W = 7 beats J = 1,
     * W = 14 by ~0.2 us for a 448-vector row) while the tokens would take at most ~512 threads per SM at
     * one vector per lane, J = 4 up to ~4096 threads per SM at J = 4, J = 8 beyond. (The J = 8 step was at
     * 1024 threads per SM; J = 4 beat J = 8 in every row measured: 2 x H200, 1024 and 2048 tokens, -0.6 us;
     * 2 ranks sharing one H200, the per-SM load of 2048 and 4096 tokens on two GPUs, -2 to -4.4 us;
     * perf-log.md 2026-12-04, fourth session.) */
    const int j_min = (nv + 511) / 512;
    int j_lat = (nv + 255) / 256;
    if (j_lat > 8) j_lat = 8;
    auto threads_for = [&](int j) { return p->tokens * 32 * ((nv + 32 * j - 1) / (32 * j)); };
    int J = j_lat;
    if (threads_for(j_min) > (int64_t)a->blocks * 512) J = J > 4 ? J : 4;
    if (threads_for(J) > (int64_t)a->blocks * 4096) J = 8;
    const int W = (nv + 32 * J - 1) / (32 * J);
    switch (J) {
      case 1: return launch_fused_j<T, 1>(a, p, W, pdl, stream);
      case 2: return launch_fused_j<T, 2>(a, p, W, pdl, stream);
      case 3: return launch_fused_j<T, 3>(a, p, W, pdl, stream);
      case 4: return launch_fused_j<T, 4>(a, p, W, pdl, stream);
      case 5: return launch_fused_j<T, 5>(a, p, W, pdl, stream);
      case 6: return launch_fused_j<T, 6>(a, p, W, pdl, stream);
      case 7: return launch_fused_j<T, 7>(a, p, W, pdl, stream);
      default: return launch_fused_j<T, 8>(a, p, W, pdl, stream);
    }
  }
  int threads, J;
  shape(nv, &threads, &J);
  if (J == 1) return launch_unfused<T, 1>(kind, p, sums, threads, pdl, stream);
  if (J == 2) return launch_unfused<T, 2>(kind, p, sums, threads, pdl, stream);
  return launch_unfused<T, 4>(kind, p, sums, threads, pdl, stream);
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
