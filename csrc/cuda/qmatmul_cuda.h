// The CUDA kernels' interface: y = x @ dequant(W)^T (+ bias) on device pointers, launched on a
// caller's stream. Torch-free (includes only the CUDA runtime API), so host C++ can include it.
// Callers run qk::validate(p) first; launchers return the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../core/qmatmul.h"

namespace qk::cuda {

// Rows of x up to which launch_gemv is used; above it the binding dequantizes W into a
// workspace and calls cuBLAS. Measured on an H100 (bench/NOTES.md, "CUDA GEMV"), int4 g128 fp16:
// each extra tile of 8 rows costs the GEMV ~15 us on 14336x4096 (M=8 22.5 us, M=16 37.1, M=32
// 69.7; its weight re-reads hit L2, the tensor-core pass is the cost), while dequantize + cuBLAS
// costs 143 us at M=33 and 140 us at M=64; on 4096x4096 GEMV M=32 23.5 us against 40 us, on
// 28672x8192 252 us against 530 us. The lines cross near M = 64 (4096x4096: near 50).
constexpr int64_t kGemvMaxRows = 48;

// y[m, :] for all m < p.m: tensor-core GEMV (mma.sync, fp32 accumulation) when x is fp16/bf16
// and the shape and pointers meet gemv_mma_supported(); a scalar-load warp-per-row kernel
// otherwise (any shape, any dtype, fp32 x included).
cudaError_t launch_gemv(const QMatmulParams& p, cudaStream_t stream);

// w_out [p.n, p.k] (row stride p.k, dtype out_dtype) = dequant(W), from the weight fields of p
// (fmt, n, k, group_size, qweight, scales, zeros); x, y and bias are not read.
cudaError_t launch_dequantize(const QMatmulParams& p, void* w_out, DType out_dtype,
                              cudaStream_t stream);

}  // namespace qk::cuda
