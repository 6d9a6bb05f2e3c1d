/* tp_qknorm.h — C interface of the tensor-parallel QK-RMSNorm kernels (kernels/tp_qknorm.cu) for
 * comm/tp_qknorm.c. Each rank holds a shard of q and of k (all heads of the model split across ranks);
 * the norm spans the whole vector, so each rank needs the sum of squares of every rank's shard:
 *   fused:    one kernel: partial sums -> pushed to every peer's norm slots (Lamport, as the one-shot
 *             all-reduce) -> summed in rank order -> each rank scales its shard in place
 *   unfused:  partial kernel -> all-reduce of [tokens][2] floats (caller's choice) -> apply kernel */
#ifndef TPCOMM_KERNELS_TP_QKNORM_H
#define TPCOMM_KERNELS_TP_QKNORM_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "allreduce.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  void* q;            /* [tokens][q_stride], this rank's q_dim_local columns normalized in place */
  void* k;            /* [tokens][k_stride] */
  const void* q_weight; /* [q_dim_local] */
  const void* k_weight; /* [k_dim_local] */
  int64_t tokens;
  int q_vecs, k_vecs; /* 16-byte vectors per row: q_dim_local / 8, k_dim_local / 8 */
  int64_t q_stride, k_stride; /* elements */
  float eps;
  float q_total, k_total; /* q_dim_local * world, k_dim_local * world */
  int dtype;              /* 0 bf16, 1 fp16 */
  int device, sm_count;   /* the CUDA device current at the launch and its SMs (the unfused kernels' first wave) */
} tpc_qk_problem_t;

/* Largest q_vecs + k_vecs a block can hold in registers (1024 threads x 4 vectors). */
#define TPC_QK_MAX_VECS 4096

/* One kernel for everything; args->norm slots exchange the partial sums. tokens <= norm_max_tokens. */
cudaError_t tpc_qk_launch_fused(const tpc_ar_args_t* args, const tpc_qk_problem_t* p, int pdl, cudaStream_t stream);
/* sums[t] = {sum of q[t]^2, sum of k[t]^2} over this rank's shard (fp32). */
cudaError_t tpc_qk_launch_partial(const tpc_qk_problem_t* p, float* sums, int pdl, cudaStream_t stream);
/* Scales q and k with the all-reduced sums. */
cudaError_t tpc_qk_launch_apply(const tpc_qk_problem_t* p, const float* sums, int pdl, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
