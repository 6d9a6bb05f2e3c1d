/* allreduce.cu — the custom all-reduce kernels: one-shot push (Lamport) and two-shot pull.
 *
 * Both reduce in fp32 in rank order 0..N-1 (acc = x0; acc += x1; ...) with the same code, so every rank
 * gets bitwise-identical results and the two algorithms agree bit for bit. Data moves in 16-byte vectors;
 * a tail shorter than a vector (or a buffer not aligned to 16 bytes) is loaded and stored element by
 * element. Layout of the shared arena: allreduce.h.
 *
 * One-shot push: every thread sends its vectors of the input to every peer's slot [epoch&1][my rank],
 * then polls its own slots for the peers' vectors. Arrival needs no flag: an empty slot holds all-ones
 * bytes (0xFFFF per 16-bit element, 0xFFFFFFFF per fp32), a NaN pattern that a sender never writes (it
 * rewrites such inputs to the canonical NaN 0x7FFF / 0x7FFFFFFF, which changes no arithmetic: NaN stays
 * NaN). After reading a vector the reader writes all-ones back (re-arms). Two slots alternate: a peer
 * can be at most one call ahead (it cannot finish call e+1 without my data of e+1, which I send only
 * after I finished reading call e), so slot e&1 is never written for e+2 before I re-armed it in e.
 * Epochs are per block and every launch uses the same grid, so all blocks of all ranks agree.
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
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "allreduce.h"

namespace {

template <typename T>
struct Elem;
template <>
struct Elem<__nv_bfloat16> {
  static constexpr int kPerVec = 8;
  static __device__ __forceinline__ float to_float(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
  static __device__ __forceinline__ uint16_t from_float(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
  }
};
template <>
struct Elem<__half> {
  static constexpr int kPerVec = 8;
  static __device__ __forceinline__ float to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }
  static __device__ __forceinline__ uint16_t from_float(float f) { return __half_as_ushort(__float2half_rn(f)); }
};
template <>
struct Elem<float> {
  static constexpr int kPerVec = 4;
};

/* ---- memory access primitives -------------------------------------------------------------------- */
__device__ __forceinline__ void st_volatile_v4(void* p, uint4 v) {
  asm volatile("st.volatile.global.v4.b32 [%0], {%1,%2,%3,%4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ uint4 ld_volatile_v4(const void* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.b32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}
__device__ __forceinline__ uint32_t ld_acquire_sys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release_sys(uint32_t* p, uint32_t v) {
  asm volatile("red.release.sys.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* ---- the empty pattern --------------------------------------------------------------------------- */
constexpr uint32_t kEmpty = 0xffffffffu;

template <typename T>
__device__ __forceinline__ bool has_empty(uint4 v) {
  if constexpr (sizeof(T) == 4) {
    return v.x == kEmpty || v.y == kEmpty || v.z == kEmpty || v.w == kEmpty;
  } else {
    return (__vcmpeq2(v.x, kEmpty) | __vcmpeq2(v.y, kEmpty) | __vcmpeq2(v.z, kEmpty) | __vcmpeq2(v.w, kEmpty)) != 0;
  }
}
/* all-ones element -> canonical NaN (clears the sign bit only): still NaN, never the empty pattern */
template <typename T>
__device__ __forceinline__ uint32_t sanitize_word(uint32_t w) {
  if constexpr (sizeof(T) == 4) {
    return w == kEmpty ? 0x7fffffffu : w;
  } else {
    return w & ~(__vcmpeq2(w, kEmpty) & 0x80008000u);
  }
}
template <typename T>
__device__ __forceinline__ uint4 sanitize(uint4 v) {
  return make_uint4(sanitize_word<T>(v.x), sanitize_word<T>(v.y), sanitize_word<T>(v.z), sanitize_word<T>(v.w));
}

/* ---- user buffers: 16-byte vectors, element-wise at the tail or when misaligned -------------------- */
template <typename T>
__device__ __forceinline__ uint4 load_in(const T* in, size_t v, size_t count, bool aligned) {
  constexpr int E = Elem<T>::kPerVec;
  size_t first = v * E;
  if (aligned && first + E <= count) return *reinterpret_cast<const uint4*>(in + first);
  union {
    uint4 u;
    T e[E];
  } r;
  r.u = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int i = 0; i < E; i++)
    if (first + i < count) r.e[i] = in[first + i];
  return r.u;
}
template <typename T>
__device__ __forceinline__ void store_out(T* out, size_t v, size_t count, bool aligned, uint4 val) {
  constexpr int E = Elem<T>::kPerVec;
  size_t first = v * E;
  if (aligned && first + E <= count) {
    *reinterpret_cast<uint4*>(out + first) = val;
    return;
  }
  union {
    uint4 u;
    T e[E];
  } r;
  r.u = val;
#pragma unroll
  for (int i = 0; i < E; i++)
    if (first + i < count) out[first + i] = r.e[i];
}

/* ---- fp32 accumulation in rank order ------------------------------------------------------------- */
template <typename T>
struct Acc {
  static constexpr int E = Elem<T>::kPerVec;
  float f[E];
  __device__ __forceinline__ void set(uint4 v) { convert(v, true); }
  __device__ __forceinline__ void add(uint4 v) { convert(v, false); }
  __device__ __forceinline__ void convert(uint4 v, bool first) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < E; i++) {
      float x;
      if constexpr (sizeof(T) == 4) x = __uint_as_float(w[i]);
      else x = Elem<T>::to_float((uint16_t)(w[i / 2] >> (16 * (i & 1))));
      f[i] = first ? x : f[i] + x;
    }
  }
  __device__ __forceinline__ uint4 pack() const {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      if constexpr (sizeof(T) == 4) w[i] = __float_as_uint(f[i]);
      else w[i] = (uint32_t)Elem<T>::from_float(f[2 * i]) | ((uint32_t)Elem<T>::from_float(f[2 * i + 1]) << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
};

/* ---- bounded waiting ----------------------------------------------------------------------------- */
struct Waiter {
  static constexpr uint32_t kSpinsPerCheck = 1024;    /* polls between clock reads */
  static constexpr uint64_t kAbortPollNs = 100000;    /* host abort word: read at most every 100 us */
  tpc_ar_local_t* local;
  tpc_ar_status_t* status;
  uint64_t timeout_ns;
  uint64_t start = 0, last_abort_check = 0;
  uint32_t spins = 0;
  __device__ Waiter(const tpc_ar_args_t& a) : local(a.local), status(a.status), timeout_ns(a.timeout_ns) {}
  /* true when the caller must stop waiting (timeout here, failure elsewhere, or abort). The common case
   * (the peer's data arrives within a few polls) costs one increment and compare per poll: the clock,
   * the failure flag and, rarely, the host abort word (a PCIe read) are looked at only every 1024 polls. */
  __device__ __forceinline__ bool give_up(int peer, uint32_t algo) {
    if ((++spins % kSpinsPerCheck) != 0u) return false;
    const uint64_t now = global_timer_ns();
    if (start == 0) {
      start = last_abort_check = now;
      return false;
    }
    if (*(volatile uint32_t*)&local->failed) return true;
    if (now - start > timeout_ns) {
      report(TPC_AR_ERR_TIMEOUT, peer, algo);
      return true;
    }
    if (now - last_abort_check >= kAbortPollNs) {
      last_abort_check = now;
      if (status->abort_flag) {
        report(TPC_AR_ERR_ABORTED, peer, algo);
        return true;
      }
    }
    return false;
  }
  __device__ void report(uint32_t err, int peer, uint32_t algo) {
    if (atomicCAS(&local->failed, 0u, 1u) == 0u) { /* first failure of this rank */
      status->peer = (uint32_t)peer;
      status->block = blockIdx.x;
      status->algo = algo;
      __threadfence_system();
      status->error = err;
      __threadfence_system();
    }
  }
};

/* ---- one-shot push ------------------------------------------------------------------------------- */
constexpr int kKeep = 4; /* input vectors a thread keeps in registers between push and reduce */

/* Sends vector v (already sanitized) to slot [epoch][my rank] of every peer. */
__device__ __forceinline__ void push_vec(const tpc_ar_args_t& a, size_t slot, size_t v, uint4 x) {
#pragma unroll
  for (int p = 0; p < TPC_AR_MAX_RANKS; p++)
    if (p < a.nranks && p != a.rank)
      st_volatile_v4((char*)a.push[p] + slot + (size_t)a.rank * a.push_slot_bytes + v * 16, x);
}

/* Waits for every peer's vector v in my slots, re-arms them, reduces in rank order with my own vector
 * `own`, writes the output. False when the wait was given up. */
template <typename T>
__device__ __forceinline__ bool reduce_vec(const tpc_ar_args_t& a, char* mine, size_t v, uint4 own, T* out,
                                           size_t count, bool aligned, Waiter& w) {
  const int rank = a.rank, n = a.nranks;
  uint4 x[TPC_AR_MAX_RANKS];
#pragma unroll
  for (int p = 0; p < TPC_AR_MAX_RANKS; p++)
    if (p < n && p != rank) x[p] = ld_volatile_v4(mine + (size_t)p * a.push_slot_bytes + v * 16);
  Acc<T> acc;
#pragma unroll
  for (int p = 0; p < TPC_AR_MAX_RANKS; p++) {
    if (p >= n) break;
    uint4 y = own;
    if (p != rank) {
      char* src = mine + (size_t)p * a.push_slot_bytes + v * 16;
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

template <typename T>
__global__ void __launch_bounds__(512) oneshot_push_kernel(tpc_ar_args_t a, const T* in, T* out, size_t count,
                                                           bool aligned) {
  constexpr int E = Elem<T>::kPerVec;
  pdl_wait();
  pdl_trigger();
  const size_t nvec = (count + E - 1) / E;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  /* the epoch and the first inputs are independent loads: issue them together */
  const uint32_t epoch = a.local->epoch[blockIdx.x];
  uint4 keep[kKeep];
#pragma unroll
  for (int u = 0; u < kKeep; u++)
    if (first + u * stride < nvec) keep[u] = sanitize<T>(load_in(in, first + u * stride, count, aligned));
  const size_t slot = (size_t)(epoch & 1u) * a.nranks * a.push_slot_bytes;

#pragma unroll
  for (int u = 0; u < kKeep; u++)
    if (first + u * stride < nvec) push_vec(a, slot, first + u * stride, keep[u]);
  for (size_t v = first + kKeep * stride; v < nvec; v += stride)
    push_vec(a, slot, v, sanitize<T>(load_in(in, v, count, aligned)));

  char* const mine = (char*)a.push[a.rank] + slot;
  Waiter w(a);
  bool ok = true;
#pragma unroll
  for (int u = 0; u < kKeep; u++)
    if (ok && first + u * stride < nvec) ok = reduce_vec<T>(a, mine, first + u * stride, keep[u], out, count, aligned, w);
  for (size_t v = first + kKeep * stride; ok && v < nvec; v += stride) /* in place: in[v] is still the input */
    ok = reduce_vec<T>(a, mine, v, sanitize<T>(load_in(in, v, count, aligned)), out, count, aligned, w);

  __syncthreads(); /* every thread has read the epoch */
  if (threadIdx.x == 0) a.local->epoch[blockIdx.x] = epoch + 1;
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

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)a->blocks);
  cfg.blockDim = dim3((unsigned)threads);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  if (algo == 1)
    return cudaLaunchKernelEx(&cfg, oneshot_push_kernel<T>, *a, (const T*)in, (T*)out, count, aligned);
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
