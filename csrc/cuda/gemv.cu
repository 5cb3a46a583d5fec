// launch_gemv: the tensor-core GEMV where it applies (gemv_mma.cuh), otherwise a generic
// warp-per-row kernel that takes any shape, group size, alignment and activation dtype.
#include "common.cuh"
#include "gemv_mma.h"
#include "qmatmul_cuda.h"
#include "static_switch.h"

namespace qk::cuda {
namespace {

constexpr int kGenericWarps = 8;  // weight rows per block
constexpr int kGenericXRows = 8;  // rows of x per pass: one fp32 accumulator each per lane

// One warp per weight row n, lanes striding over k with scalar loads; blockIdx.y picks the 8
// rows of x. Correct for every input the checks accept; fast only where nothing else applies.
// kDqAbsmax: nf4 whose absmax is decoded from p.absmax_dq at each load.
template <Format kFmt, typename T, bool kDqAbsmax>
__global__ void __launch_bounds__(kGenericWarps * 32)
    gemv_generic_kernel(const QMatmulParams p) {  // x [m, k] T, y [m, n] T
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kGenericWarps + threadIdx.x / 32;
  if (n >= p.n) return;
  const int64_t m0 = int64_t(blockIdx.y) * kGenericXRows;
  const int64_t rows = p.m - m0 < kGenericXRows ? p.m - m0 : kGenericXRows;
  const auto* w_row = static_cast<const uint8_t*>(p.qweight) + n * p.qweight_row_stride;
  const int64_t s_row = n * p.scales_row_stride;
  const float* z_row = p.zeros ? p.zeros + n * p.scales_row_stride : nullptr;
  const T* x = static_cast<const T*>(p.x) + m0 * p.x_row_stride;

  float acc[kGenericXRows] = {};
  for (int64_t k = lane; k < p.k; k += 32) {
    const int64_t g = k / p.group_size;
    const float scale = load_scale<kDqAbsmax>(p, s_row + g);
    const float w = scale * (code_value<kFmt>(w_row, k) - zero_point<kFmt>(z_row, g));
#pragma unroll
    for (int i = 0; i < kGenericXRows; ++i) {
      if (i < rows) acc[i] += w * to_float(x[i * p.x_row_stride + k]);
    }
  }
#pragma unroll
  for (int i = 0; i < kGenericXRows; ++i) {
    float sum = acc[i];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0 && i < rows) {
      if (p.bias) sum += to_float(static_cast<const T*>(p.bias)[n]);
      static_cast<T*>(p.y)[(m0 + i) * p.y_row_stride + n] = from_float<T>(sum);
    }
  }
}

cudaError_t launch_gemv_generic(const QMatmulParams& p, cudaStream_t stream) {
  const int64_t x_tiles = (p.m + kGenericXRows - 1) / kGenericXRows;
  const int64_t w_tiles = (p.n + kGenericWarps - 1) / kGenericWarps;
  if (x_tiles > 65535 || w_tiles > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid{unsigned(w_tiles), unsigned(x_tiles)};
  if (p.absmax_dq.codes) {
    return QK_DTYPE_SWITCH(p.x_dtype, T, [&] {
      gemv_generic_kernel<Format::kNF4, T, true><<<grid, kGenericWarps * 32, 0, stream>>>(p);
      return cudaGetLastError();
    });
  }
  return QK_FORMAT_SWITCH(p.fmt, kFmt, [&] {
    return QK_DTYPE_SWITCH(p.x_dtype, T, [&] {
      gemv_generic_kernel<kFmt, T, false><<<grid, kGenericWarps * 32, 0, stream>>>(p);
      return cudaGetLastError();
    });
  });
}

}  // namespace

bool gemv_wins_above_8_rows(const QMatmulParams& p, int sm_count) {
  if (p.m <= kGemvMaxRows || p.m > kGemvTallMaxRows || !gemv_mma_supported(p)) return false;
  if (p.fmt != Format::kNF4) return true;
  const int64_t tall_blocks = (p.n + 15) / 16;  // one 16-row tile of x
  const int64_t tall_wave = int64_t(kGemvTallBlocksPerSM) * sm_count;
  return tall_blocks <= 2 * tall_wave && (tall_blocks > tall_wave || p.k <= 8192);
}

cudaError_t launch_gemv(const QMatmulParams& p, int sm_count, bool dependent,
                        cudaStream_t stream) {
  if (!gemv_mma_supported(p)) return launch_gemv_generic(p, stream);
  if (p.absmax_dq.codes) {
    return p.x_dtype == DType::kF16
               ? launch_gemv_mma<Format::kNF4, half, true>(p, sm_count, dependent, stream)
               : launch_gemv_mma<Format::kNF4, __nv_bfloat16, true>(p, sm_count, dependent,
                                                                   stream);
  }
  return QK_FORMAT_SWITCH(p.fmt, kFmt, [&] {
    return p.x_dtype == DType::kF16
               ? launch_gemv_mma<kFmt, half>(p, sm_count, dependent, stream)
               : launch_gemv_mma<kFmt, __nv_bfloat16>(p, sm_count, dependent, stream);
  });
}

}  // namespace qk::cuda
