// Declarations of the tensor-core GEMV (gemv_mma.cuh) for the dispatcher: which shapes it takes,
// and one launcher per (format, activation dtype), each instantiated in its own .cu file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../core/qmatmul.h"

namespace qk::cuda {

// log2 of a power of two.
inline int log2_exact(int64_t v) {
  int shift = 0;
  while ((int64_t(1) << shift) < v) ++shift;
  return shift;
}

inline bool aligned_16B(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The fast GEMV reads 16-byte chunks of whole rows and looks a chunk's group up with a shift:
// fp16/bf16 x; K a multiple of the chunk (32 k for 4-bit, 16 for int8) below 2^31; groups a
// power-of-two multiple of the chunk, or one group per row; 16-byte-aligned rows of x and W.
inline bool gemv_mma_supported(const QMatmulParams& p) {
  const int64_t chunk_k = p.fmt == Format::kInt8 ? 16 : 32;
  const bool half_x = p.x_dtype == DType::kF16 || p.x_dtype == DType::kBF16;
  const bool pow2_groups = p.group_size % chunk_k == 0 && (p.group_size & (p.group_size - 1)) == 0;
  return half_x && p.y_dtype == p.x_dtype && p.k % chunk_k == 0 && p.k < (int64_t(1) << 31) &&
         (pow2_groups || p.group_size >= p.k) && aligned_16B(p.qweight) &&
         p.qweight_row_stride % 16 == 0 && aligned_16B(p.x) && p.x_row_stride % 8 == 0;
}

// Blocks per SM of the GEMV's tall shape (16 rows of x per block, M > 8).
constexpr int kGemvTallBlocksPerSM = 2;

// T = half or __nv_bfloat16, the dtype of x and y. kDqAbsmax: nf4 whose absmax is p.absmax_dq.
// sm_count: the GPU's SMs, for the choice of launch shape. dependent: by launch_dependent
// (sm_90+; launch_gemv).
template <Format kFmt, typename T, bool kDqAbsmax = false>
cudaError_t launch_gemv_mma(const QMatmulParams& p, int sm_count, bool dependent,
                            cudaStream_t stream);

}  // namespace qk::cuda
