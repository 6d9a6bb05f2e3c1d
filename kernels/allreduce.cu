/* allreduce.cu — the custom all-reduce kernels: one-shot push (Lamport) and two-shot pull.
 *
 * Both reduce in fp32 in rank order 0..N-1 (acc = x0; acc += x1; ...) with the same code, so every rank
 * gets bitwise-identical results and the two algorithms agree bit for bit. Data moves in 16-byte vectors;
 * a tail shorter than a vector (or a buffer not aligned to 16 bytes) is loaded and stored element by
 * element. Layout of the shared arena: allreduce.h.
 *
 * One-shot push: every thread sends its vectors of the input to every peer's slot [epoch&1][my rank],
 * then polls its own slots for the peers' vectors (a rank holds slots for its n-1 peers only: source s sits at
 * index s, or s-1 above the holder's own rank, peer_slot()). Arrival needs no flag: an empty slot holds all-ones
 * bytes (0xFFFF per 16-bit element, 0xFFFFFFFF per fp32), a NaN pattern that a sender never writes (it
 * rewrites such inputs to the canonical NaN 0x7FFF / 0x7FFFFFFF, which changes no arithmetic: NaN stays
 * NaN). After reading a vector the reader writes all-ones back (re-arms). Two slots alternate: a peer
 * can be at most one call ahead (it cannot finish call e+1 without my data of e+1, which I send only
 * after I finished reading call e), so slot e&1 is never written for e+2 before I re-armed it in e.
 * Epochs are per block and every launch uses the same grid, so all blocks of all ranks agree. At two ranks
 * the kernel is compiled for exactly two (NR = 2: no loops over absent peers) and issues the first polls
 * of a thread's kept vectors together (reduce_kept_pair).
 *
 * Two-shot pull: the input is split into N chunks; rank r owns chunk r. Phase 1 copies the other chunks
 * of the input into this rank's pull buffer; barrier; phase 2 reads chunk r from every rank's pull buffer
 * (its own from the input), reduces, and writes the result to the output and to chunk r of its own pull
 * buffer; barrier; phase 3 reads every other chunk's result from its owner's pull buffer. The barriers are
 * per block (block b of every rank handles the same indices): monotonic uint32 counters sems[b][src],
 * red.release.sys by the sender, ld.acquire.sys by the receiver, compared against a per-block base kept
 * in local memory, so nothing is ever reset.
 *
 * Never hang: every wait polls %globaltimer and gives up after timeout_ns, and also stops when another
 * block of this rank gave up or the host set abort_flag. The first failure records
 * {error, peer, block, algo} in mapped host memory for tpc_comm_get_async_error.
 *
 * PDL: griddepcontrol.wait before the first access to the input or the arena (the previous kernel may
 * still be running); launch_dependents right after, so the next kernel's launch overlaps this one.
 * Launch: a fixed grid (args->blocks <= TPC_AR_MAX_BLOCKS, all co-resident), 32..512 threads per block
 * chosen per call from the work size; no shared memory beyond a few words. */
#include <stdint.h>

#include "allreduce.h"
#include "common.cuh"

