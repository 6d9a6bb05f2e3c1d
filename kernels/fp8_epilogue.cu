/* fp8_epilogue.cu — the scaling epilogue of the FP8 GEMM's EPILOGUE path (comm/gemm.c):
 *   y[t][j] = (acc[t][j] * s_tok[t]) * s_w[j]       for t < m, j < n
 * where acc is the fp32 result of a cuBLASLt FP8 matmul with unit scales, s_tok the per-token scales of
 * the quantized activations and s_w the per-channel weight scales; y is bf16, fp16 (rounded to nearest
 * even) or fp32. acc may be y itself (fp32 output, in place): each element is read and written by the same
 * thread. Multiplying the large accumulator by the token scale first keeps a tiny s_tok * s_w product from
 * underflowing before the accumulator is applied.
 *
 * Launch: 256 threads, each handles 4 consecutive columns of one row (float4 loads of acc and s_w, one
 * 8-byte or 16-byte store) when acc, s_w and y are aligned for it and the row has 4 columns left, else
 * element by element; grid (column groups, rows) with a grid-stride loop over rows (gridDim.y <= 65535).
 * PDL: griddepcontrol.wait before reading anything (the matmul may still be running), launch_dependents
 * right after. No shared memory.
 *
 * Relies on: being called by comm/gemm.c with validated arguments (C interface below, declared there). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <cuda_runtime_api.h>
#include "pdl.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kCols = 4;

using tpc::pdl_trigger; /* kernels/pdl.cuh */
using tpc::pdl_wait;

template <typename T>
struct Out;
template <>
struct Out<__nv_bfloat16> {
  static __device__ __forceinline__ void store4(void* p, float4 v) {
    const __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&a);
    u.y = *reinterpret_cast<const uint32_t*>(&b);
    *reinterpret_cast<uint2*>(p) = u;
  }
  static __device__ __forceinline__ void store1(void* p, float v) { *static_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(v); }
};
template <>
struct Out<__half> {
  static __device__ __forceinline__ void store4(void* p, float4 v) {
    const __half2 a = __floats2half2_rn(v.x, v.y), b = __floats2half2_rn(v.z, v.w);
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&a);
    u.y = *reinterpret_cast<const uint32_t*>(&b);
    *reinterpret_cast<uint2*>(p) = u;
  }
  static __device__ __forceinline__ void store1(void* p, float v) { *static_cast<__half*>(p) = __float2half_rn(v); }
};
template <>
struct Out<float> {
  static __device__ __forceinline__ void store4(void* p, float4 v) { *static_cast<float4*>(p) = v; }
  static __device__ __forceinline__ void store1(void* p, float v) { *static_cast<float*>(p) = v; }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) fp8_epilogue_kernel(const float* acc, int64_t acc_ld, const float* s_tok,
                                                                const float* s_w, T* y, int64_t y_ld, int64_t m,
                                                                int64_t n, int vec) {
  pdl_wait();
  pdl_trigger();
  const int64_t j = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * kCols;
  if (j >= n) return;
  const bool full = vec && j + kCols <= n;
  const float4 w = full ? *reinterpret_cast<const float4*>(s_w + j) : make_float4(0.f, 0.f, 0.f, 0.f);
  for (int64_t t = blockIdx.y; t < m; t += gridDim.y) {
    const float st = s_tok[t];
    const float* a = acc + t * acc_ld + j;
    T* out = y + t * y_ld + j;
    if (full) {
      float4 v = *reinterpret_cast<const float4*>(a);
      v.x = __fmul_rn(__fmul_rn(v.x, st), w.x);
      v.y = __fmul_rn(__fmul_rn(v.y, st), w.y);
      v.z = __fmul_rn(__fmul_rn(v.z, st), w.z);
      v.w = __fmul_rn(__fmul_rn(v.w, st), w.w);
      Out<T>::store4(out, v);
    } else {
#pragma unroll
      for (int c = 0; c < kCols; c++)
        if (j + c < n) Out<T>::store1(out + c, __fmul_rn(__fmul_rn(a[c], st), s_w[j + c]));
    }
  }
}

}  // namespace

/* out_dtype: 0 bf16, 1 fp16, 2 fp32 (tpc_dtype_t values). Returns the launch error. */
extern "C" cudaError_t tpc_fp8_epilogue_launch(const float* acc, int64_t acc_ld, const float* s_tok, const float* s_w,
                                               void* y, int64_t y_ld, int64_t m, int64_t n, int out_dtype, int pdl,
                                               cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  const size_t out_size = out_dtype == 2 ? 4 : 2;
  const int vec = (uintptr_t)acc % 16 == 0 && acc_ld % kCols == 0 && (uintptr_t)s_w % 16 == 0 &&
                  (uintptr_t)y % (kCols * out_size) == 0 && y_ld % kCols == 0;
  const int64_t groups = (n + kCols - 1) / kCols;
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg =
      tpc::pdl_launch_config(dim3((unsigned)((groups + kThreads - 1) / kThreads), (unsigned)(m < 65535 ? m : 65535)),
                             dim3(kThreads), 0, stream, pdl, attr);
  switch (out_dtype) {
    case 0:
      return cudaLaunchKernelEx(&cfg, fp8_epilogue_kernel<__nv_bfloat16>, acc, acc_ld, s_tok, s_w,
                                static_cast<__nv_bfloat16*>(y), y_ld, m, n, vec);
    case 1:
      return cudaLaunchKernelEx(&cfg, fp8_epilogue_kernel<__half>, acc, acc_ld, s_tok, s_w, static_cast<__half*>(y),
                                y_ld, m, n, vec);
    case 2:
      return cudaLaunchKernelEx(&cfg, fp8_epilogue_kernel<float>, acc, acc_ld, s_tok, s_w, static_cast<float*>(y),
                                y_ld, m, n, vec);
    default: return cudaErrorInvalidValue;
  }
}
