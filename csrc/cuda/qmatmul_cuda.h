// The CUDA kernels' interface: y = x @ dequant(W)^T (+ bias) on device pointers, launched on a
// caller's stream. Torch-free (includes only the CUDA runtime API), so host C++ can include it.
// Callers run qk::validate(p) first; launchers return the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../core/qmatmul.h"

namespace qk::cuda {

// Dispatch by the rows of x (M) between the GEMV, the tensor-core GEMM and dequantize + cuBLAS.
// Thresholds from bench/cuda_gemm.py on an H100 (fp16 x, cold L2, graph replay; every path forced
// at every M: bench/results/h100/gemm_dev.md; "CUDA GEMM" in bench/NOTES.md).

// Rows up to which the GEMV runs. At M = 9..16 it runs two 8-row tiles, the cost of M = 16, where
// the GEMM (v3) wins on the large shapes: int4 g128 33.3 us against 35.8 on 14336x4096, 30.3 /
// 32.5 on 4096x14336, 110 / 130 on 28672x8192 (nf4 and int8 by more); it loses on 4096x4096
// (14.7 / 12.8). At M = 8 the GEMV takes 21.7 us on 14336x4096, the GEMM as long as at 16.
constexpr int64_t kGemvMaxRows = 8;

// Rows up to which the GEMM runs (where gemm_supported()); above, dequantize + cuBLAS.
// M = 128, int4: GEMM 97.4 us against 103.0 (14336x4096), 87.6 / 108.8 (4096x14336), 369 / 389
// (28672x8192), but 34.4 / 28.4 on 4096x4096; M = 256: dequantize + cuBLAS wins on every shape
// and format (14336x4096 int4: 110.5 against 191.5).
constexpr int64_t kGemmMaxRows = 128;

// Where the GEMM does not apply (fp32 x, K not a multiple of 32, other group sizes): GEMV up to
// here, then dequantize + cuBLAS, which costs 102-110 us up to M = 128 on 14336x4096 int4 against
// the GEMV's 69 (M = 32) and 129 (M = 64); 4096x4096: 27 against 23 and 40.
constexpr int64_t kGemvMaxRowsWithoutGemm = 40;

// y[m, :] for all m < p.m: tensor-core GEMV (mma.sync, fp32 accumulation) when x is fp16/bf16
// and the shape and pointers meet gemv_mma_supported(); a scalar-load warp-per-row kernel
// otherwise (any shape, any dtype, fp32 x included).
cudaError_t launch_gemv(const QMatmulParams& p, cudaStream_t stream);

// The tensor-core GEMM (gemm_mma.cuh): fp16 / bf16 x, K a multiple of 32 (4-bit) or 16 (int8),
// groups a power of two >= 32 or one per row, 16-byte-aligned rows of x and W.
bool gemm_supported(const QMatmulParams& p);

// How launch_gemm runs a problem on a GPU with sm_count SMs and smem_per_block bytes of shared
// memory per block (opt-in maximum): the tile height (x rows per warp: 16, 32 or 64; 0 when no
// tile fits, and the GEMM cannot run) and the number of slices K is split into. split_k > 1 needs
// a zero-filled fp32 workspace of p.m x p.n.
struct GemmPlan {
  int x_rows_per_warp;
  int split_k;
};
GemmPlan plan_gemm(const QMatmulParams& p, int sm_count, int smem_per_block);

// y = x @ dequant(W)^T (+ bias) on the tensor cores, for p that gemm_supported() accepts.
cudaError_t launch_gemm(const QMatmulParams& p, const GemmPlan& plan, float* workspace,
                        cudaStream_t stream);

// w_out [p.n, p.k] (row stride p.k, dtype out_dtype) = dequant(W), from the weight fields of p
// (fmt, n, k, group_size, qweight, scales, zeros); x, y and bias are not read.
cudaError_t launch_dequantize(const QMatmulParams& p, void* w_out, DType out_dtype,
                              cudaStream_t stream);

}  // namespace qk::cuda
