// The CUDA kernels' interface: y = x @ dequant(W)^T (+ bias) on device pointers, launched on a
// caller's stream. Torch-free (includes only the CUDA runtime API), so host C++ can include it.
// Callers run qk::validate(p) first; launchers return the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../core/qmatmul.h"

namespace qk::cuda {

// Rows of x up to which launch_gemv is used; above it the binding dequantizes W into a
// workspace and calls cuBLAS. Measured on an H100 (bench/NOTES.md, "CUDA GEMV"): GEMV reads the
// weights once per 8 rows of x but the 8-row passes of one weight tile run back to back, so
// the repeats mostly hit L2. 14336x4096 int4 g128: GEMV M=32 xx us against dequant + cuBLAS
// yy us; M=64 xx us against yy us.
constexpr int64_t kGemvMaxRows = 32;

// y[m, :] for all m < p.m: tensor-core GEMV (mma.sync, fp32 accumulation) when x is fp16/bf16
// and the shape and pointers meet gemv_mma_supported(); a scalar-load warp-per-row kernel
// otherwise (any shape, any dtype, fp32 x included).
cudaError_t launch_gemv(const QMatmulParams& p, cudaStream_t stream);

// w_out [p.n, p.k] (row stride p.k, dtype out_dtype) = dequant(W), from the weight fields of p
// (fmt, n, k, group_size, qweight, scales, zeros); x, y and bias are not read.
cudaError_t launch_dequantize(const QMatmulParams& p, void* w_out, DType out_dtype,
                              cudaStream_t stream);

}  // namespace qk::cuda
