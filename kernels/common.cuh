/* common.cuh — device primitives shared by the custom communication kernels (allreduce.cu,
 * tp_qknorm.cu): element conversions, strong loads/stores, the all-ones "empty" pattern of the Lamport
 * slots and its sanitizing, PDL controls, fp32 accumulation in rank order, and the bounded waiter that
 * turns a peer that never answers into a recorded timeout instead of a hang.
 * Everything is static inline / internal to each translation unit. */
#ifndef TPCOMM_KERNELS_COMMON_CUH
#define TPCOMM_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "allreduce.h"
#include "pdl.cuh"

namespace tpc {


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


}  // namespace tpc

#endif
