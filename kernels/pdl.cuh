/* pdl.cuh — programmatic dependent launch (sm_90+) for every kernel of tpcomm. In the kernel: pdl_wait()
 * before the first read of anything the previous kernel may still be writing, pdl_trigger() once the next
 * kernel may be scheduled (no-ops on older architectures). On the host: pdl_launch_config(), the
 * cudaLaunchKernelEx configuration that allows it, and resident_blocks_per_sm(), the occupancy that sizes the
 * first wave of blocks (the ones that may prefetch before the wait) or a grid that must be resident at once. */
#ifndef TPCOMM_KERNELS_PDL_CUH
#define TPCOMM_KERNELS_PDL_CUH

#include <cuda_runtime_api.h>

#include <atomic>

namespace tpc {

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

/* grid x block on stream, with programmatic stream serialization when pdl is non-zero. attr (one element)
 * holds the attribute and must live until the launch. */
inline cudaLaunchConfig_t pdl_launch_config(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, int pdl,
                                            cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cfg;
}

/* Blocks of Kernel that one SM of the current device (`device`, the caller's cudaGetDevice) holds at `threads` threads
 * and no dynamic shared memory, at least 1. Queried once per kernel, device and block size (a multiple of 32 up to
 * 1024: one cache per Kernel, here), then read from the cache; on failure returns the query's error (not cleared). */
constexpr int kOccupancyDevices = 64;
template <auto Kernel>
cudaError_t resident_blocks_per_sm(int device, int threads, int* blocks) {
  static std::atomic<int> s_cache[kOccupancyDevices][33];
  const int slot = threads / 32;
  const bool cached = device >= 0 && device < kOccupancyDevices && threads % 32 == 0 && slot <= 32;
  int occ = cached ? s_cache[device][slot].load(std::memory_order_relaxed) : 0;
  if (occ <= 0) {
    const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, Kernel, threads, 0);
    if (err != cudaSuccess) return err;
    if (occ < 1) occ = 1;
    if (cached) s_cache[device][slot].store(occ, std::memory_order_relaxed);
  }
  *blocks = occ;
  return cudaSuccess;
}

}  // namespace tpc

#endif
