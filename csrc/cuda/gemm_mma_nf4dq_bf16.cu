// Instantiation of the tensor-core GEMMs (mma.sync, and wgmma for sm_90a) for nf4 weights with
// double-quantized absmax and bf16 activations (one file per pair so the build compiles them in
// parallel).
#include "gemm_wgmma.cuh"

namespace qk::cuda {
template cudaError_t launch_gemm_mma<Format::kNF4, __nv_bfloat16, true>(
    const QMatmulParams&, int, int, float*, cudaStream_t);
template cudaError_t launch_gemm_wgmma<Format::kNF4, __nv_bfloat16, true>(
    const QMatmulParams&, int, int, float*, void*, cudaStream_t);
}  // namespace qk::cuda
