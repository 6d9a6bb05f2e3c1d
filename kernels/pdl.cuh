/* pdl.cuh — programmatic dependent launch (sm_90+) for every kernel of tpcomm. In the kernel: pdl_wait()
 * before the first read of anything the previous kernel may still be writing, pdl_trigger() once the next
 * kernel may be scheduled (no-ops on older architectures). On the host: pdl_launch_config(), the
 * cudaLaunchKernelEx configuration that allows it. */
#ifndef TPCOMM_KERNELS_PDL_CUH
#define TPCOMM_KERNELS_PDL_CUH

#include <cuda_runtime_api.h>

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

}  // namespace tpc

#endif
