// launch_gemm: which shapes the tensor-core GEMM (gemm_mma.cuh) takes, its launch plan (tile
// height, split-K), and the kernel that turns split-K partial sums into y.
#include "common.cuh"
#include "gemm_mma.h"
#include "gemv_mma.h"
#include "qmatmul_cuda.h"
#include "static_switch.h"

namespace qk::cuda {
namespace {

constexpr int kFinalizeThreads = 256;

// y[m, n] = T(sum over the slices s of workspace[s][m, n] + bias[n]), in slice order: split-K
// results do not depend on which slice finished first. kVector: N is a multiple of 4 and each
// thread takes 4 consecutive outputs of a row (16-byte loads of the slabs); else one.
template <typename T, bool kVector>
__global__ void __launch_bounds__(kFinalizeThreads)
    split_k_finalize_kernel(const QMatmulParams p, const float* workspace, int slices) {
  wait_for_previous_kernel();  // the GEMM's sums
  constexpr int kOutputs = kVector ? 4 : 1;
  const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kOutputs;
  if (first >= p.m * p.n) return;
  const int64_t m = first / p.n, n = first % p.n, slab = p.m * p.n;
  float v[kOutputs];
  auto load = [&](int s, float (&out)[kOutputs]) {
    if constexpr (kVector) {
      const float4 w = *reinterpret_cast<const float4*>(workspace + s * slab + first);
      out[0] = w.x, out[1] = w.y, out[2] = w.z, out[3] = w.w;
    } else {
      out[0] = workspace[s * slab + first];
    }
  };
  load(0, v);
  for (int s = 1; s < slices; ++s) {
    float w[kOutputs];
    load(s, w);
#pragma unroll
    for (int e = 0; e < kOutputs; ++e) v[e] += w[e];
  }
  T* y = static_cast<T*>(p.y) + m * p.y_row_stride + n;
#pragma unroll
  for (int e = 0; e < kOutputs; ++e) {
    if (p.bias) v[e] += to_float(static_cast<const T*>(p.bias)[n + e]);
    y[e] = from_float<T>(v[e]);
  }
}

}  // namespace

bool gemm_supported(const QMatmulParams& p) {
  // Whole 16-byte chunks of codes and of x per row, and a quad's 32 k inside one group.
  const int64_t chunk_k = p.fmt == Format::kInt8 ? 16 : 32;
  const bool half_x = p.x_dtype == DType::kF16 || p.x_dtype == DType::kBF16;
  const bool pow2_groups = p.group_size % 32 == 0 && (p.group_size & (p.group_size - 1)) == 0;
  return half_x && p.y_dtype == p.x_dtype && p.k % chunk_k == 0 &&
         (pow2_groups || p.group_size >= p.k) && aligned_16B(p.qweight) &&
         p.qweight_row_stride % 16 == 0 && aligned_16B(p.x) && p.x_row_stride % 8 == 0 &&
         p.n <= int64_t(65535) * wgmma_block_w(64);  // the narrowest block: gridDim.y
}

GemmPlan plan_gemm(const QMatmulParams& p, int sm_count, int smem_per_block, bool wgmma) {
  GemmPlan plan{0, 1, false};
  int64_t tiles;
  int resident_per_sm;
  if (wgmma) {
    // 64 rows of x per block up to M = 64 (two blocks per SM), else 128 (one).
    const int rows = p.m <= 64 ? 64 : 128;
    if (gemm_wgmma_smem_bytes(p.fmt, rows) > smem_per_block) return plan;
    plan.wgmma_x_rows = rows;
    tiles = (p.m + rows - 1) / rows * ((p.n + wgmma_block_w(rows) - 1) / wgmma_block_w(rows));
    resident_per_sm = wgmma_blocks_per_sm(rows);
  } else {
    // The shortest tile that covers M (rows of x past M cost full mma work), lowered until its
    // pipeline fits the GPU's shared memory (the tallest needs 152 KiB: A100 / H100 class).
    int rows = p.m <= 16 ? 16 : p.m <= 64 ? 32 : 64;
    while (rows > 16 && gemm_smem_bytes(p.fmt, rows) > smem_per_block) rows /= 2;
    if (gemm_smem_bytes(p.fmt, rows) > smem_per_block) return plan;
    plan.x_rows_per_warp = rows;
    tiles = (p.m + gemm_block_x(rows) - 1) / gemm_block_x(rows) *
            ((p.n + gemm_block_w(rows) - 1) / gemm_block_w(rows));
    resident_per_sm = gemm_blocks_per_sm(rows);
  }
  const int64_t k_blocks = gemm_k_blocks(p.k);
  // Split K so that one wave of blocks covers the GPU as fully as it can without a second,
  // partial wave (two blocks per SM fit for the short tiles, one for the tallest), keeping >= 4
  // k-blocks per split so the pipeline fills.
  const int64_t resident = int64_t(sm_count) * resident_per_sm;
  plan.split_k = int(std::max<int64_t>(1, std::min<int64_t>(resident / tiles, k_blocks / 4)));
  plan.few_blocks = 2 * tiles * gemm_k_slices(k_blocks, plan.split_k) < sm_count;
  return plan;
}

bool gemm_wgmma_runs(int cc_major, int cc_minor) {
#ifdef QKERNELS_HAVE_SM90A
  return cc_major == 9 && cc_minor == 0;
#else
  (void)cc_major, (void)cc_minor;
  return false;
#endif
}

int64_t gemm_workspace_floats(const QMatmulParams& p, const GemmPlan& plan) {
  if (plan.split_k == 1) return 0;
  return gemm_k_slices(gemm_k_blocks(p.k), plan.split_k) * p.m * p.n;
}

int64_t gemm_x_perm_elements(const QMatmulParams& p, const GemmPlan& plan) {
  if (plan.wgmma_x_rows == 0) return 0;  // the mma.sync GEMM reads x as it is
  const int64_t rows = (p.m + plan.wgmma_x_rows - 1) / plan.wgmma_x_rows * plan.wgmma_x_rows;
  return rows * gemm_x_perm_row(p.k);
}

cudaError_t launch_gemm(const QMatmulParams& p, const GemmPlan& plan, float* workspace,
                        void* x_perm, cudaStream_t stream) {
  if (!plan.runs() || (plan.split_k > 1 && workspace == nullptr) ||
      (plan.wgmma_x_rows > 0 && x_perm == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const int rows = plan.x_rows_per_warp, splits = plan.split_k;
  const bool f16 = p.x_dtype == DType::kF16;
  auto launch = [&](auto fmt_tag, auto dq_tag) {
    constexpr Format kFmt = decltype(fmt_tag)::value;
    constexpr bool kDq = decltype(dq_tag)::value;
    if (plan.wgmma_x_rows > 0) {
      return f16 ? launch_gemm_wgmma<kFmt, half, kDq>(p, plan.wgmma_x_rows, splits, workspace,
                                                      x_perm, stream)
                 : launch_gemm_wgmma<kFmt, __nv_bfloat16, kDq>(p, plan.wgmma_x_rows, splits,
                                                               workspace, x_perm, stream);
    }
    return f16 ? launch_gemm_mma<kFmt, half, kDq>(p, rows, splits, workspace, stream)
               : launch_gemm_mma<kFmt, __nv_bfloat16, kDq>(p, rows, splits, workspace, stream);
  };
  cudaError_t error;
  if (p.absmax_dq.codes) {
    error = launch(std::integral_constant<Format, Format::kNF4>{}, std::true_type{});
  } else {
    error = QK_FORMAT_SWITCH(p.fmt, kFmt, [&] {
      return launch(std::integral_constant<Format, kFmt>{}, std::false_type{});
    });
  }
  if (error != cudaSuccess || plan.split_k == 1) return error;
  const bool vector = p.n % 4 == 0;
  const int64_t threads = vector ? p.m * p.n / 4 : p.m * p.n;
  const int64_t blocks = (threads + kFinalizeThreads - 1) / kFinalizeThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const auto finalize = vector ? (f16 ? split_k_finalize_kernel<half, true>
                                      : split_k_finalize_kernel<__nv_bfloat16, true>)
                               : (f16 ? split_k_finalize_kernel<half, false>
                                      : split_k_finalize_kernel<__nv_bfloat16, false>);
  const auto* sums = static_cast<const float*>(workspace);
  const int slices = int(gemm_k_slices(gemm_k_blocks(p.k), splits));
  if (plan.wgmma_x_rows > 0) {  // sm_90, where the Hopper GEMM lets it start early
    return launch_dependent(finalize, unsigned(blocks), kFinalizeThreads, 0, stream, p, sums,
                            slices);
  }
  finalize<<<unsigned(blocks), kFinalizeThreads, 0, stream>>>(p, sums, slices);  // any GPU
  return cudaGetLastError();
}

}  // namespace qk::cuda
