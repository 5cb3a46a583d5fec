// The CUDA kernels' interface: y = x @ dequant(W)^T (+ bias) on device pointers, launched on a
// caller's stream. Torch-free (includes only the CUDA runtime API), so host C++ can include it.
// Callers run qk::validate(p) first; launchers return the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../core/qmatmul.h"

namespace qk::cuda {

// Rows of x up to which launch_gemv is used; above it the tensor-core GEMM where
// gemm_supported(), else W is dequantized into a workspace and handed to cuBLAS.
// GEMV alone, measured on an H100 (bench/NOTES.md, "CUDA GEMV"), int4 g128 fp16: each extra
// tile of 8 rows costs the GEMV ~15 us on 14336x4096 (M=8 22.5 us, M=16 37.1, M=32 69.7).
// (Placeholder pending the GEMM measurement: see bench/NOTES.md, "CUDA GEMM".)
constexpr int64_t kGemvMaxRows = 8;

// Where the GEMM does not apply (fp32 x, odd K or groups): GEMV up to here, then dequantize +
// cuBLAS. GEMV as above against dequantize + cuBLAS at 143 us (M=33) and 140 us (M=64) on
// 14336x4096; 4096x4096 GEMV M=32 23.5 us against 40 us; 28672x8192 252 us against 530 us: the
// lines cross near M = 64 (4096x4096: near 50).
constexpr int64_t kGemvMaxRowsWithoutGemm = 48;

// Rows of x from which dequantize + cuBLAS replaces the fused GEMM.
// (Placeholder pending the GEMM measurement: see bench/NOTES.md, "CUDA GEMM".)
constexpr int64_t kGemmMaxRows = 1 << 30;

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
