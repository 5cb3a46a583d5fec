// Instantiation of the tensor-core GEMMs (mma.sync, and wgmma for sm_90a) for int4 weights and f16
// activations (one file per pair so the build compiles them in parallel).
#include "gemm_wgmma.cuh"

namespace qk::cuda {
template cudaError_t launch_gemm_mma<Format::kInt4, half>(
    const QMatmulParams&, int, int, float*, cudaStream_t);
template cudaError_t launch_gemm_wgmma<Format::kInt4, half>(
    const QMatmulParams&, int, int, float*, void*, cudaStream_t);
}  // namespace qk::cuda