namespace {
using namespace tpc;

/* ---- one-shot push ------------------------------------------------------------------------------- */
constexpr int kKeep = 4; /* input vectors a thread keeps in registers between push and reduce (KEEP below) */

/* Index of source rank s among the n-1 slots of rank r (r has no slot for itself). */
__device__ __forceinline__ size_t peer_slot(int s, int r) { return (size_t)(s - (s > r)); }

/* Sends vector v (already sanitized) to every peer: dst[p] = slot [epoch][my rank] of peer p. n = ranks (a
 * compile-time constant where the kernel is specialized, so the loop over peers disappears). */
__device__ __forceinline__ void push_vec(const tpc_ar_args_t& a, int n, char* const (&dst)[TPC_AR_MAX_RANKS], size_t v,
                                         uint4 x) {
#pragma unroll
  for (int p = 0; p < TPC_AR_MAX_RANKS; p++)
    if (p < n && p != a.rank) st_volatile_v4(dst[p] + v * 16, x);
}

/* Waits for every peer's vector v in my slots, re-arms them, reduces in rank order with my own vector
 * `own`, writes the output. False when the wait was given up. */
template <typename T>
__device__ __forceinline__ bool reduce_vec(const tpc_ar_args_t& a, int n, char* mine, size_t v, uint4 own, T* out,
                                           size_t count, bool aligned, Waiter& w) {
  const int rank = a.rank;
  uint4 x[TPC_AR_MAX_RANKS];
#pragma unroll
  for (int p = 0; p < TPC_AR_MAX_RANKS; p++)
    if (p < n && p != rank) x[p] = ld_volatile_v4(mine + peer_slot(p, rank) * a.push_slot_bytes + v * 16);
  Acc<T> acc;
#pragma unroll
  for (int p = 0; p < TPC_AR_MAX_RANKS; p++) {
    if (p >= n) break;
    uint4 y = own;
    if (p != rank) {
      char* src = mine + peer_slot(p, rank) * a.push_slot_bytes + v * 16;
      while (has_empty<T>(x[p])) {
        if (w.give_up(p, 1)) return false;
        x[p] = ld_volatile_v4(src);
      }
      y = x[p];
      *reinterpret_cast<uint4*>(src) = make_uint4(kEmpty, kEmpty, kEmpty, kEmpty); /* re-arm */
    }
    if (p == 0) acc.set(y);
    else acc.add(y);
  }
  store_out(out, v, count, aligned, acc.pack());
  return true;
}

/* Two ranks: reduce_vec for the kept group (the thread's first kKeep vectors), with the first poll of every
 * kept vector issued before any wait, so the polls' round trips overlap instead of following one another.
 * Same arithmetic order as reduce_vec (x0 + x1). Measured with the rank count fixed at compile time (2 x H200,
 * graph): 256 KiB 3.31 -> 3.19 us, 1 MiB 5.75 -> 5.61, 4 MiB 16.47 -> 15.82 (perf-log.md, fifth round). */
template <typename T, int KEEP>
__device__ __forceinline__ bool reduce_kept_pair(const tpc_ar_args_t& a, char* mine, size_t first, size_t stride,
                                                 size_t nvec, const uint4 (&keep)[KEEP], T* out, size_t count,
                                                 bool aligned, Waiter& w) {
  const int peer = a.rank ^ 1;
  char* const slot = mine + peer_slot(peer, a.rank) * a.push_slot_bytes;
  uint4 x[KEEP];
#pragma unroll
  for (int u = 0; u < KEEP; u++)
    if (first + u * stride < nvec) x[u] = ld_volatile_v4(slot + (first + u * stride) * 16);
  bool ok = true;
#pragma unroll
  for (int u = 0; u < KEEP; u++) {
    const size_t v = first + u * stride;
    if (ok && v < nvec) {
      char* src = slot + v * 16;
      uint4 y = x[u];
      while (has_empty<T>(y)) {
        if (w.give_up(peer, 1)) {
          ok = false;
          break;
        }
        y = ld_volatile_v4(src);
      }
      if (ok) {
        *reinterpret_cast<uint4*>(src) = make_uint4(kEmpty, kEmpty, kEmpty, kEmpty); /* re-arm */
        Acc<T> acc;
        acc.set(a.rank == 0 ? keep[u] : y);
        acc.add(a.rank == 0 ? y : keep[u]);
        store_out(out, v, count, aligned, acc.pack());
      }
    }
  }
  return ok;
}

/* STREAM (messages of more than one group, kKeep vectors a thread): after the first group, pushes run one
 * group ahead of the reduces (push v + group, then reduce v) instead of all pushes first, so the local traffic
 * of a large message (slots, re-arm, output) overlaps its NVLink traffic; measured 64 MiB 285 -> 203 us with
 * 64 MiB slots (perf-log.md). Without STREAM the code is the small-message path (one group, no loops after it).
 * NR: the rank count when fixed at compile time (2), 0 = a.nranks at run time. Local memory (ptxas
 * -warn-lmem-usage): reduce_kept_pair uses guards, not breaks, so that its x[] stays in registers (with the dead
 * remainder loops gone from the non-STREAM kernels: 0.04-0.1 us faster at 1-64 KiB); reduce_vec keeps its
 * break, which puts its x[] in a 128-byte frame in the 16-bit STREAM kernels at NR = 2, but measured 1.3 %
 * faster at 64 MiB than the guard form (perf-log.md, sixth round).
 * KEEP: vectors a thread keeps (the group is KEEP x the grid's threads). kKeep, except for messages of at most
 * one vector a thread (up to ~1 MiB at the default grid), which get a kernel with KEEP = 1: 32 registers
 * instead of 64 at NR = 2, and 0.1-0.35 us faster from 1 KiB to 1 MiB (1 KiB 1.86 -> 1.70, 64 KiB 2.48 -> 2.22,
 * 1 MiB 5.42 -> 5.08; perf-log.md, sixth round). */
template <typename T, bool STREAM, int NR, int KEEP>
__global__ void __launch_bounds__(512) oneshot_push_kernel(tpc_ar_args_t a, const T* in, T* out, size_t count,
                                                           bool aligned) {
  constexpr int E = Elem<T>::kPerVec;
  const int n = NR ? NR : a.nranks;
  const size_t nvec = (count + E - 1) / E;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  /* everything that depends only on the launch (parameters, peer addresses) is computed before the wait
   * for the previous kernel, so that after it only the epoch and input loads remain on the critical path */
  char* dst[TPC_AR_MAX_RANKS];
#pragma unroll
  for (int p = 0; p < TPC_AR_MAX_RANKS; p++) {
    dst[p] = (char*)a.push[p < n ? p : 0] + peer_slot(a.rank, p) * a.push_slot_bytes;
    asm volatile("" : "+l"(dst[p]));
  }
  char* mine = (char*)a.push[a.rank];
  uint32_t* epoch_ptr = &a.local->epoch[blockIdx.x];
  asm volatile("" : "+l"(mine), "+l"(epoch_ptr), "+l"(in));
  pdl_wait();
  pdl_trigger();
  /* the epoch and the first inputs are independent loads: issue them together */
  const uint32_t epoch = *epoch_ptr;
  uint4 keep[KEEP];
#pragma unroll
  for (int u = 0; u < KEEP; u++)
    if (first + u * stride < nvec) keep[u] = sanitize<T>(load_in(in, first + u * stride, count, aligned));
  const size_t slot = (size_t)(epoch & 1u) * (n - 1) * a.push_slot_bytes;
#pragma unroll
  for (int p = 0; p < TPC_AR_MAX_RANKS; p++) dst[p] += slot;
  mine += slot;

#pragma unroll
  for (int u = 0; u < KEEP; u++)
    if (first + u * stride < nvec) push_vec(a, n, dst, first + u * stride, keep[u]);
  const size_t group = KEEP * stride;
  /* STREAM: the second group now, the others one group ahead of the reduces below. Without STREAM the launcher
   * guarantees nvec <= group: the one group was pushed above, and nothing follows the kept reduces. */
  if constexpr (STREAM) {
    const size_t push_end = first + 2 * group < nvec ? first + 2 * group : nvec;
    for (size_t v = first + group; v < push_end; v += stride)
      push_vec(a, n, dst, v, sanitize<T>(load_in(in, v, count, aligned)));
  }

  Waiter w(a);
  bool ok = true;
  if constexpr (NR == 2) {
    ok = reduce_kept_pair<T, KEEP>(a, mine, first, stride, nvec, keep, out, count, aligned, w);
  } else {
#pragma unroll
    for (int u = 0; u < KEEP; u++)
      if (ok && first + u * stride < nvec)
        ok = reduce_vec<T>(a, n, mine, first + u * stride, keep[u], out, count, aligned, w);
  }
  /* in place: in[v] is still the input (a thread writes out[v] only after its own last read of in[v]) */
  if constexpr (STREAM)
  for (size_t v = first + group; ok && v < nvec; v += stride) {
    if (v + group < nvec) /* the next group's vector (groups 0 and 1 were pushed above) */
      push_vec(a, n, dst, v + group, sanitize<T>(load_in(in, v + group, count, aligned)));
    ok = reduce_vec<T>(a, n, mine, v, sanitize<T>(load_in(in, v, count, aligned)), out, count, aligned, w);
  }

  __syncthreads(); /* every thread has read the epoch */
  if (threadIdx.x == 0) *epoch_ptr = epoch + 1;
}

/* ---- two-shot pull ------------------------------------------------------------------------------- */
/* Block barrier with block `blockIdx.x` of every peer; `k` counts barriers within this call (1, 2). */
__device__ bool peer_barrier(const tpc_ar_args_t& a, uint32_t base, uint32_t k, bool* s_fail) {
  __syncthreads();
  const int p = threadIdx.x;
  if (p < a.nranks && p != a.rank) {
    const size_t me = (size_t)blockIdx.x * TPC_AR_MAX_RANKS;
    red_release_sys(a.sems[p] + me + a.rank, 1u);
    const uint32_t* mine = a.sems[a.rank] + me + p;
    Waiter w(a);
    while ((int32_t)(ld_acquire_sys(mine) - (base + k)) < 0) {
      if (w.give_up(p, 2)) {
        *s_fail = true;
        break;
      }
    }
    __threadfence_system();
  }
  __syncthreads();
  return !*s_fail;
}

/* Peer data after a barrier: a strong (volatile = relaxed, system scope) load, so no cache level of this
 * GPU can hand back a line a previous call left there. */
__device__ __forceinline__ uint4 ld_peer_v4(const void* p) { return ld_volatile_v4(p); }

constexpr int kUnroll = 4; /* independent 16-byte loads in flight per thread in the two-shot phases */

template <typename T>
__global__ void __launch_bounds__(512) twoshot_pull_kernel(tpc_ar_args_t a, const T* in, T* out, size_t count,
                                                           bool aligned) {
  constexpr int E = Elem<T>::kPerVec;
  __shared__ bool s_fail;
  pdl_wait();
  pdl_trigger();
  if (threadIdx.x == 0) s_fail = false;
  const uint32_t base = a.local->sem_base[blockIdx.x]; /* written back by thread 0 after both barriers */
  const int rank = a.rank, n = a.nranks;
  const size_t nvec = (count + E - 1) / E;
  const size_t chunk = (nvec + n - 1) / n;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  char* const mypull = (char*)a.pull[rank];
  auto chunk_len = [&](int j) -> size_t {
    size_t lo = (size_t)j * chunk;
    return lo >= nvec ? 0 : (nvec - lo < chunk ? nvec - lo : chunk);
  };

  /* phase 1: the chunks the peers own, into my pull buffer */
  for (int j = 0; j < n; j++) {
    if (j == rank) continue;
    const size_t len = chunk_len(j), off = (size_t)j * chunk;
    for (size_t i0 = first; i0 < len; i0 += kUnroll * stride) {
      uint4 x[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; u++)
        if (i0 + u * stride < len) x[u] = load_in(in, off + i0 + u * stride, count, aligned);
#pragma unroll
      for (int u = 0; u < kUnroll; u++)
        if (i0 + u * stride < len) *reinterpret_cast<uint4*>(mypull + (off + i0 + u * stride) * 16) = x[u];
    }
  }
  if (!peer_barrier(a, base, 1, &s_fail)) return;

  /* phase 2: reduce my chunk in rank order */
  {
    const size_t len = chunk_len(rank), off = (size_t)rank * chunk;
    for (size_t i0 = first; i0 < len; i0 += kUnroll * stride) {
      Acc<T> acc[kUnroll];
      for (int p = 0; p < n; p++) {
        uint4 x[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
          const size_t v = off + i0 + u * stride;
          if (i0 + u * stride < len)
            x[u] = (p == rank) ? load_in(in, v, count, aligned) : ld_peer_v4((const char*)a.pull[p] + v * 16);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; u++)
          if (i0 + u * stride < len) {
            if (p == 0) acc[u].set(x[u]);
            else acc[u].add(x[u]);
          }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; u++) {
        const size_t v = off + i0 + u * stride;
        if (i0 + u * stride < len) {
          const uint4 r = acc[u].pack();
          store_out(out, v, count, aligned, r);
          *reinterpret_cast<uint4*>(mypull + v * 16) = r;
        }
      }
    }
  }
  if (!peer_barrier(a, base, 2, &s_fail)) return;

  /* phase 3: everyone else's reduced chunk */
  for (int j = 0; j < n; j++) {
    if (j == rank) continue;
    const size_t len = chunk_len(j), off = (size_t)j * chunk;
    const char* src = (const char*)a.pull[j];
    for (size_t i0 = first; i0 < len; i0 += kUnroll * stride) {
      uint4 x[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; u++)
        if (i0 + u * stride < len) x[u] = ld_peer_v4(src + (off + i0 + u * stride) * 16);
#pragma unroll
      for (int u = 0; u < kUnroll; u++)
        if (i0 + u * stride < len) store_out(out, off + i0 + u * stride, count, aligned, x[u]);
    }
  }
  if (threadIdx.x == 0) a.local->sem_base[blockIdx.x] = base + 2;
}

template <typename T>
cudaError_t launch_typed(int algo, const tpc_ar_args_t* a, const void* in, void* out, size_t count, int pdl,
                         cudaStream_t stream) {
  constexpr int E = Elem<T>::kPerVec;
  const size_t nvec = (count + E - 1) / E;
  const size_t work = algo == 1 ? nvec : (nvec + a->nranks - 1) / a->nranks;
  size_t per_block = (work + a->blocks - 1) / a->blocks;
  int threads = (int)((per_block + 31) / 32 * 32);
  if (threads < 32) threads = 32;
  if (threads > a->max_threads) threads = a->max_threads;
  const bool aligned = ((uintptr_t)in % 16 == 0) && ((uintptr_t)out % 16 == 0);

  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg = pdl_launch_config(dim3((unsigned)a->blocks), dim3((unsigned)threads), 0, stream, pdl, attr);
  if (algo == 1) {
    const size_t grid_threads = (size_t)a->blocks * threads;
    const bool stream_form = nvec > (size_t)kKeep * grid_threads, two = a->nranks == 2;
    /* one vector a thread at most (up to ~1 MiB at the default grid): KEEP = 1, else kKeep */
    auto kernel = stream_form ? (two ? oneshot_push_kernel<T, true, 2, kKeep> : oneshot_push_kernel<T, true, 0, kKeep>)
                  : nvec <= grid_threads ? (two ? oneshot_push_kernel<T, false, 2, 1> : oneshot_push_kernel<T, false, 0, 1>)
                                         : (two ? oneshot_push_kernel<T, false, 2, kKeep> : oneshot_push_kernel<T, false, 0, kKeep>);
    return cudaLaunchKernelEx(&cfg, kernel, *a, (const T*)in, (T*)out, count, aligned);
  }
  return cudaLaunchKernelEx(&cfg, twoshot_pull_kernel<T>, *a, (const T*)in, (T*)out, count, aligned);
}

}  // namespace

extern "C" cudaError_t tpc_ar_launch(int algo, const tpc_ar_args_t* args, const void* in, void* out, size_t count,
                                     int dtype, int pdl, cudaStream_t stream) {
  if (algo != 1 && algo != 2) return cudaErrorInvalidValue;
  switch (dtype) {
    case 0: return launch_typed<__nv_bfloat16>(algo, args, in, out, count, pdl, stream);
    case 1: return launch_typed<__half>(algo, args, in, out, count, pdl, stream);
    case 2: return launch_typed<float>(algo, args, in, out, count, pdl, stream);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" cudaError_t tpc_ar_clear_push(void* dst, size_t bytes, cudaStream_t stream) {
  return cudaMemsetAsync(dst, 0xff, bytes, stream);
}
