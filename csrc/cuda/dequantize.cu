// launch_dequantize: W [n, k] in fp16 / bf16 / fp32 from the canonical packed tensors, for the
// matmuls with more rows of x than the GEMV takes (the binding hands the result to cuBLAS).
#include "common.cuh"
#include "gemv_mma.h"
#include "qmatmul_cuda.h"
#include "static_switch.h"

namespace qk::cuda {
namespace {

constexpr int kDequantK = 8;  // weights per thread: one 16-byte store of fp16 / bf16
constexpr int kDequantThreads = 256;

// One thread per 8 consecutive weights of a row. Memory-bound on the 2-byte writes; the codes
// are read with byte loads, which coalesce across the warp.
template <Format kFmt, typename Out>
__global__ void __launch_bounds__(kDequantThreads)
    dequantize_kernel(const QMatmulParams p,  // weight fields only
                      Out* w_out,             // [n, k], row stride k
                      int64_t row_chunks,     // ceil(k / 8)
                      bool vector_store)      // k % 8 == 0 and w_out 16-byte aligned
{
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n * row_chunks) return;
  const int64_t n = i / row_chunks, k0 = (i % row_chunks) * kDequantK;
  const auto* w_row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const float* s_row = p.scales + n * p.scales_row_stride;
  const float* z_row = p.zeros ? p.zeros + n * p.scales_row_stride : nullptr;

  int64_t g = k0 / p.group_size, next_group_k = (g + 1) * p.group_size;
  float scale = s_row[g], zero = zero_point<kFmt>(z_row, g);
  Out v[kDequantK];
#pragma unroll
  for (int j = 0; j < kDequantK; ++j) {
    const int64_t k = k0 + j;
    if (k < p.k) {
      if (k == next_group_k) {  // groups may be smaller than 8: step one at a time
        ++g;
        next_group_k += p.group_size;
        scale = s_row[g];
        zero = zero_point<kFmt>(z_row, g);
      }
      v[j] = from_float<Out>(scale * (code_value<kFmt>(w_row, k) - zero));
    }
  }
  Out* out = w_out + n * p.k + k0;
  if (vector_store) {
    static_assert(sizeof(v) % 16 == 0, "whole 16-byte stores");
#pragma unroll
    for (int b = 0; b < int(sizeof(v) / 16); ++b) {
      reinterpret_cast<uint4*>(out)[b] = reinterpret_cast<const uint4*>(v)[b];
    }
  } else {
    for (int j = 0; j < kDequantK && k0 + j < p.k; ++j) out[j] = v[j];
  }
}

}  // namespace

cudaError_t launch_dequantize(const QMatmulParams& p, void* w_out, DType out_dtype,
                              cudaStream_t stream) {
  const int64_t row_chunks = (p.k + kDequantK - 1) / kDequantK;
  const int64_t blocks = (p.n * row_chunks + kDequantThreads - 1) / kDequantThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const bool vector_store = p.k % kDequantK == 0 && aligned_16B(w_out);
  return QK_FORMAT_SWITCH(p.fmt, kFmt, [&] {
    return QK_DTYPE_SWITCH(out_dtype, Out, [&] {
      dequantize_kernel<kFmt, Out><<<unsigned(blocks), kDequantThreads, 0, stream>>>(
          p, static_cast<Out*>(w_out), row_chunks, vector_store);
      return cudaGetLastError();
    });
  });
}

}  // namespace qk::cuda
