// Instantiation of the tensor-core GEMM for int8 weights and f16 activations (one file per pair so
// the build compiles them in parallel).
#include "gemm_mma.cuh"

namespace qk::cuda {
template cudaError_t launch_gemm_mma<Format::kInt8, half>(const QMatmulParams&, int, int, float*,
                                                           cudaStream_t);
}  // namespace qk::cuda
